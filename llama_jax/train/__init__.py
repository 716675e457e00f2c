"""Training: the run config, the loop, the jitted step, optimizer, checkpoints, metrics.

    python -m llama_jax.train --config=configs/tiny.py --workdir=/tmp/llama_tiny

`train_and_evaluate(config, workdir)` (`loop.py`) is what the CLI
(`cli.py`, run by ``__main__.py``) calls; tests and notebooks call it too.
The pieces, in the order a run uses them: `config` (every key with its
default, validation), `config_file` (``--config=path[:arg]`` and override
checks), `data` (the run's sources, tokenizer and held-out batches),
`step` (sharded train state, loss, jitted train / eval steps), `optim`
(AdamW with the paper's schedule), `checkpoint` (orbax saves of state, data
iterator and config), `metrics` (MFU, JSONL + TensorBoard, progress).
"""

import importlib

# The package's names load on first use, so that `step`, `optim`, `metrics` and
# `carbon` import without the run's config and data packages (ml_collections,
# grain): the GPU benchmark image has neither (benchmarks/gpu_suite.py).
_LAZY = {"TrainResult": "llama_jax.train.loop", "train_and_evaluate": "llama_jax.train.loop",
         "check_overrides": "llama_jax.train.config_file",
         "load_config_file": "llama_jax.train.config_file"}

__all__ = ["TrainResult", "check_overrides", "load_config_file", "train_and_evaluate"]


def __getattr__(name: str):
    """`TrainResult`, `train_and_evaluate`, ... imported from their module on first use."""
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
