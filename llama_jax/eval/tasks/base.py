"""What every task shares: the evaluation context, the task record, few-shot
sampling and lm-evaluation-harness's context/continuation tokenisation."""

from __future__ import annotations

import dataclasses
import random
from collections.abc import Callable, Sequence
from typing import Any, Protocol


class TokenizerLike(Protocol):
    """The tokenizer methods evaluation uses (`llama_jax.data.tokenizer.Tokenizer`)."""

    bos_id: int
    eos_id: int

    def encode(self, text: str, bos: bool = False, eos: bool = False) -> list[int]: ...

    def decode(self, ids: Sequence[int]) -> str: ...


@dataclasses.dataclass
class EvalContext:
    """Everything a task needs to run: a tokenizer and (built on first use)
    the scorer and the generator, plus run-wide options.

    Attributes:
      tokenizer: the model's tokenizer.
      make_scorer / make_generator: zero-argument factories, called once.
      seed: random seed for few-shot sampling and generation.
      options: task options (e.g. ``gsm8k_samples``, ``code_samples``,
        ``code_temperature``, ``sandbox_workers``, ``max_new_tokens``).
    """

    tokenizer: TokenizerLike
    make_scorer: Callable[[], Any] | None = None
    make_generator: Callable[[], Any] | None = None
    seed: int = 0
    options: dict[str, Any] = dataclasses.field(default_factory=dict)
    _scorer: Any = None
    _generator: Any = None

    @property
    def scorer(self):
        """The `Scorer` (built on first use)."""
        if self._scorer is None:
            if self.make_scorer is None:
                raise ValueError("this evaluation has no scorer (make_scorer is None)")
            self._scorer = self.make_scorer()
        return self._scorer

    @property
    def generator(self):
        """The `Generator` (built on first use)."""
        if self._generator is None:
            if self.make_generator is None:
                raise ValueError("this evaluation has no generator (make_generator is None)")
            self._generator = self.make_generator()
        return self._generator

    def option(self, name: str, default: Any) -> Any:
        """``options[name]``, or `default` when unset or None."""
        value = self.options.get(name)
        return default if value is None else value


@dataclasses.dataclass(frozen=True)
class Task:
    """A registered benchmark.

    Attributes:
      name: the --tasks name.
      kind: "multiple_choice", "generative" or "perplexity".
      run: ``run(ctx, data_dir, num_fewshot, limit) -> dict`` of metrics; the
        dict has "primary_metric" naming its headline number.
      default_fewshot: shots when --num_fewshot is not given (the paper's).
      data_format: what ``data_dir/<name>/`` must hold (for docs and errors).
    """

    name: str
    kind: str
    run: Callable[..., dict[str, Any]]
    default_fewshot: int
    data_format: str


def encode_pair(tokenizer: TokenizerLike, context: str, continuation: str
                ) -> tuple[list[int], list[int]]:
    """Token ids of (context, continuation) as lm-evaluation-harness makes them.

    Trailing whitespace of the context moves to the continuation; the continuation's
    ids are the tail of ``encode(context + continuation)`` after
    ``len(encode(context))`` tokens; the context starts with BOS.
    """
    n_spaces = len(context) - len(context.rstrip())
    if n_spaces:
        continuation = context[-n_spaces:] + continuation
        context = context[:-n_spaces]
    whole = tokenizer.encode(context + continuation, bos=False, eos=False)
    ctx = tokenizer.encode(context, bos=False, eos=False)
    cont = whole[len(ctx):]
    if not cont:
        # The continuation merged into the context's last token; score its text alone.
        cont = tokenizer.encode(continuation, bos=False, eos=False)
    return [tokenizer.bos_id, *ctx], cont


def sample_fewshot(pool: Sequence[Any], k: int, rng: random.Random, exclude: Any = None,
                   first_n: bool = False) -> list[Any]:
    """`k` few-shot examples from `pool`, never `exclude` (the doc being asked).

    `first_n` takes the first k (MMLU's dev examples, MBPP's prompt tasks);
    otherwise a seeded random sample, like the harness's default sampler.
    """
    if k <= 0:
        return []
    candidates = [d for d in pool if d is not exclude]
    if len(candidates) < k:
        raise ValueError(f"asked for {k} few-shot examples but only {len(candidates)} "
                         "are available; lower --num_fewshot or provide a train split")
    if first_n:
        return list(candidates[:k])
    return rng.sample(candidates, k)


def apply_limit(docs: list[Any], limit: int | None) -> list[Any]:
    """The first `limit` docs (all when limit is None or <= 0)."""
    return docs[:limit] if limit and limit > 0 else docs
