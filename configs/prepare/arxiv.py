"""ArXiv (Table 1, 2.5%): LaTeX before the first section, bibliography and comments removed, macros expanded.

Input: JSONL with the ``.tex`` source in ``text``, or ``.tex`` files::

    python -m llama_jax.prepare --config=configs/prepare/arxiv.py \
        --config.input='arxiv/**/*.tex' --config.output=out/arxiv
"""

from llama_jax.prepare.config import source_config


def get_config():
    """The ArXiv stage."""
    return source_config(("arxiv",), source="arxiv")
