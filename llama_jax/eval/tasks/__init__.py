"""The task registry: every benchmark of the paper by its --tasks name.

A task spec is ``name`` or ``name:shots`` (e.g. ``naturalqs:64``); shots
default to the paper's setting for that task (`Task.default_fewshot`).
"""

from __future__ import annotations

from llama_jax.errors import ConfigError
from llama_jax.eval.tasks import (
    bias,
    code,
    commonsense,
    generative,
    math,
    mmlu,
    passkey,
    perplexity,
    position_perplexity,
    toxicity,
    truthfulqa,
)
from llama_jax.eval.tasks.base import EvalContext, EvalOptions, Task
from llama_jax.eval.tasks.readers import DataError

TASKS: dict[str, Task] = {
    **commonsense.TASKS,
    **mmlu.TASKS,
    **generative.TASKS,
    **code.TASKS,
    **perplexity.TASKS,
    **position_perplexity.TASKS,
    **passkey.TASKS,
    **math.TASKS,
    **toxicity.TASKS,
    **bias.TASKS,
    **truthfulqa.TASKS,
}

ALIASES = {
    "nq": "naturalqs", "nq_open": "naturalqs", "natural_questions": "naturalqs",
    "arc_e": "arc_easy", "arc_c": "arc_challenge", "obqa": "openbookqa",
    "social_iqa": "siqa", "hendrycks_test": "mmlu", "race_m": "race_middle",
    "race_h": "race_high",
    "minerva_math": "math", "hendrycks_math": "math", "rtp": "realtoxicityprompts",
    "crows_pairs_english": "crows_pairs", "winogender_all": "winogender",
}

__all__ = ["ALIASES", "TASKS", "DataError", "EvalContext", "EvalOptions", "Task", "get_task",
           "parse_task_list"]


def get_task(name: str) -> Task:
    """The task called `name` (or an alias); unknown names list the known ones."""
    key = ALIASES.get(name.strip().lower(), name.strip().lower())
    if key not in TASKS:
        raise ConfigError(f"unknown task {name!r}; known tasks: {', '.join(sorted(TASKS))}")
    return TASKS[key]


def parse_task_list(spec: str, num_fewshot: int | None = None) -> list[tuple[Task, int]]:
    """"hellaswag,naturalqs:5" -> [(task, shots)]; `num_fewshot` overrides the defaults."""
    out = []
    for item in (s.strip() for s in spec.split(",")):
        if not item:
            continue
        name, _, shots = item.partition(":")
        task = get_task(name)
        if shots:
            try:
                k = int(shots)
            except ValueError:
                raise ConfigError(f"task {item!r}: shots after ':' must be an integer") from None
        else:
            k = task.default_fewshot if num_fewshot is None else num_fewshot
        if k < 0:
            raise ConfigError(f"task {item!r}: shots must be >= 0")
        out.append((task, k))
    if not out:
        raise ConfigError(f"no tasks in {spec!r}; choose from {', '.join(sorted(TASKS))}")
    return out
