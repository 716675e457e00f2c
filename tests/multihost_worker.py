"""One process of the localhost multi-process training test.

Run by `tests/test_multihost.py` (not collected by pytest):

    python tests/multihost_worker.py --process_id 0 --num_processes 2 \
        --port 12345 --local_devices 2 --out /tmp/losses_0.json

Each process sees `--local_devices` fake CPU devices, joins the JAX
distributed runtime (gloo CPU collectives), builds a hybrid mesh with the
processes on the `data` axis (DCN) and `fsdp` inside each process, loads only
its own rows of a deterministic global batch, and trains a tiny model for a
few steps. It writes the per-step metrics and a summary of its final params
as JSON.
"""

from __future__ import annotations

import argparse
import json
import os
import sys

# The run both sides agree on: 2 processes x 2 devices, processes on `data`.
MESH = {"data": 2, "fsdp": 2, "tensor": 1, "sequence": 1}
GLOBAL_SHAPE = (8, 16)  # [batch, len]


def make_config():
    """The tiny float32 model both sides train."""
    from llama_jax.model.config import LlamaConfig

    return LlamaConfig(dim=64, n_layers=2, n_heads=4, n_kv_heads=2, vocab_size=128,
                       multiple_of=32, max_seq_len=64)


def make_optimizer():
    """Clipped AdamW (clipping makes the update depend on the global norm)."""
    import optax

    return optax.chain(optax.clip_by_global_norm(1.0), optax.adamw(3e-3, weight_decay=0.1))


def make_batch(step: int):
    """The deterministic global batch of `step`: packed rows with padding."""
    import numpy as np

    rng = np.random.default_rng(1000 + step)
    b, n = GLOBAL_SHAPE
    tokens = rng.integers(1, 128, size=(b, n + 1)).astype(np.int32)
    segment_ids = np.ones((b, n), np.int32)
    segment_ids[:, n // 2:] = 2  # two documents per row
    segment_ids[::3, -3:] = 0  # some padding
    positions = np.where(segment_ids == 2, np.arange(n) - n // 2, np.arange(n)).astype(np.int32)
    return {
        "inputs": tokens[:, :-1],
        "targets": tokens[:, 1:],
        "positions": positions,
        "segment_ids": segment_ids,
        "loss_mask": (segment_ids != 0).astype(np.float32),
    }


def main(argv=None) -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--process_id", type=int, required=True)
    p.add_argument("--num_processes", type=int, required=True)
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--local_devices", type=int, default=2)
    p.add_argument("--steps", type=int, default=3)
    p.add_argument("--out", required=True)
    args = p.parse_args(argv)

    # Must be set before jax initialises its backends.
    os.environ["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={args.local_devices}"
    os.environ["JAX_PLATFORMS"] = "cpu"
    from llama_jax import distributed

    info = distributed.initialize(
        coordinator_address=f"localhost:{args.port}", num_processes=args.num_processes,
        process_id=args.process_id, initialization_timeout=120)

    import jax
    import numpy as np

    from llama_jax import sharding as shd
    from llama_jax import step as st

    assert info.process_count == args.num_processes, info
    assert jax.device_count() == args.local_devices * args.num_processes
    mesh = shd.mesh_from_config(MESH)
    config, optimizer = make_config(), make_optimizer()
    state, shardings = st.init_train_state(config, optimizer, mesh, shd.DEFAULT_RULES,
                                           jax.random.key(0))
    train_step = st.make_train_step(config, optimizer, mesh, shd.DEFAULT_RULES, shardings)
    rows = shd.process_batch_slices(mesh, GLOBAL_SHAPE)
    metrics = []
    for i in range(args.steps):
        full = make_batch(i)
        local = {k: v[rows] for k, v in full.items()}  # only this process's share
        state, m = train_step(state, st.global_batch(mesh, local))
        metrics.append({k: float(v) for k, v in m.items()})
    # A checksum of the final (sharded) params, gathered to every process.
    from jax.experimental import multihost_utils

    leaves = [np.asarray(multihost_utils.process_allgather(x, tiled=True))
              for x in jax.tree.leaves(state.params)]
    result = {
        "process_index": info.process_index,
        "process_count": info.process_count,
        "rows": [rows[0].start, rows[0].stop],
        "mesh_devices": [[d.process_index for d in row.flat]
                         for row in mesh.devices.reshape(mesh.devices.shape[0], -1)],
        "metrics": metrics,
        "param_abs_sum": float(sum(np.abs(x).sum() for x in leaves)),
        "trace_count": train_step.trace_count,
    }
    with open(args.out, "w") as f:
        json.dump(result, f)
    distributed.shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main())
