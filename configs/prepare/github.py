"""GitHub (Table 1, 4.5%): licence, file quality, licence-header removal, exact file dedup.

Input: JSONL, one file a record, its content in ``text`` and its licence in
``license`` (the BigQuery ``github_repos`` dump joined with ``licenses``)::

    python -m llama_jax.prepare --config=configs/prepare/github.py \
        --config.input='github/*.jsonl.gz' --config.output=out/github
"""

from llama_jax.prepare.config import source_config


def get_config():
    """The GitHub stages in the order they run."""
    return source_config(("github_license", "github_quality", "github_boilerplate", "exact_dedup"),
                         source="github")
