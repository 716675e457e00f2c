"""Benchmark tasks inside the training process (the paper's Figure 2): `TaskEvaluator`.

    python -m llama_jax.train --config=configs/tiny.py --workdir=/tmp/llama_tiny \
        --config.train.eval_tasks=hellaswag,arc_easy:0@200 \
        --config.train.eval_tasks_every=100 --config.train.eval_tasks_data_dir=/data/eval

``train.eval_tasks`` lists tasks as the eval CLI's ``--tasks`` does, each item
``name[:shots][@limit]``: ``arc_easy:0@200`` is ARC-Easy zero-shot on its first
200 examples; without ``@limit`` an item uses ``train.eval_tasks_limit`` (None =
every example). They run every ``train.eval_tasks_every`` steps and at the end
(0 = off) on the live, sharded training parameters: the `Scorer` and
`Generator` are built once, on the training mesh and rules, and each evaluation
hands them the state's current arrays (already placed, so `place_params` is a
no-copy check; the jitted functions take the params as an argument, so they do
not retrace). With LoRA the tasks see the merged view ``W + (alpha/rank) A B``
(only the adapted kernels are materialised, for the duration of the eval).
Metrics are ``task/<name>/<metric>`` (``acc``, ``acc_norm``, ...; per-group
values as ``task/<name>/groups/<group>/<metric>``), the numbers
``python -m llama_jax.eval`` gives on a checkpoint of the same step.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Sequence
from typing import Any

import flax.linen as nn
import ml_collections
from absl import logging

from llama_jax import sharding
from llama_jax.data.tokenizer import check_tokenizer_fits
from llama_jax.errors import ConfigError
from llama_jax.eval.runner import check_batch_size, evaluate
from llama_jax.eval.scoring import Scorer
from llama_jax.eval.tasks import EvalContext, EvalOptions, Task, parse_task_list
from llama_jax.infer import placement
from llama_jax.infer.engine import Generator
from llama_jax.model import LlamaConfig
from llama_jax.model import lora as lora_lib

# Result entries that are bookkeeping, not metrics (not logged).
_NOT_METRICS = frozenset({"predictions", "seconds", "num_fewshot", "task", "primary_metric",
                          "stderr"})


@dataclasses.dataclass(frozen=True)
class TaskSpec:
    """One item of ``train.eval_tasks``: the task, its shots and example limit."""

    task: Task
    shots: int
    limit: int | None
    key: str  # the metrics' name: the task's, with ":shots" when listed twice


def parse_eval_tasks(spec: str, default_limit: int | None = None) -> list[TaskSpec]:
    """``"hellaswag,arc_easy:0@50"`` -> [TaskSpec]; errors name ``train.eval_tasks``.

    Each item is ``name[:shots][@limit]`` (shots default to the paper's, limit
    to `default_limit`, None = every example).
    """
    items, out = [s.strip() for s in spec.split(",") if s.strip()], []
    if not items:
        raise ConfigError(f"train.eval_tasks={spec!r} lists no task; give e.g. "
                          "'hellaswag,arc_easy:0@100' (name[:shots][@limit])")
    for item in items:
        name_shots, at, limit_text = item.partition("@")
        limit = default_limit
        if at:
            try:
                limit = int(limit_text)
            except ValueError:
                raise ConfigError(f"train.eval_tasks item {item!r}: the limit after '@' must be "
                                  "an integer >= 1") from None
        if limit is not None and limit < 1:
            raise ConfigError(f"train.eval_tasks item {item!r}: limit {limit} must be >= 1 "
                              "(leave '@limit' out, and train.eval_tasks_limit unset, for "
                              "every example)")
        try:
            (task, shots), = parse_task_list(name_shots)
        except ConfigError as e:
            raise ConfigError(f"train.eval_tasks={spec!r}: {e}") from None
        out.append((task, shots, limit))
    keys = [(t.name, k) for t, k, _ in out]
    return [TaskSpec(t, k, lim, f"{t.name}:{k}" if sum(x[0] == t.name for x in keys) > 1
                     else t.name) for t, k, lim in out]


def check_data_dir(specs: Sequence[TaskSpec], data_dir: str) -> None:
    """A `ConfigError` naming ``train.eval_tasks_data_dir`` unless every task that
    reads files finds its folder ``<data_dir>/<task>/`` (checked before compiling)."""
    needing = [s.task for s in specs if s.task.needs_data]
    if not needing:
        return
    if not data_dir:
        raise ConfigError(f"train.eval_tasks needs train.eval_tasks_data_dir (one folder of data "
                          f"files per task) for {', '.join(t.name for t in needing)}")
    if not os.path.isdir(data_dir):
        raise ConfigError(f"train.eval_tasks_data_dir={data_dir!r} is not a directory; give "
                          "the folder holding one subfolder of data files per task")
    for task in needing:
        if not os.path.isdir(os.path.join(data_dir, task.name)):
            raise ConfigError(f"train.eval_tasks: no folder {os.path.join(data_dir, task.name)} "
                              f"for task {task.name} (train.eval_tasks_data_dir={data_dir!r}); "
                              f"it must hold {task.data_format}")


def flatten_metrics(key: str, result: dict[str, Any]) -> dict[str, float]:
    """``task/<key>/<metric>`` -> value for the numbers of one task's result
    (nested dicts, such as per-group accuracies, joined by '/')."""
    out: dict[str, float] = {}

    def walk(prefix: str, d: dict[str, Any]) -> None:
        for k, v in d.items():
            if k in _NOT_METRICS:
                continue
            if isinstance(v, dict):
                walk(f"{prefix}/{k}", v)
            elif isinstance(v, int | float) and not isinstance(v, bool):
                out[f"{prefix}/{k}"] = float(v)

    walk(f"task/{key}", result)
    return out


class TaskEvaluator:
    """Runs the configured tasks on the training state's live parameters.

    Args:
      specs: the tasks (`parse_eval_tasks`).
      config: the model config the params belong to.
      tokenizer: the run's tokenizer.
      mesh / rules: the training mesh and logical-axis rules.
      data_dir: root of the tasks' data folders.
      every: steps between evaluations (they also run at `total_steps`).
      total_steps: the run's last step.
      batch_size: rows per compiled scoring / generation batch.
      seed: few-shot sampling and generation seed (`from_config`: 0, the eval
        CLI's default ``--seed``, so the numbers are the CLI's on a checkpoint).
      lora: the run's LoRA config (params are then adapters on a base).
    """

    def __init__(self, specs: Sequence[TaskSpec], config: LlamaConfig, tokenizer, mesh,
                 rules: sharding.Rules, data_dir: str, *, every: int, total_steps: int,
                 batch_size: int = 8, seed: int = 0,
                 lora: lora_lib.LoraConfig | None = None):
        check_batch_size(batch_size)
        self.specs, self.config, self.mesh, self.rules = list(specs), config, mesh, rules
        self.data_dir, self.every, self.total = data_dir, every, total_steps
        self.batch_size, self.lora = batch_size, lora
        self.scorer: Scorer | None = None
        self.generator: Generator | None = None
        self._params: Any = None  # the tree being evaluated, during a call only
        self.last_results: dict[str, dict[str, Any]] = {}  # the last call's, with predictions
        check_tokenizer_fits(tokenizer, config.vocab_size)
        # As `eval.runner.build_context`, minus the placement: the factories run once,
        # on first use, with the params of that evaluation.
        self.ctx = EvalContext(tokenizer=tokenizer, make_scorer=self._make_scorer,
                               make_generator=self._make_generator, seed=seed,
                               options=EvalOptions(), progress=False)

    def due(self, step: int) -> bool:
        """Whether the tasks run after step `step` (the same answer on every process)."""
        return self.every > 0 and (step % self.every == 0 or step == self.total)

    def _make_scorer(self) -> Scorer:
        self.scorer = Scorer(self.config, self._params, mesh=self.mesh, rules=self.rules,
                             batch_size=self.batch_size)
        return self.scorer

    def _make_generator(self) -> Generator:
        # The training layout: the state's params are swapped in at each evaluation.
        self.generator = Generator(self.config, self._params, mesh=self.mesh, rules=self.rules,
                                   batch_size=self.batch_size, unroll_layers=False)
        return self.generator

    def eval_params(self, params, base: Any = None):
        """The plain params tree the model reads: `params` unboxed, or with LoRA
        the adapters `params` merged into `base`."""
        params = nn.meta.unbox(params)
        if self.lora is None:
            return params
        if base is None:
            raise ValueError("a LoRA run's task evaluation needs the base params")
        return lora_lib.merge(nn.meta.unbox(base), params, self.lora)

    def __call__(self, params, base: Any = None) -> dict[str, float | str]:
        """Run every task on `params` (with LoRA, adapters on `base`): the
        ``task/<key>/<metric>`` values and ``task/<key>/primary_metric`` (the
        headline metric's name). Every process calls it (SPMD)."""
        tree = self.eval_params(params, base)
        # Already on the mesh: place_params checks the tree and aliases the buffers.
        tree = placement.place_params(self.config, tree, self.mesh, self.rules)
        self._params = tree
        for engine in (self.scorer, self.generator):
            if engine is not None:
                engine.params = tree
        out: dict[str, float | str] = {}
        self.last_results = {}
        try:
            for spec in self.specs:
                res = evaluate(self.ctx, [(spec.task, spec.shots)], self.data_dir,
                               limit=spec.limit, keep_predictions=True)[spec.task.name]
                self.last_results[spec.key] = res
                out.update(flatten_metrics(spec.key, res))
                # The headline metric's name (JSONL only: TensorBoard takes numbers): what
                # the log line and ``python -m llama_jax.plot --figure=tasks`` show by default.
                out[f"task/{spec.key}/primary_metric"] = res["primary_metric"]
        finally:
            # Hold no reference to the state's arrays between evals (the train step donates them).
            self._params = None
            for engine in (self.scorer, self.generator):
                if engine is not None:
                    engine.params = None
        return out


def from_config(config: ml_collections.ConfigDict, model_config: LlamaConfig, tokenizer, mesh,
                rules: sharding.Rules, lora: lora_lib.LoraConfig | None = None
                ) -> TaskEvaluator | None:
    """The run's `TaskEvaluator`, or None when ``train.eval_tasks_every`` is 0 or no
    task is listed. Bad values (unknown task, missing data folder) raise `ConfigError`."""
    t = config.train
    if not t.eval_tasks.strip() or t.eval_tasks_every == 0:
        if t.eval_tasks.strip():
            logging.info("train.eval_tasks=%r is off (train.eval_tasks_every=0)", t.eval_tasks)
        return None
    specs = parse_eval_tasks(t.eval_tasks, t.eval_tasks_limit)
    check_data_dir(specs, os.path.expanduser(t.eval_tasks_data_dir))
    return TaskEvaluator(specs, model_config, tokenizer, mesh, rules,
                         os.path.expanduser(t.eval_tasks_data_dir), every=t.eval_tasks_every,
                         total_steps=t.steps, batch_size=t.eval_tasks_batch_size,
                         seed=0, lora=lora)  # the eval CLI's default --seed: the same few shots
