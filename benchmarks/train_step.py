"""Train-step throughput, ours vs Hugging Face transformers (PyTorch), side by side on the CPU.

The same model shape, optimizer and tokens on both sides: AdamW (0.9, 0.95,
weight decay 0.1) after a global-norm clip of 1.0, next-token cross-entropy
over every position, random tokens (a fixed seed). Variants:

- ours f32: `llama_jax.train.step.make_train_step`, f32 weights and compute;
- ours bf16: bf16 compute over f32 master weights (``dtype=bfloat16``);
- HF eager f32, HF eager bf16 (bf16 weights and Adam state, as a PyTorch
  user would cast), HF torch.compile f32;
- and, on request (``--variants``, named ``ours_<dtype>[_unrolled][_xla_matmul]
  [_no_preset | _alt]``): ours with unrolled layers (``scan_layers=False``),
  with plain ``dot_general`` linear layers (``matmul="xla"`` instead of
  ``"auto"``, `llama_jax.kernels.matmul`), and under XLA's CPU defaults or the
  flags in ``$ALT_XLA_FLAGS`` instead of the `llama_jax.cpu_flags` preset.

Runs alternate between the variants (one timed step of each per round, after
warm-up steps) so load on a shared machine hits all alike; each variant runs
in its own process (see `bench_shape`: PyTorch slows a following XLA step in
the same process). Also measured in
the same run: a 2048x2048 f32 matmul in XLA and in PyTorch, the machine's
rate to set the achieved GFLOP/s against. FLOPs per token:
`llama_jax.train.metrics.flops_per_token` (6 N + 6 L T d).

    python benchmarks/train_step.py                         # shapes a, b, tiny
    python benchmarks/train_step.py --shapes a --rounds 5 --variants ours_f32 hf_eager_f32

JSON: benchmarks/results/train_step.json.
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax
import torch
import transformers
from sidebyside import machine, stats, write

from llama_jax import cpu_flags
from llama_jax import sharding as shd
from llama_jax.model import LlamaConfig, get_preset
from llama_jax.train import step as st
from llama_jax.train.metrics import flops_per_token

cpu_flags.apply()  # as the train command runs (LLAMA_JAX_CPU_FLAGS=0: without)

# (model, batch, seq) per shape; (a) and (b) are the performance issue's.
SHAPES = {
    "a": (LlamaConfig(dim=256, n_layers=4, n_heads=4, vocab_size=8000, hidden_dim=704,
                      max_seq_len=256), 8, 256),
    "b": (LlamaConfig(dim=512, n_layers=8, n_heads=8, vocab_size=32000, hidden_dim=1376,
                      max_seq_len=512), 4, 512),
    "tiny": (get_preset("tiny"), 16, 256),
}
# ours_<dtype>[_unrolled][_xla_matmul][_no_preset | _alt]: unrolled layers; the plain
# dot_general linear layers (matmul="xla") instead of "auto"; XLA's CPU defaults, or
# the flags in $ALT_XLA_FLAGS, instead of the `llama_jax.cpu_flags` preset.
ALT_ENV = "ALT_XLA_FLAGS"
VARIANTS = (*(f"ours_{d}{u}{m}{f}" for d in ("f32", "bf16") for u in ("", "_unrolled")
              for m in ("", "_xla_matmul") for f in ("", "_no_preset", "_alt")),
            "hf_eager_f32", "hf_eager_bf16", "hf_compile_f32")
DEFAULT_VARIANTS = ("ours_f32", "ours_bf16", "ours_bf16_unrolled", "hf_eager_f32", "hf_eager_bf16",
                    "hf_compile_f32")


def optimizer() -> optax.GradientTransformation:
    return optax.chain(optax.clip_by_global_norm(1.0),
                       optax.adamw(3e-4, b1=0.9, b2=0.95, weight_decay=0.1))


def ours(config: LlamaConfig, tokens: np.ndarray, dtype: str, with_hlo: bool = False,
         scan_layers: bool = True, matmul: str = "auto"):
    """A `step()` callable running our jitted train step on one device (and, with
    `with_hlo`, the compiled step's optimized HLO text); `scan_layers=False`
    unrolls the layers (one HLO per layer instead of a `scan` over stacked ones);
    `matmul` is the model's run option (`llama_jax.kernels.matmul`)."""
    config = config.with_run_options(dtype=dtype, attention_impl="xla", scan_layers=scan_layers,
                                     matmul=matmul)
    mesh = shd.make_mesh((1, 1, 1, 1), jax.devices()[:1])
    rules = shd.DEFAULT_RULES
    state, shardings = st.init_train_state(config, optimizer(), mesh, rules, jax.random.key(0))
    train_step = st.make_train_step(config, optimizer(), mesh, rules, shardings)
    b, t = tokens.shape[0], tokens.shape[1] - 1
    batch = {"inputs": tokens[:, :-1], "targets": tokens[:, 1:],
             "positions": np.broadcast_to(np.arange(t, dtype=np.int32), (b, t)),
             "segment_ids": np.ones((b, t), np.int32), "loss_mask": np.ones((b, t), np.int32)}
    batch = jax.device_put({k: jnp.asarray(v, jnp.int32) for k, v in batch.items()},
                           shd.data_sharding(mesh, rules))
    box = [state]

    def step():
        box[0], metrics = train_step(box[0], batch)
        return float(metrics["loss"])

    if with_hlo:
        return step, train_step.lower(state, batch).compile().as_text()
    return step


def hf(config: LlamaConfig, tokens: np.ndarray, dtype: torch.dtype, compile_: bool):
    """A `step()` callable running a transformers Llama train step (AdamW + clip)."""
    torch.manual_seed(0)
    cfg = transformers.LlamaConfig(
        hidden_size=config.dim, num_hidden_layers=config.n_layers,
        num_attention_heads=config.n_heads, num_key_value_heads=config.num_kv_heads,
        intermediate_size=config.ffn_dim, vocab_size=config.vocab_size,
        max_position_embeddings=config.max_seq_len, rms_norm_eps=config.norm_eps,
        tie_word_embeddings=False, attn_implementation="sdpa")
    model = transformers.LlamaForCausalLM(cfg).to(dtype).train()
    opt = torch.optim.AdamW(model.parameters(), lr=3e-4, betas=(0.9, 0.95), weight_decay=0.1)
    ids = torch.from_numpy(tokens.astype(np.int64))
    inputs, targets = ids[:, :-1], ids[:, 1:]

    def loss_fn(inputs, targets):
        logits = model(input_ids=inputs).logits  # [batch, len, vocab]
        return torch.nn.functional.cross_entropy(logits.float().flatten(0, 1), targets.flatten())

    fwd = torch.compile(loss_fn) if compile_ else loss_fn

    def step():
        opt.zero_grad(set_to_none=True)
        loss = fwd(inputs, targets)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        return float(loss)

    return step


def matmul_rates(n: int = 2048, reps: int = 10) -> dict:
    """GFLOP/s of an n x n f32 matmul in XLA and in PyTorch (median of `reps`)."""
    x = jnp.ones((n, n), jnp.float32)
    mm = jax.jit(lambda a: a @ a)
    mm(x).block_until_ready()
    xs, ts = [], []
    a = torch.ones(n, n)
    a @ a
    for _ in range(reps):
        t0 = time.perf_counter()
        mm(x).block_until_ready()
        xs.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        a @ a
        ts.append(time.perf_counter() - t0)
    flops = 2 * n ** 3
    return {"xla_f32": flops / np.median(xs) / 1e9, "torch_f32": flops / np.median(ts) / 1e9}


def make(variant: str, config: LlamaConfig, tokens: np.ndarray):
    if variant.startswith("ours_"):
        dtype = "bfloat16" if variant.startswith("ours_bf16") else "float32"
        matmul = "xla" if "_xla_matmul" in variant else "auto"
        return ours(config, tokens, dtype, scan_layers="_unrolled" not in variant,
                    matmul=matmul)
    return {"hf_eager_f32": lambda: hf(config, tokens, torch.float32, False),
            "hf_eager_bf16": lambda: hf(config, tokens, torch.bfloat16, False),
            "hf_compile_f32": lambda: hf(config, tokens, torch.float32, True)}[variant]()


def _worker(conn, variant: str, shape: str) -> None:
    """One variant in its own process: warm up, then one timed step per request."""
    # XLA's flags are read when the backend starts, so they are set here, first.
    if variant.endswith(("_no_preset", "_alt")):  # XLA's CPU defaults, or ALT_XLA_FLAGS
        kept = [f for f in os.environ.get("XLA_FLAGS", "").split() if f not in cpu_flags.CPU_FLAGS]
        if variant.endswith("_alt"):
            kept += os.environ.get(ALT_ENV, "").split()
        os.environ["XLA_FLAGS"] = " ".join(kept)
    config, batch, seq = SHAPES[shape]
    tokens = np.random.default_rng(0).integers(0, config.vocab_size, (batch, seq + 1))
    step = make(variant, config, tokens)
    warmup = conn.recv()
    first = step()  # compile / warm-up
    for _ in range(warmup - 1):
        step()
    conn.send(first)
    while conn.recv():
        t0 = time.perf_counter()
        step()
        conn.send(time.perf_counter() - t0)


def bench_shape(name: str, variants, rounds: int, warmup: int, settle: float = 1.0) -> dict:
    """Each variant in its own process, one timed step of each per round.

    Separate processes, because running PyTorch in a process slows XLA's
    CPU step that follows in the same process by up to ~40% (measured on the
    2-core machine, shape b: 505-530 tokens/s before the first torch step,
    318-450 after, still after a 2 s pause), which would bias a same-process
    comparison against us. Only one process computes at any time, and each
    timed step starts `settle` seconds after the previous one ended: OpenMP
    threads of PyTorch (and of torch.compile's kernels) spin-wait after a
    parallel region, and a step started at once shares the cores with them.
    """
    config, batch, seq = SHAPES[name]
    ctx = mp.get_context("spawn")
    workers, rates, first = {}, {v: [] for v in variants}, {}
    try:
        for v in variants:  # warm up one at a time: no overlap
            parent, child = ctx.Pipe()
            proc = ctx.Process(target=_worker, args=(child, v, name), daemon=True)
            proc.start()
            parent.send(warmup)
            first[v] = parent.recv()
            workers[v] = (proc, parent)
        for _ in range(rounds):
            for v in variants:
                time.sleep(settle)  # let the last variant's worker threads stop spinning
                workers[v][1].send(True)
                rates[v].append(batch * seq / workers[v][1].recv())
    finally:
        for proc, conn in workers.values():
            conn.send(False)
            proc.join(timeout=30)
    fpt = flops_per_token(config, seq)
    return {"batch": batch, "seq": seq, "flops_per_token": fpt, "first_loss": first,
            "variants": {v: {**stats(r), "gflops": np.median(r) * fpt / 1e9}
                         for v, r in rates.items()}}


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--shapes", nargs="+", default=["a", "b", "tiny"], choices=sorted(SHAPES))
    p.add_argument("--variants", nargs="+", default=list(DEFAULT_VARIANTS),
                   choices=VARIANTS)
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--out", default=None)
    args = p.parse_args()
    rates = matmul_rates()
    print(f"2048^2 f32 matmul: XLA {rates['xla_f32']:.0f} GFLOP/s, torch "
          f"{rates['torch_f32']:.0f} GFLOP/s")
    results = {}
    for name in args.shapes:
        results[name] = r = bench_shape(name, args.variants, args.rounds, args.warmup)
        hf_best = max((v for v in r["variants"] if v.startswith("hf")),
                      key=lambda v: r["variants"][v]["median"], default=None)
        print(f"\nshape {name} (batch {r['batch']} x seq {r['seq']}); first losses "
              + ", ".join(f"{v} {x:.3f}" for v, x in r["first_loss"].items()))
        print("| variant | tokens/s median (min-max) | GFLOP/s | % of XLA matmul | ours f32 / this |")
        print("|---|---|---|---|---|")
        base = r["variants"].get("ours_f32", {}).get("median")
        for v, s in r["variants"].items():
            ratio = f"{base / s['median']:.2f}x" if base else "-"
            print(f"| {v} | {s['median']:,.0f} ({s['min']:,.0f}-{s['max']:,.0f}) | "
                  f"{s['gflops']:.1f} | {100 * s['gflops'] / rates['xla_f32']:.0f}% | {ratio} |")
        if hf_best and base:
            r["ours_over_best_hf"] = base / r["variants"][hf_best]["median"]
            r["best_hf"] = hf_best
    path = write("train_step", {"machine": machine(), "matmul_gflops": rates, "shapes": results},
                 args.out)
    print(f"\nwrote {path}")


if __name__ == "__main__":
    main()
