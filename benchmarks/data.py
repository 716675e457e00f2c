"""Input pipeline throughput: tokens/s of `make_train_iterator` with 0, 1 and N worker processes.

Reads the embedded default corpus (built on first use, see `llama_jax.data.corpus`)
and times the packed, mixed global batches this process would feed the trainer,
after a warm-up that absorbs worker start-up. Also times bare SentencePiece
encoding on one core, the floor the pipeline is built on. Prints a table and
writes JSON.

    python benchmarks/data.py                               # 0, 1, 2, cpu_count workers
    python benchmarks/data.py --workers=0,4 --seq_len=2048 --batch=16 --batches=50
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time

from llama_jax.data import corpus as corpus_lib
from llama_jax.data import mixture
from llama_jax.data.sources import build_source


def time_pipeline(info, *, workers: int, seq_len: int, batch: int, batches: int, warmup: int) -> dict:
    """Tokens/s of the training iterator over `batches` batches after `warmup` batches."""
    start = time.perf_counter()
    it = mixture.make_train_iterator(info.sources, info.tokenizer_path, seq_len=seq_len, global_batch_size=batch,
                                     seed=0, num_workers=workers)
    try:
        for _ in range(warmup):
            next(it)
        first = time.perf_counter() - start
        tokens = 0
        t0 = time.perf_counter()
        for _ in range(batches):
            b = next(it)
            tokens += int((b["segment_ids"] > 0).sum())
        seconds = time.perf_counter() - t0
    finally:
        if hasattr(it, "close"):
            it.close()
    return {"workers": workers, "tokens": tokens, "seconds": seconds, "tokens_per_s": tokens / seconds,
            "batches_per_s": batches / seconds, "startup_s": first}


def time_tokenizer(info, max_bytes: int = 4_000_000) -> dict:
    """Single-thread SentencePiece encode throughput over the corpus text."""
    tok = info.tokenizer()
    texts, size = [], 0
    for spec in info.sources:  # up to max_bytes / 3 from each source
        src, budget = build_source(spec), size + max_bytes // len(info.sources)
        for i in range(len(src)):
            if size >= budget:
                break
            texts.append(src[i])
            size += len(texts[-1])
    t0 = time.perf_counter()
    n = sum(len(tok.encode(t)) for t in texts)
    seconds = time.perf_counter() - t0
    return {"tokens": n, "seconds": seconds, "tokens_per_s": n / seconds, "bytes": size}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    cpus = os.cpu_count() or 1
    parser.add_argument("--workers", default=",".join(str(w) for w in sorted({0, 1, 2, cpus})))
    parser.add_argument("--seq_len", type=int, default=512)
    parser.add_argument("--batch", type=int, default=16, help="global batch size (rows)")
    parser.add_argument("--batches", type=int, default=40, help="timed batches")
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--root", default=None, help="corpus root (default: $LLAMA_JAX_DATA or ~/.cache)")
    parser.add_argument("--out", default=os.path.join(os.path.dirname(os.path.abspath(__file__)), "results",
                                                      "data.json"))
    args = parser.parse_args(argv)
    info = corpus_lib.ensure_corpus(args.root)
    tok_rate = time_tokenizer(info)
    rows = []
    for w in (int(x) for x in args.workers.split(",")):
        if w and args.batch % w:
            print(f"skipping workers={w}: must divide batch={args.batch}", file=sys.stderr)
            continue
        rows.append(time_pipeline(info, workers=w, seq_len=args.seq_len, batch=args.batch, batches=args.batches,
                                  warmup=args.warmup))
    print(f"corpus {info.root}: {sum(info.tokens.values())} training tokens; seq_len={args.seq_len}, "
          f"batch={args.batch}, {cpus} CPUs, load avg {os.getloadavg()[0]:.1f}")
    print(f"SentencePiece encode, 1 thread: {tok_rate['tokens_per_s'] / 1e3:,.0f} k tokens/s")
    print(f"{'workers':>7} {'k tokens/s':>11} {'batches/s':>10} {'start-up s':>10}")
    for r in rows:
        print(f"{r['workers']:>7} {r['tokens_per_s'] / 1e3:>11,.1f} {r['batches_per_s']:>10.2f} "
              f"{r['startup_s']:>10.1f}")
    result = {"benchmark": "data_pipeline", "seq_len": args.seq_len, "global_batch_size": args.batch,
              "timed_batches": args.batches, "cpus": cpus, "load_avg_1m": os.getloadavg()[0],
              "python": platform.python_version(), "machine": platform.machine(),
              "tokenizer_single_thread": tok_rate, "pipeline": rows,
              "vocab_size": info.vocab_size, "weights": {s.name: s.weight for s in info.sources}}
    os.makedirs(os.path.dirname(args.out), exist_ok=True)
    with open(args.out, "w") as f:
        json.dump(result, f, indent=2)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
