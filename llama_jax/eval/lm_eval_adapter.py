"""lm-evaluation-harness model class for llama_jax checkpoints: ``--model llama_jax``.

`LlamaJaxLM` is an ``lm_eval.api.model.TemplateLM`` registered under the name
``llama_jax``, so every lm-eval task runs on our jitted `Scorer` and
`Generator`::

    import lm_eval
    from llama_jax.eval.lm_eval_adapter import LlamaJaxLM
    lm = LlamaJaxLM(checkpoint="/ckpt/llama-7b", batch_size=16)
    lm_eval.simple_evaluate(model=lm, tasks=["hellaswag", "arc_easy"])

or lm-eval's own command line through ``python -m llama_jax.lm_eval --model
llama_jax --model_args checkpoint=/ckpt/llama-7b,batch_size=16 --tasks ...``.

Requests are tokenised and scored as lm-eval's ``hf`` model does them (BOS
first, TemplateLM's context / continuation split, HFLM's truncation, rolling
windows and stop handling), so the numbers equal ``--model hf`` on the same
weights; docs/lm_eval.md lists the model_args and the details, and
tests/test_lm_eval_adapter.py compares the two. Newer lm-eval releases find
plugins through the ``lm_eval.models`` entry-point group (``llama_jax =
"llama_jax.eval.lm_eval_adapter:LlamaJaxLM"``); 0.4.13 finds none, hence
``python -m llama_jax.lm_eval``.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Sequence
from typing import Any

import lm_eval.models  # noqa: F401 (fills lm-eval's registry first: `get_model` skips it once non-empty)
from absl import logging
from lm_eval.api.model import TemplateLM
from lm_eval.api.registry import register_model
from lm_eval.utils import simple_parse_args_string
from tqdm import tqdm

from llama_jax import sharding
from llama_jax.chat.templates import encode_rendered, get_template
from llama_jax.cli import user_errors
from llama_jax.convert import from_pretrained
from llama_jax.convert.hf_tokenizer import checkpoint_tokenizer
from llama_jax.data.tokenizer import check_tokenizer_fits
from llama_jax.errors import ConfigError, ConversionError
from llama_jax.eval.runner import build_context
from llama_jax.infer import placement
from llama_jax.infer.engine import GREEDY, SamplingConfig, end_ids

MODEL_NAME = "llama_jax"
ENTRY_POINT_GROUP = "lm_eval.models"  # newer lm-eval's plugin group (0.4.13 reads none)
DEFAULT_BATCH_SIZE = 8
DEFAULT_MAX_GEN_TOKS = 256  # HFLM's


@dataclasses.dataclass(frozen=True)
class AdapterOptions:
    """The model_args besides the checkpoint, validated (a bad one names itself)."""

    batch_size: int = DEFAULT_BATCH_SIZE
    max_length: int | None = None
    max_gen_toks: int = DEFAULT_MAX_GEN_TOKS
    seed: int = 0
    add_bos_token: bool = True
    prefix_token_id: int | None = None
    chat_template: str | None = None

    def __post_init__(self):
        for name in ("batch_size", "max_gen_toks", "max_length"):
            value = getattr(self, name)
            if value is None and name == "max_length":
                continue
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ConfigError(f"llama_jax model_args {name}={value!r} must be an integer "
                                  f">= 1 (--model_args {name}=N)")


def parse_batch_size(value: Any) -> int:
    """lm-eval's ``--batch_size`` (an int, "8", "auto" or "auto:N") as rows per compiled batch."""
    if value is None:
        return DEFAULT_BATCH_SIZE
    if isinstance(value, str) and value.startswith("auto"):
        logging.warning("llama_jax: batch_size=%s is not supported (batches are compiled once per "
                        "shape); using %d", value, DEFAULT_BATCH_SIZE)
        return DEFAULT_BATCH_SIZE
    try:
        size = int(value)
    except (TypeError, ValueError):
        raise ConfigError(f"llama_jax batch_size={value!r} must be an integer >= 1 "
                          "(--batch_size N or --model_args batch_size=N)") from None
    if size < 1 or isinstance(value, bool):
        raise ConfigError(f"llama_jax batch_size={value!r} must be an integer >= 1")
    return size


def parse_mesh_arg(value: Any) -> str | None:
    """A model_args mesh ("1x-1x1x1", "1:-1:1:1" or "1,-1,1,1") as the eval CLI's "1,-1,1,1"."""
    if value is None or value == "":
        return None
    text = str(value).replace("x", ",").replace(":", ",")
    if len(text.split(",")) != 4:
        raise ConfigError(f"llama_jax model_args mesh={value!r}: give four sizes for "
                          f"{sharding.MESH_AXES} joined by 'x', e.g. mesh=1x-1x1x1")
    return text


@register_model(MODEL_NAME)
class LlamaJaxLM(TemplateLM):
    """An lm-eval model running a llama_jax checkpoint on our jitted scorer and generator.

    Args:
      checkpoint: a checkpoint directory (every layout `from_pretrained`
        reads: Meta, Hugging Face, llama_jax orbax, a training workdir).
      tokenizer: tokenizer.model / tokenizer.json (default: the checkpoint's).
      batch_size: rows per compiled batch (lm-eval's ``--batch_size``).
      max_length: longest scored sequence (default: the model's max_seq_len).
      max_gen_toks: new tokens per generation unless a task sets its own.
      dtype: cast weights / compute ("float32", "bfloat16", "float16").
      mesh / mesh_rules / attention_impl: where and how the model runs.
      seed: base seed of sampled generations.
      add_bos_token: put BOS before every encoded text (a Llama's default).
      prefix_token_id: the context of an empty-context request (default BOS).
      chat_template: template for ``--apply_chat_template``.
      device, max_batch_size: lm-eval's; ignored.
      **unknown: any other key is a `ConfigError` listing the known ones.
    """

    def __init__(self, checkpoint: str | None = None, tokenizer: str | None = None,
                 batch_size: Any = None, max_length: int | None = None,
                 max_gen_toks: int = DEFAULT_MAX_GEN_TOKS, dtype: str | None = None,
                 mesh: str | None = None, mesh_rules: str | None = None,
                 attention_impl: str = "auto", seed: int = 0, add_bos_token: bool = True,
                 prefix_token_id: int | None = None, chat_template: str | None = None,
                 device: str | None = None, max_batch_size: int | None = None, **unknown: Any):
        super().__init__()
        if unknown:
            known = sorted(set(_ARG_NAMES) - {"self", "unknown"})
            raise ConfigError(f"llama_jax model_args: unknown key(s) {sorted(unknown)}; known: "
                              f"{', '.join(known)}")
        if not checkpoint:
            raise ConfigError("llama_jax needs a checkpoint: --model_args checkpoint=PATH "
                              "(a Meta, Hugging Face, llama_jax orbax or training directory)")
        if not os.path.exists(checkpoint):
            raise ConfigError(f"llama_jax model_args checkpoint={checkpoint} does not exist; "
                              "give a checkpoint directory")
        del device, max_batch_size  # JAX places the model on the mesh; batches are fixed
        opts = AdapterOptions(parse_batch_size(batch_size), max_length, max_gen_toks, int(seed),
                              bool(add_bos_token), prefix_token_id, chat_template)
        with user_errors():  # a checkpoint, tokenizer or mesh that cannot be used: one line
            mesh_obj = placement.parse_mesh(parse_mesh_arg(mesh))
            rules = sharding.make_rules(str(mesh_rules).replace(";", ",") if mesh_rules else None)
            try:
                tok, tok_path = checkpoint_tokenizer(checkpoint, tokenizer)
            except ConversionError as e:  # it names the eval CLI's flag; say ours
                raise ConversionError(f"{e} (here: --model_args ...,tokenizer=FILE)") from e
            # Unscanned: generate_until's decode loop runs unrolled layers (engine.py).
            overrides = {"attention_impl": attention_impl, "scan_layers": False,
                         **({"dtype": dtype} if dtype else {})}
            config, params = from_pretrained(checkpoint, dtype=dtype, config_overrides=overrides,
                                             mesh=mesh_obj, rules=rules, progress=False)
            check_tokenizer_fits(tok, config.vocab_size, f"checkpoint {checkpoint}")
        self.checkpoint = os.path.abspath(checkpoint)
        self.tokenizer_path = os.path.abspath(tok_path)
        self._setup(config, params, tok, opts, mesh=mesh_obj, rules=rules)

    @classmethod
    def create_from_arg_string(cls, arg_string: str, additional_config: dict | None = None
                               ) -> LlamaJaxLM:
        """From ``--model_args k=v,...`` plus lm-eval's ``--batch_size`` / ``--device``.

        A key given in both (batch_size) takes the model_args value, where HFLM
        would fail on the duplicate.
        """
        return cls.create_from_arg_obj(simple_parse_args_string(arg_string), additional_config)

    @classmethod
    def create_from_arg_obj(cls, arg_dict: dict[str, Any],
                            additional_config: dict[str, Any] | None = None) -> LlamaJaxLM:
        """From a dict of model_args plus lm-eval's extra config (model_args win)."""
        extra = {k: v for k, v in (additional_config or {}).items() if v is not None}
        return cls(**{**extra, **arg_dict})

    @classmethod
    def from_params(cls, config, params, tokenizer, *, mesh=None,
                    rules: sharding.Rules = sharding.DEFAULT_RULES, **options: Any) -> LlamaJaxLM:
        """An adapter on an already loaded model (e.g. the live params of a training run).

        `options` are `AdapterOptions` fields (batch_size, max_length, ...).
        """
        self = cls.__new__(cls)
        TemplateLM.__init__(self)
        self.checkpoint, self.tokenizer_path = None, getattr(tokenizer, "path", None)
        if "batch_size" in options:
            options["batch_size"] = parse_batch_size(options["batch_size"])
        self._setup(config, params, tokenizer, AdapterOptions(**options), mesh=mesh, rules=rules)
        return self

    def _setup(self, config, params, tokenizer, opts: AdapterOptions, *, mesh, rules) -> None:
        self.config, self.tok, self.opts = config, tokenizer, opts
        if opts.max_length is not None and opts.max_length > config.max_seq_len:
            raise ConfigError(f"llama_jax model_args max_length={opts.max_length} exceeds the "
                              f"model's max_seq_len={config.max_seq_len}")
        self._ctx = build_context(config, params, tokenizer, mesh=mesh, rules=rules,
                                  batch_size=opts.batch_size, max_len=opts.max_length,
                                  seed=opts.seed, progress=False)
        self._chat = None

    # --- tokenisation hooks (TemplateLM) -------------------------------------------------

    @property
    def eot_token_id(self) -> int:
        """End of text: the tokenizer's EOS (HFLM's eot_token_id)."""
        return self.tok.eos_id

    @property
    def prefix_token_id(self) -> int:
        """The context of an empty-context request and of the first rolling window: BOS."""
        if self.opts.prefix_token_id is not None:
            return int(self.opts.prefix_token_id)
        return self.tok.bos_id if self.tok.bos_id is not None else self.tok.eos_id

    @property
    def max_length(self) -> int:
        """Longest scored sequence (model_args max_length, else the model's max_seq_len)."""
        return self.opts.max_length or self.config.max_seq_len

    @property
    def max_gen_toks(self) -> int:
        """New tokens per generation when a task does not say (HFLM's 256)."""
        return self.opts.max_gen_toks

    @property
    def batch_size(self) -> int:
        """Rows per compiled batch."""
        return self.opts.batch_size

    @property
    def tokenizer_name(self) -> str:
        """Names the tokenizer in lm-eval's request caches."""
        return (self.tokenizer_path or "llama_jax-tokenizer").replace("/", "__")

    def _bos_text(self) -> str | None:
        bos = self.tok.bos_id
        return None if bos is None else self.tok.id_to_piece(bos)

    def tok_encode(self, string: str, add_special_tokens: bool | None = None,
                   left_truncate_len: int | None = None, **kwargs: Any) -> list[int]:
        """Token ids of `string` as HFLM makes them (see the module docstring)."""
        bos_text = self._bos_text()
        if add_special_tokens is None and bos_text and string.startswith(bos_text):
            ids = encode_rendered(self.tok, string)  # a rendered chat prompt: specials as ids
        else:
            add = self.opts.add_bos_token if add_special_tokens is None else add_special_tokens
            ids = self.tok.encode(string, bos=bool(add) and self.tok.bos_id is not None)
        if left_truncate_len:
            ids = ids[-left_truncate_len:]
        return ids

    def tok_decode(self, tokens: int | Sequence[int], skip_special_tokens: bool = True) -> str:
        """Text of `tokens`; a single special id with skip_special_tokens=False is its piece."""
        if isinstance(tokens, int):
            if not skip_special_tokens and tokens in (self.tok.bos_id, self.tok.eos_id):
                return self.tok.id_to_piece(tokens)
            tokens = [tokens]
        return self.tok.decode(list(tokens))

    # --- requests ---------------------------------------------------------------------------

    def _loglikelihood_tokens(self, requests, disable_tqdm: bool = False, **kwargs: Any
                              ) -> list[tuple[float, bool]]:
        """(log p(continuation | context), is_greedy) of encoded requests, on `Scorer`."""
        out: list[tuple[float, bool] | None] = [None] * len(requests)
        todo = []
        for i, (_, _, cont_ids) in enumerate(requests):
            if cont_ids:
                todo.append(i)
            else:  # an empty continuation: probability 1
                out[i] = (0.0, True)
        scores = self._ctx.scorer.loglikelihood(
            [(requests[i][1], requests[i][2]) for i in todo],
            progress=not disable_tqdm, desc="llama_jax loglikelihood") if todo else []
        for i, s in zip(todo, scores, strict=True):
            out[i] = (s.logprob, s.is_greedy)
        for (key, _, _), answer in zip(requests, out, strict=True):
            if key is not None:
                self.cache_hook.add_partial("loglikelihood", key, answer)
        return out  # type: ignore[return-value]

    def loglikelihood_rolling(self, requests, disable_tqdm: bool = False) -> list[float]:
        """Summed log-likelihood of each whole text, in the harness's rolling windows."""
        docs = [self.tok_encode(req.args[0]) for req in requests]
        scores = self._ctx.scorer.loglikelihood_rolling(
            docs, self.prefix_token_id, progress=not disable_tqdm,
            desc="llama_jax loglikelihood_rolling")
        out = []
        for req, (logprob, _) in zip(requests, scores, strict=True):
            self.cache_hook.add_partial("loglikelihood_rolling", req.args, logprob)
            out.append(logprob)
        return out

    def generate_until(self, requests, disable_tqdm: bool = False) -> list[str]:
        """Continuations of each context, one `Generator` call per distinct gen_kwargs."""
        groups: dict[str, list[int]] = {}
        for i, req in enumerate(requests):
            groups.setdefault(repr(sorted(req.args[1].items())), []).append(i)
        out: list[str | None] = [None] * len(requests)
        eos = self.tok_decode(self.eot_token_id, skip_special_tokens=False)
        bar = tqdm(total=len(requests), disable=disable_tqdm, desc="llama_jax generate_until")
        for idx in groups.values():
            until, max_gen, sampling = gen_options(requests[idx[0]].args[1], self.max_gen_toks,
                                                   eos)
            room = self.max_length - max_gen
            if room < 1:
                raise ConfigError(f"max_gen_toks={max_gen} leaves no room for a context in "
                                  f"max_length={self.max_length}; generate fewer tokens")
            contexts = [self.tok_encode(requests[i].args[0], left_truncate_len=room) for i in idx]
            texts = self._generate(contexts, until, max_gen, sampling)
            for i, text in zip(idx, texts, strict=True):
                out[i] = text
                self.cache_hook.add_partial("generate_until", requests[i].args, text)
            bar.update(len(idx))
        bar.close()
        return out  # type: ignore[return-value]

    def _generate(self, contexts: list[list[int]], until: list[str], max_gen: int,
                  sampling: SamplingConfig) -> list[str]:
        stops = [s for s in until if s]

        def finished(prompt_index: int, toks: list[int]) -> bool:
            text = self.tok_decode(toks)
            return any(s in text for s in stops)

        outs = self._ctx.generator.generate_tokens(
            contexts, max_new_tokens=max_gen, sampling=sampling, eos_id=end_ids(self.tok),
            seed=self.opts.seed, is_finished=finished if stops else None, progress=False)
        return [cut_at_stops(self.tok_decode(o[0]), until) for o in outs]

    # --- chat templates ---------------------------------------------------------------------

    def _template(self):
        if self._chat is None:
            with user_errors():
                self._chat = get_template(self.opts.chat_template, checkpoint=self.checkpoint,
                                          tokenizer=self.tok)
        return self._chat

    def chat_template(self, chat_template: bool | str = False) -> str | None:
        """The Jinja source of the chat template in use (lm-eval logs and hashes it)."""
        if chat_template is False or chat_template is None:
            return None
        return self._template().source

    def apply_chat_template(self, chat_history: list[dict[str, str]],
                            add_generation_prompt: bool = True) -> str:
        """The conversation rendered with the model's chat template (lm-eval's hook)."""
        return self._template().render(chat_history, add_generation_prompt=add_generation_prompt)


_ARG_NAMES = LlamaJaxLM.__init__.__code__.co_varnames[:LlamaJaxLM.__init__.__code__.co_argcount]


_MAX_TOKEN_KEYS = ("max_gen_toks", "max_new_tokens", "max_tokens", "max_completion_tokens")


def gen_options(gen_kwargs: dict[str, Any], default_max: int, eos: str | None
                ) -> tuple[list[str], int, SamplingConfig]:
    """(stop strings, max new tokens, sampling) of a request's gen_kwargs, as lm-eval reads them.

    lm-eval's rules (``normalize_gen_kwargs`` + ``handle_stop_sequences``): the
    first of max_gen_toks / max_new_tokens / max_tokens / max_completion_tokens,
    else `default_max`; greedy unless ``do_sample`` (when absent: unless
    temperature > 0); the EOS piece joins the ``until`` strings.
    """
    until = gen_kwargs.get("until")
    until = [] if until is None else [until] if isinstance(until, str) else list(until)
    if eos is not None and eos not in until:
        until.append(eos)
    max_gen = next((gen_kwargs[k] for k in _MAX_TOKEN_KEYS if gen_kwargs.get(k) is not None),
                   default_max)
    temperature = float(gen_kwargs.get("temperature") or 0.0)
    do_sample = gen_kwargs.get("do_sample")
    if do_sample is None:
        do_sample = temperature > 0.0
    if not do_sample or temperature == 0.0:
        return until, int(max_gen), GREEDY
    try:
        sampling = SamplingConfig(temperature=temperature, top_k=int(gen_kwargs.get("top_k") or 0),
                                  top_p=float(gen_kwargs.get("top_p") or 1.0))
    except ValueError as e:
        raise ConfigError(f"llama_jax gen_kwargs: {e}") from e
    return until, int(max_gen), sampling


def cut_at_stops(text: str, until: Sequence[str]) -> str:
    """`text` before the first occurrence of each stop string in turn (lm-eval's post-processing)."""
    for stop in until:
        if stop:
            text = text.split(stop)[0]
    return text
