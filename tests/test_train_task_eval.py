"""Benchmarks during training (`llama_jax.train.task_eval`, the paper's Figure 2).

A micro run evaluates HellaSwag and ARC-Easy fixtures (the published file
formats) every 2 steps on its live params; the logged accuracies, and every
per-example log-likelihood, equal ``python -m llama_jax.eval`` on the saved
final checkpoint; the scorer compiles once for all evaluations and holds no
copy of the params; bad settings fail before anything compiles.
"""

import contextlib
import json
import subprocess
import sys
import time

import jax
import numpy as np
import pytest
import train_helpers as th

from llama_jax.errors import ConfigError
from llama_jax.train import loop as trainer
from llama_jax.train import metrics
from llama_jax.train import task_eval as te
from llama_jax.train.loop import train_and_evaluate

STEPS, EVERY, LIMIT = 4, 2, 3
SLEEP_S = 1.0  # added to each evaluation of the `run` fixture


def _jsonl(path, records):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in records))


def write_fixtures(root):
    """HellaSwag (hellaswag_val.jsonl) and ARC-Easy (ARC-Easy-Test.jsonl), 4 examples each."""
    words = ["the file is read", "a list is sorted", "the value is returned", "an error is raised"]
    _jsonl(root / "hellaswag/hellaswag_val.jsonl", [
        {"ind": i, "activity_label": "Programming", "ctx_a": f"In step {i} of the program",
         "ctx_b": "then", "ctx": f"In step {i} of the program then",
         "endings": [words[(i + j) % 4] + "." for j in range(4)], "source_id": f"x~{i}",
         "split": "val", "split_type": "indomain", "label": i % 4} for i in range(4)])
    _jsonl(root / "arc_easy/ARC-Easy-Test.jsonl", [
        {"id": f"Q{i}", "question": {"stem": f"What does def {n} do?", "choices": [
            {"text": t, "label": lab} for t, lab in zip(words, "ABCD", strict=True)]},
         "answerKey": "ABCD"[i % 4]} for i, n in enumerate(["read", "sort", "get", "fail"])])
    return root


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    return th.make_data(tmp_path_factory.mktemp("data"))


@pytest.fixture(scope="module")
def eval_dir(tmp_path_factory):
    return write_fixtures(tmp_path_factory.mktemp("eval_data"))


def _pointer(x):
    return [s.data.unsafe_buffer_pointer() for s in x.addressable_shards]


def _config(root, eval_dir, **extra):
    return th.micro_config(root, **{
        "train.steps": STEPS, "train.eval_tasks": "hellaswag,arc_easy:0",
        "train.eval_tasks_every": EVERY, "train.eval_tasks_limit": LIMIT,
        "train.eval_tasks_data_dir": str(eval_dir), "train.tensorboard": True,
        "checkpoint.every": 100, **extra})


@contextlib.contextmanager
def spying(sleep_s: float = 0.0):
    """Record, after every `TaskEvaluator` call: the scorer's trace count, the results
    (with predictions), the logged values, the params the scorer still holds, and
    whether the scorer's params were the state's own buffers. `sleep_s` lengthens
    each evaluation (the loop must leave it out of the throughput)."""
    calls = []
    real_call = te.TaskEvaluator.__call__

    def spy(self, params, base=None):
        out = real_call(self, params, base)
        time.sleep(sleep_s)
        placed = te.placement.place_params(self.config, self.eval_params(params, base),
                                           self.mesh, self.rules)
        source = params if base is None else base  # LoRA: the base, merged into
        aliased = [_pointer(a) == _pointer(b) for a, b in zip(
            jax.tree_util.tree_leaves(te.nn.meta.unbox(source)),
            jax.tree_util.tree_leaves(placed), strict=True)]
        calls.append({"traces": self.scorer.trace_count, "results": self.last_results,
                      "metrics": out, "scorer_params": self.scorer.params, "aliased": aliased})
        return out

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(te.TaskEvaluator, "__call__", spy)
        yield calls


@pytest.fixture(scope="module")
def run(root, eval_dir, tmp_path_factory):
    """A micro run with task evals at steps 2 and 4; the evaluator spied on."""
    wd = tmp_path_factory.mktemp("run")
    with spying(sleep_s=SLEEP_S) as calls:
        result = train_and_evaluate(_config(root, eval_dir), str(wd))
    assert result.status == "completed"
    return wd, calls


def test_parse_eval_tasks_syntax_and_errors():
    specs = te.parse_eval_tasks("hellaswag, arc_easy:0@50,arc_e:1", default_limit=7)
    assert [(s.task.name, s.shots, s.limit, s.key) for s in specs] == [
        ("hellaswag", 0, 7, "hellaswag"), ("arc_easy", 0, 50, "arc_easy:0"),
        ("arc_easy", 1, 7, "arc_easy:1")]
    assert te.parse_eval_tasks("piqa")[0].limit is None
    for bad, match in (("nosuch", r"train.eval_tasks=.*unknown task 'nosuch'"),
                       ("piqa@0", r"limit 0 must be >= 1"), ("piqa@x", r"after '@'"),
                       ("piqa:x", "shots after ':'"), (" , ", "lists no task")):
        with pytest.raises(ConfigError, match=match):
            te.parse_eval_tasks(bad)


def test_flatten_metrics():
    res = {"acc": 0.5, "acc_norm": 1, "num_examples": 2, "primary_metric": "acc_norm",
           "predictions": [{}], "seconds": 1.0, "groups": {"g": {"acc": 0.25}}}
    assert te.flatten_metrics("x", res) == {"task/x/acc": 0.5, "task/x/acc_norm": 1.0,
                                            "task/x/num_examples": 2.0,
                                            "task/x/groups/g/acc": 0.25}


def test_run_logs_task_metrics_at_the_configured_steps(run):
    wd, calls = run
    recs = metrics.read_metrics(wd)
    tasked = {r["step"]: r for r in recs if "task/hellaswag/acc_norm" in r}
    assert sorted(tasked) == [2, 4]
    for r in tasked.values():
        assert r["task/hellaswag/num_examples"] == LIMIT and r["task/arc_easy/num_examples"] == LIMIT
        for key in ("task/hellaswag/acc", "task/arc_easy/acc", "task/arc_easy/acc_norm"):
            assert 0.0 <= r[key] <= 1.0
        assert "lr" in r and "loss_mean" in r  # the step's training record, joined
    steps = [r["step"] for r in recs if "loss" in r]
    assert len(steps) == len(set(steps))  # one record per step
    # The step after an evaluation: its window leaves the evaluation's (>= 1 s) time out.
    step3 = next(r for r in recs if r["step"] == 3)
    assert step3["steps_per_s"] > 2.0 / SLEEP_S
    assert [c["metrics"] for c in calls] == [
        {k: v for k, v in tasked[s].items() if k.startswith("task/")} for s in (2, 4)]
    # TensorBoard has the scalars too.
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    acc = EventAccumulator(str(wd / "tensorboard"))
    acc.Reload()
    assert [e.step for e in acc.Scalars("task/arc_easy/acc")] == [2, 4]


def test_scorer_compiles_once_and_shares_the_live_params(run):
    _, calls = run
    assert len(calls) == 2
    assert calls[0]["traces"] >= 1 and calls[1]["traces"] == calls[0]["traces"]
    assert calls[0]["scorer_params"] is None  # no reference kept between evals
    assert all(all(c["aliased"]) for c in calls)
    # Different params at step 2 and 4: the log-likelihoods moved.
    ll = [c["results"]["hellaswag"]["predictions"][0]["loglikelihoods"] for c in calls]
    assert not np.allclose(ll[0], ll[1])


def test_numbers_equal_the_eval_cli_on_the_final_checkpoint(run, eval_dir, tmp_path):
    wd, calls = run
    out = tmp_path / "results.json"
    proc = subprocess.run(
        [sys.executable, "-m", "llama_jax.eval", f"--checkpoint={wd}", "--tasks=hellaswag,arc_easy:0",
         f"--data_dir={eval_dir}", f"--limit={LIMIT}", f"--output={out}", "--log_samples"],
        capture_output=True, text=True, timeout=300, cwd=th.REPO)
    assert proc.returncode == 0, proc.stderr[-3000:]
    cli = json.loads(out.read_text())["results"]
    final = calls[-1]["results"]
    for key in ("hellaswag", "arc_easy"):
        for metric in ("acc", "acc_norm", "num_examples"):
            assert final[key][metric] == cli[key][metric], (key, metric)
        for ours, theirs in zip(final[key]["predictions"], cli[key]["predictions"], strict=True):
            np.testing.assert_allclose(ours["loglikelihoods"], theirs["loglikelihoods"],
                                       rtol=1e-5, atol=1e-4)


def test_bad_settings_fail_before_compiling(root, eval_dir, tmp_path, monkeypatch):
    def boom(*args, **kwargs):
        raise AssertionError("compiled before the error was found")
    for name in ("init_train_state", "abstract_train_state", "make_train_step", "make_eval_step"):
        monkeypatch.setattr(trainer, name, boom)
    cases = [({"train.eval_tasks": "hellaswag,nosuch"}, "unknown task 'nosuch'"),
             ({"train.eval_tasks_data_dir": str(tmp_path / "none")},
              "train.eval_tasks_data_dir=.* is not a directory"),
             ({"train.eval_tasks": "piqa"}, r"no folder .*piqa for task piqa"),
             ({"train.eval_tasks_data_dir": ""}, "needs train.eval_tasks_data_dir"),
             ({"train.eval_tasks": ""}, "train.eval_tasks is empty"),
             ({"train.eval_tasks_limit": 0}, "train.eval_tasks_limit=0 must be >= 1"),
             ({"train.eval_tasks_every": -1}, "train.eval_tasks_every=-1 must be >= 0")]
    for i, (extra, match) in enumerate(cases):
        with pytest.raises(ConfigError, match=match):
            train_and_evaluate(_config(root, eval_dir, **extra), str(tmp_path / f"w{i}"))


@pytest.mark.slow  # ~45 s: a transformers checkpoint to start from
def test_lora_run_scores_the_merged_view(root, eval_dir, tmp_path):
    """With LoRA the tasks see W + s A B: the same numbers as the eval runner on the
    workdir (which `from_pretrained` merges), the path ``python -m llama_jax.eval`` takes."""
    pytest.importorskip("transformers")
    import sft_helpers as sh

    from llama_jax.convert import from_pretrained
    from llama_jax.data.tokenizer import load_tokenizer
    from llama_jax.eval.runner import build_context, evaluate
    from llama_jax.eval.tasks import parse_task_list

    hf_dir = sh.make_hf_checkpoint(root, tmp_path / "hf")
    c = th.micro_config(root, **{**sh.init_overrides(hf_dir, sh.write_chat(tmp_path / "c.jsonl")),
                                 "train.steps": 2, "train.eval_tasks": "hellaswag,arc_easy:0",
                                 "train.eval_tasks_every": 2, "train.eval_tasks_limit": LIMIT,
                                 "train.eval_tasks_data_dir": str(eval_dir)})
    c.model.lora.rank, c.model.lora.alpha = 4, 8.0
    wd = tmp_path / "wd"
    with spying() as calls:
        assert train_and_evaluate(c, str(wd)).status == "completed"
    logged = [r for r in metrics.read_metrics(wd) if "task/arc_easy/acc" in r]
    assert [r["step"] for r in logged] == [2]
    config, params = from_pretrained(str(wd))
    ctx = build_context(config, params, load_tokenizer(wd / "tokenizer.model"))
    ref = evaluate(ctx, parse_task_list("hellaswag,arc_easy:0"), str(eval_dir), limit=LIMIT,
                   keep_predictions=True)
    (call,) = calls
    # Only the adapted kernels (wq, wv) are merged copies, for the eval; the rest is the base's.
    assert 0 < sum(call["aliased"]) < len(call["aliased"])
    for key in ("hellaswag", "arc_easy"):
        for metric in ("acc", "acc_norm"):
            assert logged[0][f"task/{key}/{metric}"] == ref[key][metric]
        for ours, theirs in zip(call["results"][key]["predictions"], ref[key]["predictions"],
                                strict=True):
            np.testing.assert_allclose(ours["loglikelihoods"], theirs["loglikelihoods"],
                                       rtol=1e-5, atol=1e-4)


@pytest.mark.slow  # ~60 s: two training processes
@pytest.mark.multiprocess
def test_two_processes_log_the_numbers_of_one(run, root, eval_dir, tmp_path):
    """2 processes x 2 devices (gloo): every process runs the tasks (SPMD), process 0
    writes; the numbers are the single-process run's (the `run` fixture)."""
    import os

    from process_helpers import LoggedProcesses, free_port

    wd_one, _ = run
    port = free_port()
    env = {k: v for k, v in os.environ.items() if k not in ("XLA_FLAGS", "JAX_PLATFORMS")}
    env.update(XLA_FLAGS="--xla_force_host_platform_device_count=2", JAX_PLATFORMS="cpu")
    env["PYTHONPATH"] = os.pathsep.join([str(th.REPO), *env.get("PYTHONPATH", "").split(os.pathsep)])
    two = tmp_path / "two"
    task_flags = {"train.steps": STEPS, "train.eval_tasks": "hellaswag,arc_easy:0",
                  "train.eval_tasks_every": EVERY, "train.eval_tasks_limit": LIMIT,
                  "train.eval_tasks_data_dir": str(eval_dir), "checkpoint.every": 100}
    runs = [(f"process_{pid}", [
        sys.executable, "-m", "llama_jax.train", f"--config={th.REPO / 'configs' / 'tiny.py'}",
        f"--workdir={two}", *th.override_flags(root, **task_flags, **{
            "distributed.enabled": "yes", "distributed.coordinator_address": f"localhost:{port}",
            "distributed.num_processes": 2, "distributed.process_id": pid})], env)
        for pid in range(2)]
    with LoggedProcesses(runs, tmp_path, cwd=th.REPO, timeout_s=420) as procs:
        codes = procs.wait()
        logs = procs.logs()
    assert codes == [0, 0], "\n".join(text[-3000:] for text in logs.values())
    for text in logs.values():
        assert "task arc_easy: acc_norm=" in text  # each process scored
    got = {r["step"]: r for r in metrics.read_metrics(two) if "task/hellaswag/acc" in r}
    want = {r["step"]: r for r in metrics.read_metrics(wd_one) if "task/hellaswag/acc" in r}
    assert sorted(got) == sorted(want) == [2, 4]  # one record per step: one writer
    for step, rec in want.items():
        assert {k: v for k, v in got[step].items() if k.startswith("task/")} == {
            k: v for k, v in rec.items() if k.startswith("task/")}


def test_generative_task_on_live_params_matches_the_eval_runner(root, eval_dir):
    """NaturalQuestions (greedy generation) through the evaluator's `Generator`, twice:
    the same answers as `build_context` + `evaluate` on a placed copy, no retrace."""
    import optax

    from llama_jax.data.tokenizer import load_tokenizer
    from llama_jax.eval.runner import build_context, evaluate
    from llama_jax.model.config import LlamaConfig
    from llama_jax.train.step import init_train_state

    _jsonl(eval_dir / "naturalqs/NQ-open.test.jsonl", [
        {"question": "what does import do", "answer": ["loads a module"]},
        {"question": "what is a list", "answer": ["a sequence"]}])
    cfg = LlamaConfig(dim=64, n_layers=2, n_heads=4, vocab_size=th.VOCAB, multiple_of=32,
                      max_seq_len=128)
    mesh, rules = trainer.mesh_and_rules(th.micro_config(root))
    state, _ = init_train_state(cfg, optax.sgd(0.1), mesh, rules, jax.random.key(0))
    tok = load_tokenizer(root / "tok.model")
    ev = te.TaskEvaluator(te.parse_eval_tasks("naturalqs:0"), cfg, tok, mesh, rules,
                          str(eval_dir), every=1, total_steps=1)
    first = ev(state.params)
    traces = dict(ev.generator.trace_count)
    assert ev(state.params) == first and ev.generator.trace_count == traces
    assert ev.generator.params is None and ev.scorer is None  # built on first use only
    ctx = build_context(cfg, jax.tree.map(np.asarray, te.nn.meta.unbox(state.params)), tok,
                        mesh=mesh, rules=rules)
    ref = evaluate(ctx, te.parse_task_list("naturalqs:0"), str(eval_dir),
                   keep_predictions=True)["naturalqs"]
    assert ev.last_results["naturalqs"]["predictions"] == ref["predictions"]
    assert first["task/naturalqs/exact_match"] == ref["exact_match"]
