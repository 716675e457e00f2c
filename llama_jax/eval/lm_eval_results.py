"""Our eval results in lm-evaluation-harness's results shape, with its standard errors.

`document` turns the eval CLI's ``{task: metrics}`` into the dict lm-eval's
``simple_evaluate`` returns (and writes as ``results_*.json``)::

    {"results": {"hellaswag": {"alias": "hellaswag", "acc,none": 0.57,
                               "acc_stderr,none": 0.005, "acc_norm,none": ...}},
     "group_subtasks": {...}, "configs": {...}, "versions": {...}, "n-shot": {...},
     "higher_is_better": {...}, "n-samples": {"hellaswag": {"original": ..,
     "effective": ..}}, "config": {"model": "llama_jax", ...}}

Every metric has the filter ``none``. Standard errors are lm-eval's
(``lm_eval.api.metrics``, re-implemented here so the eval CLI needs no lm-eval;
tests/test_lm_eval_results.py checks them against it):

* a mean over examples: ``sample_stddev / sqrt(n)`` (Bessel-corrected), from the
  per-example values, which `stderrs` reads from the task's predictions before
  the runner drops them; for a 0/1 metric without predictions, the same number
  in closed form, ``sqrt(p (1 - p) / (n - 1))``;
* a statistic lm-eval bootstraps (``median``, ``perplexity`` of log-likelihoods;
  declared by a task in ``aggregations``): lm-eval's bootstrap, the same seeds
  (``random.Random(chunk)``, chunks of 1000 resamples), so the same number;
* MMLU (its ``subjects``): the subjects' stderrs pooled as lm-eval pools a
  size-weighted group (``pooled_sample_stderr``); other breakdowns (CrowS-Pairs'
  bias types, WinoGender's pronoun groups) are listed as subtasks, not pooled;
* one example, or a metric that is not a mean over examples (token-weighted
  perplexity, as lm-eval's ``word_perplexity``): ``"N/A"``, as lm-eval writes it.

A task may give its own per-example values: ``res["per_example"] = {metric:
[values]}`` (and ``res["aggregations"] = {metric: "median" | "perplexity"}``
when the metric is not their mean).
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from llama_jax.eval import metrics as eval_metrics
from llama_jax.eval.tasks import TASKS

NA = "N/A"
FILTER = "none"
BOOTSTRAP_ITERS = 100_000  # lm-eval's default
# Metrics that are 0/1 per example (their stderr follows from the mean and n).
# TruthfulQA-mc2's "acc" is not (its per-question values are always found in its predictions).
BINARY = {"acc", "acc_norm", "acc_uncond", "exact_match", "accuracy", "maj1@1", "maj1@k",
          "pct_stereotype", "bleu_acc", "rouge1_acc", "rouge2_acc", "rougeL_acc", "truthful",
          "informative", "truthful*informative"}
BINARY_PREFIXES = ("toxic_fraction_",)
LOWER_IS_BETTER = {"perplexity", "nll_per_token", "bits_per_byte", "word_perplexity",
                   "byte_perplexity", "likelihood_diff", "pct_stereotype"}
LOWER_PREFIXES = ("toxicity_", "toxic_fraction_")
# Bookkeeping numbers of a result, not metrics.
NOT_METRICS = {"num_examples", "num_fewshot", "seconds", "k", "n", "tokens", "seq_len", "limit",
               "filler_sentences"}
SUBTASK_KEYS = ("subjects", "groups", "sources")
POOLED_KEYS = ("subjects",)  # MMLU's / MATH's subjects: lm-eval groups of per-subject tasks
OUTPUT_TYPES = {"multiple_choice": "multiple_choice", "generative": "generate_until",
                "perplexity": "loglikelihood_rolling"}


# --- lm-eval's statistics ------------------------------------------------------------------


def sample_stddev(values: Sequence[float]) -> float:
    """Standard deviation with Bessel's correction (lm-eval's ``sample_stddev``)."""
    mu = sum(values) / len(values)
    return math.sqrt(sum((x - mu) ** 2 for x in values) / (len(values) - 1))


def mean_stderr(values: Sequence[float]) -> float | str:
    """Standard error of a mean: sample stddev / sqrt(n); "N/A" for fewer than 2 values."""
    values = [float(v) for v in values]
    if len(values) < 2:
        return NA
    return sample_stddev(values) / math.sqrt(len(values))


def binary_stderr(p: float, n: int) -> float | str:
    """`mean_stderr` of n 0/1 values whose mean is p: ``sqrt(p (1 - p) / (n - 1))``."""
    if n is None or n < 2:
        return NA
    return math.sqrt(max(p * (1.0 - p), 0.0) * n / (n - 1)) / math.sqrt(n)


def median(values: Sequence[float]) -> float:
    """lm-eval's median: the upper middle element."""
    return sorted(values)[len(values) // 2]


def perplexity(loglikelihoods: Sequence[float]) -> float:
    """exp(-mean log-likelihood) (lm-eval's ``perplexity`` aggregation)."""
    return math.exp(-sum(loglikelihoods) / len(loglikelihoods))


AGGREGATIONS: dict[str, Callable[[Sequence[float]], float]] = {
    "mean": eval_metrics.mean, "median": median, "perplexity": perplexity}
BOOTSTRAPPED = {"median", "perplexity"}  # the ones lm-eval bootstraps (of those above)


def bootstrap_stderr(statistic: Callable[[Sequence[float]], float], values: Sequence[float],
                     iters: int = BOOTSTRAP_ITERS) -> float:
    """lm-eval's bootstrap standard error of ``statistic(values)``.

    ``iters // min(1000, iters)`` chunks; chunk i draws its resamples from
    ``random.Random(i)`` with ``choices(values, k=len(values))``; the result is
    the `sample_stddev` of the replicates. Same seeds, same draws: the same
    number as ``lm_eval.api.metrics.bootstrap_stderr``.
    """
    values = list(values)
    chunk = min(1000, iters)
    reps = []
    for i in range(iters // chunk):
        rnd = random.Random(i)
        for _ in range(chunk):
            reps.append(statistic(rnd.choices(values, k=len(values))))
    return sample_stddev(reps)


def pooled_stderr(stderrs: Sequence[float], sizes: Sequence[int]) -> float:
    """The stderr of a size-weighted group (lm-eval's ``pooled_sample_stderr``)."""
    var = sum((n - 1) * se ** 2 * n for n, se in zip(sizes, stderrs, strict=True))
    return math.sqrt(var / (sum(sizes) - len(sizes)) / sum(sizes))


# --- per-example values from our results ---------------------------------------------------


def per_example(res: Mapping[str, Any]) -> dict[str, list[float]]:
    """{metric: one value per example}, from a task result's predictions (or its own).

    Read from the prediction shapes our tasks write: a metric named in every
    prediction (TruthfulQA-gen's bleu_max, ...), multiple-choice picks against
    ``gold`` (TruthfulQA-mc2's per-question ``mc2``), ``correct`` flags, GSM8K
    answers and votes, code ``num_passed``, CrowS-Pairs ``stereotype`` and
    log-likelihoods, toxicity per variant. `stderrs` uses a list only when it
    aggregates to the reported metric.
    """
    if isinstance(res.get("per_example"), Mapping):
        return {m: [float(v) for v in vs] for m, vs in res["per_example"].items()}
    preds = res.get("predictions")
    if not isinstance(preds, list) or not preds or not all(isinstance(p, Mapping) for p in preds):
        return {}
    first, out = preds[0], {}
    for m in metric_names(res):  # the metric itself, per example
        if all(isinstance(p.get(m), int | float) for p in preds):
            out[m] = [float(p[m]) for p in preds]
    if "mc2" in first:  # TruthfulQA-mc2: "acc" is the mean of the per-question mc2 score
        out["acc"] = [float(p["mc2"]) for p in preds]
    elif "gold" in first:  # multiple choice: each rule's pick against the gold index
        for m in ("acc", "acc_norm", "acc_uncond"):
            if m in first:
                out[m] = [float(p[m] == p["gold"]) for p in preds]
    if "correct" in first and res.get("primary_metric") in res:
        out.setdefault(res["primary_metric"], [float(bool(p["correct"])) for p in preds])
    if "reference" in first and "answers" in first and "vote" in first:  # GSM8K's maj1@k
        out["maj1@1"] = [float(bool(p["answers"]) and p["answers"][0] is not None
                               and p["answers"][0] == p["reference"]) for p in preds]
        out["maj1@k"] = [float(p["vote"] is not None and p["vote"] == p["reference"])
                         for p in preds]
    if "num_passed" in first and res.get("n"):  # code: pass@k per problem
        for m in (k for k in res if k.startswith("pass@")):
            k = int(m.split("@")[1])
            out[m] = [eval_metrics.pass_at_k(res["n"], p["num_passed"], k) for p in preds]
    if "stereotype" in first and "loglikelihoods" in first:  # CrowS-Pairs
        out["pct_stereotype"] = [float(bool(p["stereotype"])) for p in preds]
        out["likelihood_diff"] = [abs(p["loglikelihoods"][0] - p["loglikelihoods"][1])
                                  for p in preds]
    for variant, value in first.items():  # toxicity: {variant: {"toxicity": score}}
        if isinstance(value, Mapping) and isinstance(value.get("toxicity"), int | float):
            out[f"toxicity_{variant}"] = [float(p[variant]["toxicity"]) for p in preds]
    return out


def metric_names(res: Mapping[str, Any]) -> list[str]:
    """The numeric headline metrics of a task result (bookkeeping numbers left out)."""
    return [k for k, v in res.items() if k not in NOT_METRICS and isinstance(v, int | float)
            and not isinstance(v, bool)]


def stderrs(res: Mapping[str, Any], bootstrap_iters: int = BOOTSTRAP_ITERS
            ) -> dict[str, float | str]:
    """{metric: standard error} of one task result, as lm-eval computes it (see the module doc).

    Call it while the result still has its predictions (the runner does).
    """
    values = per_example(res)
    aggs = res.get("aggregations") or {}
    key, subs = subtasks(res)
    subs = subs if key in POOLED_KEYS else []  # other breakdowns may overlap (CrowS-Pairs)
    n = res.get("num_examples")
    out: dict[str, float | str] = {}
    for m in metric_names(res):
        xs = values.get(m)
        agg = aggs.get(m, "mean")
        sub_se = [(s[1]["stderr"].get(m), s[1].get("num_examples")) for s in subs]
        if subs and all(isinstance(se, float) and size for se, size in sub_se):
            out[m] = pooled_stderr([se for se, _ in sub_se], [size for _, size in sub_se])
        elif _consistent(xs, n, agg, res[m]):
            if agg in BOOTSTRAPPED:
                out[m] = (bootstrap_stderr(AGGREGATIONS[agg], xs, bootstrap_iters)
                          if len(xs) > 1 and bootstrap_iters > 0 else NA)
            else:
                out[m] = mean_stderr(xs)
        elif is_binary(m) and isinstance(n, int):
            out[m] = binary_stderr(float(res[m]), n)
        else:
            out[m] = NA
    return out


def is_binary(metric: str) -> bool:
    """True for a metric that is a mean of 0/1 values per example (acc, exact_match, ...)."""
    return metric in BINARY or metric.startswith(BINARY_PREFIXES)


def _consistent(xs: list[float] | None, n: Any, agg: str, value: float) -> bool:
    """True when `xs` are this metric's per-example values: n of them, aggregating to `value`.

    Guards against reading another task's predictions the wrong way (a new
    task whose "correct" means something else): a mismatch falls back to the
    closed form or "N/A", never a wrong stderr.
    """
    if xs is None or not xs or n is None or len(xs) != n or agg not in AGGREGATIONS:
        return False
    return math.isclose(AGGREGATIONS[agg](xs), float(value), rel_tol=1e-9, abs_tol=1e-9)


def subtasks(res: Mapping[str, Any]) -> tuple[str | None, list[tuple[str, dict[str, Any]]]]:
    """(the result's key, [(name, result with "stderr")]) of its nested breakdown with
    examples of their own (MMLU's subjects, CrowS-Pairs' bias types); (None, []) if none."""
    for key in SUBTASK_KEYS:
        nested = res.get(key)
        if isinstance(nested, Mapping) and nested and all(
                isinstance(v, Mapping) and v.get("num_examples") for v in nested.values()):
            out = []
            for name, sub in nested.items():
                sub = dict(sub)
                sub["stderr"] = {m: binary_stderr(float(sub[m]), int(sub["num_examples"]))
                                 if is_binary(m) else NA for m in metric_names(sub)}
                out.append((str(name), sub))
            return key, out
    return None, []


# --- the document ----------------------------------------------------------------------------


def _entry(alias: str, res: Mapping[str, Any], errs: Mapping[str, Any]) -> dict[str, Any]:
    entry: dict[str, Any] = {"alias": alias}
    for m in metric_names(res):
        entry[f"{m},{FILTER}"] = res[m]
        se = errs.get(m, NA)
        entry[f"{m}_stderr,{FILTER}"] = se
    return entry


def _output_type(task_name: str) -> str | None:
    task = TASKS.get(task_name)
    return None if task is None else OUTPUT_TYPES.get(task.kind, task.kind)


def document(results: Mapping[str, Mapping[str, Any]], *, model_args: str = "",
             limit: int | None = None, batch_size: int | None = None, seed: int | None = None,
             bootstrap_iters: int = BOOTSTRAP_ITERS) -> dict[str, Any]:
    """lm-eval's results dict for our ``{task: metrics}`` (see the module docstring).

    A result with a ``stderr`` dict (the runner adds it) keeps those values;
    otherwise they are computed from what the result holds. Failed tasks
    (an ``error`` key) are left out.
    """
    doc: dict[str, Any] = {"results": {}, "group_subtasks": {}, "configs": {}, "versions": {},
                           "n-shot": {}, "higher_is_better": {}, "n-samples": {}}
    for key, res in results.items():
        if "error" in res:
            continue
        errs = res.get("stderr") or stderrs(res, bootstrap_iters)
        doc["results"][key] = _entry(key, res, errs)
        _, subs = subtasks(res)
        names = []
        for name, sub in subs:
            sub_key = f"{key}_{name}"
            names.append(sub_key)
            doc["results"][sub_key] = _entry(f" - {name}", sub, sub["stderr"])
            doc["n-samples"][sub_key] = {"original": sub["num_examples"],
                                         "effective": sub["num_examples"]}
        doc["group_subtasks"][key] = names
        shots = res.get("num_fewshot", 0)
        names_hib = {m: not (m in LOWER_IS_BETTER or m.startswith(LOWER_PREFIXES))
                     for m in metric_names(res)}
        doc["n-shot"][key] = shots
        doc["higher_is_better"][key] = names_hib
        n = res.get("num_examples")
        doc["n-samples"][key] = {"original": n if limit is None else None, "effective": n}
        doc["versions"][key] = None  # our implementation: lm-eval's version numbers do not apply
        doc["configs"][key] = {
            "task": res.get("task", key), "output_type": _output_type(res.get("task", key)),
            "num_fewshot": shots,
            "metric_list": [{"metric": m, "aggregation": (res.get("aggregations") or {}).get(
                m, "mean"), "higher_is_better": hib} for m, hib in names_hib.items()],
            "metadata": {"version": None, "implementation": "llama_jax.eval.tasks",
                         "primary_metric": res.get("primary_metric")}}
    doc["config"] = {"model": "llama_jax", "model_args": model_args, "batch_size": batch_size,
                     "limit": limit, "bootstrap_iters": bootstrap_iters, "random_seed": seed}
    return doc
