"""Code generation: HumanEval (0-shot) and MBPP (3-shot), pass@k in a sandbox.

n samples per problem (option ``code_samples``) at temperature
``code_temperature`` (the paper: 0.1 for pass@1, 0.8 for pass@100/80; greedy
when n = 1 and no temperature is given), top-p 0.95 when sampling. Every
sample's program runs in `llama_jax.eval.sandbox` and pass@k is the unbiased
estimator of Chen et al. (2021) for each k <= n of (1, 10, 80, 100).
"""

from __future__ import annotations

import os
from typing import Any

from llama_jax.eval import metrics, sandbox
from llama_jax.eval.tasks import readers
from llama_jax.eval.tasks.base import EvalContext, Task, apply_limit
from llama_jax.eval.tasks.generative import run_generation
from llama_jax.eval.tasks.readers import get_field, require
from llama_jax.infer.engine import SamplingConfig

KS = (1, 10, 80, 100)
HUMANEVAL_STOP = ("\nclass", "\ndef", "\n#", "\nif", "\nprint")
MBPP_STOP = ("[DONE]",)
HUMANEVAL_FORMAT = ("HumanEval as published: HumanEval.jsonl(.gz), one object per line with "
                    "'task_id', 'prompt', 'test', 'entry_point'")
MBPP_FORMAT = ("MBPP as published: mbpp.jsonl, one object per line with 'task_id', 'text', "
               "'code', 'test_list' (3 assert strings) and optionally 'test_setup_code'; or "
               "the HF export (test.jsonl / test-*.parquet, the few-shot tasks 2-4 in "
               "prompt.jsonl / prompt-*.parquet)")
# Austin et al. (2021) prompt with tasks 2, 3 and 4 and evaluate tasks 11-510.
MBPP_PROMPT_IDS = (2, 3, 4)
MBPP_TEST_IDS = range(11, 511)


def _sampling(ctx: EvalContext, n: int) -> SamplingConfig:
    temperature = ctx.options.code_temperature
    if temperature is None:
        temperature = 0.0 if n == 1 else 0.1
    temperature = float(temperature)
    return SamplingConfig(temperature=temperature, top_p=0.95 if temperature > 0 else 1.0)


def _score(ctx: EvalContext, programs: list[list[str]], task_ids: list[Any]) -> dict[str, Any]:
    """Run every sample's program; pass@k per k <= n."""
    flat = [p for per_task in programs for p in per_task]
    limits = sandbox.SandboxLimits(timeout_s=ctx.options.sandbox_timeout_s)
    results = sandbox.run_many(flat, limits=limits, workers=ctx.options.sandbox_workers)
    n = len(programs[0]) if programs else 0
    out: dict[str, Any] = {"n": n, "num_examples": len(programs), "primary_metric": "pass@1"}
    passed = [sum(r.passed for r in results[i * n:(i + 1) * n]) for i in range(len(programs))]
    for k in KS:
        if k <= n:
            out[f"pass@{k}"] = metrics.mean(metrics.pass_at_k(n, c, k) for c in passed)
    out["predictions"] = [{"task_id": t, "num_passed": c} for t, c in
                          zip(task_ids, passed, strict=True)]
    return out


def run_humaneval(ctx: EvalContext, data_dir: str, num_fewshot: int, limit: int | None):
    """HumanEval: complete the function, run `check(entry_point)`."""
    path = readers.find_file(data_dir, "humaneval",
                             ["HumanEval.jsonl", "HumanEval.jsonl.gz", *readers.hf_split("test"),
                              "*.jsonl", "*.jsonl.gz"], HUMANEVAL_FORMAT)
    docs = []
    for i, r in enumerate(readers.read_records(path, HUMANEVAL_FORMAT)):
        docs.append({k: get_field(r, k, i, path, HUMANEVAL_FORMAT)
                     for k in ("task_id", "prompt", "test", "entry_point")})
    docs = apply_limit(docs, limit)
    n = ctx.options.code_samples
    outs = run_generation(ctx, [d["prompt"] for d in docs], stop=HUMANEVAL_STOP,
                          sampling=_sampling(ctx, n), num_samples=n,
                          max_new_tokens=ctx.options.code_max_new_tokens)
    programs = [[d["prompt"] + c + "\n\n" + d["test"] + "\n\n" + f"check({d['entry_point']})\n"
                 for c in samples] for d, samples in zip(docs, outs, strict=True)]
    return _score(ctx, programs, [d["task_id"] for d in docs])


def mbpp_prompt(doc: dict[str, Any]) -> str:
    """The harness's MBPP prompt for one task (ends with "[BEGIN]\\n")."""
    tests = "\n".join(doc["test_list"][:3])
    return (f"You are an expert Python programmer, and here is your task: {doc['text']} "
            f"Your code should pass these tests:\n\n{tests}\n[BEGIN]\n")


def mbpp_program(doc: dict[str, Any], completion: str) -> str:
    """Setup code, the completion and the task's asserts."""
    setup = doc.get("test_setup_code") or ""
    return setup + "\n" + completion + "\n\n" + "\n".join(doc["test_list"]) + "\n"


def _load_mbpp(path: str) -> list[dict[str, Any]]:
    """MBPP records of one file (the release mbpp.jsonl or an HF export split)."""
    docs = []
    for i, r in enumerate(readers.read_records(path, MBPP_FORMAT)):
        d = {k: get_field(r, k, i, path, MBPP_FORMAT) for k in ("task_id", "text", "code",
                                                                "test_list")}
        require(isinstance(d["test_list"], list) and d["test_list"], path, i,
                "'test_list' must be a non-empty list of assert strings", MBPP_FORMAT)
        d["code"] = d["code"].replace("\r\n", "\n")
        d["test_setup_code"] = r.get("test_setup_code", "")
        docs.append(d)
    return docs


def run_mbpp(ctx: EvalContext, data_dir: str, num_fewshot: int, limit: int | None):
    """MBPP: 3-shot prompts of tasks 2-4, evaluated on tasks 11-510."""
    path = readers.find_file(data_dir, "mbpp", ["mbpp.jsonl", *readers.hf_split("test"),
                                                "*.jsonl"], MBPP_FORMAT)
    docs = _load_mbpp(path)
    # The HF export keeps the prompt tasks 1-10 in a split of their own.
    prompt_path = None if os.path.basename(path) == "mbpp.jsonl" else readers.find_file(
        data_dir, "mbpp", readers.hf_split("prompt"), MBPP_FORMAT, required=False)
    if prompt_path is not None:
        docs = _load_mbpp(prompt_path) + docs
    by_id = {d["task_id"]: d for d in docs}
    shots = [by_id[t] for t in MBPP_PROMPT_IDS if t in by_id]
    if len(shots) < num_fewshot:
        shots = [d for d in docs if d["task_id"] not in MBPP_TEST_IDS][:num_fewshot]
    shots = shots[:num_fewshot]
    evaluate = [d for d in docs if d["task_id"] in MBPP_TEST_IDS] or \
        [d for d in docs if d not in shots]
    evaluate = apply_limit(evaluate, limit)
    prefix = "".join(mbpp_prompt(s) + s["code"] + "\n[DONE]\n\n" for s in shots)
    n = ctx.options.code_samples
    outs = run_generation(ctx, [prefix + mbpp_prompt(d) for d in evaluate], stop=MBPP_STOP,
                          sampling=_sampling(ctx, n), num_samples=n,
                          max_new_tokens=ctx.options.code_max_new_tokens)
    programs = [[mbpp_program(d, c) for c in samples]
                for d, samples in zip(evaluate, outs, strict=True)]
    return _score(ctx, programs, [d["task_id"] for d in evaluate])


TASKS: dict[str, Task] = {
    "humaneval": Task("humaneval", "generative", run_humaneval, 0, HUMANEVAL_FORMAT),
    "mbpp": Task("mbpp", "generative", run_mbpp, 3, MBPP_FORMAT),
}
