"""Results as JSON and as a markdown table beside the paper's numbers.

The table compares each headline metric with the paper's value for the LLaMA
size nearest to the evaluated model's parameter count. Accuracies are shown as
percentages; the paper's cell is left empty where the paper has no number, and
a note flags a few-shot setting that differs from the paper's.
"""

from __future__ import annotations

import json
import math
import os
from typing import Any

from llama_jax.eval import paper_results
from llama_jax.fileio import atomic_write

_PAPER_SHOTS = {"mmlu": 5, "mbpp": 3}


def _pct(x: float | None) -> str:
    return "" if x is None else f"{100.0 * x:.1f}"


def _paper(size: str, key: str) -> str:
    v = paper_results.paper_value(size, key)
    return "" if v is None else f"{v:.1f}"


def table_rows(name: str, res: dict[str, Any], size: str) -> list[tuple[str, str, str, str, str]]:
    """(task, metric, ours, paper, note) rows for one task's result."""
    task = res.get("task", name)
    shots = res.get("num_fewshot", 0)
    n = res.get("num_examples", "")
    note = f"n={n}"
    rows = []
    if task == "perplexity":
        rows.append((name, "perplexity", f"{res['perplexity']:.3f}", "", f"{res['tokens']} tokens"))
        for src, s in res.get("sources", {}).items():
            extra = f", {s['bits_per_byte']:.3f} bits/byte" if "bits_per_byte" in s else ""
            rows.append((f"{name}/{src}", "perplexity", f"{s['perplexity']:.3f}", "",
                         f"{s['tokens']} tokens{extra}"))
        return rows
    if task == "long_perplexity":
        rows.append((name, "perplexity", f"{res['perplexity']:.3f}", "",
                     f"{res['tokens']} tokens, rows of {res['seq_len']}"))
        for key, b in res.get("buckets", {}).items():
            rows.append((f"{name} {key}", "perplexity", f"{b['perplexity']:.3f}", "",
                         f"{b['tokens']} tokens"))
        return rows
    if task == "passkey":
        rows.append((name, "accuracy", _pct(res["accuracy"]), "", note))
        for cell, acc in res.get("grid", {}).items():
            length, depth = cell.split("@")
            rows.append((f"{name} {length} tokens, depth {depth}", "accuracy", _pct(acc), "", ""))
        return rows
    if task in ("naturalqs", "triviaqa"):
        key = f"{task}@{shots}"
        return [(f"{name} ({shots}-shot)", "exact_match", _pct(res["exact_match"]),
                 _paper(size, key), note)]
    if task == "gsm8k":
        rows.append((name, "maj1@1", _pct(res["maj1@1"]), _paper(size, "gsm8k/maj1@1"), note))
        if res.get("k", 1) > 1:
            rows.append((name, f"maj1@{res['k']}", _pct(res["maj1@k"]),
                         _paper(size, "gsm8k/maj1@k"), note + " (paper: k=100)"))
        return rows
    if task == "realtoxicityprompts":
        for variant in ("basic", "respectful"):
            paper = paper_results.paper_value(size, f"{task}/{variant}")
            rows.append((name, f"toxicity ({variant})", f"{res[f'toxicity_{variant}']:.3f}",
                         "" if paper is None else f"{paper:.3f}",
                         f"{note}, scorer {res['scorer']}, "
                         f"{_pct(res[f'toxic_fraction_{variant}'])}% >= 0.5"))
        return rows
    if task == "math":
        if shots != 4:
            note += f" ({shots}-shot; paper: 4-shot)"
        equiv = "" if res.get("equivalence") == "sympy" else ", answers compared as strings"
        rows.append((name, "maj1@1", _pct(res["maj1@1"]), _paper(size, "math/maj1@1"),
                     note + equiv))
        if res.get("k", 1) > 1:
            rows.append((name, f"maj1@{res['k']}", _pct(res["maj1@k"]),
                         _paper(size, "math/maj1@k"), note + " (paper: k=256)"))
        for group in ("subjects", "levels"):
            for key, g in res.get(group, {}).items():
                rows.append((f"{name}/{key}", "acc", _pct(g["acc"]), "", f"n={g['num_examples']}"))
        return rows
    if task in ("humaneval", "mbpp"):
        for metric in ("pass@1", "pass@10", "pass@80", "pass@100"):
            if metric in res:
                rows.append((name, metric, _pct(res[metric]), _paper(size, f"{task}/{metric}"),
                             f"{note}, {res['n']} samples"))
        return rows
    if task in _SECTION5_TASKS:
        return _section5_rows(name, task, res, size, note)
    if shots != _PAPER_SHOTS.get(task, 0):
        note += f" ({shots}-shot; paper: {_PAPER_SHOTS.get(task, 0)}-shot)"
    metric = res["primary_metric"]
    rows.append((name, metric, _pct(res[metric]), _paper(size, task), note))
    if task == "mmlu":
        for cat, acc in res.get("categories", {}).items():
            rows.append((f"{name}/{cat}", "acc", _pct(acc), _paper(size, f"mmlu/{cat}"), ""))
    else:
        for other in ("acc", "acc_norm", "acc_uncond"):
            if other in res and other != metric:
                rows.append((name, other, _pct(res[other]), "", ""))
    return rows


_SECTION5_TASKS = ("crows_pairs", "winogender", "truthfulqa_mc1", "truthfulqa_mc2",
                   "truthfulqa_gen")


def _section5_rows(name: str, task: str, res: dict[str, Any], size: str, note: str):
    """Rows of the Section 5 tasks (Tables 12-14): categories, pronoun groups, judges."""
    rows = []
    if task == "crows_pairs":
        rows.append((name, "pct_stereotype", _pct(res["pct_stereotype"]),
                     _paper(size, "crows_pairs"), note + " (lower: less biased)"))
        rows.append((name, "likelihood_diff", f"{res['likelihood_diff']:.3f}", "", ""))
        for cat, g in res.get("groups", {}).items():
            rows.append((f"{name}/{cat}", "pct_stereotype", _pct(g["pct_stereotype"]),
                         _paper(size, f"crows_pairs/{cat}"), f"n={g['num_examples']}"))
    elif task == "winogender":
        rows.append((name, "acc", _pct(res["acc"]), "", note))
        for group, g in res.get("groups", {}).items():
            rows.append((f"{name} {group}", "acc", _pct(g["acc"]),
                         _paper(size, f"winogender/{group}"), f"n={g['num_examples']}"))
        gotcha = res.get("gotcha")
        if gotcha is None:
            rows.append((f"{name} gotcha", "acc", "", "", res.get("gotcha_note", "not scored")))
        else:
            rows.append((f"{name} gotcha", "acc", _pct(gotcha["acc"]), "",
                         f"n={gotcha['num_examples']}"))
            for group, g in gotcha.get("groups", {}).items():
                rows.append((f"{name} {group} (gotcha)", "acc", _pct(g["acc"]),
                             _paper(size, f"winogender/gotcha/{group}"),
                             f"n={g['num_examples']}"))
    elif task in ("truthfulqa_mc1", "truthfulqa_mc2"):
        rows.append((name, "acc", _pct(res["acc"]), "", note))
    else:  # truthfulqa_gen
        for metric in ("truthful", "truthful*informative"):
            if metric in res:
                rows.append((name, metric, _pct(res[metric]),
                             _paper(size, f"truthfulqa/{metric}"), note))
            else:
                rows.append((name, metric, "", _paper(size, f"truthfulqa/{metric}"),
                             res.get("judge_note", "not computed")))
        for m in ("bleu", "rouge1", "rouge2", "rougeL"):
            rows.append((name, f"{m}_acc", _pct(res[f"{m}_acc"]), "",
                         f"{m}_max {res[f'{m}_max']:.2f}, {m}_diff {res[f'{m}_diff']:.2f}"))
    return rows


def markdown_table(results: dict[str, Any], num_params: float) -> str:
    """A markdown table of our numbers beside the nearest LLaMA size's."""
    size = paper_results.nearest_size(num_params)
    lines = [f"| task | metric | ours | LLaMA-{size} (paper) | notes |",
             "|---|---|---|---|---|"]
    for name, res in results.items():
        if "error" in res:
            lines.append(f"| {name} | error | | | {res['error']} |")
            continue
        for row in table_rows(name, res, size):
            lines.append("| " + " | ".join(row) + " |")
    params = f"{num_params / 1e9:.3g}B" if num_params >= 1e8 else f"{num_params / 1e6:.3g}M"
    lines.append("")
    lines.append(f"Model: {params} parameters; paper column: LLaMA-{size} "
                 f"(nearest size, Touvron et al. 2023). Accuracies in %.")
    return "\n".join(lines)


def _finite(obj: Any) -> Any:
    """JSON-safe copy: NaN/inf become None."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {str(k): _finite(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [_finite(v) for v in obj]
    return obj


def write_json(report: dict[str, Any], path: str) -> None:
    """Write `report` to `path` atomically (`llama_jax.fileio.atomic_write`)."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    text = json.dumps(_finite(report), indent=2, sort_keys=False) + "\n"
    atomic_write(path, text.encode("utf-8"))
