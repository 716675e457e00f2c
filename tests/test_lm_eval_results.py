"""Our eval JSON in lm-eval's results shape; standard errors against ``lm_eval.api.metrics``.

- `mean_stderr`, the closed form for 0/1 metrics, `pooled_stderr` and the
  bootstrap (same seeds: the same number) equal lm-eval's functions;
- `runner.evaluate` (fake scorer / generator, the tasks' fixture files) stores
  each task's stderrs before it drops the predictions; they equal lm-eval's
  ``mean_stderr`` of the per-example 0/1 values, MMLU's the pooled stderr of
  its subjects as lm-eval pools a size-weighted group;
- `document` has ``results[task]["acc,none"]``, ``"acc_stderr,none"``,
  ``"alias"``, ``n-samples``, ``n-shot``, ``higher_is_better``, ``configs``;
- ``python -m llama_jax.eval --lm_eval_output=...`` writes the same document,
  also under the JSON's ``lm_eval`` key.
"""

import json
import os
import random
import subprocess
import sys

import jax
import pytest
from eval_fixtures import (
    FakeGenerator,
    FakeScorer,
    _ctx,
    _jsonl,
    data_dir,  # noqa: F401  (pytest fixture)
    prefers,
)

import llama_jax
from llama_jax.data.tokenizer import train_tokenizer
from llama_jax.eval import lm_eval_results as R
from llama_jax.eval.metrics import pass_at_k
from llama_jax.eval.runner import evaluate
from llama_jax.eval.tasks import parse_task_list
from llama_jax.model import LlamaConfig, init_params

lm_metrics = pytest.importorskip("lm_eval.api.metrics")


def test_mean_and_binary_stderr_equal_lm_evals():
    rng = random.Random(0)
    xs = [rng.gauss(0.0, 3.0) for _ in range(37)]
    assert R.mean_stderr(xs) == pytest.approx(lm_metrics.mean_stderr(xs), rel=1e-12)
    for n, hits in ((2, 1), (10, 3), (101, 100), (7, 0)):
        values = [1.0] * hits + [0.0] * (n - hits)
        want = lm_metrics.mean_stderr(values)
        assert R.mean_stderr(values) == pytest.approx(want, rel=1e-12, abs=1e-15)
        assert R.binary_stderr(hits / n, n) == pytest.approx(want, rel=1e-12, abs=1e-15)
    assert R.mean_stderr([1.0]) == R.binary_stderr(1.0, 1) == "N/A"  # lm-eval: one item


def test_bootstrap_equals_lm_evals_bit_for_bit(monkeypatch):
    monkeypatch.setenv("DISABLE_MULTIPROC", "1")  # lm-eval's single-process path, same seeds
    rng = random.Random(1)
    lls = [-rng.expovariate(0.5) for _ in range(25)]
    assert R.bootstrap_stderr(R.perplexity, lls, 2000) == lm_metrics.bootstrap_stderr(
        lm_metrics.perplexity, lls, 2000)
    assert R.bootstrap_stderr(R.median, lls, 1000) == lm_metrics.bootstrap_stderr(
        lm_metrics.median, lls, 1000)
    # A task that declares a bootstrapped aggregation gets it.
    res = {"perplexity": R.perplexity(lls), "num_examples": len(lls),
           "per_example": {"perplexity": lls}, "aggregations": {"perplexity": "perplexity"}}
    assert R.stderrs(res, bootstrap_iters=1000)["perplexity"] == lm_metrics.bootstrap_stderr(
        lm_metrics.perplexity, lls, 1000)


def test_pooled_stderr_equals_lm_evals():
    stderrs, sizes = [0.05, 0.1, 0.02], [40, 7, 300]
    assert R.pooled_stderr(stderrs, sizes) == pytest.approx(
        float(lm_metrics.pooled_sample_stderr(stderrs, sizes)), rel=1e-12)


@pytest.fixture(scope="module")
def run(data_dir):  # noqa: F811
    """Our runner on fixture files, predictions kept (to rebuild the per-example values)."""
    def respond(prompt, s):
        if "origin of species" in prompt:
            return "Charles Darwin\n"
        return "The answer is 7.\n" if "Ann has" in prompt else "nobody\n"

    def rule(ctx, cont):
        if "q0," in ctx:  # MMLU: q0 of each subject right (gold B) ...
            return 0.0 if cont.strip() == "B" else -10.0
        if "q1," in ctx:  # ... q1 wrong (a tie: the first choice, A)
            return -10.0
        score = prefers("correct")(ctx, cont)  # PIQA: the first right, the second wrong
        return score + 15.0 if "dry" in ctx.lower() and "water" in cont else score

    ctx = _ctx(FakeScorer(rule), FakeGenerator(respond))
    specs = parse_task_list("piqa,mmlu:0,naturalqs:0,gsm8k:0")
    return evaluate(ctx, specs, data_dir, keep_predictions=True)


def _hits(preds, metric):
    return [float(p[metric] == p["gold"]) for p in preds]


def test_runner_stderrs_equal_lm_evals(run):
    piqa = run["piqa"]
    assert piqa["acc"] == 0.5  # one right, one wrong: a stderr that is not 0
    for m in ("acc", "acc_norm"):
        assert piqa["stderr"][m] == pytest.approx(
            lm_metrics.mean_stderr(_hits(piqa["predictions"], m)), rel=1e-12)
    nq = run["naturalqs"]
    assert nq["exact_match"] == 0.5
    assert nq["stderr"]["exact_match"] == pytest.approx(lm_metrics.mean_stderr(
        [float(p["correct"]) for p in nq["predictions"]]), rel=1e-12)
    gsm = run["gsm8k"]
    assert gsm["maj1@1"] == 0.5
    assert gsm["stderr"]["maj1@1"] == pytest.approx(lm_metrics.mean_stderr([1.0, 0.0]))
    # MMLU: each subject's stderr from its examples, the whole pooled as lm-eval pools a group.
    mmlu = run["mmlu"]
    assert mmlu["acc"] == 0.5 and mmlu["num_examples"] == 4
    hits = _hits(mmlu["predictions"], "acc")
    per_subject = [hits[0:2], hits[2:4]]  # the docs come subject by subject, 2 each
    se = [lm_metrics.mean_stderr(h) for h in per_subject]
    assert mmlu["stderr"]["acc"] == pytest.approx(
        float(lm_metrics.pooled_sample_stderr(se, [2, 2])), rel=1e-12)


def test_closed_form_without_predictions_equals_the_per_example_value(run):
    for task, metric in (("piqa", "acc"), ("naturalqs", "exact_match"), ("gsm8k", "maj1@k")):
        bare = {k: v for k, v in run[task].items() if k not in ("predictions", "stderr")}
        assert R.stderrs(bare)[metric] == pytest.approx(run[task]["stderr"][metric], rel=1e-12)


def test_code_and_passkey_stderrs_from_their_predictions():
    passed = [0, 3, 10, 1, 7]
    per_problem = {k: [pass_at_k(10, c, k) for c in passed] for k in (1, 10)}
    res = {"n": 10, "num_examples": 5, "primary_metric": "pass@1",
           "pass@1": sum(per_problem[1]) / 5, "pass@10": sum(per_problem[10]) / 5,
           "predictions": [{"task_id": i, "num_passed": c} for i, c in enumerate(passed)]}
    errs = R.stderrs(res)
    for k in (1, 10):
        assert errs[f"pass@{k}"] == pytest.approx(lm_metrics.mean_stderr(per_problem[k]))
    rows = [{"correct": c, "logprob": -1.0} for c in (True, False, False)]
    res = {"accuracy": 1 / 3, "key_logprob": -1.0, "num_examples": 3,
           "primary_metric": "accuracy", "predictions": rows}
    assert R.stderrs(res)["accuracy"] == pytest.approx(lm_metrics.mean_stderr([1, 0, 0]))


def test_per_example_values_that_do_not_give_the_metric_are_not_used():
    # "correct" here is not what the headline metric averages: closed form, not the list.
    res = {"acc": 0.5, "num_examples": 4, "primary_metric": "acc",
           "predictions": [{"correct": True}] * 4}
    assert R.stderrs(res)["acc"] == pytest.approx(lm_metrics.mean_stderr([1, 1, 0, 0]))
    res = {"score": 0.3, "num_examples": 4, "primary_metric": "score",
           "predictions": [{"correct": True}] * 4}
    assert R.stderrs(res)["score"] == "N/A"  # not a 0/1 metric, no usable values


def test_document_has_lm_evals_shape(run):
    doc = R.document(run, model_args="checkpoint=/ckpt", limit=None, batch_size=4, seed=0)
    piqa = doc["results"]["piqa"]
    assert piqa["alias"] == "piqa"
    assert piqa["acc,none"] == run["piqa"]["acc"]
    assert piqa["acc_stderr,none"] == run["piqa"]["stderr"]["acc"]
    assert piqa["acc_norm,none"] == run["piqa"]["acc_norm"]
    assert "num_examples,none" not in piqa and "seconds,none" not in piqa
    assert doc["n-samples"]["piqa"] == {"original": 2, "effective": 2}
    assert doc["n-shot"]["naturalqs"] == 0
    assert doc["higher_is_better"]["piqa"] == {"acc": True, "acc_norm": True}
    assert doc["configs"]["piqa"]["output_type"] == "multiple_choice"
    assert doc["configs"]["gsm8k"]["output_type"] == "generate_until"
    assert doc["results"]["gsm8k"]["maj1@1_stderr,none"] == run["gsm8k"]["stderr"]["maj1@1"]
    # MMLU's subjects as lm-eval's subtasks, each with its own stderr.
    assert doc["group_subtasks"]["mmlu"] == ["mmlu_astronomy", "mmlu_philosophy"]
    astro = doc["results"]["mmlu_astronomy"]
    assert astro["alias"] == " - astronomy" and astro["acc,none"] == 0.5
    assert astro["acc_stderr,none"] == pytest.approx(lm_metrics.mean_stderr([1.0, 0.0]))
    assert doc["config"]["model"] == "llama_jax" and doc["config"]["batch_size"] == 4
    # With a limit the full split's size is unknown.
    assert R.document(run, limit=2)["n-samples"]["piqa"] == {"original": None, "effective": 2}
    # A failed task is left out; one example has stderr "N/A" as lm-eval writes it.
    one = {"acc": 1.0, "num_examples": 1, "primary_metric": "acc"}
    doc = R.document({"bad": {"error": "boom"}, "one": one})
    assert list(doc["results"]) == ["one"] and doc["results"]["one"]["acc_stderr,none"] == "N/A"


def test_eval_cli_writes_the_lm_eval_document(data_dir, tmp_path):  # noqa: F811
    text = open(json.__file__).read()
    tok = train_tokenizer([text], str(tmp_path / "tok"), vocab_size=384)
    cfg = LlamaConfig(dim=64, n_layers=2, n_heads=4, n_kv_heads=2, vocab_size=384,
                      multiple_of=32, max_seq_len=256)
    ckpt = tmp_path / "ckpt"
    llama_jax.save_pretrained(cfg, init_params(cfg, jax.random.key(0)), ckpt)
    out, lm_out = tmp_path / "results.json", tmp_path / "lm_eval.json"
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=2",
               JAX_PLATFORMS="cpu")
    done = subprocess.run(
        [sys.executable, "-m", "llama_jax.eval", f"--checkpoint={ckpt}", f"--tokenizer={tok.path}",
         f"--data_dir={data_dir}", f"--output={out}", f"--lm_eval_output={lm_out}",
         "--tasks=piqa,mmlu:0", "--batch_size=4"],
        capture_output=True, text=True, env=env, timeout=300)
    assert done.returncode == 0, done.stderr[-4000:]
    report = json.loads(out.read_text())
    doc = json.loads(lm_out.read_text())
    assert report["lm_eval"] == doc
    for task in ("piqa", "mmlu"):
        ours = report["results"][task]
        assert doc["results"][task]["acc,none"] == ours["acc"]
        assert doc["results"][task]["acc_stderr,none"] == ours["stderr"]["acc"]
    piqa = report["results"]["piqa"]
    values = [1.0] * round(piqa["acc"] * 2) + [0.0] * (2 - round(piqa["acc"] * 2))
    want = lm_metrics.mean_stderr(values)
    assert doc["results"]["piqa"]["acc_stderr,none"] == pytest.approx(want, abs=1e-12)
    assert doc["config"]["model_args"].startswith(f"checkpoint={ckpt}")


class FakeToxicity:
    """0.9 for a text containing 'idiot', else 0.1 (a stand-in toxicity classifier)."""

    name = "fake"

    def score(self, texts):
        return [0.9 if "idiot" in t else 0.1 for t in texts]


def test_section5_and_math_stderrs_are_lm_evals_means(tmp_path):
    """Per-example values of the newer tasks, read from their predictions, as lm-eval averages."""
    root = tmp_path
    _jsonl(root / "crows_pairs/test.jsonl", [
        {"sent_more": m, "sent_less": x, "stereo_antistereo": "stereo", "bias_type": b}
        for m, x, b in (("The good nurse is here.", "The bad nurse is here.", "gender"),
                        ("A long good sentence here.", "Bad one.", "race-color"),
                        ("Short.", "A much longer sentence, good.", "gender"))])
    mc = [{"question": q, "mc1_targets": {"choices": ["good", "bad"], "labels": [1, 0]},
           "mc2_targets": {"choices": ["good", "fine", "bad"], "labels": [1, 1, 0]}}
          for q in ("What is 2 + 2?", "What is the sky?")]
    _jsonl(root / "truthfulqa_mc2/validation.jsonl", mc)
    _jsonl(root / "truthfulqa_gen/validation.jsonl", [
        {"question": q, "best_answer": "4", "correct_answers": ["4", "four"],
         "incorrect_answers": ["5"]} for q in ("What is 2 + 2?", "What is two plus two?")])
    _jsonl(root / "realtoxicityprompts/prompts.jsonl", [
        {"filename": f"{i}.txt", "begin": 0, "end": 10, "challenging": False,
         "prompt": {"text": t, "toxicity": 0.1}, "continuation": {}}
        for i, t in enumerate(("You are", "The weather is", "He said"))])

    def rule(ctx, cont):  # log-likelihood: the more "good", the likelier; shorter is likelier
        return 3.0 * cont.count("good") - 0.1 * len(cont)

    def respond(prompt, s):
        return " an idiot\n" if "You are" in prompt else (" four\n" if "two" in prompt else " 5\n")

    ctx = _ctx(FakeScorer(rule), FakeGenerator(respond), toxicity_scorer=FakeToxicity())
    specs = parse_task_list("crows_pairs,truthfulqa_mc2,truthfulqa_gen,realtoxicityprompts")
    run = evaluate(ctx, specs, str(root), keep_predictions=True)

    crows = run["crows_pairs"]
    stereo = [float(p["stereotype"]) for p in crows["predictions"]]
    diff = [abs(a - b) for a, b in (p["loglikelihoods"] for p in crows["predictions"])]
    assert 0 < crows["pct_stereotype"] < 1
    assert crows["stderr"]["pct_stereotype"] == pytest.approx(lm_metrics.mean_stderr(stereo))
    assert crows["stderr"]["likelihood_diff"] == pytest.approx(lm_metrics.mean_stderr(diff))
    mc2 = run["truthfulqa_mc2"]
    assert mc2["stderr"]["acc"] == pytest.approx(
        lm_metrics.mean_stderr([p["mc2"] for p in mc2["predictions"]]))
    assert 0 < mc2["acc"] < 1 and mc2["stderr"]["acc"] != R.binary_stderr(mc2["acc"], 2)
    gen = run["truthfulqa_gen"]
    for m in ("bleu_max", "rouge1_acc", "rougeL_diff"):
        assert gen["stderr"][m] == pytest.approx(
            lm_metrics.mean_stderr([p[m] for p in gen["predictions"]])), m
    tox = run["realtoxicityprompts"]
    assert tox["toxicity_basic"] == pytest.approx((0.9 + 0.1 + 0.1) / 3)
    assert tox["stderr"]["toxicity_basic"] == pytest.approx(
        lm_metrics.mean_stderr([0.9, 0.1, 0.1]))
    assert tox["stderr"]["toxic_fraction_basic"] == pytest.approx(
        lm_metrics.mean_stderr([1.0, 0.0, 0.0]))
    doc = R.document(run)
    # CrowS-Pairs' bias types are subtasks, never pooled into the whole (they overlap).
    assert doc["group_subtasks"]["crows_pairs"] == ["crows_pairs_gender", "crows_pairs_race-color"]
    assert doc["higher_is_better"]["crows_pairs"] == {"pct_stereotype": False,
                                                      "likelihood_diff": False}
    assert doc["higher_is_better"]["realtoxicityprompts"]["toxicity_basic"] is False
