"""GPU suite driver: train-step MFU and greedy decode, then the suite's table.

Run by ``bash benchmarks/gpu_suite.sh`` after ``benchmarks/attention.py``
(whose ``$OUT/attention.json`` holds the kernel checks (i) and the attention
TFLOP/s (ii)); this file measures

(iii) train-step tokens/s and MFU of a ~1B model and a 7B-shaped model with
      fewer layers, per attention implementation (xla, cudnn, pallas) and
      remat policy (none, save_linear, full): `llama_jax.train.step.make_train_step`
      with plain optax AdamW (0.9, 0.95, wd 0.1) + global-norm clip 1.0 on
      random tokens, bf16 compute over f32 master weights. FLOPs per token are
      `llama_jax.train.metrics.flops_per_token` (``FLOP_FORMULA``, causal-aware);
      MFU is against the device's dense bf16 peak (`metrics.PEAK_FLOPS`).
(iv)  greedy decode tokens/s of `llama_jax.infer.engine.Generator` at batch 1
      and 64 (bf16 weights), against the HBM bound batch x bandwidth / weight
      bytes (`HBM_BANDWIDTH`; KV-cache reads left out, so the bound is loose).

Correctness comes before timing: every train configuration's first-step loss
must match the xla / no-remat loss of the same init and batch, and every
decoded token must be an argmax (within tolerance) of a full forward pass
over the generated sequence. Timing: warm-up, then the median of many runs,
each synchronised with `jax.block_until_ready`. A time budget (the suite's
8 minutes) skips what is left, with a note, rather than overrun.

Imports only jax, flax, optax, numpy and llama_jax modules that need nothing
else (no grain, ml_collections, tensorflow-datasets, array_record,
tensorboardX): the GPU image's packages. ``--smoke`` runs the same code on CPU
with tiny shapes (Pallas in interpret mode; cuDNN skipped with a note).
"""

from __future__ import annotations

import argparse
import datetime
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
import optax

ROOT = pathlib.Path(__file__).resolve().parents[1]
for path in (ROOT, ROOT / "benchmarks"):  # run from a checkout without `pip install -e .`
    if str(path) not in sys.path:
        sys.path.insert(0, str(path))

import attention as attention_bench  # noqa: E402  (benchmarks/attention.py)

from llama_jax import sharding as shd  # noqa: E402
from llama_jax.infer.engine import Generator  # noqa: E402
from llama_jax.model import Llama, LlamaConfig, count_params, init_params  # noqa: E402
from llama_jax.train import metrics  # noqa: E402
from llama_jax.train import step as st  # noqa: E402

SECTIONS = ("environment", "kernel_checks", "attention", "train", "decode")
IMPLS = ("xla", "cudnn", "pallas")
REMATS = ("none", "save_linear", "full")
FLOP_FORMULA = ("flops_per_token = 6*N + 6*L*T*d (N = parameters in matmuls: all but the "
                "embedding table; attention's QK^T and PV at 12*L*T*d halved for causal); "
                "MFU = tokens/s * flops_per_token / peak bf16 FLOP/s")

# HBM bandwidth per device in bytes/s, matched by substring of `device_kind`,
# first match wins. NVIDIA data sheets: H200 4.8 TB/s; H100 SXM 3.35 TB/s,
# H100 PCIe 2.0 TB/s; A100 80GB SXM 2.039 TB/s (PCIe 1.935), A100 40GB 1.555 TB/s.
HBM_BANDWIDTH: tuple[tuple[str, float], ...] = (
    ("H200", 4.8e12),
    ("H100 PCIe", 2.0e12),
    ("H100", 3.35e12),
    ("A100-SXM4-40GB", 1.555e12),
    ("A100-PCIE-40GB", 1.555e12),
    ("A100", 2.0e12),
)


def hbm_bandwidth(device_kind: str) -> float | None:
    """HBM bytes/s of one device of `device_kind`, or None if unlisted (CPU)."""
    return metrics.lookup_device_kind(HBM_BANDWIDTH, device_kind)


def model_shapes(smoke: bool) -> dict[str, LlamaConfig]:
    """The measured shapes: a ~1B LLaMA and 7B's layer shape with 4 of its 32 layers."""
    if smoke:
        return {"1b": LlamaConfig(dim=64, n_layers=2, n_heads=4, vocab_size=256, multiple_of=32,
                                  max_seq_len=64),
                "7b_4l": LlamaConfig(dim=64, n_layers=1, n_heads=2, vocab_size=256,
                                     multiple_of=32, max_seq_len=64)}
    return {"1b": LlamaConfig(dim=2048, n_layers=16, n_heads=16, vocab_size=32000,
                              max_seq_len=2048),
            "7b_4l": LlamaConfig(dim=4096, n_layers=4, n_heads=32, vocab_size=32000,
                                 max_seq_len=2048)}


def decode_shapes(smoke: bool) -> dict[str, LlamaConfig]:
    """Decode shapes: the ~1B model and the full LLaMA-7B (bf16 weights)."""
    shapes = model_shapes(smoke)
    big = shapes["7b_4l"] if smoke else shapes["7b_4l"].replace(n_layers=32)
    return {"1b": shapes["1b"], "7b" if not smoke else "7b_4l": big}


class Budget:
    """Seconds left of the suite's wall-clock budget."""

    def __init__(self, start: float, seconds: float):
        self.deadline = start + seconds

    def left(self) -> float:
        return self.deadline - time.time()


def train_grid(grid: str) -> list[tuple[str, str]]:
    """(impl, remat) pairs: 'full' = every pair; 'cross' = each impl at
    save_linear and each remat policy at pallas (5 instead of 9); 'cover' =
    each impl and each policy at least once (4; the smoke run's)."""
    if grid == "full":
        return list(itertools.product(IMPLS, REMATS))
    if grid == "cover":
        return [("xla", "save_linear"), ("cudnn", "save_linear"), ("pallas", "none"),
                ("pallas", "full")]
    pairs = [(impl, "save_linear") for impl in IMPLS]
    return pairs + [("pallas", r) for r in REMATS if r != "save_linear"]


def random_batch(rng: np.random.Generator, batch: int, seq: int, vocab: int) -> dict:
    """Random next-token data: inputs and the following tokens as targets."""
    tokens = rng.integers(0, vocab, size=(batch, seq + 1), dtype=np.int32)
    return {"inputs": tokens[:, :-1], "targets": tokens[:, 1:]}


def timed_steps(step, state, batch, *, warmup: int, iters: int):
    """(state, median seconds per step) of a donating `step` after `warmup` steps."""
    for _ in range(warmup):
        state, m = step(state, batch)
        jax.block_until_ready(m)
    times = []
    for _ in range(iters):
        t0 = time.perf_counter()
        state, m = step(state, batch)
        jax.block_until_ready((state, m))
        times.append(time.perf_counter() - t0)
    return state, statistics.median(times)


def bench_train(name: str, base: LlamaConfig, args, mesh, budget: Budget, on_gpu: bool) -> list:
    """(iii) for one model shape: check the first-step loss, then time each config."""
    rules = shd.DEFAULT_RULES
    kind = jax.devices()[0].device_kind
    optimizer = optax.chain(optax.clip_by_global_norm(1.0),
                            optax.adamw(3e-4, b1=0.9, b2=0.95, weight_decay=0.1))
    base = base.replace(dtype="bfloat16", param_dtype="float32")
    init, shardings = st.make_init(base.with_run_options(attention_impl="xla"), optimizer,
                                   mesh, rules)
    host = random_batch(np.random.default_rng(0), args.batch, args.seq, base.vocab_size)
    batch = st.global_batch(mesh, host, rules)
    fpt = metrics.flops_per_token(base, args.seq)
    peak = metrics.peak_flops(kind) if on_gpu else None
    rows, ref_loss, ref_name = [], None, None
    # The first configuration that runs (xla, listed first) gives the reference loss.
    for impl, remat in train_grid(args.grid):
        row = {"model": name, "impl": impl, "remat": remat, "batch": args.batch, "seq": args.seq,
               "params": count_params(base), "flops_per_token": fpt}
        rows.append(row)
        if impl == "cudnn" and not on_gpu:
            row["error"] = "skipped: cuDNN needs a GPU"
            continue
        if budget.left() < args.reserve_s:
            row["error"] = "skipped: suite time budget spent"
            continue
        cfg = base.with_run_options(attention_impl=impl, remat_policy=remat)
        try:
            step = st.make_train_step(cfg, optimizer, mesh, rules, shardings)
            state = init(jax.random.key(0))
            t0 = time.perf_counter()
            state, m = step(state, batch)  # compile + the correctness check
            loss = float(m["loss"])
            row["compile_and_first_step_s"] = time.perf_counter() - t0
            if ref_loss is None:
                ref_loss, ref_name = loss, f"{impl}/{remat}"
            row["first_loss"], row["ref_loss"], row["ref"] = loss, ref_loss, ref_name
            rel = abs(loss - ref_loss) / abs(ref_loss)
            # bf16 compute: implementations differ in rounding, not in the loss.
            row["check"] = {"loss_rel_err": rel, "ok": bool(np.isfinite(loss) and rel < 2e-2)}
            if not row["check"]["ok"]:
                row["error"] = f"correctness check failed: {row['check']}"
                continue
            state, sec = timed_steps(step, state, batch, warmup=args.warmup, iters=args.iters)
            del state
            tps = args.batch * args.seq / sec
            row.update(step_ms=sec * 1e3, tokens_per_s=tps,
                       mfu=metrics.mfu(tps, fpt, 1, peak),
                       model_tflops=tps * fpt / 1e12)
        except Exception as e:  # noqa: BLE001 - OOM or an unsupported case: record it, go on
            row["error"] = f"{type(e).__name__}: {str(e).splitlines()[0][:200]}"
    return rows


def greedy_check(config: LlamaConfig, params, prompt: list[int], out: list[int]) -> dict:
    """Every generated token vs the argmax of a full (cache-free) forward pass.

    A token passes when its logit is within `tol` of the row's maximum, `tol`
    a fraction of the logits' range (1e-4 in float32, 2e-2 in bfloat16), so
    near-ties of a random model cannot fail the check but a wrong cache does.
    """
    seq = jnp.asarray([prompt + out[:-1]], jnp.int32)  # [1, len]
    logits = Llama(config).apply({"params": params}, seq)[0, len(prompt) - 1:]  # [new, vocab]
    logits = np.asarray(logits, np.float32)
    chosen = logits[np.arange(len(out)), out]
    gap = logits.max(-1) - chosen
    spread = logits.max(-1) - logits.min(-1)
    tol = (1e-4 if config.dtype == "float32" else 2e-2) * spread
    exact = float(np.mean(np.argmax(logits, -1) == np.asarray(out)))
    return {"argmax_match": exact, "max_gap_over_spread": float(np.max(gap / spread)),
            "ok": bool(np.all(gap <= tol))}


def bench_decode(name: str, config: LlamaConfig, args, mesh, budget: Budget,
                 device_kind: str) -> list:
    """(iv) for one model: batch 1 and 64 greedy tokens/s vs the HBM bound."""
    dtype = "bfloat16" if args.decode_dtype == "bfloat16" else "float32"
    config = config.replace(dtype=dtype, param_dtype=dtype,
                            max_seq_len=args.prompt_len + args.new_tokens)
    rows = []
    try:
        params = init_params(config.with_run_options(attention_impl="xla"), jax.random.key(1))
    except Exception as e:  # noqa: BLE001
        return [{"model": name, "error": f"{type(e).__name__}: {str(e).splitlines()[0][:200]}"}]
    weight_bytes = sum(x.size * x.dtype.itemsize for x in jax.tree.leaves(params))
    bw = hbm_bandwidth(device_kind)
    rng = np.random.default_rng(2)
    for batch in args.decode_batches:
        row = {"model": name, "batch": batch, "prompt_len": args.prompt_len,
               "new_tokens": args.new_tokens, "dtype": dtype, "weight_bytes": int(weight_bytes),
               "hbm_bytes_per_s": bw}
        rows.append(row)
        if budget.left() < 10:
            row["error"] = "skipped: suite time budget spent"
            continue
        try:
            gen = Generator(config, params, mesh=mesh, batch_size=batch,
                            prompt_buckets=(args.prompt_len,), chunk_size=args.new_tokens)
            prompts = rng.integers(0, config.vocab_size, (batch, args.prompt_len)).tolist()

            def run(gen=gen, prompts=prompts):
                return gen.generate_tokens(prompts, max_new_tokens=args.new_tokens,
                                           progress=False)

            out = run()  # compile
            row["check"] = greedy_check(config, params, prompts[0], out[0][0])
            if not row["check"]["ok"]:
                row["error"] = f"correctness check failed: {row['check']}"
                continue
            sec = attention_bench.time_call(run, (), warmup=1, iters=args.decode_iters)
            row.update(seconds=sec, tokens_per_s=batch * args.new_tokens / sec)
            if bw:
                row["bound_tokens_per_s"] = batch * bw / weight_bytes
                row["fraction_of_bound"] = row["tokens_per_s"] / row["bound_tokens_per_s"]
        except Exception as e:  # noqa: BLE001
            row["error"] = f"{type(e).__name__}: {str(e).splitlines()[0][:200]}"
    return rows


def attention_sections(out_dir: pathlib.Path, rc: int | None) -> tuple[dict, dict]:
    """(kernel_checks, attention) from benchmarks/attention.py's JSON."""
    path = out_dir / "attention.json"
    if not path.exists():
        err = {"error": f"{path} missing (benchmarks/attention.py exit status {rc})"}
        return err, err
    rep = json.loads(path.read_text())
    checks = rep["feature_checks"]
    kernel = {"ok": bool(checks) and all(c["ok"] for c in checks), "cases": checks,
              "interpret": rep["interpret"], "source": str(path)}
    return kernel, {"flops": rep["flops"], "rows": rep["rows"], "source": str(path)}


def fmt(x, spec: str, missing: str = "-") -> str:
    """`x` formatted with `spec` (a trailing '%' is appended), or `missing` when None."""
    if x is None:
        return missing
    return format(x, spec[:-1]) + "%" if spec.endswith("%") else format(x, spec)


def summary(report: dict) -> str:
    """The short table printed last."""
    lines = [f"GPU suite: {report['environment']['device']} ({report['environment']['platform']}),"
             f" jax {report['environment']['jax']}, {report['environment']['date']}"
             + ("  [smoke: timings meaningless]" if report["environment"]["smoke"] else "")]
    k = report["kernel_checks"]
    lines.append(f"(i) Pallas kernel vs reference: "
                 f"{'ok' if k.get('ok') else 'FAIL'} ({len(k.get('cases', []))} cases)"
                 + (f" {k['error']}" if "error" in k else ""))
    lines.append("(ii) attention: impl seq causal fwd TF/s f+b TF/s f+b / cuDNN")
    rows = report["attention"].get("rows", [])
    cudnn = {(r["seq"], r["causal"]): r for r in rows if r["impl"] == "cudnn" and "error" not in r}
    for r in rows:
        base = cudnn.get((r["seq"], r["causal"]))
        lines.append(f"     {r['impl']:<7} {r['seq']:>6} {r['causal']!s:<6} " + (
            f"{r['error'][:60]}" if "error" in r else
            f"{r['fwd_tflops']:>8.1f} {r['fwd_bwd_tflops']:>8.1f} " +
            fmt(base and r["fwd_bwd_tflops"] / base["fwd_bwd_tflops"], ">8.2f")))
    lines.append(f"(iii) train step ({FLOP_FORMULA})")
    lines.append(f"     {'model':<6} {'impl':<7} {'remat':<12} {'tok/s':>10} {'MFU':>6} {'ms':>8}")
    for r in report["train"]:
        head = f"     {r['model']:<6} {r['impl']:<7} {r['remat']:<12}"
        lines.append(head + (f" {r['error'][:70]}" if "error" in r else
                             f" {r['tokens_per_s']:>10.0f} "
                             f"{fmt(r['mfu'] and 100 * r['mfu'], '>5.1f%', 'n/a'):>6} {r['step_ms']:>8.1f}"))
    lines.append("(iv) greedy decode: model batch tok/s bound tok/s fraction")
    for r in report["decode"]:
        head = f"     {r['model']:<6} {r.get('batch', '-'):>5}"
        lines.append(head + (f" {r['error'][:70]}" if "error" in r else
                             f" {r['tokens_per_s']:>10.1f} "
                             f"{fmt(r.get('bound_tokens_per_s'), '>10.1f')} "
                             f"{fmt(r.get('fraction_of_bound'), '>6.2f')}"))
    return "\n".join(lines)


def failures(report: dict) -> list[str]:
    """Failed checks and errors of our code (the suite's exit status).

    Skips are not failures, nor are errors of the baselines (XLA's dense
    attention runs out of memory at 16k, say): those are recorded results.
    """
    bad = [] if report["kernel_checks"].get("ok") else ["kernel checks"]
    rows = report["attention"].get("rows", []) + report["train"] + report["decode"]
    bad += [f"{r.get('model', '')} {r.get('impl', '')}: {r['error']}" for r in rows
            if "error" in r and not r["error"].startswith("skipped")
            and (r.get("impl", "pallas") == "pallas" or "correctness" in r["error"])]
    return bad


def parse_args(argv=None):
    """Command-line flags; --smoke shrinks everything for a CPU run."""
    ints = lambda s: [int(x) for x in s.split(",") if x]  # noqa: E731
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--smoke", action="store_true", help="CPU run: tiny shapes, interpret mode")
    p.add_argument("--start_time", type=float, default=None, help="suite start (epoch s)")
    p.add_argument("--budget_s", type=float, default=420.0, help="suite wall-clock budget")
    p.add_argument("--reserve_s", type=float, default=90.0,
                   help="seconds kept for decoding when starting a train configuration")
    p.add_argument("--attention_rc", type=int, default=None)
    p.add_argument("--grid", default=None, choices=["cross", "full", "cover"],
                   help="train configurations (default: cross; smoke: cover)")
    p.add_argument("--models", default=None,
                   help="models to train (default: 1b,7b_4l; smoke: 1b, the same code)")
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--seq", type=int, default=2048)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--iters", type=int, default=10)
    p.add_argument("--decode_batches", type=ints, default=[1, 64])
    p.add_argument("--prompt_len", type=int, default=64)
    p.add_argument("--new_tokens", type=int, default=128)
    p.add_argument("--decode_iters", type=int, default=3)
    p.add_argument("--decode_dtype", default="bfloat16", choices=["bfloat16", "float32"])
    args = p.parse_args(argv)
    if args.smoke:
        args.batch, args.seq, args.warmup, args.iters = 2, 32, 1, 2
        args.decode_batches, args.prompt_len, args.new_tokens = [1, 4], 8, 6
        args.decode_iters, args.decode_dtype, args.reserve_s = 1, "float32", 0.0
    args.grid = args.grid or ("cover" if args.smoke else "cross")
    args.models = args.models or ("1b" if args.smoke else "1b,7b_4l")
    return args


def main(argv=None) -> int:
    """Run (iii) and (iv), merge (i) and (ii), write JSON, print the table last."""
    args = parse_args(argv)
    start = args.start_time or time.time()
    budget = Budget(start, args.budget_s)
    device = jax.devices()[0]
    on_gpu = device.platform == "gpu"
    if not on_gpu and not args.smoke:
        sys.exit("no GPU: run with --smoke for the CPU proof run")
    mesh = shd.make_mesh((1, 1, 1, 1), jax.devices()[:1])
    out_dir = pathlib.Path(os.environ.get("OUT") or ROOT / "benchmarks" / "results")
    out_dir.mkdir(parents=True, exist_ok=True)
    kernel, attention = attention_sections(out_dir, args.attention_rc)
    names = [m for m in args.models.split(",") if m]
    train_rows = []
    for name, cfg in model_shapes(args.smoke).items():
        if name in names:
            train_rows += bench_train(name, cfg, args, mesh, budget, on_gpu)
    decode_rows = []
    for name, cfg in decode_shapes(args.smoke).items():
        decode_rows += bench_decode(name, cfg, args, mesh, budget, device.device_kind)
    report = {
        "environment": {"device": device.device_kind, "platform": device.platform,
                        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
                        "jax": jax.__version__, "python": platform.python_version(),
                        "smoke": args.smoke, "wall_s": time.time() - start,
                        "peak_flops": metrics.peak_flops(device.device_kind),
                        "hbm_bytes_per_s": hbm_bandwidth(device.device_kind),
                        "flop_formula": FLOP_FORMULA, "args": vars(args)},
        "kernel_checks": kernel, "attention": attention, "train": train_rows,
        "decode": decode_rows,
    }
    path = out_dir / "gpu_suite.json"
    path.write_text(json.dumps(report, indent=1, default=str))
    bad = failures(report)
    print(f"json: {path}")
    for b in bad:
        print(f"FAILED: {b}")
    print(summary(report))
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
