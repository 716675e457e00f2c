"""Train an interpolated modified Kneser-Ney n-gram LM and write it as ARPA (KenLM's format).

cc_net's quality filter scores pages with a 5-gram KenLM model trained on
Wikipedia (``lmplz``: interpolated modified Kneser-Ney, no pruning). KenLM
is not pip-installable without a C++ toolchain and no package ships a model,
so this trains the same kind of model in plain Python from a local "high
quality" document set, and writes it in ARPA format, which `arpa.ArpaModel`
and ``kenlm.Model`` both read::

    python -m llama_jax.prepare.ngram_lm --input='wiki/*.jsonl.gz' --out=en.arpa \
        [--order=5] [--sp_model=en.sp.model] [--max_docs=100000]

Each line of each document is normalised and tokenised as the filter does
(`arpa.LineTokenizer`) and is one sentence (``<s> ... </s>``). The estimate
is Chen & Goodman's (1998) interpolated modified Kneser-Ney as ``lmplz``
computes it: the highest order uses raw counts, lower orders use
continuation counts (the number of distinct words to the left; raw counts
for n-grams that start with ``<s>``), three discounts per order from the
count-of-counts, and unigrams interpolate with the uniform distribution over
the vocabulary and ``<unk>``. Everything is held in memory (dicts of
n-grams): fine for tens of MB of text; for all of Wikipedia use KenLM.
A ``<out>.json`` beside the model records how it was tokenised.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections import Counter, defaultdict
from collections.abc import Iterable, Sequence

import numpy as np

from llama_jax.cli import handle_errors
from llama_jax.errors import ConfigError
from llama_jax.fileio import atomic_write
from llama_jax.prepare import quality_io
from llama_jax.prepare.arpa import BOS, EOS, UNK, LineTokenizer

# Used when an order's count-of-counts cannot give modified-KN discounts (tiny data).
FALLBACK_DISCOUNTS = (0.5, 1.0, 1.5)
# log10 probability written for <s>, which is never predicted (KenLM writes the same).
BOS_LOG10 = -99.0


def count_ngrams(sentences: Iterable[Sequence[str]], order: int) -> list[Counter]:
    """Raw counts of every n-gram, n = 1..order, of the sentences padded with <s> and </s>."""
    counts = [Counter() for _ in range(order)]
    for tokens in sentences:
        padded = (BOS, *tokens, EOS)
        for n in range(1, order + 1):
            counter = counts[n - 1]
            for i in range(len(padded) - n + 1):
                counter[padded[i:i + n]] += 1
    return counts


def adjusted_counts(raw: list[Counter]) -> list[dict[tuple[str, ...], int]]:
    """Kneser-Ney counts: raw at the top order and for n-grams starting with <s>, else continuation counts."""
    order = len(raw)
    adjusted: list[dict[tuple[str, ...], int]] = [dict(raw[-1])]
    for n in range(order - 1, 0, -1):
        continuation: Counter = Counter(g[1:] for g in raw[n])  # distinct left extensions
        adjusted.insert(0, {g: (c if g[0] == BOS else continuation[g]) for g, c in raw[n - 1].items()})
    return adjusted


def discounts(counts: Iterable[int]) -> tuple[float, float, float]:
    """Modified-KN discounts (D1, D2, D3+) from count-of-counts (Chen & Goodman eq. 26)."""
    t = Counter(c for c in counts if c <= 4)
    t1, t2, t3, t4 = (t[k] for k in (1, 2, 3, 4))
    if min(t1, t2, t3, t4) == 0:
        return FALLBACK_DISCOUNTS
    y = t1 / (t1 + 2 * t2)
    d = (1 - 2 * y * t2 / t1, 2 - 3 * y * t3 / t2, 3 - 4 * y * t4 / t3)
    if not all(0 < dk < k for k, dk in enumerate(d, 1)):
        return FALLBACK_DISCOUNTS
    return d


def estimate(raw: list[Counter]) -> tuple[list[dict[tuple[str, ...], float]], dict[tuple[str, ...], float],
                                          list[tuple[float, float, float]]]:
    """Interpolated modified-KN probabilities (not logs) of every n-gram, the backoff weights, the discounts."""
    order = len(raw)
    adjusted = adjusted_counts(raw)
    probs: list[dict[tuple[str, ...], float]] = []
    backoffs: dict[tuple[str, ...], float] = {}
    all_discounts = []
    for n in range(1, order + 1):
        counts = {g: c for g, c in adjusted[n - 1].items() if g != (BOS,)}
        d = discounts(counts.values())
        all_discounts.append(d)
        totals: dict[tuple[str, ...], float] = defaultdict(float)
        mass: dict[tuple[str, ...], float] = defaultdict(float)  # the discounted mass of each context
        for g, c in counts.items():
            totals[g[:-1]] += c
            mass[g[:-1]] += d[min(c, 3) - 1]
        gamma = {h: mass[h] / totals[h] for h in totals}
        level: dict[tuple[str, ...], float] = {}
        if n == 1:
            vocab_size = len(counts) + (0 if (UNK,) in counts else 1)
            uniform = gamma[()] / vocab_size
            for g, c in counts.items():
                level[g] = (c - d[min(c, 3) - 1]) / totals[()] + uniform
            level.setdefault((UNK,), uniform)
        else:
            lower = probs[-1]
            for g, c in counts.items():
                level[g] = (c - d[min(c, 3) - 1]) / totals[g[:-1]] + gamma[g[:-1]] * lower[g[1:]]
            for h, weight in gamma.items():
                backoffs[h] = weight
        probs.append(level)
    return probs, backoffs, all_discounts


def arpa_text(probs: list[dict[tuple[str, ...], float]], backoffs: dict[tuple[str, ...], float]) -> str:
    """The model in ARPA format (log10 probabilities and backoffs; n-grams in first-seen order)."""
    order = len(probs)
    lines = ["\\data\\"]
    sizes = [len(probs[0]) + 1] + [len(level) for level in probs[1:]]  # + <s>
    lines += [f"ngram {n}={size}" for n, size in enumerate(sizes, 1)]
    for n in range(1, order + 1):
        lines += ["", f"\\{n}-grams:"]
        level = {(BOS,): 10.0 ** BOS_LOG10, **probs[0]} if n == 1 else probs[n - 1]
        grams = list(level)
        logps = np.log10(np.fromiter(level.values(), dtype=np.float64, count=len(grams)))  # [len(grams)]
        if n == 1:
            logps[0] = BOS_LOG10
        if n == order:
            lines += [f"{lp:.7g}\t{' '.join(g)}" for lp, g in zip(logps.tolist(), grams, strict=True)]
            continue
        bos = [backoffs.get(g, 1.0) for g in grams]
        logbs = np.log10(np.asarray(bos, dtype=np.float64)).tolist()  # [len(grams)]
        lines += [f"{lp:.7g}\t{' '.join(g)}\t{lb:.7g}" if g in backoffs else f"{lp:.7g}\t{' '.join(g)}"
                  for lp, g, lb in zip(logps.tolist(), grams, logbs, strict=True)]
    lines += ["", "\\end\\", ""]
    return "\n".join(lines)


def tokenized_sentences(texts: Iterable[str], tokenizer: LineTokenizer) -> Iterable[list[str]]:
    """Each non-empty line of each text, tokenised (cc_net scores a page line by line)."""
    for text in texts:
        for line in text.split("\n"):
            tokens = tokenizer(line).split()
            if tokens:
                yield tokens


def train(texts: Iterable[str], out: str, order: int = 5, sp_model: str = "", do_normalize: bool = True) -> dict:
    """Train an `order`-gram interpolated modified-KN LM on `texts`, write ARPA to `out`; returns its summary."""
    if order < 1:
        raise ConfigError(f"--order={order}: an n-gram order must be >= 1 (cc_net uses 5)")
    tokenizer = LineTokenizer(sp_model, do_normalize)
    n_sentences, n_tokens = 0, 0

    def counted(sentences):
        nonlocal n_sentences, n_tokens
        for tokens in sentences:
            n_sentences += 1
            n_tokens += len(tokens)
            yield tokens

    raw = count_ngrams(counted(tokenized_sentences(texts, tokenizer)), order)
    if n_sentences == 0:
        raise ConfigError("--input: the documents have no words to train an n-gram model on")
    probs, backoffs, ds = estimate(raw)
    atomic_write(out, arpa_text(probs, backoffs).encode("utf-8"))
    summary = {"model": out, "format": "arpa", "order": order, "sp_model": sp_model, "normalize": do_normalize,
               "sentences": n_sentences, "tokens": n_tokens, "ngrams": [len(p) for p in probs],
               "discounts": [[round(x, 4) for x in d] for d in ds]}
    atomic_write(out + ".json", json.dumps(summary, indent=2).encode("utf-8"))
    return summary


@handle_errors
def main(argv: Sequence[str] | None = None) -> int:
    """CLI: train an n-gram LM from local documents and write it as ARPA; returns the exit status."""
    parser = argparse.ArgumentParser(prog="python -m llama_jax.prepare.ngram_lm", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--input", required=True, help="glob(s), comma-separated: .jsonl[.gz] or .txt files")
    parser.add_argument("--out", required=True, help="the ARPA file to write (and OUT.json)")
    parser.add_argument("--order", type=int, default=5, help="n-gram order (cc_net: 5)")
    parser.add_argument("--sp_model", default="", help="SentencePiece model to tokenise with ('' = whitespace)")
    parser.add_argument("--no_normalize", action="store_true", help="skip cc_net's text normalisation")
    parser.add_argument("--text_key", default="text", help="the JSONL field holding the text")
    parser.add_argument("--max_docs", type=int, default=0, help="read at most this many documents (0 = all)")
    args = parser.parse_args(argv)
    files = quality_io.expand_globs(args.input, "--input")
    texts = quality_io.iter_all_texts(files, args.text_key, args.max_docs)
    summary = train(texts, args.out, args.order, args.sp_model, not args.no_normalize)
    print(json.dumps(summary))
    return 0


if __name__ == "__main__":
    sys.exit(main())
