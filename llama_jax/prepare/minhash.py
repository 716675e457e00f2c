"""Book-level near-duplicate removal with MinHash LSH, stage ``minhash`` (Books).

"We perform deduplication at the book level, removing books with more than
90% content overlap." Overlap is the Jaccard similarity of the books' word
5-gram sets (after datatrove's text normalisation: lower case, punctuation
and extra whitespace removed), estimated with datatrove's MinHash steps:

1. `MinhashDedupSignature` (a task per shard): ``num_buckets`` x
   ``hashes_per_bucket`` min-hashes per book;
2. `MinhashDedupBuckets` (``num_buckets`` tasks): pairs of books that agree on
   every hash of some bucket;
3. `MinhashDedupCluster` (one task): union-find over the pairs, one book kept
   per cluster;
4. `NearDuplicateFilter` in the flow: drops the others (``near_duplicate``).

The LSH S-curve ``P(pair) = 1 - (1 - J**r)**b`` has its threshold near
``(1/b)**(1/r)``; the defaults b=14, r=25 put it at 0.90 (P=0.99 at J=0.95,
0.21 at J=0.85, 1e-7 at J=0.5). Words are split on whitespace after the
normalisation (`OfflineTokenizer`; datatrove's English default is spaCy,
which is not installed).
"""

from __future__ import annotations

import ml_collections
from datatrove.pipeline.dedup.minhash import (
    MinhashConfig,
    MinhashDedupBuckets,
    MinhashDedupCluster,
    MinhashDedupFilter,
    MinhashDedupSignature,
)
from datatrove.utils.hashing import HashConfig
from datatrove.utils.typeshelper import StatHints

from llama_jax.errors import ConfigError
from llama_jax.prepare.offline_tokenizer import OfflineTokenizer
from llama_jax.prepare.stage import IndexPass, Stage, StageEnv


def default_config() -> ml_collections.ConfigDict:
    """Word 5-grams, 14 bands of 25 hashes (an S-curve threshold of 0.90)."""
    c = ml_collections.ConfigDict()
    c.enabled = True
    c.n_grams = 5
    c.num_buckets = 14
    c.hashes_per_bucket = 25
    c.seed = 1
    return c


def lsh_threshold(num_buckets: int, hashes_per_bucket: int) -> float:
    """The Jaccard similarity at the LSH S-curve's steepest point, ``(1/b)**(1/r)``."""
    return (1.0 / num_buckets) ** (1.0 / hashes_per_bucket)


def pair_probability(jaccard: float, num_buckets: int, hashes_per_bucket: int) -> float:
    """The chance two documents of similarity `jaccard` share a bucket: ``1-(1-J**r)**b``."""
    return 1.0 - (1.0 - jaccard**hashes_per_bucket) ** num_buckets


class NearDuplicateFilter(MinhashDedupFilter):
    """datatrove's MinHash filter, with each removal counted as ``dropped_near_duplicate``."""

    def stat_update(self, *labels, value: int = 1, unit: str = None):
        """Adds the drop reason to datatrove's ``dropped`` count."""
        if StatHints.dropped in labels:
            labels = labels + ("dropped_near_duplicate",)
        super().stat_update(*labels, value=value, unit=unit)


def minhash_config(cfg: ml_collections.ConfigDict) -> MinhashConfig:
    """datatrove's `MinhashConfig` for our stage options.

    Shingles are hashed with 64-bit SHA-1: datatrove's default xxhash path
    passes ``str`` to ``xxhash``, which the installed xxhash rejects.
    """
    return MinhashConfig(n_grams=cfg.n_grams, num_buckets=cfg.num_buckets,
                         hashes_per_bucket=cfg.hashes_per_bucket, seed=cfg.seed,
                         hash_config=HashConfig(precision=64, hash_fc="sha1"))


def build(cfg: ml_collections.ConfigDict, env: StageEnv) -> Stage:
    """Signature, bucket and cluster passes under ``env.work_dir``, then the filter."""
    for key in ("n_grams", "num_buckets", "hashes_per_bucket"):
        if cfg[key] < 1:
            raise ConfigError(f"--config.{env.name}.{key}={cfg[key]}; use a positive integer")
    mh = minhash_config(cfg)
    sigs, buckets, remove = (f"{env.work_dir}/{name}" for name in ("signatures", "buckets", "remove_ids"))
    return Stage(
        name=env.name,
        steps=[NearDuplicateFilter(input_folder=remove)],
        index_passes=[
            IndexPass(steps=[MinhashDedupSignature(output_folder=sigs, config=mh,
                                                   language=OfflineTokenizer("en", whitespace_words=True))]),
            IndexPass(steps=[MinhashDedupBuckets(input_folder=sigs, output_folder=buckets, config=mh)],
                      reads_documents=False, tasks=cfg.num_buckets),
            IndexPass(steps=[MinhashDedupCluster(input_folder=buckets, output_folder=remove, config=mh)],
                      reads_documents=False, tasks=1),
        ],
    )
