"""Run config files: ``--config=configs/NAME.py[:ARG]`` and its overrides.

`load_config_file` loads a config the way ``config_flags.DEFINE_config_file``
does (``get_config(ARG)``), with a missing file, a syntax error, an import
that fails or a missing ``get_config`` as a `ConfigError` naming the file;
`check_config_argv` runs it (and `check_overrides`, which names an unknown
``--config.a.b=...`` key with its closest matches) before absl parses the
flags, so the train CLI reports each as one line.
"""

from __future__ import annotations

import difflib
import importlib.util
import os
from collections.abc import Sequence

import ml_collections

from llama_jax.errors import ConfigError


def load_config_file(spec: str) -> ml_collections.ConfigDict:
    """The ConfigDict of ``path[:arg]`` (as ``--config`` takes it).

    A file that is missing, is not Python, does not import or has no
    ``get_config`` raises `ConfigError` naming it and the fix.
    """
    path, _, arg = spec.partition(":")
    if not os.path.isfile(path):
        what = "is a folder" if os.path.isdir(path) else "does not exist"
        raise ConfigError(f"--config={spec}: {path} {what}; pass a config file such as "
                          "configs/tiny.py (configs live in configs/*.py)")
    module_spec = importlib.util.spec_from_file_location("_llama_jax_run_config", path)
    if module_spec is None or module_spec.loader is None:
        raise ConfigError(f"--config={spec}: cannot load {path!r} as a Python file; config "
                          "files end in .py")
    module = importlib.util.module_from_spec(module_spec)
    try:
        module_spec.loader.exec_module(module)
    except SyntaxError as e:
        raise ConfigError(f"--config={spec}: {path} line {e.lineno}: {e.msg} (a syntax error); "
                          "fix the file") from e
    except ConfigError:
        raise
    except Exception as e:  # the file's own imports or top-level code failed
        raise ConfigError(f"--config={spec}: {path} failed to load ({type(e).__name__}: {e}); "
                          "fix the file") from e
    get_config = getattr(module, "get_config", None)
    if not callable(get_config):
        raise ConfigError(f"--config={spec}: {path} defines no get_config(); a config file "
                          "defines get_config(arg=None) returning an ml_collections.ConfigDict "
                          "(see configs/tiny.py)")
    try:
        config = get_config(arg) if arg else get_config()
    except ConfigError:
        raise
    except Exception as e:  # the file's get_config itself failed (a bad arg, a bug in it)
        raise ConfigError(f"--config={spec}: get_config({arg!r}) failed ({type(e).__name__}: "
                          f"{e}); fix the file or the argument after ':'") from e
    if not isinstance(config, ml_collections.ConfigDict):
        raise ConfigError(f"--config={spec}: get_config() returned {type(config).__name__}, "
                          "not an ml_collections.ConfigDict")
    return config


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


def check_config_argv(argv: Sequence[str]) -> None:
    """Before absl parses `argv`: the ``--config`` file loads (`load_config_file`) and
    every ``--config.*`` override names a key that exists (`check_overrides`)."""
    spec, paths = _override_paths(argv)
    if spec is None:
        return
    if paths:
        check_overrides(argv)
    else:
        load_config_file(spec)


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
