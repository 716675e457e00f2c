r"""The main job: train (or resume) a LLaMA from a config file.

    python -m llama_jax.train --config=configs/tiny.py --workdir=/tmp/llama_tiny \
        [--config.train.steps=50 --config.mesh.data=2 ...]

A thin absl entry point: parse flags, load the locked config
(`config_flags.DEFINE_config_file`), call `train_and_evaluate(config,
workdir)` (`llama_jax.train.loop`). Running it again with the same --workdir
resumes from the newest complete checkpoint. Exit status (`llama_jax.cli`):
0 when training finished or was preempted (SIGTERM/SIGINT: a checkpoint is
written first); 2 for a user error -- bad flags (an unknown --config.* key
names its closest matches; a config file that does not load, has no
get_config or raises), config, data, tokenizer or workdir (a file, read-only)
-- printed as
one ``error: ...`` line that says what to fix; 1 for a diverged loss (the
message names the last good checkpoint) or an internal error.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence

from absl import app, flags, logging
from ml_collections import config_flags

from llama_jax.cli import check_folder, run_cli
from llama_jax.train.config_file import check_config_argv
from llama_jax.train.loop import TrainResult, train_and_evaluate

FLAGS = flags.FLAGS
_CONFIG = config_flags.DEFINE_config_file(
    "config", None, "Run config file, e.g. configs/tiny.py (a get_config() returning a ConfigDict).")
flags.DEFINE_string("workdir", None, "Directory for checkpoints, metrics.jsonl and TensorBoard "
                    "logs; an existing one is resumed.")

class _QuietLibraries:
    """Keep only orbax's WARNING records unless --verbosity >= 1: its INFO (dozens per
    save) and ERROR records (which repeat a failed save we report) are dropped."""

    def filter(self, record) -> bool:
        # orbax's ERROR records repeat (with tracebacks) a failed save that the
        # Checkpointer reports as one CheckpointError; --verbosity=1 shows them.
        return "/orbax/" not in record.pathname or record.levelno == 30


def main(argv: Sequence[str]) -> None:
    """absl main: run `train_and_evaluate`; errors go to `llama_jax.cli`'s one path."""
    if logging.get_verbosity() < 1:
        logging.get_absl_handler().addFilter(_QuietLibraries())
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments {list(argv[1:])}")
    if FLAGS.workdir is None:
        raise app.UsageError("--workdir is required (a new directory, or an old one to resume)")
    config = _CONFIG.value
    if config is None:
        raise app.UsageError("--config is required, e.g. --config=configs/tiny.py")
    check_folder(FLAGS.workdir, "workdir")  # a file or a read-only place: before any work
    logging.info("config:\n%s", config)
    result: TrainResult = train_and_evaluate(config, FLAGS.workdir)
    print(f"{result.status}: step {result.step} (from {result.start_step}), "
          f"last loss {result.last_loss}, {result.wall_seconds:.1f}s", file=sys.stderr)
    if result.footprint is not None:
        print(f"footprint: {result.footprint.describe()}", file=sys.stderr)


def run() -> None:
    """Console-script entry point (``llama-jax-train``)."""
    run_cli(main, precheck=check_config_argv, cpu_preset=True)


if __name__ == "__main__":
    run()
