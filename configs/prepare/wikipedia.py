"""Wikipedia (Table 1, 4.5%): the paper's 20 languages, wikitext markup removed.

Input: JSONL pages with their wikitext in ``text`` and ``language`` (or a
``url`` on ``<code>.wikipedia.org``); for already-extracted text add
``--config.wikipedia.markup=text``::

    python -m llama_jax.prepare --config=configs/prepare/wikipedia.py \
        --config.input='wiki/*.jsonl.gz' --config.output=out/wikipedia
"""

from llama_jax.prepare.config import source_config


def get_config():
    """The Wikipedia stage."""
    return source_config(("wikipedia",), source="wikipedia")
