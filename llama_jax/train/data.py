"""The training run's data, from the config's ``data`` section: sources, tokenizer, eval batches.

``data.corpus='embedded'`` uses the corpus built from installed packages
(`llama_jax.data.corpus.ensure_corpus`) and its tokenizer; ``'sources'`` uses
``data.sources`` (dicts of `SourceSpec` fields; relative paths are under
``data.root``) with the SentencePiece model at ``data.tokenizer`` (default
``<data.root>/tokenizer.model``, where the paper configs expect it). Everything
is checked here, before compilation: missing files, a tokenizer whose
vocabulary does not fit the model.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable
from typing import Any

import jax
import ml_collections
import numpy as np

from llama_jax.data import mixture
from llama_jax.data.corpus import ensure_corpus
from llama_jax.data.sources import SourceSpec
from llama_jax.data.tokenizer import load_tokenizer
from llama_jax.errors import ConfigError
from llama_jax.model.config import LlamaConfig
from llama_jax.train.config import DEFAULT_TOKENIZER
from llama_jax.train.step import BATCH_KEYS


@dataclasses.dataclass
class DataSetup:
    """What the loop needs from the data side."""

    tokenizer: Any
    tokenizer_path: str
    source_names: list[str]
    make_train_iterator: Callable[[], Any]
    eval_batches: dict[str, list[dict[str, np.ndarray]]]
    batch_keys: tuple[str, ...] = BATCH_KEYS


def _resolve(path: str, root: str) -> str:
    path = os.path.expanduser(path)
    if root and not os.path.isabs(path):
        return os.path.join(os.path.expanduser(root), path)
    return path


def source_specs(data_cfg: ml_collections.ConfigDict, vocab_size: int,
                 tokenizer: str | None = None) -> tuple[list[Any], str]:
    """(SourceSpecs, tokenizer path) for the ``data`` section.

    The embedded corpus is built on first use (under ``data.root``, default
    its cache folder) with a tokenizer of `vocab_size` pieces.
    """
    if data_cfg.corpus == "embedded":
        info = ensure_corpus(root=data_cfg.root or None, vocab_size=vocab_size)
        specs = [s if isinstance(s, SourceSpec) else SourceSpec.from_dict(s) for s in info.sources]
        tokenizer = tokenizer or data_cfg.tokenizer or str(info.tokenizer_path)
        return specs, tokenizer
    specs = []
    for i, d in enumerate(data_cfg.sources):
        d = dict(d)
        if "path" not in d or "name" not in d:
            raise ConfigError(f"data.sources[{i}] = {d} needs at least 'name', 'kind' and 'path'")
        if d.get("kind") != "tfds":
            d["path"] = _resolve(d["path"], data_cfg.root)
        specs.append(SourceSpec.from_dict(d))
    if tokenizer:  # An init checkpoint's.
        return specs, tokenizer
    if data_cfg.tokenizer:
        return specs, _resolve(data_cfg.tokenizer, data_cfg.root)
    how = ("set --config.data.tokenizer=PATH to the SentencePiece .model for these sources "
           "(train one with `python -m llama_jax.data.tokenizer`)")
    if not data_cfg.root:
        raise ConfigError(f"data.tokenizer and data.root are both empty: {how}, or put it at "
                          f"DATA_ROOT/{DEFAULT_TOKENIZER} and set --config.data.root=DATA_ROOT")
    default = _resolve(DEFAULT_TOKENIZER, data_cfg.root)
    if not os.path.isfile(default):
        raise ConfigError(f"data.tokenizer is empty and its default {default!r} "
                          f"(data.root/{DEFAULT_TOKENIZER}) does not exist: copy the tokenizer "
                          f"there, or {how}")
    return specs, default


def setup_data(config: ml_collections.ConfigDict, model_config: LlamaConfig,
               tokenizer_path: str | None = None) -> DataSetup:
    """Build sources, tokenizer and held-out eval batches; check them against the model.

    `tokenizer_path` (an init checkpoint's tokenizer) replaces the sources' one."""
    d, t = config.data, config.train
    specs, tok_path = source_specs(d, model_config.vocab_size, tokenizer_path)
    if not os.path.isfile(tok_path):
        raise ConfigError(f"tokenizer {tok_path!r} does not exist; set data.tokenizer to a "
                          "tokenizer.model (SentencePiece) or tokenizer.json file")
    tokenizer = load_tokenizer(tok_path)
    if tokenizer.vocab_size > model_config.vocab_size:
        raise ConfigError(
            f"the tokenizer {tok_path} has {tokenizer.vocab_size} pieces but the model's "
            f"vocab_size is {model_config.vocab_size}; set --config.model.vocab_size="
            f"{tokenizer.vocab_size} or use a smaller tokenizer")
    built = mixture.build_sources(specs)  # Missing paths raise DataError here.
    names = [s.name for s in built]
    process_index, process_count = jax.process_index(), jax.process_count()

    def make_iter():
        return mixture.make_train_iterator(
            built, tokenizer, seq_len=t.seq_len, global_batch_size=t.batch_size, seed=d.seed,
            process_index=process_index, process_count=process_count,
            num_workers=d.num_workers)

    eval_batches: dict[str, list] = {}
    if t.eval_batches:
        eval_bs = t.batch_size // t.grad_accum_steps
        for i, (src, spec) in enumerate(zip(built, specs, strict=True)):
            if spec.weight <= 0 or spec.heldout_fraction <= 0:
                continue
            eval_batches[src.name] = [
                {k: b[k] for k in BATCH_KEYS}
                for b in mixture.make_eval_batches(
                    src, tokenizer, seq_len=t.seq_len, batch_size=eval_bs,
                    max_batches=t.eval_batches, source_id=i, process_index=process_index,
                    process_count=process_count)]
    return DataSetup(tokenizer=tokenizer, tokenizer_path=tok_path, source_names=names,
                     make_train_iterator=make_iter, eval_batches=eval_batches)
