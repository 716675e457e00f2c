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

from llama_jax.train.config_file import check_overrides, load_config_file
from llama_jax.train.loop import TrainResult, train_and_evaluate

__all__ = ["TrainResult", "check_overrides", "load_config_file", "train_and_evaluate"]
