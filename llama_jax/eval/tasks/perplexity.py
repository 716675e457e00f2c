"""Held-out perplexity per source.

Two ways to name the data:

* files in ``data_dir/perplexity/``: each ``*.jsonl`` file is a source (one
  document per line, text in the "text" field) and each ``*.txt`` file a
  source of one document. Documents are scored whole, from BOS, in the
  harness's rolling windows (`Scorer.loglikelihood_rolling`); reported
  per source: tokens, mean negative log-likelihood per token, perplexity,
  bits per byte.
* a corpus (option ``perplexity_corpus``: "embedded" for the default root of
  `llama_jax.data.corpus`, a corpus root, or a training config file
  ``path.py[:arg]`` whose ``data`` section names the sources) or explicit ``perplexity_sources``
  (`SourceSpec`s): each source's held-out split, packed into rows exactly as
  training's held-out loss is (`llama_jax.data.mixture.make_eval_batches`).
"""

from __future__ import annotations

import glob
import math
import os
from typing import Any

from llama_jax.data import corpus as corpus_lib
from llama_jax.data.mixture import make_eval_batches
from llama_jax.eval.tasks import readers
from llama_jax.eval.tasks.base import EvalContext, Task
from llama_jax.eval.tasks.readers import DataError, get_field
from llama_jax.progress import bar as progress_bar
from llama_jax.train.config_file import load_config_file
from llama_jax.train.data import source_specs

PERPLEXITY_FORMAT = ("text sources in <data_dir>/perplexity/: *.jsonl files (one document per "
                     "line, text in the 'text' field) and/or *.txt files (one document each); "
                     "or --perplexity_corpus=embedded|<corpus root> for the corpus's held-out "
                     "split")


def _file_sources(data_dir: str, limit: int | None) -> dict[str, list[str]]:
    root = os.path.join(data_dir, "perplexity")
    files = sorted(glob.glob(os.path.join(root, "*.jsonl")) + glob.glob(os.path.join(root, "*.txt")))
    if not files:
        raise DataError(f"perplexity: no *.jsonl or *.txt files in {root}; expected "
                        f"{PERPLEXITY_FORMAT}")
    out: dict[str, list[str]] = {}
    for path in files:
        name = os.path.splitext(os.path.basename(path))[0]
        if path.endswith(".txt"):
            try:
                with open(path, encoding="utf-8") as f:
                    docs = [f.read()]
            except UnicodeDecodeError as e:
                raise DataError(f"{path}: not UTF-8 text ({e}); expected {PERPLEXITY_FORMAT}") from None
        else:
            docs = [get_field(r, "text", i, path, PERPLEXITY_FORMAT)
                    for i, r in enumerate(readers.read_jsonl(path, PERPLEXITY_FORMAT))]
        docs = [d for d in docs if isinstance(d, str) and d]
        if not docs:
            raise DataError(f"{path}: no non-empty documents; expected {PERPLEXITY_FORMAT}")
        out[name] = docs[:limit] if limit and limit > 0 else docs
    return out


def _summary(logprob: float, tokens: int, num_bytes: int | None) -> dict[str, Any]:
    nll = -logprob / max(tokens, 1)
    out = {"tokens": tokens, "nll_per_token": nll, "perplexity": math.exp(min(nll, 700.0))}
    if num_bytes:
        out["bits_per_byte"] = -logprob / (math.log(2) * num_bytes)
        out["bytes"] = num_bytes
    return out


def _config_file_specs(spec: str, vocab_size: int):
    """The data sources of a training config file ``path.py[:arg]`` (its ``data``)."""
    return source_specs(load_config_file(spec).data, vocab_size)[0]


def corpus_specs(ctx: EvalContext):
    """SourceSpecs from options: explicit sources, a config file, a corpus root."""
    specs = ctx.options.perplexity_sources
    if specs:
        return list(specs)
    corpus = ctx.options.perplexity_corpus
    if not corpus:
        return None
    path = corpus.partition(":")[0]
    if path.endswith(".py"):
        if not os.path.isfile(path):
            raise DataError(f"perplexity: config file {path} does not exist")
        return _config_file_specs(corpus, ctx.tokenizer.vocab_size)
    root = None if corpus == "embedded" else corpus
    return list(corpus_lib.ensure_corpus(root).sources)


def run_perplexity(ctx: EvalContext, data_dir: str, num_fewshot: int, limit: int | None):
    """Per-source perplexity; `limit` caps documents (files) or batches (corpus)."""
    scorer = ctx.scorer
    per_source: dict[str, dict[str, Any]] = {}
    total_lp, total_tok = 0.0, 0
    specs = corpus_specs(ctx)
    if specs is not None:
        seq_len = ctx.options.perplexity_seq_len or scorer.max_len
        for i, spec in enumerate(specs):
            batches = make_eval_batches(spec, ctx.tokenizer, seq_len=seq_len,
                                        batch_size=scorer.batch_size,
                                        max_batches=limit if limit and limit > 0 else None,
                                        source_id=i)
            lp, n = 0.0, 0
            name = spec["name"] if isinstance(spec, dict) else spec.name
            for batch in progress_bar(batches, desc=f"{ctx.label or 'perplexity'} {name}",
                                      unit="batch", progress=ctx.progress):
                b_lp, b_n = scorer.packed_loglikelihood(batch)
                lp, n = lp + b_lp, n + b_n
            per_source[name] = _summary(lp, n, None)
            total_lp, total_tok = total_lp + lp, total_tok + n
    else:
        for name, docs in _file_sources(data_dir, limit).items():
            ids = [ctx.tokenizer.encode(d, bos=False, eos=False) for d in docs]
            scores = scorer.loglikelihood_rolling([x for x in ids if x], ctx.tokenizer.bos_id,
                                                  progress=ctx.progress,
                                                  desc=f"{ctx.label or 'perplexity'} {name}")
            lp = sum(s[0] for s in scores)
            n = sum(s[1] for s in scores)
            per_source[name] = _summary(lp, n, sum(len(d.encode("utf-8")) for d in docs))
            total_lp, total_tok = total_lp + lp, total_tok + n
    overall = _summary(total_lp, total_tok, None)
    return {"perplexity": overall["perplexity"], "nll_per_token": overall["nll_per_token"],
            "tokens": total_tok, "sources": per_source, "primary_metric": "perplexity",
            "num_examples": total_tok}


TASKS = {"perplexity": Task("perplexity", "perplexity", run_perplexity, 0, PERPLEXITY_FORMAT)}
