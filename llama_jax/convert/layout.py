"""The names of a training run's checkpoint layout (written by `llama_jax.train.checkpoint`).

    WORKDIR/checkpoints/<step>/state          train state + RNG (orbax, sharded arrays)
                              /data           the grain iterator's state
                              /meta           JSON: config, model config, counters
                              /digests.json   size and SHA-256 of every file (`integrity`)

Kept apart so that the reader (`workdir`), the verifier (`integrity`) and the
writer (`llama_jax.train.checkpoint`) share one set of names without importing
each other.
"""

from __future__ import annotations

from pathlib import Path

STATE, DATA, META = "state", "data", "meta"
CHECKPOINT_DIR = "checkpoints"


def checkpoint_dir(workdir: str | Path) -> Path:
    """Where a training workdir keeps its checkpoints."""
    return Path(workdir) / CHECKPOINT_DIR
