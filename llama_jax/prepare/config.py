"""The run options every source's config shares, and `source_config`.

A source's config file (``configs/prepare/<source>.py``) is one call::

    def get_config():
        return source_config(("line_dedup", "language", "perplexity", "reference"))

which gives the run-wide fields below plus one sub-config per stage (its
module's ``default_config()``, with ``enabled``), in the order the stages run.
"""

from __future__ import annotations

from collections.abc import Sequence

import ml_collections

from llama_jax.prepare import stage

EXECUTORS = ("local", "ray", "slurm")


def source_config(stages: Sequence[str], **run_fields) -> ml_collections.ConfigDict:
    """A preparation config running `stages` in order, with every stage's defaults.

    Run-wide fields (override any with ``--config.<field>=...``):
      input: glob(s) of input files, comma-separated (JSONL, ``.jsonl.gz`` or a
        source's own format).
      input_format: the reader ("jsonl"; a source may register its own in
        `llama_jax.prepare.readers.READERS`).
      output: the output folder (shards, ``stats.json``, logs, work files).
      executor: "local", "ray" or "slurm" (datatrove's executors).
      workers: processes (local) or concurrent tasks (ray) at once.
      tasks: datatrove tasks (output shards); 0 = one per input file.
      output_format: "jsonl" (plain ``.jsonl`` shards, what `llama_jax.data.sources`
        reads), "jsonl.gz" or "array_record" (see `llama_jax.prepare.writers`).
      tokenizer: a tokenizer path; when set, also write token shards and a
        per-source token count (the Table 1 weights are computed from it).
      source: the name written into the stats and token counts.
      slurm_partition / slurm_time / slurm_dry_run: the Slurm executor's options
        (a dry run writes the sbatch scripts and submits nothing).
      ray_address: the Ray cluster to join ("" = start a local one of `workers` CPUs).
      mem_per_cpu_gb: memory asked per task (Ray and Slurm).
    """
    c = ml_collections.ConfigDict()
    c.input = ""
    c.input_format = "jsonl"
    c.output = ""
    c.executor = "local"
    c.workers = 1
    c.tasks = 0
    c.output_format = "jsonl"
    c.tokenizer = ""
    c.source = ""
    c.slurm_partition = ""
    c.slurm_time = "24:00:00"
    c.slurm_dry_run = False
    c.ray_address = ""
    c.mem_per_cpu_gb = 1.0
    for key, value in run_fields.items():
        c[key] = value
    c.stages = tuple(stages)
    for name in stages:
        c[name] = stage.default_config(name)
    return c
