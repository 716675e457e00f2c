"""Perplexity by position: how well a model predicts tokens far into a long context.

The ``long_perplexity`` task scores rows of ``L + 1`` tokens (``L``: the
scorer's max_len, i.e. ``--max_len`` / ``--max_seq_len``) with
`Scorer.token_logprobs` and buckets each token's negative log-likelihood by
its absolute position: the token predicted from input positions ``0..p`` falls
in bucket ``p // width`` (``position_bucket``, default 256), so bucket
``[0, 256)`` holds the predictions made with at most 256 tokens of context.
Reported per bucket (and per source): tokens, mean NLL per token, perplexity.
This is the curve of the context-extension papers (position interpolation,
YaRN): a model used past its training length breaks down in the late buckets.

Data, in order of preference:

* ``data_dir/long_perplexity/*.jsonl`` (one document per line, text in
  "text") and ``*.txt`` (one document each): each document is one row, BOS
  first, cut to ``L + 1`` tokens (shorter documents fill only the early
  buckets);
* otherwise a corpus's held-out split (``perplexity_corpus`` /
  ``perplexity_sources`` as for ``perplexity``, default the embedded corpus
  of `llama_jax.data.corpus`): per source, the held-out documents,
  ``[bos] + ids + [eos]`` each, concatenated and cut into rows of ``L + 1``.

`limit` caps the rows per source (corpus default: `CORPUS_ROWS`).
"""

from __future__ import annotations

import glob
import math
import os
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np

from llama_jax.data import corpus as corpus_lib
from llama_jax.data import sources as sources_lib
from llama_jax.eval.tasks import readers
from llama_jax.eval.tasks.base import EvalContext, Task
from llama_jax.eval.tasks.perplexity import corpus_specs
from llama_jax.eval.tasks.readers import DataError, get_field

NAME = "long_perplexity"
CORPUS_ROWS = 16
LONG_PERPLEXITY_FORMAT = (f"long documents in <data_dir>/{NAME}/: *.jsonl files (one document "
                          "per line, text in the 'text' field) and/or *.txt files (one document "
                          "each); without them, the held-out split of --perplexity_corpus "
                          "(default: the embedded corpus)")


def _file_documents(data_dir: str) -> dict[str, list[str]] | None:
    """{file stem: documents} of ``data_dir/long_perplexity``; None when it holds no files."""
    root = os.path.join(data_dir, NAME) if data_dir else ""
    files = sorted(glob.glob(os.path.join(root, "*.jsonl")) + glob.glob(os.path.join(root, "*.txt")))
    if not root or not files:
        return None
    out = {}
    for path in files:
        if path.endswith(".txt"):
            try:
                with open(path, encoding="utf-8") as f:
                    docs = [f.read()]
            except UnicodeDecodeError as e:
                raise DataError(f"{path}: not UTF-8 text ({e}); expected "
                                f"{LONG_PERPLEXITY_FORMAT}") from None
        else:
            docs = [get_field(r, "text", i, path, LONG_PERPLEXITY_FORMAT)
                    for i, r in enumerate(readers.read_jsonl(path, LONG_PERPLEXITY_FORMAT))]
        docs = [d for d in docs if isinstance(d, str) and d.strip()]
        if not docs:
            raise DataError(f"{path}: no non-empty documents; expected {LONG_PERPLEXITY_FORMAT}")
        out[os.path.splitext(os.path.basename(path))[0]] = docs
    return out


def document_rows(tokenizer, docs: Sequence[str], seq_len: int, limit: int | None) -> list[list[int]]:
    """One row per document: ``[bos] + ids`` cut to ``seq_len + 1`` tokens (>= 2 kept)."""
    rows = [[tokenizer.bos_id, *tokenizer.encode(d)][:seq_len + 1] for d in docs]
    rows = [r for r in rows if len(r) >= 2]
    return rows[:limit] if limit else rows


def _stream(tokenizer, view) -> Iterator[int]:
    for i in range(len(view)):
        text = view[i]
        if text:
            yield from tokenizer.encode(text, bos=True, eos=True)


def concatenated_rows(tokenizer, view, seq_len: int, max_rows: int) -> list[list[int]]:
    """Rows of ``seq_len + 1`` tokens cut from the documents of `view`, concatenated in order."""
    rows, row = [], []
    for token in _stream(tokenizer, view):
        row.append(token)
        if len(row) == seq_len + 1:
            rows.append(row)
            row = []
            if len(rows) == max_rows:
                break
    return rows


def _corpus_rows(ctx: EvalContext, seq_len: int, limit: int | None) -> dict[str, list[list[int]]]:
    specs = corpus_specs(ctx)
    if specs is None:
        specs = list(corpus_lib.ensure_corpus(None).sources)
    out = {}
    for spec in specs:
        src = sources_lib.build_source(spec)
        _, heldout = sources_lib.split_heldout(src)
        rows = concatenated_rows(ctx.tokenizer, heldout, seq_len, limit or CORPUS_ROWS)
        if not rows:
            raise DataError(f"{NAME}: source {src.name!r} has fewer than {seq_len + 1} held-out "
                            "tokens; lower --max_len or raise its heldout_fraction")
        out[src.name] = rows
    return out


def bucket_nll(logprobs: Sequence[np.ndarray], width: int) -> dict[str, dict[str, Any]]:
    """{"[lo, hi)": {start, end, tokens, nll_per_token, perplexity}} of per-token log-probs.

    ``logprobs[r][p]`` is the log-probability of the token predicted from
    input positions ``0..p`` of row ``r``; it falls in bucket ``p // width``.
    """
    sums: dict[int, float] = {}
    counts: dict[int, int] = {}
    for lp in logprobs:
        lp = np.asarray(lp, np.float64)
        buckets = np.arange(lp.shape[0]) // width  # [len]
        for b in np.unique(buckets):
            sums[int(b)] = sums.get(int(b), 0.0) - float(lp[buckets == b].sum())
            counts[int(b)] = counts.get(int(b), 0) + int((buckets == b).sum())
    out = {}
    for b in sorted(sums):
        nll = sums[b] / counts[b]
        out[f"[{b * width}, {(b + 1) * width})"] = {
            "start": b * width, "end": (b + 1) * width, "tokens": counts[b],
            "nll_per_token": nll, "perplexity": math.exp(min(nll, 700.0))}
    return out


def run_long_perplexity(ctx: EvalContext, data_dir: str, num_fewshot: int, limit: int | None):
    """Per-bucket perplexity over rows of the scorer's max_len (see the module docstring)."""
    docs = _file_documents(data_dir)  # bad files fail before the model is compiled
    scorer = ctx.scorer
    seq_len = scorer.max_len
    width = ctx.options.position_bucket
    if docs is not None:
        per_source = {name: document_rows(ctx.tokenizer, d, seq_len, limit) for name, d in docs.items()}
    else:
        per_source = _corpus_rows(ctx, seq_len, limit)
    everything: list[np.ndarray] = []
    sources = {}
    for name, rows in per_source.items():
        lps = scorer.token_logprobs(rows, progress=ctx.progress,
                                    desc=f"{ctx.label or NAME} {name}")
        everything += lps
        tokens = sum(len(x) for x in lps)
        sources[name] = {"rows": len(rows), "tokens": tokens,
                         "nll_per_token": -float(sum(np.sum(x, dtype=np.float64) for x in lps)) / tokens,
                         "buckets": bucket_nll(lps, width)}
    tokens = sum(len(x) for x in everything)
    nll = -float(sum(np.sum(x, dtype=np.float64) for x in everything)) / max(tokens, 1)
    return {"perplexity": math.exp(min(nll, 700.0)), "nll_per_token": nll, "tokens": tokens,
            "seq_len": seq_len, "bucket_width": width, "buckets": bucket_nll(everything, width),
            "sources": sources, "primary_metric": "perplexity",
            "num_examples": sum(s["rows"] for s in sources.values())}


TASKS = {NAME: Task(NAME, "perplexity", run_long_perplexity, 0, LONG_PERPLEXITY_FORMAT,
                    needs_data=False)}
