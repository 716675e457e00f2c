"""Log-likelihood scoring, ours vs lm-evaluation-harness's `hf` backend, side by side on the CPU.

Both read the same random HF Llama folder (shape (b) of the performance
issue by default, with a SentencePiece tokenizer trained here from the
standard library's sources and exported by our `save_pretrained`), score the
same (context, continuation) requests, and must give the same
log-likelihoods (max abs difference printed; checked against a tolerance)
and the same is-greedy flags. Ours: `llama_jax.eval.scoring.Scorer` with
lm-eval's pair encoding (`encode_pair`); theirs: `lm_eval.models.huggingface.HFLM`
``loglikelihood``, f32 on the CPU. Runs alternate.

    python benchmarks/score.py                       # 256 requests, batch 16
    python benchmarks/score.py --shape a --requests 512 --batch 32

JSON: benchmarks/results/score.json.
"""

from __future__ import annotations

import argparse
import inspect
import json
import random
import tempfile
import textwrap
from pathlib import Path

import jax
import numpy as np
import torch
from sidebyside import hf_random_model, machine, stats, timed, write

import llama_jax
from llama_jax import cpu_flags
from llama_jax.data.tokenizer import train_tokenizer
from llama_jax.eval.scoring import Scorer
from llama_jax.eval.tasks.base import encode_pair

cpu_flags.apply()  # as the eval command runs (LLAMA_JAX_CPU_FLAGS=0: without)


def requests(n: int, seed: int = 0) -> list[tuple[str, str]]:
    """(context, continuation) pairs cut from the standard library's sources."""
    text = inspect.getsource(json.decoder) + inspect.getsource(textwrap) + inspect.getsource(random)
    words = text.split()
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        start = rng.randrange(len(words) - 80)
        ctx_len, cont_len = rng.randint(10, 60), rng.randint(1, 8)
        out.append((" ".join(words[start:start + ctx_len]),
                    " " + " ".join(words[start + ctx_len:start + ctx_len + cont_len])))
    return out


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--shape", default="b", choices=["a", "b"])
    p.add_argument("--requests", type=int, default=256)
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--runs", type=int, default=3)
    p.add_argument("--out", default=None)
    args = p.parse_args()
    from lm_eval.api.instance import Instance  # lm-eval imports are slow: only when run
    from lm_eval.models.huggingface import HFLM

    with tempfile.TemporaryDirectory() as tmp:
        tok = train_tokenizer([inspect.getsource(json.decoder), inspect.getsource(textwrap)],
                              str(Path(tmp) / "tok"), vocab_size=2000)
        folder = Path(tmp) / "hf"
        hf_random_model(args.shape, folder, vocab_size=tok.vocab_size, tokenizer=tok.path)
        config, params = llama_jax.from_pretrained(  # unscanned, as the eval command loads
            folder, config_overrides={"scan_layers": False}, progress=False)
        lm = HFLM(pretrained=str(folder), device="cpu", dtype="float32", batch_size=args.batch)
    reqs = requests(args.requests)
    scorer = Scorer(config, params, batch_size=args.batch,
                    mesh=llama_jax.sharding.make_mesh((1, 1, 1, 1), jax.devices()[:1]))
    pairs = [encode_pair(tok, c, x) for c, x in reqs]
    instances = [Instance("loglikelihood", {}, (c, x), i) for i, (c, x) in enumerate(reqs)]

    def ours():
        return [(r.logprob, r.is_greedy) for r in scorer.loglikelihood(pairs, progress=False)]

    def theirs():
        with torch.no_grad():
            return lm.loglikelihood(instances, disable_tqdm=True)

    a, b = ours(), theirs()  # also the warm-up
    diff = float(np.max(np.abs(np.array([x for x, _ in a]) - np.array([x for x, _ in b]))))
    greedy_same = [g for _, g in a] == [bool(g) for _, g in b]
    assert diff < 1e-3 and greedy_same, f"log-likelihoods differ: max |diff| {diff}"
    o, h = [], []
    for _ in range(args.runs):
        o.append(len(reqs) / timed(ours))
        h.append(len(reqs) / timed(theirs))
    row = {"ours": stats(o), "lm_eval_hf": stats(h), "max_abs_diff": diff,
           "is_greedy_identical": greedy_same}
    row["ratio"] = row["ours"]["median"] / row["lm_eval_hf"]["median"]
    print("| requests | batch | ours req/s (min-max) | lm-eval hf req/s (min-max) | ours / lm-eval | "
          "max abs diff |")
    print("|---|---|---|---|---|---|")
    print(f"| {len(reqs)} | {args.batch} | {row['ours']['median']:.1f} ({min(o):.1f}-{max(o):.1f}) | "
          f"{row['lm_eval_hf']['median']:.1f} ({min(h):.1f}-{max(h):.1f}) | {row['ratio']:.2f}x | "
          f"{diff:.2e} |")
    path = write("score", {"machine": machine(), "shape": args.shape, "requests": len(reqs),
                           "batch": args.batch, **row}, args.out)
    print(f"\nwrote {path}")


if __name__ == "__main__":
    main()
