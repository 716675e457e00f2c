"""llama_i: the paper's LLaMA-I, instruction finetuning of LLaMA-65B (Section 4, Table 10).

    python -m llama_jax.train --config=configs/llama_i.py --workdir=/ckpt/llama_i \\
        --config.init.checkpoint=/ckpt/llama-65b --config.data.sft.path=/data/flan.jsonl

The paper says only that a brief finetuning on instruction data "following
the protocol and instruction dataset of Chung et al. (2022)" lifts MMLU
(5-shot) from 63.4 to 68.9. Everything else here is Chung et al.'s (Scaling
Instruction-Finetuned Language Models), adapted where our trainer differs:

- data: the Flan mixture as FLAN-style JSONL (``{"inputs", "targets"}``,
  ``data.sft.format='flan'``), rendered through the plain instruction template,
  loss on the targets only, examples packed into 2048-token rows with
  attention masked between them (Chung et al. pack and mask the same way);
- length: Chung et al. spend about 0.2% of pretraining compute on
  finetuning. LLaMA-65B saw 1.4T tokens, so 0.2% is ~2.8B tokens = 21,000
  steps of 64 x 2048 tokens (their 540B run is 21k steps too);
- schedule: a constant learning rate (theirs is constant), reached after a
  short 100-step warm-up; no weight decay, no cosine.
- optimizer: they use Adafactor, whose (relative-scale) learning rate does not
  carry over to AdamW; we keep the pretraining AdamW (0.9, 0.95, clip 1.0)
  at 1e-5, just below the 1.5e-5 where the 65B pretraining cosine ends
  (1.5e-4 x 0.1), so finetuning continues at the rate pretraining stopped at;
- they use dropout 0.05; the LLaMA model has no dropout, so none here.
- numerics and sharding as the 65B pretraining run (configs/llama.py:65b):
  bf16 compute, f32 master weights, remat saving linear outputs, FSDP.
"""

from llama_jax.errors import ConfigError
from llama_jax.train.config import base_config, paper_config

STEPS = 21_000  # ~0.2% of 1.4T pretraining tokens at 64 x 2048 tokens per step
BATCH = 64
SEQ_LEN = 2048


def get_config(arg=None):
    """LLaMA-I on 65B (no argument: ``--config=configs/llama_i.py``)."""
    if arg:
        raise ConfigError(f"configs/llama_i.py takes no argument, got {arg!r}")
    paper = paper_config("llama_65b", lr=1.5e-4, train_tokens=1.4e12)
    c = base_config()
    c.model = paper.model  # run options of the 65B run; the shape comes from init.checkpoint
    c.mesh = paper.mesh
    c.init.checkpoint = ""  # required: the LLaMA-65B weights (Meta or HF layout)
    c.train.steps = STEPS
    c.train.batch_size = BATCH
    c.train.seq_len = SEQ_LEN
    c.train.log_every = 10
    c.train.eval_every = 0
    c.train.eval_batches = 0
    c.checkpoint.every = 1000
    c.checkpoint.keep = 3
    c.data.corpus = "sft"
    c.data.sft.format = "flan"
    c.data.sft.template = "alpaca"
    c.data.sft.train_on = "all"
    c.data.sft.too_long = "truncate"
    c.optimizer.lr = 1e-5
    c.optimizer.warmup_steps = 100
    c.optimizer.min_lr_ratio = 1.0  # constant after warm-up
    c.optimizer.weight_decay = 0.0
    return c
