"""Peak host memory and seconds to load a ~1B checkpoint onto 8 devices, old way and new.

Makes a random ~1.1B-parameter Hugging Face checkpoint (TinyLlama's shape:
dim 2048, 22 layers, 32 heads / 4 KV heads, FFN 5632, vocab 32000; bfloat16,
two safetensors files + index) in a temp dir at run time (written tensor by
tensor, never committed), then loads it onto 8 fake CPU devices in separate
subprocesses, each timed and measured on its own:

- ``host``: the whole-tensor path, ``from_pretrained(path)`` then
  ``placement.place_params`` (what eval / generate did before);
- ``mesh``: ``from_pretrained(path, mesh=..., rules=...)``, each device's
  shard read from the files (`llama_jax.convert.sharded_read`).

Reported per way: wall seconds of the load, the peak RSS over the baseline
(``ru_maxrss`` before vs after), the RSS still held after it, and the bytes
the placed device arrays occupy. On fake CPU devices the device arrays *are*
host memory, so ``peak - device arrays`` is the host's staging overhead:
what the load needs beyond the placed model (on a GPU/TPU host that is the
whole of the host's extra memory).

    python benchmarks/load.py                     # ~5 min on 2 cores, ~7 GB RAM
    python benchmarks/load.py --layers 2          # a quick smoke run
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
MESH = (1, 4, 2, 1)  # data, fsdp, tensor, sequence

CHILD = r"""
import json, os, resource, sys, time
import jax, numpy as np
from llama_jax import sharding
from llama_jax.convert import from_pretrained
from llama_jax.infer import placement

def rss():
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
path, way, mesh_shape = sys.argv[1], sys.argv[2], json.loads(sys.argv[3])
mesh = sharding.make_mesh(mesh_shape)
jax.block_until_ready(jax.device_put(np.zeros(8), jax.devices()[0]))  # backend up
base_rss, base_peak = rss(), resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
t = time.perf_counter()
if way == "host":
    config, params = from_pretrained(path, progress=False)
    params = placement.place_params(config, params, mesh)
else:
    config, params = from_pretrained(path, mesh=mesh, progress=False)
jax.block_until_ready(params)
seconds = time.perf_counter() - t
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
device_bytes = sum(s.data.nbytes for x in jax.tree_util.tree_leaves(params)
                   for s in x.addressable_shards)
print(json.dumps({"seconds": seconds, "baseline_rss": base_rss,
                  "peak_rss_over_baseline": peak - max(base_rss, 0),
                  "rss_after_over_baseline": rss() - base_rss,
                  "device_array_bytes": device_bytes,
                  "num_params": sum(int(np.prod(x.shape)) for x in jax.tree_util.tree_leaves(params))}))
"""


def make_checkpoint(out: Path, layers: int, seed: int = 0) -> int:
    """A random bf16 HF checkpoint of TinyLlama's shape; its weight bytes."""
    import ml_dtypes
    import numpy as np

    from llama_jax.convert import hf
    from llama_jax.convert.common import meta_shapes
    from llama_jax.convert.safetensors_io import StreamedWriter
    from llama_jax.model import LlamaConfig

    config = LlamaConfig(dim=2048, n_layers=layers, n_heads=32, n_kv_heads=4, vocab_size=32000,
                         hidden_dim=5632, max_seq_len=2048)
    shapes = meta_shapes(config)
    names = list(shapes)
    half = len(names) // 2
    rng = np.random.default_rng(seed)
    weight_map, total = {}, 0
    for i, group in enumerate((names[:half], names[half:])):
        fname = f"model-{i + 1:05d}-of-00002.safetensors"
        writer = StreamedWriter(out / fname, [(hf.hf_name(n), "bfloat16", shapes[n])
                                              for n in group], metadata={"format": "pt"})
        for n in group:
            w = (rng.standard_normal(shapes[n], np.float32) * 0.02).astype(ml_dtypes.bfloat16)
            writer.write(hf.hf_name(n), w)
            weight_map[hf.hf_name(n)] = fname
            total += w.nbytes
            del w
        writer.close()
    (out / hf.CONFIG_FILE).write_text(json.dumps(hf.hf_config_for(config, "bfloat16")))
    (out / hf.INDEX_FILE).write_text(json.dumps({"metadata": {"total_size": total},
                                                 "weight_map": weight_map}))
    return total


def run_way(path: Path, way: str) -> dict:
    """Load `path` the `way` way in a fresh subprocess on 8 fake CPU devices."""
    env = {k: v for k, v in os.environ.items() if k not in ("XLA_FLAGS", "JAX_PLATFORMS")}
    env.update(XLA_FLAGS="--xla_force_host_platform_device_count=8", JAX_PLATFORMS="cpu",
               PYTHONPATH=os.pathsep.join([str(REPO), env.get("PYTHONPATH", "")]))
    done = subprocess.run([sys.executable, "-c", CHILD, str(path), way, json.dumps(MESH)],
                          capture_output=True, text=True, env=env, check=False)
    if done.returncode != 0:
        raise SystemExit(f"{way} load failed:\n{done.stderr[-4000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def main(argv=None) -> int:
    """Make the checkpoint, load it both ways, print the table, write JSON."""
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--layers", type=int, default=22, help="22 = TinyLlama's 1.1B")
    p.add_argument("--out", default=str(Path(__file__).parent / "results" / "load.json"))
    args = p.parse_args(argv)
    sys.path.insert(0, str(REPO))
    with tempfile.TemporaryDirectory(prefix="llama_load_bench_") as tmp:
        t = time.perf_counter()
        weight_bytes = make_checkpoint(Path(tmp), args.layers)
        print(f"made a {weight_bytes / 2**30:.2f} GiB checkpoint in {time.perf_counter() - t:.0f} s")
        rows = {way: run_way(Path(tmp), way) for way in ("host", "mesh")}
    gib = lambda b: b / 2**30  # noqa: E731
    print(f"\n{'way':<6} {'seconds':>8} {'peak RSS':>10} {'RSS after':>10} "
          f"{'device arrays':>14} {'peak - arrays':>14}   (GiB over the process baseline)")
    for way, r in rows.items():
        r["staging_overhead"] = r["peak_rss_over_baseline"] - r["device_array_bytes"]
        print(f"{way:<6} {r['seconds']:>8.1f} {gib(r['peak_rss_over_baseline']):>10.2f} "
              f"{gib(r['rss_after_over_baseline']):>10.2f} {gib(r['device_array_bytes']):>14.2f} "
              f"{gib(r['staging_overhead']):>14.2f}")
    out = {"benchmark": "load", "mesh": dict(zip(("data", "fsdp", "tensor", "sequence"), MESH,
                                                  strict=True)),
           "layers": args.layers, "num_params": rows["mesh"]["num_params"],
           "checkpoint_bytes": weight_bytes, "dtype": "bfloat16", "ways": rows,
           "machine": {"platform": platform.platform(), "cpus": os.cpu_count(),
                       "python": platform.python_version()}}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(out, indent=2) + "\n")
    print(f"\nwrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
