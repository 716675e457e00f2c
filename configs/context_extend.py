r"""context_extend: a LLaMA checkpoint from 2,048 to 8,192 positions (Chen et al. 2023).

    python -m llama_jax.train --config=configs/context_extend.py:7b --workdir=/runs/llama_7b_8k \
        --config.init.checkpoint=/ckpt/llama-7b --config.data.root=/path/to/mixture
    python -m llama_jax.train --config=configs/context_extend.py:7b,yarn ...   # YaRN instead

The argument is the model size (7b, 13b, 33b, 65b) and optionally the method
after a comma: ``linear`` (position interpolation, the default) or ``yarn``.
Position interpolation's recipe (Chen et al. 2023, Section 3): factor 4
(2048 -> 8192), AdamW (0.9, 0.95) without weight decay, lr 2e-5 (7B, 13B) or
1e-5 (33B, 65B), linear warm-up of 20 steps, batch 64 sequences, 1,000 steps,
on the pretraining data packed to 8,192 tokens. The paper trains on the Pile;
here the data is the LLaMA mixture under ``data.root`` (Table 1), the same
that the checkpoint was trained on. The lr stays constant after warm-up
(cosine down to 100% of the peak), as in the paper.
"""

from llama_jax.errors import ConfigError
from llama_jax.train.config import paper_config

LR = {"7b": 2e-5, "13b": 2e-5, "33b": 1e-5, "65b": 1e-5}
METHODS = ("linear", "yarn")


def get_config(arg=None):
    """Context extension of model size `arg` ("7b" or "7b,yarn")."""
    size, _, method = (arg or "").strip().lower().partition(",")
    method = method or "linear"
    if size not in LR or method not in METHODS:
        raise ConfigError(f"configs/context_extend.py: use --config=configs/context_extend.py:SIZE"
                          f"[,METHOD] with SIZE one of {', '.join(LR)} and METHOD one of "
                          f"{', '.join(METHODS)}; got {arg!r}")
    c = paper_config(f"llama_{size}", lr=LR[size], train_tokens=1000 * 64 * 8192)
    c.init.checkpoint = ""  # set --config.init.checkpoint=PATH (the 2k model)
    c.model.max_seq_len = 8192
    c.model.rope_scaling_type = method
    c.model.rope_scaling_factor = 4.0
    c.train.steps = 1000
    c.train.batch_size = 64
    c.train.seq_len = 8192
    c.optimizer.warmup_steps = 20
    c.optimizer.min_lr_ratio = 1.0
    c.optimizer.weight_decay = 0.0
    return c
