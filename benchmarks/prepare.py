"""Preparation throughput: documents/s and MB/s per stage and for the whole pipeline, 1 and N workers.

Builds the demo input (`llama_jax.prepare.demo`, text from installed
packages; ``--repeat`` concatenates re-worded copies for a bigger input), runs
the CCNet stages that need no trained model (line_dedup, language) on the local
executor with each worker count, and reports:

* whole pipeline: input documents and uncompressed text MB over the wall-clock
  time of the run (executor start-up included: that is what a user waits for);
* per stage: the documents and MB entering the stage over the seconds its
  steps spent (datatrove's per-step timers summed over tasks, index passes
  included: CPU-seconds, so 1 / N workers show the same work);

then prints a table and writes ``benchmarks/results/prepare.json``.

    python benchmarks/prepare.py                     # workers 1 and cpu_count
    python benchmarks/prepare.py --workers=1,2 --repeat=4 --shards=8
"""

from __future__ import annotations

import argparse
import glob
import gzip
import json
import os
import platform
import shutil
import tempfile
import time

from llama_jax.prepare import demo, pipeline
from llama_jax.prepare.config import source_config

STAGES = ("line_dedup", "language")


def make_input(folder: str, shards: int, repeat: int) -> str:
    """The demo shards, `repeat` times (copy k's lines carry a suffix, so they are new lines)."""
    demo.write_demo(os.path.join(folder, "base"), shards=shards)
    out = os.path.join(folder, "input")
    os.makedirs(out, exist_ok=True)
    for path in sorted(glob.glob(os.path.join(folder, "base", "*.jsonl.gz"))):
        with gzip.open(path, "rt", encoding="utf-8") as f:
            records = [json.loads(line) for line in f]
        lines = []
        for k in range(repeat):
            for r in records:
                text = r["text"] if k == 0 else "\n".join(f"{x} (copy {chr(97 + k % 26)})"
                                                           for x in r["text"].split("\n"))
                lines.append(json.dumps({"text": text, "url": f"{r['url']}#{k}"}, ensure_ascii=False))
        with gzip.open(os.path.join(out, os.path.basename(path)), "wt", encoding="utf-8") as f:
            f.write("\n".join(lines) + "\n")
    return os.path.join(out, "*.jsonl.gz")


def step_seconds(output: str) -> dict[str, float]:
    """Seconds spent in each stage's steps (all segments, all tasks), from datatrove's timers."""
    plan_stages = {s: 0.0 for s in STAGES}
    for seg in sorted(os.listdir(os.path.join(output, "logs"))):
        for path in glob.glob(os.path.join(output, "logs", seg, "stats", "*.json")):
            for step in json.load(open(path)):
                t = step["time_stats"]
                secs = float(t.get("total", 0) if isinstance(t, dict) else t)
                name = step["name"]
                if "line dedup" in name or "line hash" in name:
                    plan_stages["line_dedup"] += secs
                elif "language" in name:
                    plan_stages["language"] += secs
    return plan_stages


def run_once(input_glob: str, output: str, workers: int) -> dict:
    """One full run; the whole-pipeline and per-stage rates."""
    cfg = source_config(STAGES)
    cfg.input, cfg.output, cfg.workers = input_glob, output, workers
    start = time.perf_counter()
    summary = pipeline.run(cfg, print_table=False)
    wall = time.perf_counter() - start
    rows = {r["stage"]: r for r in summary["stages"]}
    docs, mbytes = rows["input"]["documents_out"], rows["input"]["bytes_out"] / 1e6
    result = {"workers": workers, "tasks": summary["tasks"], "seconds": round(wall, 3),
              "documents": docs, "mb": round(mbytes, 3),
              "pipeline": {"docs_per_s": round(docs / wall, 1), "mb_per_s": round(mbytes / wall, 3)},
              "stages": {}}
    for stage, secs in step_seconds(output).items():
        row = rows[stage]
        result["stages"][stage] = {
            "step_seconds": round(secs, 3), "documents_in": row["documents_in"],
            "docs_per_s": round(row["documents_in"] / secs, 1) if secs else None,
            "mb_per_s": round(row["bytes_in"] / 1e6 / secs, 3) if secs else None}
    return result


def main() -> None:
    """Parse flags, run each worker count, print the table, write the JSON."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workers", default=f"1,{os.cpu_count()}")
    parser.add_argument("--shards", type=int, default=4)
    parser.add_argument("--repeat", type=int, default=1)
    parser.add_argument("--out", default=os.path.join(os.path.dirname(__file__), "results", "prepare.json"))
    args = parser.parse_args()
    workers = sorted({int(w) for w in args.workers.split(",")})
    tmp = tempfile.mkdtemp(prefix="prepare_bench_")
    try:
        input_glob = make_input(tmp, args.shards, args.repeat)
        results = [run_once(input_glob, os.path.join(tmp, f"out_w{w}"), w) for w in workers]
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    print("| workers | what | docs/s | MB/s | seconds |")
    print("|---:|---|---:|---:|---:|")
    for r in results:
        print(f"| {r['workers']} | whole pipeline (wall) | {r['pipeline']['docs_per_s']} | "
              f"{r['pipeline']['mb_per_s']} | {r['seconds']} |")
        for stage, s in r["stages"].items():
            print(f"| {r['workers']} | {stage} (step CPU time) | {s['docs_per_s']} | {s['mb_per_s']} | "
                  f"{s['step_seconds']} |")
    record = {"benchmark": "prepare", "host": platform.node(), "cpu_count": os.cpu_count(),
              "shards": args.shards, "repeat": args.repeat, "stages": list(STAGES), "results": results}
    os.makedirs(os.path.dirname(args.out), exist_ok=True)
    with open(args.out, "w") as f:
        json.dump(record, f, indent=1)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
