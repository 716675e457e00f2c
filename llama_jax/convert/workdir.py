"""Reading the parameters out of a training run's orbax checkpoints.

A training workdir (`llama_jax.train.checkpoint` writes it) is laid out as::

    WORKDIR/checkpoints/<step>/state   train state + RNG (orbax, sharded arrays)
                              /data    the grain iterator's state (one JSON per process)
                              /meta    JSON: config, model config, counters

`load_params` reads only the parameters (never the optimizer state) of the
newest finalized step, so `from_pretrained` takes a workdir like any other
checkpoint; the names of the layout live here, below the trainer that writes it.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import jax
import orbax.checkpoint as ocp
from etils import epath

from llama_jax.convert.common import is_scanned
from llama_jax.model.config import LlamaConfig

STATE, DATA, META = "state", "data", "meta"
CHECKPOINT_DIR = "checkpoints"


def checkpoint_dir(workdir: str | Path) -> Path:
    """Where a training workdir keeps its checkpoints."""
    return Path(workdir) / CHECKPOINT_DIR


def is_training_checkpoint(path: Path) -> bool:
    """Whether `path` is a workdir, its checkpoints dir or one orbax step dir."""
    if (path / CHECKPOINT_DIR).is_dir() or (path / "_CHECKPOINT_METADATA").is_file():
        return True
    # A CheckpointManager root: numbered step directories.
    return any(p.is_dir() and p.name.isdigit() and (p / "_CHECKPOINT_METADATA").is_file()
               for p in path.iterdir())


def read_meta(step_dir: str | Path) -> dict:
    """The meta JSON of a finalized step directory."""
    path = Path(step_dir) / META / "metadata"
    if not path.exists():
        raise FileNotFoundError(f"{step_dir} is not a llama_jax checkpoint step "
                                f"(no {META}/metadata); pass a training workdir or a step dir")
    return json.loads(path.read_text())


def _find_step_dir(path: Path) -> Path:
    if (path / META / "metadata").exists():
        return path
    ckpt = path / CHECKPOINT_DIR if (path / CHECKPOINT_DIR).is_dir() else path
    if not ckpt.is_dir():
        raise FileNotFoundError(f"no checkpoint at {path}: pass a training workdir, its "
                                "checkpoints/ directory or a step directory")
    steps = sorted(int(p.name) for p in ckpt.iterdir() if p.is_dir() and p.name.isdigit()
                   and (p / META / "metadata").exists())
    if not steps:
        raise FileNotFoundError(f"no finalized checkpoint under {ckpt}")
    return ckpt / str(steps[-1])


def load_params(path: str | Path, *, shardings: Any = None) -> tuple[LlamaConfig, Any]:
    """(LlamaConfig, params) from a training workdir, its checkpoints dir or a step dir.

    Only the parameters are read (not the optimizer state). A workdir gives
    its newest finalized step.

    Args:
      path: ``WORKDIR``, ``WORKDIR/checkpoints`` or ``WORKDIR/checkpoints/<step>``.
      shardings: optional pytree of `jax.sharding.Sharding` like the params to
        place them sharded; by default each array lands on the first device.
    """
    step_dir = _find_step_dir(Path(path))
    meta = read_meta(step_dir)
    config = LlamaConfig.from_dict(meta["model_config"])
    state_dir = (step_dir / STATE).absolute()
    tree = ocp.PyTreeCheckpointHandler().metadata(epath.Path(state_dir)).tree
    checkpointer = ocp.PyTreeCheckpointer()
    saved = tree["train_state"]["params"]
    # The meta keeps the model's shape; the config says the layout the params come in.
    config = config.replace(scan_layers=is_scanned(saved))
    if shardings is None:
        device = jax.devices()[0]
        shardings = jax.tree_util.tree_map(
            lambda m: jax.sharding.SingleDeviceSharding(device), saved)
    restore_args = jax.tree_util.tree_map(
        lambda m, s: ocp.ArrayRestoreArgs(sharding=s, global_shape=tuple(m.shape), dtype=m.dtype),
        saved, shardings)
    out = checkpointer.restore(state_dir, args=ocp.args.PyTreeRestore(
        item={"train_state": {"params": saved}},
        restore_args={"train_state": {"params": restore_args}},
        partial_restore=True))
    return config, out["train_state"]["params"]
