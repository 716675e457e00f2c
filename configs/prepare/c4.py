"""C4 (Table 1, 15%): the C4 quality heuristics, then CCNet's line dedup and language filter.

    python -m llama_jax.prepare --config=configs/prepare/c4.py \
        --config.input='c4/*.jsonl.gz' --config.output=out/c4 \
        --config.c4_quality.badwords_file=badwords_en.txt
"""

from llama_jax.prepare.config import source_config


def get_config():
    """The C4 stages in the order they run."""
    return source_config(("c4_quality", "line_dedup", "language"), source="c4")
