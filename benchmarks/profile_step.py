"""Where the CPU train step's time goes: a `jax.profiler` trace, summed per op class.

    python benchmarks/profile_step.py --shape a [--steps 5] [--dtype float32] [--unrolled]

Runs our jitted train step (the same as benchmarks/train_step.py's ``ours``)
under `jax.profiler.trace`, reads the trace back with
`jax.profiler.ProfileData`, and sums the duration of every XLA op executed on
the CPU worker threads. Each op is classed by what the compiled HLO says it
is: its own opcode, or for a fusion the ops of the computation it calls:

- ``matmul``: a dot (XLA's own, or YNNPACK / oneDNN fusions around one);
- ``reduction``: a fusion around a reduce (softmax sums, RMSNorm, the loss);
- ``mask/select``: a select (the causal / segment mask, the loss mask);
- ``copy/transpose``: copies, transposes and broadcasts (layout changes, head
  split, buffers filled with a constant);
- ``transcendental``: exp / log / sin / cos / rsqrt / tanh fusions;
- ``elementwise``: everything else that computes;
- ``other``: the rest (parameters, tuples, control flow).

Prints a table (ms per step, share) and the 15 most expensive ops, and
writes JSON to benchmarks/results/profile_step_<shape>_<dtype>.json. Run it on a
quiet machine: shares are meaningful under load, milliseconds less so.
"""

from __future__ import annotations

import argparse
import collections
import glob
import os
import re
import shutil
import tempfile
import time

import jax
import numpy as np
from sidebyside import machine, write
from train_step import SHAPES, ours

CLASSES = ("matmul", "reduction", "mask/select", "copy/transpose", "transcendental",
           "elementwise", "other")
_TRANSCENDENTAL = ("exponential", "log", "sine", "cosine", "rsqrt", "tanh", "power", "logistic")
_DEF = re.compile(r"^\s*(?:ROOT\s+)?%?([\w.\-]+)\s*=\s*(\S+)\s+([\w\-]+)\(", re.M)


def hlo_index(text: str):
    """(opcode by instruction name, called computation by fusion name, opcodes by
    computation, result type by instruction name) of an HLO module's text."""
    opcode, calls, body, shape = {}, {}, collections.defaultdict(list), {}
    current = None
    for line in text.splitlines():
        head = re.match(r"^\s*(?:ENTRY\s+)?%?([\w.\-]+)\s.*\{\s*$", line)
        if head and "=" not in line.split("{")[0]:
            current = head.group(1)
            continue
        m = _DEF.match(line)
        if not m:
            continue
        name, op = m.group(1), m.group(3)
        opcode[name], shape[name] = op, m.group(2).split("{")[0]
        if current is not None:
            body[current].append(op)
        c = re.search(r"calls=%?([\w.\-]+)", line)
        if c:
            calls[name] = c.group(1)
    return opcode, calls, body, shape


def op_class(name: str, opcode: dict, calls: dict, body: dict) -> str:
    """The class of the executed op `name` (see the module docstring)."""
    ops = [opcode.get(name, "")]
    seen, stack = set(), [calls.get(name)]
    while stack:  # the ops of the called computation(s), nested fusions included
        comp = stack.pop()
        if comp is None or comp in seen:
            continue
        seen.add(comp)
        ops += body.get(comp, [])
    if not any(ops) and name.startswith(("ynn_fusion", "onednn")):
        return "matmul"
    if any(o in ("dot", "convolution") for o in ops) or name.startswith("dot"):
        return "matmul"
    if "reduce" in ops or "reduce-window" in ops:
        return "reduction"
    if "select" in ops:
        return "mask/select"
    if any(o in _TRANSCENDENTAL for o in ops):
        return "transcendental"
    computes = [o for o in ops if o not in ("parameter", "bitcast", "copy", "transpose", "tuple",
                                            "get-tuple-element", "constant", "broadcast", "fusion",
                                            "call", "")]
    if not computes:
        moves = any(o in ("copy", "transpose", "broadcast") for o in ops)
        return "copy/transpose" if moves else "other"
    return "elementwise"


def profile(shape: str, steps: int, dtype: str, scan_layers: bool = True) -> dict:
    """Trace `steps` train steps of `shape`; time per op class and the top ops."""
    config, batch, seq = SHAPES[shape]
    tokens = np.random.default_rng(0).integers(0, config.vocab_size, (batch, seq + 1))
    step, compiled_text = ours(config, tokens, dtype, with_hlo=True, scan_layers=scan_layers)
    for _ in range(2):
        step()
    folder = tempfile.mkdtemp(prefix="profile_step_")
    try:
        t0 = time.perf_counter()
        with jax.profiler.trace(folder):
            for _ in range(steps):
                step()
        wall = (time.perf_counter() - t0) / steps
        (path,) = glob.glob(os.path.join(folder, "**", "*.xplane.pb"), recursive=True)
        data = jax.profiler.ProfileData.from_file(path)
        by_op: collections.Counter = collections.Counter()
        for plane in data.planes:
            for line in plane.lines:
                if not line.name.startswith(("tf_XLAEigen", "tf_XLAPjRtCpuClient")):
                    continue
                for event in line.events:
                    if not event.name.startswith("ThunkExecutor"):
                        by_op[event.name] += event.duration_ns
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    opcode, calls, body, shapes = hlo_index(compiled_text)
    per_class = collections.Counter()
    for name, ns in by_op.items():
        per_class[op_class(name, opcode, calls, body)] += ns
    total = sum(per_class.values()) or 1
    return {"shape": shape, "dtype": dtype, "scan_layers": scan_layers, "batch": batch, "seq": seq, "steps": steps,
            "wall_ms_per_step": 1e3 * wall, "op_ms_per_step": 1e-6 * total / steps,
            "classes": {c: {"ms_per_step": 1e-6 * per_class[c] / steps,
                            "share": per_class[c] / total} for c in CLASSES},
            "top_ops": [{"op": n, "class": op_class(n, opcode, calls, body), "shape": shapes.get(n, ""),
                         "ms_per_step": 1e-6 * ns / steps}
                        for n, ns in by_op.most_common(int(os.environ.get("PROFILE_TOP", "15")))]}


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--shape", default="a", choices=sorted(SHAPES))
    p.add_argument("--steps", type=int, default=5)
    p.add_argument("--dtype", default="float32", choices=("float32", "bfloat16"))
    p.add_argument("--unrolled", action="store_true", help="unrolled layers (scan_layers=False)")
    p.add_argument("--out", default=None)
    args = p.parse_args()
    res = profile(args.shape, args.steps, args.dtype, scan_layers=not args.unrolled)
    print(f"shape {args.shape} ({res['batch']} x {res['seq']} tokens, {args.dtype}): "
          f"{res['wall_ms_per_step']:.1f} ms per step wall, {res['op_ms_per_step']:.1f} ms of ops "
          "summed over the CPU threads")
    print("| op class | ms per step (all threads) | share |\n|---|---:|---:|")
    for c, v in res["classes"].items():
        print(f"| {c} | {v['ms_per_step']:.1f} | {100 * v['share']:.1f}% |")
    print("\n| op | result | class | ms per step |\n|---|---|---|---:|")
    for row in res["top_ops"]:
        print(f"| {row['op']} | {row['shape']} | {row['class']} | {row['ms_per_step']:.1f} |")
    name = f"profile_step_{args.shape}_{args.dtype}" + ("_unrolled" if args.unrolled else "")
    path = write(name, {"machine": machine(), **res}, args.out)
    print(f"\nwrote {path}")


if __name__ == "__main__":
    main()
