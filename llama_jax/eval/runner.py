"""Run a list of tasks against one model and collect the results.

`build_context` makes the scorer, generator and tokenizer from a loaded model;
`evaluate` runs task specs in order, timing each, and calls `on_result` after
every task (the CLI uses it to rewrite the JSON file, so a long run that fails
late keeps what it finished).
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Sequence
from typing import Any

from absl import logging

from llama_jax import sharding
from llama_jax.data.tokenizer import check_tokenizer_fits
from llama_jax.errors import ConfigError, DataError
from llama_jax.eval import lm_eval_results
from llama_jax.eval.scoring import Scorer
from llama_jax.eval.tasks import EvalContext, EvalOptions, Task
from llama_jax.eval.tasks.base import check_limit
from llama_jax.infer import placement
from llama_jax.infer.engine import Generator


def build_context(config, params, tokenizer, *, mesh=None,
                  rules: sharding.Rules = sharding.DEFAULT_RULES, batch_size: int = 8,
                  max_len: int | None = None, seed: int = 0,
                  options: EvalOptions | None = None,
                  progress: bool | None = None) -> EvalContext:
    """An `EvalContext` whose scorer / generator are built on first use.

    The parameters are placed on the mesh once, here; the scorer and the
    generator share those device arrays (no second copy). `options` are the
    tasks' `EvalOptions` (default: all defaults); `progress` turns the
    per-task progress bars on (True), off (False) or on when stderr is a
    terminal (None).
    """
    check_batch_size(batch_size)
    check_tokenizer_fits(tokenizer, config.vocab_size)  # a DataError naming the file, both sizes
    mesh = mesh if mesh is not None else placement.default_mesh()
    params = placement.place_params(config, params, mesh, rules)
    return EvalContext(
        tokenizer=tokenizer,
        make_scorer=lambda: Scorer(config, params, mesh=mesh, rules=rules,
                                   batch_size=batch_size, max_len=max_len),
        make_generator=lambda: Generator(config, params, mesh=mesh, rules=rules,
                                         batch_size=batch_size),
        seed=seed, options=options if options is not None else EvalOptions(),
        progress=progress)


def check_batch_size(batch_size: int) -> None:
    """A `ConfigError` naming ``--batch_size`` unless it is an integer >= 1."""
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ConfigError(f"--batch_size={batch_size!r} must be an integer >= 1 (rows per "
                          "compiled batch)")


def result_key(task: Task, shots: int, specs: Sequence[tuple[Task, int]]) -> str:
    """The task's name, with ":shots" when the run has it more than once."""
    repeated = sum(t.name == task.name for t, _ in specs) > 1
    return f"{task.name}:{shots}" if repeated else task.name


def evaluate(ctx: EvalContext, specs: Sequence[tuple[Task, int]], data_dir: str, *,
             limit: int | None = None, keep_predictions: bool = False,
             on_result: Callable[[dict[str, Any]], None] | None = None) -> dict[str, Any]:
    """Run every (task, shots) of `specs`; returns {key: metrics}.

    A `limit` below 1 is a `ConfigError`; a task that finds no examples to
    score is a `DataError` naming its data folder (never a score on n=0).
    """
    check_limit(limit)
    results: dict[str, Any] = {}
    for task, shots in specs:
        key = result_key(task, shots, specs)
        logging.info("task %s (%d-shot) ...", key, shots)
        start = time.perf_counter()
        ctx.label = key  # names the task's progress bar
        res = task.run(ctx, data_dir, shots, limit)
        if not res.get("num_examples"):
            where = os.path.join(data_dir, task.name) if data_dir else "its data"
            raise DataError(f"{key}: no examples to score in {where}; expected "
                            f"{task.data_format}")
        res["stderr"] = lm_eval_results.stderrs(res)  # from the predictions, before they go
        if not keep_predictions:
            res.pop("predictions", None)
        res.update(task=task.name, num_fewshot=shots, seconds=round(time.perf_counter() - start, 2))
        results[key] = res
        logging.info("task %s: %s=%s (%d examples, %.1fs)", key, res["primary_metric"],
                 res.get(res["primary_metric"]), res.get("num_examples", 0), res["seconds"])
        if on_result is not None:
            on_result(results)
    return results
