"""finetune_tiny: instruction-finetune the quickstart's `tiny` model on the embedded set, CPU.

    bash launch/quickstart.sh                   # trains workdirs/tiny (once)
    python -m llama_jax.train --config=configs/finetune_tiny.py --workdir=workdirs/tiny_sft

Starts from ``init.checkpoint`` (default ``workdirs/tiny``, the quickstart's
workdir; its shape and tokenizer come with it) and finetunes on the embedded
instruction set (`llama_jax.data.sft.embedded`: "Write a Python function ..."
-> the standard library's source, "Explain ..." -> the language reference),
built on first use, with the loss on the responses only. A few minutes on a
2-core CPU; the response loss falls (docs/finetuning.md has the numbers).
Your own data: ``--config.data.sft.path=FILE.jsonl --config.data.sft.format=alpaca``
(or ``flan``, ``chat``), ``--config.data.sft.template=alpaca|llama2|chatml|PATH``.
LoRA instead of full finetuning: ``--config.model.lora.rank=8``.

Why these values: the tiny model saw ~0.5M tokens in pretraining, so a short
run at a third of its peak lr (1e-3 vs 3e-3) with a 10-step warm-up keeps
what it learnt while it picks up the format; no weight decay (a few hundred
steps from a pretrained point, as Chung et al. 2022 finetune); rows of 256
tokens (its context) hold one to three examples each.
"""

from llama_jax.errors import ConfigError
from llama_jax.train.config import base_config


def get_config(arg=None):
    """The tiny finetuning run (no argument: ``--config=configs/finetune_tiny.py``)."""
    if arg:
        raise ConfigError(f"configs/finetune_tiny.py takes no argument, got {arg!r}")
    c = base_config()
    c.init.checkpoint = "workdirs/tiny"
    c.model.dtype = "float32"  # bf16 matmuls are slow on CPU.
    c.train.steps = 150
    c.train.batch_size = 8
    c.train.seq_len = 256
    c.train.log_every = 10
    c.train.eval_every = 0
    c.train.eval_batches = 0
    c.checkpoint.every = 50
    c.checkpoint.keep = 2
    c.data.corpus = "sft"
    c.data.sft.path = ""  # the embedded instruction set
    c.data.sft.format = "chat"
    c.data.sft.template = "llama2"
    c.optimizer.lr = 1e-3
    c.optimizer.warmup_steps = 10
    c.optimizer.min_lr_ratio = 0.1
    c.optimizer.weight_decay = 0.0
    return c
