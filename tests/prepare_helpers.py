"""Shared pieces of the preparation tests: tiny JSONL inputs, configs, a stage that
hangs on a chosen document (for the killed-run test), and reading the output."""

from __future__ import annotations

import gzip
import json
import os
import time

import ml_collections
from datatrove.pipeline.base import PipelineStep

from llama_jax.prepare import stage as stage_lib
from llama_jax.prepare.config import source_config

ENGLISH = [
    "The committee will meet next Tuesday to discuss the annual budget and the new library.",
    "Scientists found that the river water was much cleaner after the factory closed down.",
    "She walked slowly along the beach, watching the sailing boats return to the harbour.",
    "Our small town holds a market every Saturday morning where farmers sell fresh bread.",
    "The old bridge was repaired last summer, and traffic now moves quickly across it.",
    "Children in the village learn to swim in the lake before they are eight years old.",
]
FRENCH = ("Le conseil municipal se réunira mardi prochain pour discuter du budget annuel "
          "et de la nouvelle bibliothèque de la ville.")
GERMAN = ("Die Wissenschaftler haben festgestellt, dass das Wasser des Flusses nach der "
          "Schließung der Fabrik viel sauberer geworden ist.")


def write_jsonl(path: str, records, *, gz: bool = False) -> str:
    """Write `records` (dicts, or raw bytes lines) as a JSONL file; return its path."""
    os.makedirs(os.path.dirname(path), exist_ok=True)
    data = b"".join(r if isinstance(r, bytes) else (json.dumps(r) + "\n").encode() for r in records)
    with (gzip.open(path, "wb") if gz else open(path, "wb")) as f:
        f.write(data)
    return path


def config(input_glob: str, output: str, stages=("line_dedup", "language"), **fields):
    """A preparation config over `stages` (run fields as keyword overrides)."""
    c = source_config(stages)
    c.input = input_glob
    c.output = output
    for key, value in fields.items():
        c[key] = value
    return c


def read_output(output: str) -> list[dict]:
    """Every output record, shard by shard in rank order."""
    data = os.path.join(output, "data")
    records = []
    for name in sorted(os.listdir(data)):
        with open(os.path.join(data, name)) as f:
            records += [json.loads(line) for line in f]
    return records


def shard_bytes(output: str) -> dict[str, bytes]:
    """The output shards' bytes by file name."""
    data = os.path.join(output, "data")
    return {n: open(os.path.join(data, n), "rb").read() for n in sorted(os.listdir(data))}


def stage_row(summary: dict, stage: str) -> dict:
    """The stats.json row of `stage`."""
    return next(r for r in summary["stages"] if r["stage"] == stage)


class HangOnce(PipelineStep):
    """Hangs (sleeps) on the first document containing `trigger`, once: it creates
    `flag` first, so the run after a kill passes through."""

    name = "hang once"

    def __init__(self, trigger: str, flag: str):
        super().__init__()
        self.trigger = trigger
        self.flag = flag

    def run(self, data, rank=0, world_size=1):
        for doc in data:
            if self.trigger in doc.text and not os.path.exists(self.flag):
                open(self.flag, "w").close()
                time.sleep(600)
            yield doc


def default_config():
    """The `hang` test stage's options."""
    c = ml_collections.ConfigDict()
    c.enabled = True
    c.trigger = "HANG"
    c.flag = ""
    return c


def build(cfg, env):
    """The `hang` test stage."""
    return stage_lib.Stage(name=env.name, steps=[HangOnce(cfg.trigger, cfg.flag)])


def register_hang_stage() -> None:
    """Make stage name ``hang`` (this module) known to the registry."""
    stage_lib.REGISTRY["hang"] = __name__
