r"""LLaMA-65B (Table 2): lr 1.5e-4, 4M-token batches, 1.4e12 tokens, sequence 2048.

    python -m llama_jax.train --config=configs/llama_65b.py --workdir=/mnt/shared/runs/llama_65b \
        --config.data.root=/path/to/mixture

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

from llama_jax.train.config import paper_config


def get_config():
    """The paper's 65B run."""
    return paper_config("llama_65b", lr=1.5e-4, train_tokens=1.4e12)
