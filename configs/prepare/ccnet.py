r"""CommonCrawl, the CCNet way (Wenzek et al. 2020; LLaMA paper Section 2.1).

    python -m llama_jax.prepare --config=configs/prepare/ccnet.py \
        --config.input='/data/cc/*.jsonl.gz' --config.output=/data/cc_clean \
        [--config.executor=local|ray|slurm --config.workers=8 --config.perplexity.enabled=False]

Stages, in order: ``line_dedup`` (cc_net's normalised-line SHA-1 dedup over
the whole group of shards, first occurrence included), ``language``
(fastText lid.176, English with score >= 0.5), ``perplexity`` (n-gram
language model, head/middle/tail buckets) and ``reference`` (the linear
classifier of pages cited by Wikipedia). An optional argument picks a subset,
in this order: ``--config=configs/prepare/ccnet.py:line_dedup,language``.
"""

from llama_jax.errors import ConfigError
from llama_jax.prepare.config import source_config

STAGES = ("line_dedup", "language", "perplexity", "reference")


def get_config(arg=None):
    """The CCNet stages (all four, or the comma-separated subset `arg`)."""
    stages = STAGES
    if arg:
        stages = tuple(s.strip() for s in arg.split(",") if s.strip())
        unknown = [s for s in stages if s not in STAGES]
        if unknown or not stages:
            raise ConfigError(f"configs/prepare/ccnet.py:{arg}: {unknown or 'no stage'} not among the "
                              f"CCNet stages {', '.join(STAGES)}")
        stages = tuple(s for s in STAGES if s in stages)
    return source_config(stages, source="commoncrawl")
