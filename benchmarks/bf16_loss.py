"""bf16 compute over f32 master weights against f32: the loss curves of two tiny runs.

    python benchmarks/bf16_loss.py [--steps 200] [--tolerance 0.05]

Trains ``configs/tiny.py`` twice from the same seed and data, once with
``model.dtype=float32`` and once with ``model.dtype=bfloat16`` (f32
``param_dtype``, so the optimizer and the master weights stay f32), each
through ``python -m llama_jax.train`` in its own process. Then it reads both
``metrics.jsonl`` files and compares ``loss_mean`` (the mean training loss
since the previous record) at every logged step, and the final held-out loss
per source. It prints a table and the largest difference, writes JSON to
benchmarks/results/bf16_loss.json, and exits 1 when a logged step differs by
more than `--tolerance` nats.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from sidebyside import machine, write

REPO = Path(__file__).resolve().parents[1]


def run(dtype: str, workdir: str, steps: int) -> tuple[dict, float]:
    """The logged records by step of one tiny run in `dtype`, and its wall time."""
    cmd = [sys.executable, "-m", "llama_jax.train", f"--config={REPO / 'configs' / 'tiny.py'}",
           f"--workdir={workdir}", f"--config.train.steps={steps}",
           f"--config.train.eval_every={steps}", f"--config.model.dtype={dtype}",
           "--config.train.tensorboard=False"]
    t0 = time.perf_counter()
    subprocess.run(cmd, check=True, cwd=REPO, stdout=subprocess.DEVNULL)
    seconds = time.perf_counter() - t0
    with open(os.path.join(workdir, "metrics.jsonl")) as f:
        records = [json.loads(line) for line in f]
    return {r["step"]: r for r in records if "loss_mean" in r}, seconds


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--steps", type=int, default=200)
    p.add_argument("--tolerance", type=float, default=0.05,
                   help="largest |bf16 - f32| of loss_mean at any logged step, in nats")
    p.add_argument("--out", default=None)
    args = p.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        f32, f32_s = run("float32", os.path.join(tmp, "f32"), args.steps)
        bf16, bf16_s = run("bfloat16", os.path.join(tmp, "bf16"), args.steps)
    steps = sorted(set(f32) & set(bf16))
    rows = [{"step": s, "f32": f32[s]["loss_mean"], "bf16": bf16[s]["loss_mean"],
             "diff": bf16[s]["loss_mean"] - f32[s]["loss_mean"]} for s in steps]
    worst = max(abs(r["diff"]) for r in rows)
    last = steps[-1]
    heldout = {k.split("/", 1)[1]: {"f32": f32[last][k], "bf16": bf16[last].get(k)}
               for k in f32[last] if k.startswith("eval_loss/")}
    print("| step | loss_mean f32 | loss_mean bf16 | bf16 - f32 |\n|---:|---:|---:|---:|")
    for r in rows:
        print(f"| {r['step']} | {r['f32']:.4f} | {r['bf16']:.4f} | {r['diff']:+.4f} |")
    print(f"\nlargest |difference|: {worst:.4f} nats (tolerance {args.tolerance}); runs took "
          f"{f32_s:.0f} s (f32) and {bf16_s:.0f} s (bf16)")
    for name, v in heldout.items():
        print(f"held-out {name}: f32 {v['f32']:.4f}, bf16 {v['bf16']:.4f}")
    path = write("bf16_loss", {"machine": machine(), "steps": args.steps,
                               "tolerance": args.tolerance, "max_abs_diff": worst,
                               "seconds": {"f32": f32_s, "bf16": bf16_s}, "rows": rows,
                               "heldout": heldout}, args.out)
    print(f"wrote {path}")
    sys.exit(0 if worst <= args.tolerance else 1)


if __name__ == "__main__":
    main()
