"""Per-stage accounting: documents and bytes in and out, and every drop reason.

The pipeline puts a `StageMeter` after the reader ("input") and after each
enabled stage's steps; it counts the documents and UTF-8 bytes of text that
pass it. A stage's "in" is the meter before it, its "out" its own meter.
Drop reasons come from datatrove's filter stats (``dropped_<reason>``) of the
stage's steps and from the reader's counted skips (``skipped_<reason>``).
`collect` merges the per-task stats files datatrove writes
(``<logging_dir>/stats/<rank>.json``: one entry per step, in pipeline order)
into one summary; `format_table` prints it.
"""

from __future__ import annotations

import dataclasses
import glob
import json
import os
from collections.abc import Sequence

from datatrove.pipeline.base import PipelineStep

DOCS = "documents"
BYTES = "bytes"


class StageMeter(PipelineStep):
    """Counts the documents and text bytes that pass (labelled with `stage`)."""

    name = "📏 stage meter"
    type = "📊 - STATS"

    def __init__(self, stage: str):
        super().__init__()
        self.stage = stage

    def run(self, data, rank: int = 0, world_size: int = 1):
        """Pass every document on, counting it and its bytes."""
        for doc in data:
            self.stat_update(DOCS)
            self.stat_update(BYTES, value=len(doc.text.encode("utf-8")))
            yield doc


@dataclasses.dataclass(frozen=True)
class StepRole:
    """What one pipeline step of a segment is, for the accounting.

    Attributes:
      stage: the stage it belongs to ("input" for the reader and first meter).
      kind: "meter", "step" (a stage's own step: its ``dropped_*`` are drops),
        "reader" (its ``skipped_*`` are skips) or "other" (writers, readers of
        intermediate shards: not counted).
    """

    stage: str
    kind: str


def _total(value) -> int:
    """A datatrove stat as saved: a bare count, or a dict with its "total"."""
    return int(value.get("total", 0) if isinstance(value, dict) else value)


def load_task_stats(logging_dir: str) -> list[list[dict[str, int]]]:
    """Every completed task's counters, one ``{stat: total}`` per pipeline step."""
    out = []
    for path in sorted(glob.glob(os.path.join(logging_dir, "stats", "*.json"))):
        with open(path) as f:
            steps = json.load(f)
        out.append([{k: _total(v) for k, v in step.get("stats", {}).items()} for step in steps])
    return out


def collect(segments: Sequence[tuple[str, Sequence[StepRole]]], stage_order: Sequence[str],
            input_bytes: int | None = None) -> dict:
    """The merged per-stage summary of a run.

    Args:
      segments: (logging_dir, roles of its pipeline steps) for every document
        flow segment of the run (index passes are not part of the accounting).
      stage_order: "input" then the enabled stages, in order.
      input_bytes: the input files' size on disk (the "input" row's bytes in).

    Returns:
      ``{"stages": [{"stage", "documents_in", "bytes_in", "documents_out",
      "bytes_out", "dropped": {reason: n}}, ...]}``; the "input" row's bytes in
      are the files' size on disk (compressed), its drops the reader's skips.
    """
    docs = dict.fromkeys(stage_order, 0)
    nbytes = dict.fromkeys(stage_order, 0)
    dropped: dict[str, dict[str, int]] = {s: {} for s in stage_order}
    for logging_dir, roles in segments:
        for task in load_task_stats(logging_dir):
            for role, step in zip(roles, task, strict=True):
                if role.kind == "meter":
                    docs[role.stage] += step.get(DOCS, 0)
                    nbytes[role.stage] += step.get(BYTES, 0)
                elif role.kind in ("step", "reader"):
                    prefix = "dropped_" if role.kind == "step" else "skipped_"
                    for key in step:
                        if key.startswith(prefix):
                            reasons = dropped[role.stage]
                            name = key[len("dropped_"):] if role.kind == "step" else key
                            reasons[name] = reasons.get(name, 0) + step[key]
    rows = []
    for i, stage in enumerate(stage_order):
        prev = stage_order[i - 1] if i else None
        row = {"stage": stage,
               "documents_in": docs[prev] if prev else docs[stage] + sum(dropped[stage].values()),
               "bytes_in": nbytes[prev] if prev else input_bytes,
               "documents_out": docs[stage], "bytes_out": nbytes[stage],
               "dropped": dict(sorted(dropped[stage].items()))}
        if prev:
            # Steps that drop without a filter's reason (or a reason-less filter).
            unexplained = row["documents_in"] - row["documents_out"] - sum(row["dropped"].values())
            if unexplained > 0:
                row["dropped"]["unspecified"] = unexplained
        rows.append(row)
    return {"stages": rows}


def _size(n: int | None) -> str:
    if n is None:
        return "-"
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if n < 1000 or unit == "TB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return str(n)


def format_table(summary: dict) -> str:
    """A Markdown table of `collect`'s summary: one row per stage."""
    lines = ["| stage | docs in | docs out | kept | bytes in | bytes out | dropped (reason: docs) |",
             "|---|---:|---:|---:|---:|---:|---|"]
    for row in summary["stages"]:
        kept = (f"{100 * row['documents_out'] / row['documents_in']:.1f}%"
                if row["documents_in"] else "-")
        reasons = ", ".join(f"{k}: {v}" for k, v in row["dropped"].items()) or "-"
        lines.append(f"| {row['stage']} | {row['documents_in']} | {row['documents_out']} | {kept} | "
                     f"{_size(row['bytes_in'])} | {_size(row['bytes_out'])} | {reasons} |")
    return "\n".join(lines)
