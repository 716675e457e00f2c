r"""``python -m llama_jax.prepare``: clean one source's data on datatrove.

    python -m llama_jax.prepare --config=configs/prepare/ccnet.py \
        --config.input='/data/cc/*.jsonl.gz' --config.output=/data/cc_clean \
        [--config.executor=local|ray|slurm] [--config.workers=N] [--config.<stage>.enabled=False]

A thin absl entry point: parse flags, load the config
(`config_flags.DEFINE_config_file`), call `llama_jax.prepare.pipeline.run`.
The stages run in ``cfg.stages`` order; the shards go to ``DIR/data``, the
per-stage accounting to ``DIR/stats.json`` and the printed table. Running the
same command again resumes: finished tasks are skipped. Exit status
(`llama_jax.cli`): 0 done; 2 a user error (an unknown ``--config.*`` key, an
empty input glob, a missing model file, an unknown language code, ...) as one
``error: ...`` line naming the fix, raised before any executor starts; 1 a
failed run (the message names the segment's log folder).
"""

from __future__ import annotations

import json
import sys
from collections.abc import Sequence

from absl import app, flags
from ml_collections import config_flags

from llama_jax.cli import check_folder, run_cli
from llama_jax.prepare.pipeline import run as run_pipeline
from llama_jax.train.config_file import check_config_argv

FLAGS = flags.FLAGS
_CONFIG = config_flags.DEFINE_config_file(
    "config", None, "Preparation config, e.g. configs/prepare/ccnet.py (get_config() -> ConfigDict).")


def main(argv: Sequence[str]) -> None:
    """absl main: run the pipeline; errors go to `llama_jax.cli`'s one path."""
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments {list(argv[1:])}")
    config = _CONFIG.value
    if config is None:
        raise app.UsageError("--config is required, e.g. --config=configs/prepare/ccnet.py")
    if config.output:
        check_folder(config.output, "config.output")
    result = run_pipeline(config)
    if "submitted" in result:
        print(json.dumps(result, indent=1), file=sys.stderr)


def run() -> None:
    """Console-script style entry point."""
    run_cli(main, precheck=check_config_argv)


if __name__ == "__main__":
    run()
