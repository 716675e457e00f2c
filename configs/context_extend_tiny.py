"""context_extend_tiny: extend the quickstart's `tiny` model from 256 to 1024 positions, CPU.

    bash launch/quickstart.sh                   # trains workdirs/tiny (once)
    python -m llama_jax.train --config=configs/context_extend_tiny.py --workdir=workdirs/tiny_1k
    python -m llama_jax.train --config=configs/context_extend_tiny.py:yarn --workdir=workdirs/tiny_1k_yarn
    python -m llama_jax.eval --checkpoint=workdirs/tiny_1k --tasks=long_perplexity,passkey \
        --max_seq_len=1024

Position interpolation (Chen et al. 2023, "Extending Context Window of Large
Language Models via Positional Interpolation"): RoPE positions are divided by
the extension factor (``rope_scaling_type='linear'``, factor 4), so the
extended model never sees an angle it was not trained on, then a short
finetune on sequences of the new length (the embedded corpus packed to 1024
tokens). ``:yarn`` uses YaRN (Peng et al. 2023) instead: per-frequency
interpolation with its attention temperature. The paper's case is 2k -> 8k;
this is the same factor 4 on the CPU model (256 -> 1024), so it runs in a few
minutes: a 4x longer context is a 4x longer sequence for the same model.

Why these values: Chen et al. finetune 1,000 steps at lr 2e-5 (7B-65B, batch
64, no weight decay, 20 warm-up steps); the tiny model learnt at 3e-3, so a
tenth of that (3e-4) for 150 steps of 4 x 1024 tokens keeps what it learnt.
The scaling's original length is the checkpoint's context (256), set from it.
"""

from llama_jax.errors import ConfigError
from llama_jax.train.config import base_config

METHODS = ("linear", "yarn")


def get_config(arg=None):
    """The tiny context extension; `arg` the method, 'linear' (default) or 'yarn'."""
    method = (arg or "linear").strip().lower()
    if method not in METHODS:
        raise ConfigError(f"configs/context_extend_tiny.py: unknown method {arg!r}; use one of "
                          f"{', '.join(METHODS)} (e.g. --config=configs/context_extend_tiny.py:yarn)")
    c = base_config()
    c.init.checkpoint = "workdirs/tiny"
    c.model.max_seq_len = 1024
    c.model.rope_scaling_type = method
    c.model.rope_scaling_factor = 4.0
    c.model.dtype = "float32"  # bf16 matmuls are slow on CPU.
    c.train.steps = 150
    c.train.batch_size = 4
    c.train.seq_len = 1024
    c.train.log_every = 10
    c.train.eval_every = 0
    c.train.eval_batches = 2
    c.checkpoint.every = 50
    c.checkpoint.keep = 2
    c.data.corpus = "embedded"
    c.optimizer.lr = 3e-4
    c.optimizer.warmup_steps = 10
    c.optimizer.min_lr_ratio = 0.1
    c.optimizer.weight_decay = 0.0
    return c
