"""Build a source's datatrove pipelines from its config, run them, and account for them.

`make_plan` turns a config (`llama_jax.prepare.config.source_config`) into
*segments*, each one datatrove executor run:

* a document flow: a reader, the steps of the enabled stages in
  ``cfg.stages`` order (each followed by a `StageMeter`), a writer;
* at every stage with index passes (line dedup, exact / MinHash dedup), the
  flow ends with a writer of intermediate shards (``DIR/work/<stage>/docs``);
  each pass runs as its own executor (``depends=`` the one before) over those
  shards or over the previous pass's index files; the flow then resumes with
  a reader of the intermediate shards.

Everything a user can get wrong (an empty glob, a missing model, an unknown
language code, a bad option) is raised by `make_plan`, before any executor
starts. `run` runs the segments on the local, Ray or Slurm executor. Every
segment has its own logging folder (``DIR/logs/<segment>``) with datatrove's
completion markers, so a run killed mid-way and started again redoes only
the unfinished tasks; the output shards are ``DIR/data/<rank>.jsonl``.
Then `run` merges the per-task stats into ``DIR/stats.json`` and prints the
per-stage table (`llama_jax.prepare.stats`).
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import sys

from datatrove.executor import LocalPipelineExecutor, slurm
from datatrove.executor.ray import RayPipelineExecutor
from datatrove.executor.slurm import SlurmPipelineExecutor

from llama_jax.errors import ConfigError
from llama_jax.prepare import stage as stage_lib
from llama_jax.prepare import stats as stats_lib
from llama_jax.prepare import tokenize
from llama_jax.prepare.config import EXECUTORS
from llama_jax.prepare.readers import ShardReader, expand_input, make_reader
from llama_jax.prepare.stats import StageMeter, StepRole
from llama_jax.prepare.writers import FORMATS, JsonlShardWriter, make_writer

# Run fields that change what is written (a resumed run must keep them).
_RUN_FIELDS_WITHOUT_EFFECT = ("executor", "workers", "slurm_partition", "slurm_time", "slurm_dry_run",
                              "ray_address", "mem_per_cpu_gb", "output")
PLAN_FILE = "prepare_config.json"
STATS_FILE = "stats.json"


@dataclasses.dataclass
class Segment:
    """One executor run: its steps, its number of tasks and (for a document flow)
    the accounting role of each step (None for an index pass)."""

    name: str
    steps: list
    tasks: int
    roles: list[StepRole] | None = None


@dataclasses.dataclass
class Plan:
    """What `make_plan` built: the segments in run order and where things go."""

    output: str
    files: list[str]
    tasks: int
    stages: list[str]
    segments: list[Segment]
    tokenizer: str = ""
    vocab_size: int = 0

    @property
    def data_dir(self) -> str:
        """The folder of the output shards."""
        return os.path.join(self.output, "data")

    def logging_dir(self, segment: Segment) -> str:
        """The datatrove logging folder (completions, stats, logs) of `segment`."""
        return os.path.join(self.output, "logs", segment.name)


def _check_run_fields(cfg) -> None:
    if not cfg.output:
        raise ConfigError("--config.output is empty; give the output folder, e.g. --config.output=/data/out")
    if os.path.exists(cfg.output) and not os.path.isdir(cfg.output):
        raise ConfigError(f"--config.output={cfg.output} is a file; give a folder")
    if cfg.executor not in EXECUTORS:
        raise ConfigError(f"--config.executor={cfg.executor!r} is not one of {', '.join(EXECUTORS)}")
    if int(cfg.workers) < 1:
        raise ConfigError(f"--config.workers={cfg.workers} must be >= 1")
    if int(cfg.tasks) < 0:
        raise ConfigError(f"--config.tasks={cfg.tasks} must be >= 0 (0: one task per input file)")
    if cfg.output_format not in FORMATS:
        raise ConfigError(f"--config.output_format={cfg.output_format!r} is not one of {', '.join(FORMATS)}")
    for name in cfg.stages:
        if name not in cfg:
            raise ConfigError(f"config stage {name!r} has no options sub-config; build the config with "
                              "llama_jax.prepare.config.source_config")


def make_plan(cfg) -> Plan:
    """The run's segments, with every input, model and option checked (no work is done)."""
    _check_run_fields(cfg)
    output = os.path.abspath(os.path.expanduser(cfg.output))
    files = expand_input(cfg.input)
    tasks = int(cfg.tasks) or len(files)
    enabled = [name for name in cfg.stages if cfg[name].enabled]
    built = []
    for name in enabled:
        env = stage_lib.StageEnv(name=name, work_dir=os.path.join(output, "work", name), tasks=tasks)
        built.append(stage_lib.build(name, cfg[name], env))

    segments: list[Segment] = []
    steps: list = [make_reader(cfg.get("input_format", "jsonl"), files), StageMeter("input")]
    roles = [StepRole("input", "reader"), StepRole("input", "meter")]
    for stage in built:
        if stage.index_passes:
            shards = os.path.join(output, "work", stage.name, "docs")
            steps.append(JsonlShardWriter(shards, compression="gzip"))
            roles.append(StepRole(stage.name, "other"))
            segments.append(Segment(f"{len(segments):02d}_flow_to_{stage.name}", steps, tasks, roles))
            for i, index_pass in enumerate(stage.index_passes):
                pass_steps = ([ShardReader(shards)] if index_pass.reads_documents else [])
                segments.append(Segment(f"{len(segments):02d}_{stage.name}_pass{i}",
                                        pass_steps + list(index_pass.steps), index_pass.tasks or tasks))
            steps, roles = [ShardReader(shards)], [StepRole(stage.name, "other")]
        steps += list(stage.steps)
        roles += [StepRole(stage.name, "step")] * len(stage.steps)
        steps.append(StageMeter(stage.name))
        roles.append(StepRole(stage.name, "meter"))
    steps.append(make_writer(os.path.join(output, "data"), cfg.output_format))
    roles.append(StepRole("output", "other"))
    tokenizer, vocab_size = "", 0
    if cfg.tokenizer:
        tokenizer = os.path.abspath(os.path.expanduser(cfg.tokenizer))
        vocab_size = tokenize.check_tokenizer(tokenizer)
        steps.append(tokenize.TokenShardWriter(tokenizer, os.path.join(output, tokenize.TOKENS_DIR)))
        roles.append(StepRole("output", "other"))
    segments.append(Segment(f"{len(segments):02d}_flow_to_output", steps, tasks, roles))
    return Plan(output=output, files=files, tasks=tasks, stages=[s.name for s in built],
                segments=segments, tokenizer=tokenizer, vocab_size=vocab_size)


def _effective_config(cfg) -> dict:
    d = json.loads(cfg.to_json_best_effort())
    return {k: v for k, v in d.items() if k not in _RUN_FIELDS_WITHOUT_EFFECT}


def check_resume(cfg, plan: Plan) -> None:
    """Record the run's config in the output folder; a rerun with another is a `ConfigError`.

    Completion markers say which tasks are done, not with which options: a
    rerun that changed the input, the stages or their options would mix two
    runs' outputs. The executor and worker count may change.
    """
    path = os.path.join(plan.output, PLAN_FILE)
    now = _effective_config(cfg)
    if os.path.isfile(path):
        with open(path) as f:
            before = json.load(f)
        if before != now:
            changed = sorted(k for k in set(before) | set(now) if before.get(k) != now.get(k))
            raise ConfigError(f"--config.output={plan.output} holds a run with other options (changed: "
                              f"{', '.join(changed)}); use a new --config.output, or delete the folder "
                              "to start again")
        return
    os.makedirs(plan.output, exist_ok=True)
    with open(path + ".tmp", "w") as f:
        json.dump(now, f, indent=1, sort_keys=True)
    os.replace(path + ".tmp", path)


def make_executors(cfg, plan: Plan) -> list:
    """One datatrove executor per segment, each ``depends=`` the one before."""
    executors, previous = [], None
    for segment in plan.segments:
        kwargs = dict(pipeline=segment.steps, tasks=segment.tasks, logging_dir=plan.logging_dir(segment),
                      depends=previous, skip_completed=True)
        workers = min(int(cfg.workers), segment.tasks)
        if cfg.executor == "local":
            executor = LocalPipelineExecutor(workers=workers, **kwargs)
        elif cfg.executor == "ray":
            executor = RayPipelineExecutor(workers=workers, cpus_per_task=1,
                                           mem_per_cpu_gb=float(cfg.mem_per_cpu_gb), **kwargs)
        else:
            activate = os.path.join(sys.prefix, "bin", "activate")  # this environment, on the nodes
            if not cfg.slurm_partition and not cfg.slurm_dry_run:
                raise ConfigError("--config.executor=slurm needs --config.slurm_partition=NAME (or "
                                  "--config.slurm_dry_run=True to only write the sbatch scripts)")
            executor = SlurmPipelineExecutor(
                workers=int(cfg.workers), time=cfg.slurm_time, partition=cfg.slurm_partition or "PARTITION",
                job_name=f"prepare_{segment.name}", cpus_per_task=1, mem_per_cpu_gb=int(cfg.mem_per_cpu_gb) or 1,
                venv_path=activate if os.path.isfile(activate) else None,
                slurm_logs_folder=os.path.join(plan.logging_dir(segment), "slurm_logs"), **kwargs)
        executors.append(executor)
        previous = executor
    return executors


@contextlib.contextmanager
def _slurm_dry_run(submitted: list):
    """datatrove has no dry run: replace its ``sbatch`` call by one that records the
    script it would submit (datatrove itself saves it as ``launch_script.slurm``)."""
    real = slurm.launch_slurm_job

    def fake(launch_file_contents, job_id_retriever, *args):
        submitted.append({"script": launch_file_contents, "sbatch_args": list(args)})
        return f"DRYRUN{len(submitted)}"

    slurm.launch_slurm_job = fake
    try:
        yield
    finally:
        slurm.launch_slurm_job = real


@contextlib.contextmanager
def _ray_cluster(cfg):
    """A Ray connection for the run: ``ray_address`` or a local cluster of `workers` CPUs."""
    import ray

    started = not ray.is_initialized()
    if started:
        if cfg.ray_address:
            ray.init(address=cfg.ray_address, log_to_driver=False)
        else:
            ray.init(num_cpus=int(cfg.workers), include_dashboard=False, log_to_driver=False)
    try:
        yield
    finally:
        if started:
            ray.shutdown()


def _run_in_order(executors, plan: Plan) -> None:
    for executor, segment in zip(executors, plan.segments, strict=True):
        executor.run()
        incomplete = executor.get_incomplete_ranks(skip_completed=True)
        if incomplete:
            raise RuntimeError(f"segment {segment.name}: tasks {incomplete[:10]} did not finish; see "
                               f"{plan.logging_dir(segment)}/logs, then run the same command again "
                               "(finished tasks are skipped)")


def summarize(plan: Plan) -> dict:
    """The per-stage summary of a finished run (`llama_jax.prepare.stats.collect`)."""
    segments = [(plan.logging_dir(s), s.roles) for s in plan.segments if s.roles is not None]
    input_bytes = sum(os.path.getsize(f) for f in plan.files)
    summary = stats_lib.collect(segments, ["input", *plan.stages], input_bytes=input_bytes)
    summary["tasks"] = plan.tasks
    summary["input_files"] = len(plan.files)
    summary["output"] = plan.data_dir
    return summary


def run(cfg, *, print_table: bool = True) -> dict:
    """Run the pipeline `cfg` describes; return the summary written to ``DIR/stats.json``.

    With the Slurm executor the jobs are submitted (or, with ``slurm_dry_run``,
    only their scripts written) and the summary is ``{"submitted": [...]}``:
    run the command again once the jobs are done to write ``stats.json``.
    """
    plan = make_plan(cfg)
    executors = make_executors(cfg, plan)
    check_resume(cfg, plan)
    if cfg.executor == "slurm":
        all_done = all(not e.get_incomplete_ranks() for e in executors)
        if not all_done:
            submitted: list = []
            with _slurm_dry_run(submitted) if cfg.slurm_dry_run else contextlib.nullcontext():
                executors[-1].run()
            scripts = [plan.logging_dir(s) + "/launch_script.slurm" for s in plan.segments]
            return {"submitted": submitted, "scripts": scripts, "dry_run": bool(cfg.slurm_dry_run)}
    elif cfg.executor == "ray":
        with _ray_cluster(cfg):
            _run_in_order(executors, plan)
    else:
        _run_in_order(executors, plan)
    os.makedirs(plan.data_dir, exist_ok=True)  # a run that kept nothing still has its folder
    summary = summarize(plan)
    if plan.tokenizer:
        source = cfg.source or os.path.basename(plan.output.rstrip("/"))
        summary["tokens"] = tokenize.merge_token_counts(plan.output, source, plan.tokenizer,
                                                        plan.vocab_size)
    path = os.path.join(plan.output, STATS_FILE)
    with open(path + ".tmp", "w") as f:
        json.dump(summary, f, indent=1)
    os.replace(path + ".tmp", path)
    if print_table:
        print(stats_lib.format_table(summary), flush=True)
        print(f"wrote {plan.data_dir} and {path}", flush=True)
    return summary
