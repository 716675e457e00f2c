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
from absl import logging
from etils import epath

from llama_jax.convert import integrity
from llama_jax.convert.common import is_scanned
from llama_jax.convert.layout import CHECKPOINT_DIR, META, STATE
from llama_jax.errors import CheckpointError
from llama_jax.model.config import LlamaConfig


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


def _find_step_dir(path: Path, verify: bool) -> Path:
    """The step directory `path` names, or a workdir's newest step that verifies.

    A damaged newer step is skipped with a warning naming it and why (as a
    resumed training run does); a step directory named outright must verify.
    """
    if (path / META / "metadata").exists():
        verdict = integrity.verify_step(path, with_data=False) if verify else None
        if verdict is not None and not verdict.ok:
            raise CheckpointError(f"checkpoint step {path} cannot be trusted: {verdict.reason}. "
                                  "Pass an older step directory, or the workdir to take its "
                                  "newest step that verifies.")
        return path
    ckpt = path / CHECKPOINT_DIR if (path / CHECKPOINT_DIR).is_dir() else path
    if not ckpt.is_dir():
        raise FileNotFoundError(f"no checkpoint at {path}: pass a training workdir, its "
                                "checkpoints/ directory or a step directory")
    steps = sorted((int(p.name) for p in ckpt.iterdir() if p.is_dir() and p.name.isdigit()
                    and (p / META / "metadata").exists()), reverse=True)
    if not steps:
        raise FileNotFoundError(f"no finalized checkpoint under {ckpt}")
    if not verify:
        return ckpt / str(steps[0])
    reasons = []
    for step in steps:
        verdict = integrity.verify_step(ckpt / str(step), with_data=False)
        if verdict.ok:
            if reasons:
                logging.warning("%s: using step %d; newer steps cannot be trusted: %s", ckpt,
                                step, "; ".join(reasons))
            return ckpt / str(step)
        reasons.append(f"step {step}: {verdict.reason}")
    raise CheckpointError(f"no checkpoint in {ckpt} passes verification ({'; '.join(reasons)}); "
                          "it cannot be loaded.")


def load_params(path: str | Path, *, shardings: Any = None,
                verify: bool = True) -> tuple[LlamaConfig, Any]:
    """(LlamaConfig, params) from a training workdir, its checkpoints dir or a step dir.

    Only the parameters are read (not the optimizer state). A workdir gives
    its newest finalized step that verifies against its digests (a damaged
    newer one is skipped with a warning, as a resumed run does).

    Args:
      path: ``WORKDIR``, ``WORKDIR/checkpoints`` or ``WORKDIR/checkpoints/<step>``.
      shardings: optional pytree of `jax.sharding.Sharding` like the params to
        place them sharded (or a function of the checkpoint's config, scan
        layout included, that returns one); by default each array lands on
        the first device.
      verify: check the step's digests first (it reads every file of the step
        once); False loads the newest step unchecked.

    Raises:
      CheckpointError: no step verifies, or a step named outright does not.
    """
    step_dir = _find_step_dir(Path(path), verify)
    meta = read_meta(step_dir)
    config = LlamaConfig.from_dict(meta["model_config"])
    state_dir = (step_dir / STATE).absolute()
    tree = ocp.PyTreeCheckpointHandler().metadata(epath.Path(state_dir)).tree
    checkpointer = ocp.PyTreeCheckpointer()
    saved = tree["train_state"]["params"]
    # The meta keeps the model's shape; the config says the layout the params come in.
    config = config.replace(scan_layers=is_scanned(saved))
    if callable(shardings):
        shardings = shardings(config)
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


def saved_lora(path: str | Path, *, verify: bool = True) -> dict | None:
    """The LoRA record (rank, alpha, targets, base) of a workdir's step, or None.

    A LoRA run's params are its adapters; `from_pretrained` merges them into the base."""
    return read_meta(_find_step_dir(Path(path), verify)).get("lora")
