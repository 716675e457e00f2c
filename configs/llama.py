r"""The paper's runs (Table 2): one config, the model size as its argument.

    python -m llama_jax.train --config=configs/llama.py:7b --workdir=/mnt/shared/runs/llama_7b \
        --config.data.root=/path/to/mixture

The argument after ``:`` is one of ``7b``, ``13b``, ``33b``, ``65b``:

| size | peak lr | tokens | steps (4M-token batches) |
|------|---------|--------|--------------------------|
| 7b   | 3.0e-4  | 1.0T   | 238,419                  |
| 13b  | 3.0e-4  | 1.0T   | 238,419                  |
| 33b  | 1.5e-4  | 1.4T   | 333,787                  |
| 65b  | 1.5e-4  | 1.4T   | 333,787                  |

``/path/to/mixture`` holds one folder of JSONL files per Table 1 source
(commoncrawl, c4, github, wikipedia, books, arxiv, stackexchange; one
``{"text": ...}`` document per line) and the SentencePiece model as
``tokenizer.model`` (or name another with --config.data.tokenizer=PATH).

Batch 2048 sequences x 2048 tokens = 4,194,304 tokens; steps = tokens / 4M;
AdamW(0.9, 0.95), weight decay 0.1, clip 1.0, 2,000 warm-up steps, cosine to
10% of peak; bf16 compute with f32 master weights; remat saves linear-layer
outputs; the paper's mixture (Table 1) under data.root. The mesh defaults to
FSDP over every device; add tensor parallelism with --config.mesh.tensor=8 and
gradient accumulation with --config.train.grad_accum_steps=N where memory is
short. Launch on a cluster with launch/slurm.sbatch or launch/tpu_pod.sh.
"""

from llama_jax.errors import ConfigError
from llama_jax.train.config import paper_config

# Table 2: peak learning rate and training tokens per model size.
SIZES = {
    "7b": dict(lr=3.0e-4, train_tokens=1.0e12),
    "13b": dict(lr=3.0e-4, train_tokens=1.0e12),
    "33b": dict(lr=1.5e-4, train_tokens=1.4e12),
    "65b": dict(lr=1.5e-4, train_tokens=1.4e12),
}


def get_config(arg=None):
    """The paper's run for model size `arg` ('7b', '13b', '33b' or '65b')."""
    known = ", ".join(SIZES)
    if not arg:
        raise ConfigError(f"configs/llama.py needs a model size: --config=configs/llama.py:SIZE "
                          f"with SIZE one of {known}")
    size = arg.strip().lower()
    if size not in SIZES:
        raise ConfigError(f"configs/llama.py: unknown model size {arg!r}; use one of {known} "
                          f"(e.g. --config=configs/llama.py:7b)")
    return paper_config(f"llama_{size}", **SIZES[size])
