"""Books (Gutenberg + Books3, Table 1, 4.5%): book-level MinHash dedup (> 90% overlap removed).

Input: JSONL, one book a record, its text in ``text``::

    python -m llama_jax.prepare --config=configs/prepare/books.py \
        --config.input='books/*.jsonl.gz' --config.output=out/books
"""

from llama_jax.prepare.config import source_config


def get_config():
    """The Books stage."""
    return source_config(("minhash",), source="books")
