r"""The main job: train (or resume) a LLaMA from a config file.

    python -m llama_jax.train --config=configs/tiny.py --workdir=/tmp/llama_tiny \
        [--config.train.steps=50 --config.mesh.data=2 ...]

A thin absl entry point: parse flags, load the locked config
(`config_flags.DEFINE_config_file`), call `train_and_evaluate(config,
workdir)` (`llama_jax.trainer`). Running it again with the same --workdir
resumes from the newest complete checkpoint. Exit status: 0 when training
finished or was preempted (SIGTERM/SIGINT: a checkpoint is written first),
1 for a user error (the message says what to fix) or a diverged loss, 2 for
bad flags (an unknown --config.* key names its closest matches).
"""

from __future__ import annotations

import difflib
import importlib.util
import sys
from collections.abc import Sequence

import ml_collections
from absl import app, flags, logging
from ml_collections import config_flags

from llama_jax.config_base import ConfigError
from llama_jax.trainer import NonFiniteLossError, TrainResult, train_and_evaluate

FLAGS = flags.FLAGS
_CONFIG = config_flags.DEFINE_config_file(
    "config", None, "Run config file, e.g. configs/tiny.py (a get_config() returning a ConfigDict).")
flags.DEFINE_string("workdir", None, "Directory for checkpoints, metrics.jsonl and TensorBoard "
                    "logs; an existing one is resumed.")

__all__ = ["check_overrides", "load_config_file", "main", "run", "train_and_evaluate"]


def load_config_file(spec: str) -> ml_collections.ConfigDict:
    """The ConfigDict of ``path[:arg]`` (as ``--config`` takes it)."""
    path, _, arg = spec.partition(":")
    module_spec = importlib.util.spec_from_file_location("_llama_jax_run_config", path)
    if module_spec is None or module_spec.loader is None:
        raise ConfigError(f"--config={spec}: cannot load {path!r} as a Python file")
    module = importlib.util.module_from_spec(module_spec)
    try:
        module_spec.loader.exec_module(module)
    except FileNotFoundError as e:
        raise ConfigError(f"--config={spec}: no such file; configs live in configs/*.py") from e
    return module.get_config(arg) if arg else module.get_config()


def _override_paths(argv: Sequence[str]) -> tuple[str | None, list[str]]:
    config_spec, paths = None, []
    it = iter(argv[1:])
    for a in it:
        if a == "--":
            break
        if a in ("--config", "-config"):
            config_spec = next(it, None)
        elif a.startswith(("--config=", "-config=")):
            config_spec = a.split("=", 1)[1]
        elif a.startswith(("--config.", "-config.", "--noconfig.")):
            name = a.split("=", 1)[0].lstrip("-")
            paths.append(name[len("noconfig."):] if name.startswith("noconfig.") else
                         name[len("config."):])
    return config_spec, paths


def check_overrides(argv: Sequence[str]) -> None:
    """Fail on a ``--config.a.b=...`` whose key does not exist, with suggestions.

    config_flags rejects such keys too, but with a bare ``AttributeError``;
    this names the key, its closest matches and the keys that do exist there.
    """
    spec, paths = _override_paths(argv)
    if spec is None or not paths:
        return
    config = load_config_file(spec)
    for path in paths:
        node, done = config, []
        for key in path.split("."):
            if not isinstance(node, ml_collections.ConfigDict) or key not in node:
                where = ".".join(done) or "the config"
                known = sorted(node.keys()) if isinstance(node, ml_collections.ConfigDict) else []
                close = difflib.get_close_matches(key, known, n=3)
                hint = f"; did you mean {', '.join(repr('.'.join(done + [c])) for c in close)}?" \
                    if close else ""
                raise ConfigError(f"unknown config key {path!r} (no {key!r} in {where}){hint} "
                                  f"Keys there: {', '.join(known)}")
            done.append(key)
            node = node[key]


class _QuietLibraries:
    """Drop INFO records from orbax (dozens per save) unless --verbosity >= 1."""

    def filter(self, record) -> bool:
        return record.levelno >= 30 or "/orbax/" not in record.pathname


def main(argv: Sequence[str]) -> None:
    """absl main: run `train_and_evaluate` and map user errors to exit status 1."""
    if logging.get_verbosity() < 1:
        logging.get_absl_handler().addFilter(_QuietLibraries())
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments {list(argv[1:])}")
    if FLAGS.workdir is None:
        raise app.UsageError("--workdir is required (a new directory, or an old one to resume)")
    config = _CONFIG.value
    if config is None:
        raise app.UsageError("--config is required, e.g. --config=configs/tiny.py")
    logging.info("config:\n%s", config)
    try:
        result: TrainResult = train_and_evaluate(config, FLAGS.workdir)
    except (ConfigError, FileNotFoundError, NonFiniteLossError) as e:
        logging.error("%s", e)
        print(f"error: {e}", file=sys.stderr)
        sys.exit(1)
    except ValueError as e:
        from llama_jax.data.sources import DataError

        if not isinstance(e, DataError):
            raise
        print(f"error: {e}", file=sys.stderr)
        sys.exit(1)
    print(f"{result.status}: step {result.step} (from {result.start_step}), "
          f"last loss {result.last_loss}, {result.wall_seconds:.1f}s", file=sys.stderr)


def run() -> None:
    """Console-script entry point (``llama-jax-train``)."""
    try:
        check_overrides(sys.argv)
    except ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
    app.run(main)


if __name__ == "__main__":
    run()
