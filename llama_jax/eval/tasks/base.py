"""What every task shares: the evaluation context and its options, the task
record, few-shot sampling and lm-evaluation-harness's context/continuation
tokenisation."""

from __future__ import annotations

import dataclasses
import os
import random
from collections.abc import Callable, Sequence
from typing import Any, Protocol

from llama_jax.chat.templates import ChatTemplate, encode_rendered, get_template
from llama_jax.errors import ConfigError


class TokenizerLike(Protocol):
    """The tokenizer methods evaluation uses (`llama_jax.data.tokenizer.Tokenizer`)."""

    bos_id: int
    eos_id: int

    def encode(self, text: str, bos: bool = False, eos: bool = False) -> list[int]: ...

    def decode(self, ids: Sequence[int]) -> str: ...


@dataclasses.dataclass(frozen=True)
class EvalOptions:
    """Run-wide task options; each field is the eval CLI flag of the same name.

    Validated on construction (a bad value raises `ConfigError` naming the
    option); an unknown option name is a ``TypeError``, not a silent default.

    Attributes:
      gsm8k_samples: k of GSM8K's maj1@k (1: greedy; the paper: 100).
      gsm8k_temperature: sampling temperature when gsm8k_samples > 1.
      gsm8k_max_new_tokens: tokens generated per GSM8K answer.
      qa_max_new_tokens: tokens generated per NaturalQuestions / TriviaQA answer.
      code_samples: samples per HumanEval / MBPP problem (the n of pass@k).
      code_temperature: code sampling temperature (None: greedy when
        code_samples is 1, else 0.1).
      code_max_new_tokens: tokens generated per program.
      sandbox_workers: generated programs run at once.
      sandbox_timeout_s: wall-clock limit per generated program.
      max_gen_tokens: overrides every generative task's max new tokens.
      perplexity_corpus: 'embedded', a corpus root or a training config file
        (``path.py[:arg]``) whose held-out split the perplexity task scores.
      perplexity_sources: explicit `SourceSpec`s for the perplexity task
        (instead of perplexity_corpus).
      perplexity_seq_len: row length of the packed perplexity batches (None:
        the scorer's max_len).
      position_bucket: width in tokens of the position buckets of
        ``long_perplexity`` ([0, w), [w, 2w), ...).
      passkey_lengths: prompt lengths in tokens of ``passkey`` (None: a
        quarter, a half and all of the scorer's max_len).
      passkey_depths: where the pass key sits in the filler, 0 (start) to 1 (end).
      passkey_samples: prompts (pass keys) per length and depth.
      chat_template: render every prompt with this chat template (a name of
        `llama_jax.chat.templates.template_names` or a tokenizer_config.json),
        as lm-evaluation-harness's ``--apply_chat_template``: the whole
        context (few-shot examples included) is one user turn, followed by
        the template's generation prompt; the continuation is scored (or
        generated) after it. None: plain text prompts with BOS.
      math_samples: k of MATH's maj1@k (1: greedy; the paper: 256).
      math_temperature: sampling temperature when math_samples > 1.
      math_max_new_tokens: tokens generated per MATH solution.
      toxicity_scorer: RealToxicityPrompts' scorer: "perspective" (Google's
        Perspective API; needs perspective_api_key) or the path of a local
        Hugging Face sequence-classification checkpoint, or (programmatic use)
        an object with ``name`` and ``score(texts) -> list[float]``. None: the
        task fails with a ConfigError saying how to give one.
      toxicity_label: the toxic class of a local classifier (a label name of
        its config's id2label, or an index).
      toxicity_max_new_tokens: tokens generated per prompt (the paper: 20).
      toxicity_batch_size: continuations per local classifier batch.
      perspective_api_key: the Perspective API key (only sent with
        toxicity_scorer=perspective).
      perspective_api_url: the API's base URL (a local stub in the tests).
      perspective_qps: Perspective requests per second (the API's default quota: 1).
      perspective_retries: retries of a request answered 429 or 5xx.
      truthfulqa_judge: a local checkpoint folder of TruthfulQA's truthfulness
        judge (GPT-judge); scores ``truthful`` of truthfulqa_gen (None: not computed).
      truthfulqa_info_judge: the informativeness judge (GPT-info) folder; with
        truthfulqa_judge, scores ``truthful*informative``.
    """

    gsm8k_samples: int = 1
    gsm8k_temperature: float = 0.6
    gsm8k_max_new_tokens: int = 256
    qa_max_new_tokens: int = 32
    code_samples: int = 1
    code_temperature: float | None = None
    code_max_new_tokens: int = 512
    sandbox_workers: int = 4
    sandbox_timeout_s: float = 10.0
    max_gen_tokens: int | None = None
    perplexity_corpus: str | None = None
    perplexity_sources: tuple[Any, ...] | None = None
    perplexity_seq_len: int | None = None
    position_bucket: int = 256
    passkey_lengths: tuple[int, ...] | None = None
    passkey_depths: tuple[float, ...] = (0.0, 0.25, 0.5, 0.75, 1.0)
    passkey_samples: int = 5
    chat_template: str | None = None
    math_samples: int = 1
    math_temperature: float = 0.6
    math_max_new_tokens: int = 256
    toxicity_scorer: str | Any | None = None
    toxicity_label: str = "toxic"
    toxicity_max_new_tokens: int = 20
    toxicity_batch_size: int = 32
    perspective_api_key: str | None = None
    perspective_api_url: str = "https://commentanalyzer.googleapis.com/v1alpha1"
    perspective_qps: float = 1.0
    perspective_retries: int = 5
    truthfulqa_judge: str | None = None
    truthfulqa_info_judge: str | None = None

    def __post_init__(self):
        _check_long_context(self)
        _check_judges(self)
        if self.chat_template is not None:
            get_template(self.chat_template)  # an unknown name: ConfigError naming the names
        at_least_one = ("gsm8k_samples", "gsm8k_max_new_tokens", "qa_max_new_tokens",
                        "code_samples", "code_max_new_tokens", "sandbox_workers",
                        "math_samples", "math_max_new_tokens", "toxicity_max_new_tokens",
                        "toxicity_batch_size")
        for name in at_least_one + ("max_gen_tokens",):
            value = getattr(self, name)
            if value is None and name not in at_least_one:
                continue
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ConfigError(f"eval option {name}={value!r} must be an integer >= 1 "
                                  f"(--{name})")
        if self.perplexity_seq_len is not None and self.perplexity_seq_len < 2:
            raise ConfigError(f"eval option perplexity_seq_len={self.perplexity_seq_len} "
                              "must be >= 2")
        _check_toxicity(self)
        for name in ("gsm8k_temperature", "code_temperature", "math_temperature"):
            value = getattr(self, name)
            if value is not None and not value >= 0.0:
                raise ConfigError(f"eval option {name}={value!r} must be >= 0 (0 = greedy) "
                                  f"(--{name})")
        if not self.sandbox_timeout_s > 0.0:
            raise ConfigError(f"eval option sandbox_timeout_s={self.sandbox_timeout_s!r} must "
                              "be > 0 seconds (--sandbox_timeout_s)")
        if self.perplexity_sources is not None:
            object.__setattr__(self, "perplexity_sources", tuple(self.perplexity_sources))


def _check_toxicity(opts: EvalOptions) -> None:
    """Validates the Perspective client's options (the scorer itself is checked
    when the toxicity task runs: a path that is not a checkpoint is a ConfigError there)."""
    if not opts.perspective_qps > 0.0:
        raise ConfigError(f"eval option perspective_qps={opts.perspective_qps!r} must be > 0 "
                          "requests per second (--perspective_qps)")
    retries = opts.perspective_retries
    if isinstance(retries, bool) or not isinstance(retries, int) or retries < 0:
        raise ConfigError(f"eval option perspective_retries={retries!r} must be an integer "
                          ">= 0 (--perspective_retries)")


def _check_judges(opts: EvalOptions) -> None:
    """The TruthfulQA judge options: existing folders; the info judge needs the truth judge."""
    for name in ("truthfulqa_judge", "truthfulqa_info_judge"):
        path = getattr(opts, name)
        if path is not None and not os.path.isdir(path):
            raise ConfigError(f"eval option {name}={path!r} is not a directory; give a local "
                              "judge checkpoint folder (e.g. a Hugging Face Llama fine-tuned as "
                              f"TruthfulQA's GPT-judge / GPT-info), or leave --{name} out")
    if opts.truthfulqa_info_judge is not None and opts.truthfulqa_judge is None:
        raise ConfigError("--truthfulqa_info_judge needs --truthfulqa_judge too (the paper's "
                          "truthful*informative needs both judges)")


def _numbers(name: str, values: Any, kind: type) -> tuple[Any, ...]:
    """A tuple of `kind` from a sequence of numbers or strings (a comma flag's list)."""
    try:
        out = tuple(kind(v) for v in values)
    except (TypeError, ValueError):
        raise ConfigError(f"eval option {name}={values!r} must be a list of numbers "
                          f"(--{name}=a,b,c)") from None
    if not out:
        raise ConfigError(f"eval option {name} is empty; give at least one value (--{name})")
    return out


def _check_long_context(opts: EvalOptions) -> None:
    """Validates (and normalises to tuples) the long-context options."""
    for name in ("position_bucket", "passkey_samples"):
        value = getattr(opts, name)
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ConfigError(f"eval option {name}={value!r} must be an integer >= 1 (--{name})")
    if opts.passkey_lengths is not None:
        lengths = _numbers("passkey_lengths", opts.passkey_lengths, int)
        if min(lengths) < 16:
            raise ConfigError(f"eval option passkey_lengths={lengths} must be >= 16 tokens each "
                              "(--passkey_lengths)")
        object.__setattr__(opts, "passkey_lengths", lengths)
    depths = _numbers("passkey_depths", opts.passkey_depths, float)
    if not all(0.0 <= d <= 1.0 for d in depths):
        raise ConfigError(f"eval option passkey_depths={depths} must lie in [0, 1] "
                          "(0: the key first, 1: last; --passkey_depths)")
    object.__setattr__(opts, "passkey_depths", depths)


@dataclasses.dataclass
class EvalContext:
    """Everything a task needs to run: a tokenizer and (built on first use)
    the scorer and the generator, plus run-wide options.

    Attributes:
      tokenizer: the model's tokenizer.
      make_scorer / make_generator: zero-argument factories, called once.
      seed: random seed for few-shot sampling and generation.
      options: the run's `EvalOptions`.
      progress: progress bars on stderr: None = when it is a terminal,
        False = never, True = always.
      label: what the bars are called (the runner sets the task's name).
    """

    tokenizer: TokenizerLike
    make_scorer: Callable[[], Any] | None = None
    make_generator: Callable[[], Any] | None = None
    seed: int = 0
    options: EvalOptions = dataclasses.field(default_factory=EvalOptions)
    progress: bool | None = None
    label: str = ""
    _scorer: Any = None
    _generator: Any = None
    _chat: Any = None

    def __post_init__(self):
        if not isinstance(self.options, EvalOptions):
            raise TypeError(f"EvalContext.options must be an EvalOptions, got "
                            f"{type(self.options).__name__}")

    @property
    def chat(self) -> ChatTemplate | None:
        """The options' chat template bound to this tokenizer's bos/eos, or None."""
        if self.options.chat_template is None:
            return None
        if self._chat is None:
            self._chat = get_template(self.options.chat_template, tokenizer=self.tokenizer)
        return self._chat

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
      needs_data: False for a task that runs without ``--data_dir`` (built-in
        or synthetic data).
    """

    name: str
    kind: str
    run: Callable[..., dict[str, Any]]
    default_fewshot: int
    data_format: str
    needs_data: bool = True


def encode_pair(tokenizer: TokenizerLike, context: str, continuation: str,
                chat: ChatTemplate | None = None) -> tuple[list[int], list[int]]:
    """Token ids of (context, continuation) as lm-evaluation-harness makes them.

    Trailing whitespace of the context moves to the continuation; the continuation's
    ids are the tail of ``encode(context + continuation)`` after
    ``len(encode(context))`` tokens; the context starts with BOS.

    With `chat`, the context becomes the prompt of one user turn
    (`chat_prompt`) and the continuation's ids are the tail of the
    rendered prompt plus the continuation.
    """
    if chat is not None:
        prompt = chat_prompt(chat, context)
        ctx = encode_rendered(tokenizer, prompt)
        whole = encode_rendered(tokenizer, prompt + continuation)
        cont = whole[len(ctx):] if whole[:len(ctx)] == ctx else []
        return ctx, cont or tokenizer.encode(continuation, bos=False, eos=False)
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


def chat_prompt(chat: ChatTemplate, context: str) -> str:
    """`context` (its trailing whitespace dropped) as one user turn with the generation prompt."""
    return chat.render([{"role": "user", "content": context.rstrip()}], add_generation_prompt=True)


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


def check_limit(limit: int | None) -> None:
    """A `ConfigError` naming ``--limit`` unless it is None (all examples) or >= 1."""
    if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int) or limit < 1):
        raise ConfigError(f"--limit={limit!r} must be an integer >= 1 (leave it out to "
                          "evaluate every example)")


def apply_limit(docs: list[Any], limit: int | None) -> list[Any]:
    """The first `limit` docs (all when limit is None); a limit below 1 is a `ConfigError`."""
    check_limit(limit)
    return docs if limit is None else docs[:limit]
