"""Passkey retrieval: find a 5-digit key hidden at some depth of a long filler text.

The prompt of Mohtashami & Jaggi (2023, "Landmark Attention") as LongLoRA's
``passkey_retrieval.py`` writes it: a task description, filler ("The grass is
green. The sky is blue. ..."), the line "The pass key is NNNNN. Remember it.
NNNNN is the pass key." at a given depth of the filler, more filler, and
"What is the pass key? The pass key is". The filler is cut at sentence
boundaries so that BOS + prompt + answer is as long as possible within each
length (``passkey_lengths``, in tokens); the key sits after ``round(depth *
n)`` of the ``n`` filler sentences (``passkey_depths``: 0 first, 1 last).

Scoring is greedy exact match: a prompt counts as retrieved when every token
of " NNNNN" is the model's argmax given the prompt and the key's earlier
tokens (`Scorer.loglikelihood`'s ``is_greedy``), which is exactly when greedy
decoding starts with the key. Reported: accuracy overall, per length, per
depth and per (length, depth) cell, and the key's mean log-probability. Keys
are drawn from a ``random.Random`` seeded by (seed, length, depth, sample), so
a run is deterministic. No data files are needed.
"""

from __future__ import annotations

import itertools
import random
from typing import Any

from llama_jax.errors import ConfigError
from llama_jax.eval.tasks.base import EvalContext, Task, encode_pair

NAME = "passkey"
TASK_DESCRIPTION = ("There is an important info hidden inside a lot of irrelevant text. Find it "
                    "and memorize them. I will quiz you about the important information there.")
FILLER = ("The grass is green.", "The sky is blue.", "The sun is yellow.", "Here we go.",
          "There and back again.")
QUESTION = "What is the pass key? The pass key is"
PASSKEY_FORMAT = "no files: the prompts are synthetic (--passkey_lengths, --passkey_depths)"


def filler(n: int) -> str:
    """The first `n` filler sentences, cycling through `FILLER`."""
    return " ".join(itertools.islice(itertools.cycle(FILLER), n))


def passkey_prompt(key: str, n_before: int, n_after: int) -> str:
    """The prompt with `n_before` filler sentences before the key line and `n_after` after it."""
    info = f"The pass key is {key}. Remember it. {key} is the pass key."
    return "\n".join([TASK_DESCRIPTION, filler(n_before), info, filler(n_after), QUESTION])


def make_key(seed: int, length: int, depth: float, sample: int) -> str:
    """A 5-digit pass key, a pure function of its (seed, length, depth, sample)."""
    return str(random.Random(f"{seed}/{length}/{depth}/{sample}").randint(10000, 99999))


def _request(tokenizer, key: str, n: int, depth: float):
    before = round(depth * n)
    return encode_pair(tokenizer, passkey_prompt(key, before, n - before), " " + key)


def _size(req) -> int:
    return len(req[0]) + len(req[1])


def build_example(tokenizer, length: int, depth: float, key: str, guess: int = 0) -> dict[str, Any]:
    """The longest prompt whose BOS + prompt + answer tokens fit `length`, with `key` at `depth`.

    The number of filler sentences is found by doubling from `guess` and then
    bisecting (a dozen encodes even at 32k tokens); returns the request
    (context ids, answer ids) and the filler sentences used.
    """
    def fits(n: int) -> bool:
        return _size(_request(tokenizer, key, n, depth)) <= length

    if not fits(0):
        raise ConfigError(f"passkey: length {length} tokens cannot hold even the prompt without "
                          f"filler ({_size(_request(tokenizer, key, 0, depth))} tokens); raise "
                          "--passkey_lengths")
    lo, hi = 0, max(guess, 16)
    while fits(hi):  # invariant: fits(lo), and hi is the next size to try
        lo, hi = hi, 2 * hi
    while hi - lo > 1:  # now fits(lo) and not fits(hi)
        mid = (lo + hi) // 2
        lo, hi = (mid, hi) if fits(mid) else (lo, mid)
    ctx, cont = _request(tokenizer, key, lo, depth)
    return {"context": ctx, "answer": cont, "filler_sentences": lo}


def _lengths(ctx: EvalContext, max_len: int) -> tuple[int, ...]:
    lengths = ctx.options.passkey_lengths
    if lengths is None:
        lengths = tuple(sorted({max(max_len // 4, 16), max(max_len // 2, 16), max_len}))
    too_long = [n for n in lengths if n > max_len]
    if too_long:
        raise ConfigError(f"passkey: lengths {too_long} exceed the scorer's max_len={max_len}; "
                          "lower --passkey_lengths or raise --max_len / --max_seq_len")
    return tuple(lengths)


def _accuracy(rows: list[dict[str, Any]]) -> float:
    return sum(r["correct"] for r in rows) / len(rows)


def run_passkey(ctx: EvalContext, data_dir: str, num_fewshot: int, limit: int | None):
    """Accuracy of greedy pass-key retrieval per length and depth (see the module docstring)."""
    scorer = ctx.scorer
    lengths = _lengths(ctx, scorer.max_len)
    depths, samples = ctx.options.passkey_depths, ctx.options.passkey_samples
    examples, guesses = [], {}
    for length, depth, i in itertools.product(lengths, depths, range(samples)):
        key = make_key(ctx.seed, length, depth, i)
        ex = build_example(ctx.tokenizer, length, depth, key, guesses.get(length, 0))
        guesses[length] = ex["filler_sentences"]
        examples.append({"length": length, "depth": depth, "key": key, **ex})
    if limit:
        examples = examples[:limit]
    scores = scorer.loglikelihood([(e["context"], e["answer"]) for e in examples],
                                  progress=ctx.progress, desc=ctx.label or NAME)
    rows = [{"length": e["length"], "depth": e["depth"], "key": e["key"],
             "tokens": len(e["context"]) + len(e["answer"]), "correct": bool(s.is_greedy),
             "logprob": s.logprob} for e, s in zip(examples, scores, strict=True)]
    by_length = {str(n): _accuracy([r for r in rows if r["length"] == n])
                 for n in lengths if any(r["length"] == n for r in rows)}
    by_depth = {str(d): _accuracy([r for r in rows if r["depth"] == d])
                for d in depths if any(r["depth"] == d for r in rows)}
    grid = {f"{n}@{d}": _accuracy(cell) for n in lengths for d in depths
            if (cell := [r for r in rows if r["length"] == n and r["depth"] == d])}
    return {"accuracy": _accuracy(rows), "by_length": by_length, "by_depth": by_depth,
            "grid": grid, "key_logprob": sum(r["logprob"] for r in rows) / len(rows),
            "primary_metric": "accuracy", "num_examples": len(rows), "predictions": rows}


TASKS = {NAME: Task(NAME, "generative", run_passkey, 0, PASSKEY_FORMAT, needs_data=False)}
