"""tiny: the embedded default -- a ~5M-parameter LLaMA on the embedded corpus, CPU.

    python -m llama_jax.train --config=configs/tiny.py --workdir=/tmp/llama_tiny

Trains the `tiny` preset (dim 256, 4 layers, 8 heads, vocab 4096) on the
corpus built from installed packages in a few minutes on a 2-core CPU; the
loss falls from ~8.3 (ln 4096) to well below 5. Add overrides such as
``--config.train.steps=50`` or ``--config.mesh.data=2``.

Why the schedule differs from the paper: the paper warms up for 2,000 of
~240k-330k steps (<1%) at lr 1.5e-4..3e-4 for models of 7B+ parameters. A
500-step run needs a short warm-up (25 steps, 5%) and, like small models in
general, tolerates a 10x larger peak lr (3e-3); with the paper's values the
whole run would be warm-up. Small batches (8 x 128 tokens) give more updates
for the same CPU time, which is what a few minutes of training needs most.
"""

from llama_jax.errors import ConfigError
from llama_jax.train.config import base_config


def get_config(arg=None):
    """The tiny CPU run (it takes no argument: ``--config=configs/tiny.py``)."""
    if arg:
        raise ConfigError(f"configs/tiny.py takes no argument, got {arg!r}; "
                          "use --config=configs/tiny.py")
    c = base_config()
    c.model.preset = "tiny"
    c.model.dtype = "float32"  # bf16 matmuls are slow on CPU.
    c.train.steps = 500
    c.train.batch_size = 8
    c.train.seq_len = 128
    c.train.log_every = 10
    c.train.eval_every = 250
    c.train.eval_batches = 2
    c.checkpoint.every = 250
    c.checkpoint.keep = 2
    c.data.corpus = "embedded"
    c.optimizer.lr = 3e-3
    c.optimizer.warmup_steps = 25
    return c
