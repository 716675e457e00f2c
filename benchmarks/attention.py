"""Attention kernel benchmark: our Pallas flash attention vs cuDNN vs XLA.

Forward and forward+backward TFLOP/s at sequence 512..8192, head_dim 128,
batch x heads filling the chip, all implementations in the same run. Before
any timing, every implementation is checked against the float32 plain-jnp
reference (values; gradients for ours). Timing: warm-up runs, then the median
of `--iters` runs, each synchronised with `jax.block_until_ready`.

FLOPs (printed with the results): forward = 4 * batch * heads * q_len * kv_len
* head_dim (two matmuls), halved when causal; backward = 2.5 x forward (five
matmuls); forward+backward = 3.5 x forward. Our backward recomputes QK^T and
dO V^T in both of its kernels (7 matmuls), so its hardware FLOPs are higher
than the counted ones: the counted FLOPs are the same for every implementation.

Imports only jax and numpy (plus this repository's kernel), so it runs on the
GPU image as is:

    python benchmarks/attention.py                           # GPU: full table
    python benchmarks/attention.py --seqs=2048 --sweep       # GPU: tile sweep
    python benchmarks/attention.py --smoke                   # CPU: interpret mode, tiny shapes

Also checks the compiled kernel on GQA, packed documents, ragged lengths and
bf16 (values and gradients) before timing. Writes JSON to $OUT/attention.json
(attention_sweep.json for --sweep) when $OUT is set, else to
benchmarks/results/attention[_sweep]_<device>_<date>.json; prints a table last.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import functools
import itertools
import json
import os
import pathlib
import platform
import statistics
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np

ROOT = pathlib.Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # run from a checkout without `pip install -e .`
    sys.path.insert(0, str(ROOT))

from llama_jax.kernels.flash_attention import (  # noqa: E402
    BlockSizes,
    attention_reference,
    flash_attention,
)
from llama_jax.model.attention import xla_attention  # noqa: E402

IMPLS = ("pallas", "cudnn", "xla")
FLOP_NOTE = ("forward FLOPs = 4*batch*heads*q_len*kv_len*head_dim (x0.5 if causal); "
             "backward = 2.5 x forward; forward+backward = 3.5 x forward")


def attention_flops(batch: int, heads: int, seq: int, head_dim: int, causal: bool) -> float:
    """Counted forward FLOPs (see the module docstring)."""
    return 4.0 * batch * heads * seq * seq * head_dim * (0.5 if causal else 1.0)


def make_fn(impl: str, *, causal: bool, blocks: BlockSizes | None, interpret: bool):
    """(q, k, v) -> out for one implementation."""
    if impl == "pallas":
        return functools.partial(flash_attention, causal=causal, block_sizes=blocks,
                                 interpret=interpret)
    if impl == "cudnn":
        return functools.partial(jax.nn.dot_product_attention, is_causal=causal,
                                 implementation="cudnn")
    if impl == "xla":
        return lambda q, k, v: xla_attention(q, k, v, causal=causal)
    raise ValueError(f"unknown implementation {impl!r}; choose from {IMPLS}")


def fwd_bwd(fn):
    """(q, k, v, do) -> (dq, dk, dv): one forward and one backward pass."""
    def run(q, k, v, do):
        return with_grads(fn)(q, k, v, do)[1]
    return run


def with_grads(fn):
    """(q, k, v, do) -> (out, (dq, dk, dv)) with a single forward pass."""
    def run(q, k, v, do):
        out, vjp = jax.vjp(fn, q, k, v)
        return out, vjp(do.astype(out.dtype))
    return run


def inputs(seed, batch, seq, heads, kv_heads, head_dim, dtype):
    """Fresh random (q, k, v, do) of the given shapes."""
    ks = jax.random.split(jax.random.key(seed), 4)
    shape_q, shape_kv = (batch, seq, heads, head_dim), (batch, seq, kv_heads, head_dim)
    return (jax.random.normal(ks[0], shape_q, jnp.float32).astype(dtype),
            jax.random.normal(ks[1], shape_kv, jnp.float32).astype(dtype),
            jax.random.normal(ks[2], shape_kv, jnp.float32).astype(dtype),
            jax.random.normal(ks[3], shape_q, jnp.float32).astype(dtype))


def rel_err(a, b) -> float:
    """max |a - b| / max |b|."""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(np.abs(a - b).max() / max(np.abs(b).max(), 1e-30))


def check(impl: str, args, *, seq: int, causal: bool, blocks, interpret: bool) -> dict:
    """Relative errors against the float32 reference on fresh random inputs.

    float32 for ours and XLA (tolerance 1e-4 on GPU, where matmuls may use
    TF32 inside XLA); cuDNN has no float32 path, so it is checked in bfloat16
    against the float32 reference (tolerance 2e-2).
    """
    heads, kv_heads, head_dim = args.heads, args.kv_heads, args.head_dim
    dtype = jnp.bfloat16 if impl == "cudnn" else jnp.float32
    q, k, v, do = inputs(1, 1, seq, heads, kv_heads, head_dim, dtype)
    f32 = [x.astype(jnp.float32) for x in (q, k, v)]
    ref = jax.jit(functools.partial(attention_reference, causal=causal))(*f32)
    fn = make_fn(impl, causal=causal, blocks=blocks, interpret=interpret)
    with jax.default_matmul_precision("highest"):
        out = jax.jit(fn)(q, k, v)
        result = {"dtype": jnp.dtype(dtype).name, "out_rel_err": rel_err(out, ref)}
        if impl == "pallas" and seq <= args.grad_check_max_seq:
            grads = jax.jit(fwd_bwd(fn))(q, k, v, do)
            ref_grads = jax.jit(fwd_bwd(functools.partial(attention_reference, causal=causal)))(
                *f32, do)
            result["grad_rel_err"] = max(rel_err(g, r) for g, r in zip(grads, ref_grads,
                                                                        strict=True))
    tol = 2e-2 if dtype == jnp.bfloat16 else 1e-4
    result["ok"] = max(result["out_rel_err"], result.get("grad_rel_err", 0.0)) < tol
    return result


# (seq, heads, kv_heads, head_dim, causal, number of segments, dtype): GQA,
# packed documents, ragged lengths and bf16 through the compiled kernel.
FEATURE_CASES = [
    (256, 8, 2, 128, True, 4, "float32"),
    (300, 4, 4, 64, True, 0, "float32"),
    (300, 8, 1, 128, False, 3, "float32"),
    (512, 8, 2, 128, True, 4, "bfloat16"),
    (512, 8, 2, 128, True, 0, "bfloat16"),
]


def feature_checks(*, smoke: bool, interpret: bool) -> list[dict]:
    """Our kernel vs the float32 reference on the features the timing shapes
    do not exercise: values and dq/dk/dv, tolerance 1e-4 (f32) / 2e-2 (bf16)."""
    results = []
    for seq, heads, kv_heads, head_dim, causal, nseg, dtype in FEATURE_CASES:
        if smoke:
            seq, head_dim = seq // 8 + 3, 32
        q, k, v, do = inputs(2, 2, seq, heads, kv_heads, head_dim, jnp.dtype(dtype))
        seg = None
        if nseg:
            seg = jnp.sort(jax.random.randint(jax.random.key(3), (2, seq), 0, nseg), axis=1)
        blocks = BlockSizes(*(16,) * 6) if smoke else None
        fn = functools.partial(flash_attention, causal=causal, segment_ids=seg,
                               block_sizes=blocks, interpret=interpret)
        ref = functools.partial(attention_reference, causal=causal, segment_ids=seg)
        f32 = [x.astype(jnp.float32) for x in (q, k, v)]
        with jax.default_matmul_precision("highest"):
            out, grads = jax.jit(with_grads(fn))(q, k, v, do)
            r_out, r_grads = jax.jit(with_grads(ref))(*f32, do)
        err = max([rel_err(out, r_out)] + [rel_err(g, r) for g, r in zip(grads, r_grads,
                                                                       strict=True)])
        tol = 2e-2 if dtype == "bfloat16" else 1e-4
        results.append({"seq": seq, "heads": heads, "kv_heads": kv_heads, "head_dim": head_dim,
                        "causal": causal, "segments": nseg, "dtype": dtype, "max_rel_err": err,
                        "ok": err < tol})
    return results


def time_call(fn, args, *, warmup: int, iters: int) -> float:
    """Median seconds of `fn(*args)` after `warmup` calls (compile included there)."""
    for _ in range(warmup):
        jax.block_until_ready(fn(*args))
    times = []
    for _ in range(iters):
        t0 = time.perf_counter()
        jax.block_until_ready(fn(*args))
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def bench_one(impl: str, args, *, seq: int, causal: bool, blocks, interpret: bool) -> dict:
    """Check, then time forward and forward+backward of one implementation."""
    batch = max(1, args.tokens // seq)
    row = {"impl": impl, "seq": seq, "batch": batch, "heads": args.heads,
           "kv_heads": args.kv_heads, "head_dim": args.head_dim, "causal": causal,
           "dtype": args.dtype}
    if blocks is not None:
        row["blocks"] = dataclasses.asdict(blocks)
    try:
        row["check"] = check(impl, args, seq=min(seq, args.check_max_seq), causal=causal,
                             blocks=blocks, interpret=interpret)
        if not row["check"]["ok"]:
            row["error"] = f"correctness check failed: {row['check']}"
            return row
        q, k, v, do = inputs(0, batch, seq, args.heads, args.kv_heads, args.head_dim,
                             jnp.dtype(args.dtype))
        fn = make_fn(impl, causal=causal, blocks=blocks, interpret=interpret)
        flops = attention_flops(batch, args.heads, seq, args.head_dim, causal)
        t_fwd = time_call(jax.jit(fn), (q, k, v), warmup=args.warmup, iters=args.iters)
        t_all = time_call(jax.jit(fwd_bwd(fn)), (q, k, v, do), warmup=args.warmup,
                          iters=args.iters)
        row.update(fwd_ms=t_fwd * 1e3, fwd_bwd_ms=t_all * 1e3, fwd_tflops=flops / t_fwd / 1e12,
                   fwd_bwd_tflops=3.5 * flops / t_all / 1e12,
                   bwd_share=max(0.0, (t_all - t_fwd) / t_all))
    except Exception as e:  # noqa: BLE001 - OOM or an unsupported case: record it, go on
        row["error"] = f"{type(e).__name__}: {str(e).splitlines()[0][:200]}"
    return row


def sweep_candidates(args) -> list[BlockSizes]:
    """Forward tiles x backward tiles; "QxK" is the dK/dV tile (q by k) and
    the dQ kernel uses the mirrored tile (K by Q), as in the Triton tutorial."""
    out = []
    for bq, bk, warps, stages, bwd in itertools.product(
            args.block_q, args.block_k, args.num_warps, args.num_stages, args.bwd_blocks):
        a, b = (int(x) for x in bwd.split("x"))
        out.append(BlockSizes(block_q=bq, block_k=bk, num_warps=warps, num_stages=stages,
                              block_q_dkv=a, block_k_dkv=b, block_q_dq=b, block_k_dq=a))
    return out


def tiles(b: dict) -> str:
    """A one-line description of a `BlockSizes` dict."""
    return (f"fwd {b['block_q']}x{b['block_k']} w{b['num_warps']} s{b['num_stages']} "
            f"dkv {b['block_q_dkv']}x{b['block_k_dkv']} dq {b['block_q_dq']}x{b['block_k_dq']}")


def table(rows: list[dict], tiled: bool = False) -> str:
    """The printed results table, with ratios to cuDNN of the same run."""
    head = (f"{'impl':<7} {'seq':>5} {'batch':>5} {'fwd ms':>8} {'fwd TF/s':>9} "
            f"{'f+b ms':>8} {'f+b TF/s':>9} {'bwd %':>6} {'/cuDNN fwd':>10} {'/cuDNN f+b':>10} "
            f"{'err':>8}")
    lines = [head, "-" * len(head)]
    cudnn = {r["seq"]: r for r in rows if r["impl"] == "cudnn" and "error" not in r}

    def ratio(r, key):
        base = cudnn.get(r["seq"])
        return f"{r[key] / base[key]:.2f}x" if base else "n/a"

    for r in rows:
        if "error" in r:
            lines.append(f"{r['impl']:<7} {r['seq']:>5} {r['batch']:>5}  {r['error'][:90]}")
            continue
        lines.append(
            f"{r['impl']:<7} {r['seq']:>5} {r['batch']:>5} {r['fwd_ms']:>8.3f} "
            f"{r['fwd_tflops']:>9.1f} {r['fwd_bwd_ms']:>8.3f} {r['fwd_bwd_tflops']:>9.1f} "
            f"{100 * r['bwd_share']:>5.0f}% {ratio(r, 'fwd_tflops'):>10} "
            f"{ratio(r, 'fwd_bwd_tflops'):>10} {r['check']['out_rel_err']:>8.1e}"
            + (f"  {tiles(r['blocks'])}" if tiled else ""))
    return "\n".join(lines)


def out_path(device: str, stem: str) -> pathlib.Path:
    """$OUT/<stem>.json, else benchmarks/results/<stem>_<device>_<date>.json."""
    if os.environ.get("OUT"):
        return pathlib.Path(os.environ["OUT"]) / f"{stem}.json"
    name = "".join(c if c.isalnum() else "_" for c in device).strip("_").lower()
    day = datetime.date.today().isoformat()
    return ROOT / "benchmarks" / "results" / f"{stem}_{name}_{day}.json"


def parse_args(argv=None):
    """Command-line flags; --smoke shrinks everything for a CPU run."""
    ints = lambda s: [int(x) for x in s.split(",") if x]  # noqa: E731
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--smoke", action="store_true",
                   help="CPU proof run: interpret mode, tiny shapes, few iterations")
    p.add_argument("--impls", default=",".join(IMPLS))
    p.add_argument("--seqs", type=ints, default=[512, 1024, 2048, 4096, 8192])
    p.add_argument("--tokens", type=int, default=32768,
                   help="batch = tokens // seq, so every sequence length does the same work")
    p.add_argument("--heads", type=int, default=16)
    p.add_argument("--kv_heads", type=int, default=16)
    p.add_argument("--head_dim", type=int, default=128)
    p.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "float16", "float32"])
    p.add_argument("--causal", default="true", choices=["true", "false", "both"])
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--iters", type=int, default=20)
    p.add_argument("--check_max_seq", type=int, default=2048,
                   help="correctness checks use min(seq, this) (the reference is dense)")
    p.add_argument("--grad_check_max_seq", type=int, default=1024)
    p.add_argument("--sweep", action="store_true", help="tile sweep of our kernel only")
    p.add_argument("--block_q", type=ints, default=[64, 128])
    p.add_argument("--block_k", type=ints, default=[32, 64, 128])
    p.add_argument("--num_warps", type=ints, default=[4, 8])
    p.add_argument("--num_stages", type=ints, default=[2, 3])
    p.add_argument("--bwd_blocks", type=lambda s: s.split(","), default=["32x64", "64x64"],
                   help="dK/dV tiles QxK (dQ uses KxQ)")
    args = p.parse_args(argv)
    if args.smoke:
        args.seqs = [s for s in args.seqs if s <= 64] or [40, 64]
        args.tokens, args.heads, args.kv_heads, args.head_dim = 128, 4, 2, 32
        args.warmup, args.iters, args.dtype = 1, 2, "float32"
        args.block_q, args.block_k, args.num_warps, args.num_stages = [16, 32], [16], [4], [2]
        args.bwd_blocks = ["16x32"]
    return args


def main(argv=None) -> list[dict]:
    """Run the benchmark (or the tile sweep), write JSON, print the table."""
    args = parse_args(argv)
    device = jax.devices()[0]
    on_gpu = device.platform == "gpu"
    interpret = not on_gpu
    if not on_gpu and not args.smoke:
        sys.exit("no GPU: run with --smoke for the CPU interpret-mode proof run")
    impls = [i for i in args.impls.split(",") if i]
    if args.sweep:
        impls = ["pallas"]
    causals = {"true": [True], "false": [False], "both": [True, False]}[args.causal]
    features = [] if args.sweep else feature_checks(smoke=args.smoke, interpret=interpret)
    default_blocks = BlockSizes(*(16,) * 6) if args.smoke else BlockSizes()
    rows = []
    for causal, seq in itertools.product(causals, args.seqs):
        if args.sweep:
            for blocks in sweep_candidates(args):
                rows.append(bench_one("pallas", args, seq=seq, causal=causal, blocks=blocks,
                                      interpret=interpret))
            continue
        for impl in impls:
            if impl == "cudnn" and not on_gpu:
                rows.append({"impl": impl, "seq": seq, "batch": max(1, args.tokens // seq),
                             "causal": causal, "error": "skipped: cuDNN needs a GPU"})
                continue
            rows.append(bench_one(impl, args, seq=seq, causal=causal,
                                  blocks=default_blocks if impl == "pallas" else None,
                                  interpret=interpret))
    report = {
        "device": device.device_kind, "platform": device.platform,
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "jax": jax.__version__, "python": platform.python_version(),
        "smoke": args.smoke, "interpret": interpret, "flops": FLOP_NOTE,
        "args": vars(args), "feature_checks": features, "rows": rows,
    }
    path = out_path(device.device_kind, "attention_sweep" if args.sweep else "attention")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(report, indent=1, default=str))
    print(f"device: {device.device_kind}  jax {jax.__version__}  dtype {args.dtype}  "
          f"{'(interpret mode: timings meaningless)' if interpret else ''}")
    print(f"FLOPs: {FLOP_NOTE}")
    if args.sweep:
        best = max((r for r in rows if "error" not in r), default=None,
                   key=lambda r: r["fwd_bwd_tflops"])
        if best:
            print(f"best tiles (fwd+bwd): {best['blocks']}")
    for f in features:
        print(f"feature check {'ok  ' if f['ok'] else 'FAIL'} seq={f['seq']} heads={f['heads']}/"
              f"{f['kv_heads']} d={f['head_dim']} causal={f['causal']} segments={f['segments']} "
              f"{f['dtype']}: max rel err {f['max_rel_err']:.1e}")
    print(f"json: {path}")
    for causal in causals:
        print(f"\ncausal={causal}")
        print(table([r for r in rows if r.get("causal") == causal], tiled=args.sweep))
    return rows


if __name__ == "__main__":
    main()
