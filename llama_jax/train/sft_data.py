"""The finetuning run's data (``data.corpus='sft'``): examples, template, packed batches.

Read at set-up, before anything compiles: the JSONL file (``data.sft.path``,
or the embedded instruction set built on first use), rendered through the
template, tokenised with response masks, fitted to ``train.seq_len``; what was
skipped, truncated or dropped is logged with its counts. The trainer then
gets a `DataSetup` whose iterator is a `SFTIterator` (resumable through the
checkpoint's data item) and no held-out batches.
"""

from __future__ import annotations

import os

import jax
import ml_collections
from absl import logging

from llama_jax.chat.templates import ChatTemplate, get_template
from llama_jax.data.sft.embedded import ensure_instructions
from llama_jax.data.sft.encode import EncodeStats, encode_example, fit_examples
from llama_jax.data.sft.pack import SFTIterator
from llama_jax.data.sft.readers import ReadStats, read_jsonl
from llama_jax.data.tokenizer import load_tokenizer
from llama_jax.errors import ConfigError, DataError
from llama_jax.model.config import LlamaConfig
from llama_jax.train.data import DataSetup

SOURCE = "sft"


def sft_template(config: ml_collections.ConfigDict, tokenizer) -> ChatTemplate:
    """``data.sft.template``, or the format's default (see `base_config`)."""
    sft = config.data.sft
    try:
        if sft.template:
            return get_template(sft.template, tokenizer=tokenizer)
        if sft.format in ("alpaca", "flan"):
            return get_template("alpaca", tokenizer=tokenizer)
        return get_template(None, checkpoint=config.init.checkpoint or None, tokenizer=tokenizer)
    except ConfigError as e:
        raise ConfigError(f"data.sft.template={sft.template!r}: {e}") from e


def sft_path(config: ml_collections.ConfigDict) -> tuple[str, str]:
    """(JSONL path, format): ``data.sft.path``, or the embedded set (chat format)."""
    sft = config.data.sft
    if sft.path:
        return os.path.expanduser(sft.path), sft.format
    return str(ensure_instructions(config.data.root or None)), "chat"


def load_examples(config: ml_collections.ConfigDict, tokenizer):
    """(fitted examples, ReadStats, EncodeStats) of the config's SFT data."""
    sft, seq_len = config.data.sft, config.train.seq_len
    path, fmt = sft_path(config)
    template = sft_template(config, tokenizer)
    reads = ReadStats()
    encode_stats = EncodeStats()

    def encoded():
        for ex in read_jsonl(path, fmt, on_error=sft.on_error, stats=reads):
            try:
                yield encode_example(tokenizer, template, ex, sft.train_on)
            except DataError as e:
                if sft.on_error == "raise":
                    raise
                reads.skipped[str(e).split(": ", 1)[-1][:60]] += 1

    examples = fit_examples(encoded(), seq_len, sft.too_long, encode_stats)
    logging.info("SFT data %s (%s, template %s): %d lines, %d examples kept, %d skipped %s, "
                 "%d truncated, %d dropped as too long, %d dropped without a response token, "
                 "%d response tokens", path, fmt, template.name, reads.read,
                 encode_stats.examples, sum(reads.skipped.values()), dict(reads.skipped),
                 encode_stats.truncated, encode_stats.dropped_too_long,
                 encode_stats.dropped_no_response, encode_stats.response_tokens)
    if not examples:
        raise DataError(f"{path}: no example left to train on ({reads.read} lines, skipped "
                        f"{dict(reads.skipped)}, {encode_stats.dropped_too_long} too long for "
                        f"train.seq_len={seq_len}, {encode_stats.dropped_no_response} without "
                        "a response token)")
    return examples, reads, encode_stats


def setup_sft(config: ml_collections.ConfigDict, model_config: LlamaConfig,
              tokenizer_path: str | None) -> DataSetup:
    """The `DataSetup` of a finetuning run; `tokenizer_path`: the init checkpoint's."""
    tok_path = tokenizer_path or (os.path.expanduser(config.data.tokenizer)
                                  if config.data.tokenizer else "")
    if not tok_path:
        raise ConfigError("data.corpus='sft' needs a tokenizer: set --config.init.checkpoint "
                          "(its tokenizer.model) or --config.data.tokenizer=PATH")
    if not os.path.isfile(tok_path):
        raise ConfigError(f"tokenizer {tok_path!r} does not exist; set data.tokenizer to a "
                          "tokenizer.model (SentencePiece) or tokenizer.json file")
    tokenizer = load_tokenizer(tok_path)
    if tokenizer.vocab_size > model_config.vocab_size:
        raise ConfigError(f"the tokenizer {tok_path} has {tokenizer.vocab_size} pieces but the "
                          f"model's vocab_size is {model_config.vocab_size}")
    examples, _, _ = load_examples(config, tokenizer)
    t = config.train

    def make_iter():
        return SFTIterator(examples, seq_len=t.seq_len, global_batch_size=t.batch_size,
                           seed=config.data.seed, pad_id=tokenizer.pad_id,
                           process_index=jax.process_index(),
                           process_count=jax.process_count(), shuffle=config.data.sft.shuffle)

    return DataSetup(tokenizer=tokenizer, tokenizer_path=tok_path, source_names=[SOURCE],
                     make_train_iterator=make_iter, eval_batches={})
