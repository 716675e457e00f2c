"""This project's own model format: a directory holding

- ``llama_config.json``: `LlamaConfig.to_dict()`, the model's shape only (run
  options such as ``attention_impl`` are chosen by whoever loads it; older
  files that carry them load with the defaults);
- ``params/``: an orbax `PyTreeCheckpointer` checkpoint of the parameters, always
  in the scanned layout (one ``layers`` subtree with a leading layers axis),
  whatever ``scan_layers`` says; `from_pretrained` returns the layout the
  config asks for.

Unlike a training checkpoint (`llama_jax.train.checkpoint`), it holds no optimizer
or data-iterator state: it is the unit you publish, convert and evaluate.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jax
import numpy as np

from llama_jax.convert.common import (
    ConversionError,
    check_tensors,
    flatten,
    param_shapes,
    unflatten,
)
from llama_jax.model.config import LlamaConfig

CONFIG_FILE = "llama_config.json"
PARAMS_DIR = "params"


def is_orbax_model(path: Path) -> bool:
    """True if `path` looks like this project's model directory."""
    return (path / CONFIG_FILE).is_file()


def save_orbax(config: LlamaConfig, flat: dict, out_dir: Path) -> None:
    """Write llama_config.json and the orbax params/ checkpoint into `out_dir`."""
    import orbax.checkpoint as ocp

    (out_dir / CONFIG_FILE).write_text(json.dumps(config.to_dict(), indent=2))
    checkpointer = ocp.PyTreeCheckpointer()
    checkpointer.save((out_dir / PARAMS_DIR).resolve(), args=ocp.args.PyTreeSave(unflatten(flat)))


def _stored_tree(params_dir: Path):
    """The orbax metadata tree (one entry per stored array)."""
    import orbax.checkpoint as ocp

    meta = ocp.PyTreeCheckpointer().metadata(params_dir)
    meta = getattr(meta, "item_metadata", meta)  # Newer orbax wraps the tree.
    return getattr(meta, "tree", meta)


def _read_model_dir(path: Path) -> tuple[LlamaConfig, Path, Any]:
    """(config, params dir, stored metadata tree) of a model folder, shapes checked."""
    config_file, params_dir = path / CONFIG_FILE, (path / PARAMS_DIR).resolve()
    try:
        config = LlamaConfig.from_dict(json.loads(config_file.read_text()))
    except (json.JSONDecodeError, ValueError, TypeError) as e:
        raise ConversionError(f"{config_file}: not a valid LlamaConfig ({e})") from e
    if not params_dir.is_dir():
        raise ConversionError(f"{params_dir} is missing: a llama_jax model directory holds "
                              f"{CONFIG_FILE} and an orbax {PARAMS_DIR}/ checkpoint")
    try:
        stored = _stored_tree(params_dir)
        flat_meta = flatten(stored)
    except Exception as e:
        raise ConversionError(f"{params_dir}: not a readable orbax checkpoint ({e})") from e
    expected = {"/".join(p): s for p, s in param_shapes(config).items()}
    check_tensors({"/".join(p): tuple(m.shape) for p, m in flat_meta.items()}, expected,
                  where=lambda name: str(params_dir), config_source=str(config_file))
    return config, params_dir, stored


def load_orbax(path: str | Path, dtype: np.dtype | None = None) -> tuple[LlamaConfig, dict]:
    """Load this project's model directory -> (config, scanned numpy params)."""
    import orbax.checkpoint as ocp

    config, params_dir, stored = _read_model_dir(Path(path))
    restore_args = jax.tree_util.tree_map(
        lambda _: ocp.RestoreArgs(restore_type=np.ndarray), stored)
    params = ocp.PyTreeCheckpointer().restore(
        params_dir, args=ocp.args.PyTreeRestore(restore_args=restore_args))
    if dtype is not None:
        params = jax.tree_util.tree_map(lambda x: x.astype(dtype, copy=False), params)
    return config, params


def load_orbax_sharded(path: str | Path,
                       shardings_for: Callable[[LlamaConfig], Any]) -> tuple[LlamaConfig, dict]:
    """(config, scanned params as sharded `jax.Array`s) of a model directory.

    `shardings_for(config)` gives the target `Sharding` tree (scanned layout);
    orbax restores each array straight into it, every process reading only
    the chunks its devices hold. The stored dtypes are kept.
    """
    import orbax.checkpoint as ocp

    config, params_dir, stored = _read_model_dir(Path(path))
    restore_args = jax.tree_util.tree_map(
        lambda m, s: ocp.ArrayRestoreArgs(sharding=s, global_shape=tuple(m.shape),
                                          dtype=m.dtype),
        stored, shardings_for(config))
    params = ocp.PyTreeCheckpointer().restore(
        params_dir, args=ocp.args.PyTreeRestore(restore_args=restore_args))
    return config, params
