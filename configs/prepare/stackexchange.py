"""StackExchange (Table 1, 2%): the 28 largest sites, HTML removed, answers by score.

Input: the dump's ``<site>/Posts.xml`` files, or JSONL questions with ``answers``::

    python -m llama_jax.prepare --config=configs/prepare/stackexchange.py \
        --config.input='stackexchange/*/Posts.xml' --config.output=out/stackexchange
"""

from llama_jax.prepare.config import source_config


def get_config():
    """The StackExchange stage."""
    return source_config(("stackexchange",), source="stackexchange")
