"""``python -m llama_jax.data.sft --out=FILE [--format=chat|alpaca]``: write the embedded set."""

from __future__ import annotations

from absl import flags

from llama_jax.cli import run_cli
from llama_jax.data.sft.embedded import write_instructions

FLAGS = flags.FLAGS
flags.DEFINE_string("out", None, "JSONL file to write the embedded instruction set to.")
flags.DEFINE_enum("format", "chat", ["chat", "alpaca"], "Record format of the lines.")
flags.mark_flag_as_required("out")


def main(argv):
    """Build the set and print where it went."""
    del argv
    n = write_instructions(FLAGS.out, FLAGS.format)
    print(f"wrote {n} {FLAGS.format} examples to {FLAGS.out}")
    return 0


def run():
    """Console entry point."""
    run_cli(main)


if __name__ == "__main__":
    run()
