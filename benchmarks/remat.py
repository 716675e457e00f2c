"""Compiled memory and FLOPs of the train step under each remat policy.

For each model shape and each policy of `llama_jax.model.remat.REMAT_POLICIES`
this lowers and compiles the real train step (`llama_jax.train.step.make_train_step`,
AdamW) for abstract inputs -- nothing is allocated or run -- and reads XLA's
`memory_analysis()` (temp / argument / output bytes) and `cost_analysis()`
(FLOPs). Prints a table and writes JSON.

    python benchmarks/remat.py                       # tiny + 1b, CPU, 1 device
    python benchmarks/remat.py --shapes 1b --batch 4 --seq 2048
    python benchmarks/remat.py --out benchmarks/results/remat_gpu.json  # on a GPU

`temp` is what remat changes: the live activations kept for the backward
pass plus scratch, for the default scanned stack (`scan_layers=True`).
`argument`/`output` are params + optimizer state + batch (the same for every
policy). XLA's cost analysis counts a while-loop body once, so FLOPs come
from a second compile of the unrolled stack (`scan_layers=False`), whose temp
memory is reported too: XLA:CPU's scheduler does not keep rematerialisation
late in an unrolled program, so remat saves memory there only when scanned.
The shapes use a realistic tokens-per-step so that the per-layer activations
remat trades, not the logits or the optimizer, dominate temp memory (see
docs/sharding.md).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import optax

from llama_jax import sharding as shd
from llama_jax.model import LlamaConfig, count_params, get_preset
from llama_jax.model.remat import REMAT_POLICIES
from llama_jax.train import step as st

SHAPES = {
    # The CPU-trainable preset (dim 256, 4 layers, vocab 4096).
    "tiny": lambda: get_preset("tiny"),
    # A LLaMA-style ~1B shape (0.95B params): compiled, never run.
    "1b": lambda: LlamaConfig(dim=2048, n_layers=16, n_heads=16, vocab_size=32000,
                              multiple_of=256, max_seq_len=2048),
}
DEFAULT_BATCH = {"tiny": (16, 256), "1b": (2, 2048)}  # (batch, len)
MIB = 2 ** 20


def measure(config: LlamaConfig, batch: int, seq: int, mesh) -> dict:
    """Compile the train step for abstract inputs; memory and FLOPs."""
    optimizer = optax.adamw(1e-4)
    rules = shd.DEFAULT_RULES
    abstract, shardings = st.abstract_train_state(config, optimizer, mesh, rules)
    train_step = st.make_train_step(config, optimizer, mesh, rules, shardings)
    data = shd.data_sharding(mesh, rules)
    spec = jax.ShapeDtypeStruct((batch, seq), jnp.int32, sharding=data)
    inputs = {"inputs": spec, "targets": spec, "positions": spec, "segment_ids": spec,
              "loss_mask": jax.ShapeDtypeStruct((batch, seq), jnp.float32, sharding=data)}
    t0 = time.perf_counter()
    compiled = train_step.lower(abstract, inputs).compile()
    seconds = time.perf_counter() - t0
    mem = compiled.memory_analysis()
    cost = compiled.cost_analysis()
    cost = cost[0] if isinstance(cost, list | tuple) else cost
    return {
        "temp_bytes": int(mem.temp_size_in_bytes),
        "argument_bytes": int(mem.argument_size_in_bytes),
        "output_bytes": int(mem.output_size_in_bytes),
        "alias_bytes": int(mem.alias_size_in_bytes),
        "host_temp_bytes": int(getattr(mem, "host_temp_size_in_bytes", 0) or 0),
        "flops": float(cost.get("flops", float("nan"))),
        "compile_s": round(seconds, 2),
    }


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--shapes", default="tiny,1b", help=f"comma list of {sorted(SHAPES)}")
    p.add_argument("--policies", default=",".join(REMAT_POLICIES))
    p.add_argument("--batch", type=int, default=None, help="global batch (default per shape)")
    p.add_argument("--seq", type=int, default=None, help="sequence length (default per shape)")
    p.add_argument("--dtype", default="float32", help="compute dtype (float32 or bfloat16)")
    p.add_argument("--out", default=str(Path(__file__).parent / "results" / "remat.json"))
    args = p.parse_args(argv)

    mesh = shd.make_mesh((1, 1, 1, 1), jax.devices()[:1])
    rows = []
    for shape in args.shapes.split(","):
        base = SHAPES[shape]().replace(dtype=args.dtype)
        batch, seq = DEFAULT_BATCH[shape]
        batch, seq = args.batch or batch, args.seq or seq
        base = base.replace(max_seq_len=max(base.max_seq_len, seq))
        for policy in args.policies.split(","):
            cfg = base.replace(remat_policy=policy)
            r = measure(cfg.replace(scan_layers=True), batch, seq, mesh)
            # XLA's cost analysis counts a while-loop body once, so FLOPs come
            # from the unrolled program (scan_layers=False) of the same model.
            unrolled = measure(cfg.replace(scan_layers=False), batch, seq, mesh)
            r["flops_scan_body_once"] = r["flops"]
            r["flops"] = unrolled["flops"]
            r["temp_bytes_unrolled"] = unrolled["temp_bytes"]
            r.update(shape=shape, policy=policy, batch=batch, seq=seq, dtype=args.dtype,
                     params=count_params(cfg))
            rows.append(r)
            print(f"{shape:5s} {policy:26s} temp {r['temp_bytes'] / MIB:10.1f} MiB  "
                  f"GFLOPs {r['flops'] / 1e9:10.1f}  (compile {r['compile_s']} s + "
                  f"{unrolled['compile_s']} s unrolled)", flush=True)

    header = ("| shape (params) | batch x len | policy | temp MiB | argument MiB | output MiB | "
              "GFLOPs | FLOPs vs none | temp MiB unrolled |\n"
              "|---|---|---|---:|---:|---:|---:|---:|---:|")
    lines = [header]
    for r in rows:
        none = next(x for x in rows if x["shape"] == r["shape"] and x["policy"] == "none")
        lines.append(
            f"| {r['shape']} ({r['params'] / 1e6:.0f}M) | {r['batch']} x {r['seq']} | "
            f"{r['policy']} | {r['temp_bytes'] / MIB:.1f} | {r['argument_bytes'] / MIB:.1f} | "
            f"{r['output_bytes'] / MIB:.1f} | {r['flops'] / 1e9:.1f} | "
            f"{r['flops'] / none['flops']:.3f} | {r['temp_bytes_unrolled'] / MIB:.1f} |")
    table = "\n".join(lines)
    print()
    print(table)
    out = {
        "backend": jax.default_backend(),
        "device": str(jax.devices()[0].device_kind),
        "jax": jax.__version__,
        "host": platform.machine(),
        "xla_flags": os.environ.get("XLA_FLAGS", ""),
        "rows": rows,
        "table_markdown": table,
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(out, indent=2) + "\n")
    print(f"\nwrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
