"""Run config files: ``--config=configs/NAME.py[:ARG]`` and its overrides.

`load_config_file` loads a config the way ``config_flags.DEFINE_config_file``
does (``get_config(ARG)``); `check_overrides` names an unknown
``--config.a.b=...`` key with its closest matches before absl parses it.
"""

from __future__ import annotations

import difflib
import importlib.util
from collections.abc import Sequence

import ml_collections

from llama_jax.errors import ConfigError


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
