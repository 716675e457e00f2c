"""Greedy KV-cache decoding, ours vs `transformers` `generate`, side by side on the CPU.

Both load the same random HF Llama (shape (b) of the performance issue by
default: dim 512, 8 layers, vocab 32000; ours through `from_pretrained`),
decode the same random prompts greedily, f32, and must produce identical
tokens (checked on every shape before timing). Runs alternate ours / HF so a
loaded machine slows both alike.

    python benchmarks/decode.py                      # batch 1 and 16, shape b
    python benchmarks/decode.py --shape a --batches 1 4 16 --runs 5

Tokens/s = batch x new tokens / wall seconds of the whole call (prefill
included), median over runs. JSON: benchmarks/results/decode.json.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import jax
import numpy as np
import torch
from sidebyside import hf_random_model, machine, stats, timed, write

import llama_jax
from llama_jax.infer.engine import Generator


def bench(gen: Generator, hf, prompts: np.ndarray, new: int, runs: int) -> dict:
    """One batch size: identical tokens, then alternating timed runs."""
    batch, length = prompts.shape

    def ours():
        return gen.generate_tokens(prompts.tolist(), max_new_tokens=new, progress=False)

    def theirs():
        ids = torch.from_numpy(prompts)
        with torch.no_grad():
            out = hf.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=new,
                              min_new_tokens=new, do_sample=False, eos_token_id=None,
                              pad_token_id=0)
        return out[:, length:].tolist()

    same = [r[0] for r in ours()] == theirs()  # also the warm-up (compile) of ours
    assert same, f"batch {batch}: greedy tokens differ between ours and generate"
    o, h = [], []
    for _ in range(runs):
        o.append(batch * new / timed(ours))
        h.append(batch * new / timed(theirs))
    row = {"batch": batch, "ours": stats(o), "hf_generate": stats(h), "identical": same}
    row["ratio"] = row["ours"]["median"] / row["hf_generate"]["median"]
    return row


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--shape", default="b", choices=["a", "b"])
    p.add_argument("--batches", type=int, nargs="+", default=[1, 16])
    p.add_argument("--prompt_len", type=int, default=64)
    p.add_argument("--new_tokens", type=int, default=64)
    p.add_argument("--runs", type=int, default=3)
    p.add_argument("--out", default=None)
    args = p.parse_args()
    torch.set_num_threads(max(1, torch.get_num_threads()))
    with tempfile.TemporaryDirectory() as tmp:
        hf = hf_random_model(args.shape, Path(tmp))
        config, params = llama_jax.from_pretrained(  # unscanned, as the generate command loads
            tmp, config_overrides={"scan_layers": False}, progress=False)
    rng = np.random.default_rng(0)
    rows = []
    for batch in args.batches:
        prompts = rng.integers(3, config.vocab_size, (batch, args.prompt_len)).astype(np.int64)
        gen = Generator(config, params, mesh=llama_jax.sharding.make_mesh((1, 1, 1, 1),
                                                                           jax.devices()[:1]),
                        batch_size=batch, chunk_size=args.new_tokens)

        row = bench(gen, hf, prompts, args.new_tokens, args.runs)
        rows.append(row)
        print(f"batch {batch:3d}: ours {row['ours']['median']:8.1f} tok/s  generate "
              f"{row['hf_generate']['median']:8.1f} tok/s  ratio {row['ratio']:.2f}x", flush=True)
    print("\n| batch | ours tok/s (min-max) | generate tok/s (min-max) | ours / generate |")
    print("|---|---|---|---|")
    for r in rows:
        o, h = r["ours"], r["hf_generate"]
        print(f"| {r['batch']} | {o['median']:.1f} ({o['min']:.1f}-{o['max']:.1f}) | "
              f"{h['median']:.1f} ({h['min']:.1f}-{h['max']:.1f}) | {r['ratio']:.2f}x |")
    path = write("decode", {"machine": machine(), "shape": args.shape,
                            "prompt_len": args.prompt_len, "new_tokens": args.new_tokens,
                            "params": llama_jax.model.count_params(config), "rows": rows},
                 args.out)
    print(f"\nwrote {path}")


if __name__ == "__main__":
    main()
