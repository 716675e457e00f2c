"""Convert a LLaMA checkpoint between Meta, Hugging Face and llama_jax orbax layouts.

    python -m llama_jax.convert --src=/ckpt/llama-13b --dst=/out/llama-13b-hf \
        --dst_format=hf [--dtype=bfloat16] [--shards=N] [--overwrite] \
        [--tokenizer=/ckpt/tokenizer.model] [--noprogress]

The source layout is detected (see `llama_jax.convert.detect_format`).
`--shards` splits a Meta checkpoint into N model-parallel files (as Meta ships
13B/33B/65B) or a HF checkpoint into N safetensors files with an index. The
tokenizer (``--tokenizer``, else the one found with the source) is copied as
``tokenizer.model``; ``--dst_format=hf`` also writes the files
``transformers.AutoTokenizer`` reads, and ``generation_config.json``.
Exit status (`llama_jax.cli`): 0 done; 2 for a user error (flags, a source
that cannot be read, a non-empty --dst without --overwrite: one ``error: ...``
line); 1 otherwise.
"""

from __future__ import annotations

from absl import app, flags, logging

from llama_jax.cli import run_cli
from llama_jax.convert import FORMATS, convert_checkpoint
from llama_jax.model.config import DTYPES

_SRC = flags.DEFINE_string("src", None, "Source checkpoint directory (any layout).")
_DST = flags.DEFINE_string("dst", None, "Destination directory (created).")
_DST_FORMAT = flags.DEFINE_enum("dst_format", None, list(FORMATS), "Layout to write.")
_DTYPE = flags.DEFINE_enum("dtype", None, list(DTYPES),
                           "Cast parameters to this dtype (default: keep the stored dtype).")
_SHARDS = flags.DEFINE_integer("shards", 1, "Meta: model-parallel shards; HF: safetensors files.",
                               lower_bound=1)
_OVERWRITE = flags.DEFINE_bool("overwrite", False, "Replace a non-empty --dst.")
_TOKENIZER = flags.DEFINE_string(
    "tokenizer", None, "SentencePiece tokenizer.model to ship with the weights (default: the one "
    "in --src, beside a Meta release, or in a training workdir, if any).")
_PROGRESS = flags.DEFINE_bool("progress", True, "Per-tensor progress bars (on a TTY only).")

flags.mark_flags_as_required(["src", "dst", "dst_format"])


def main(argv):
    """Convert --src to --dst; errors go to `llama_jax.cli`'s one path (exit 2)."""
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments {argv[1:]}")
    config = convert_checkpoint(_SRC.value, _DST.value, _DST_FORMAT.value, dtype=_DTYPE.value,
                                shards=_SHARDS.value, overwrite=_OVERWRITE.value,
                                tokenizer=_TOKENIZER.value, progress=_PROGRESS.value)
    logging.info("wrote %s (%s, %s, %d shard(s)): %s", _DST.value, _DST_FORMAT.value,
                 config.param_dtype, _SHARDS.value, config)
    print(f"wrote {_DST.value} as {_DST_FORMAT.value} ({config.param_dtype})")
    return 0


def run():
    """Console entry point."""
    run_cli(main)


if __name__ == "__main__":
    run()
