"""The training loop behind ``python -m llama_jax.train``: `train_and_evaluate`.

Order of work, so that every user error surfaces before anything compiles:
config values -> joining the multi-process job (before anything touches a
JAX backend) -> the workdir's lock (one trainer per workdir) -> the newest
checkpoint that verifies, its saved model config and run settings -> data
paths and tokenizer -> mesh and rules -> abstract state -> restore (or init)
-> jitted steps -> loop. The loop feeds packed global batches from the grain
iterator to the jitted train step, logs every ``train.log_every`` steps (with
per-source token and epoch counts summed over all processes), evaluates
held-out loss per source every ``train.eval_every`` steps, runs benchmark
tasks on the live params every ``train.eval_tasks_every`` steps
(`task_eval.TaskEvaluator`, the paper's Figure 2), saves
asynchronously every ``checkpoint.every`` steps and at the end, and on
SIGTERM/SIGINT saves at the next step boundary and returns
``status='preempted'`` (exit status 0).

Non-finite losses: with ``train.on_nonfinite='stop'`` the loop checks each
step's loss and gradient norm (one step behind the device, and before every
save, so no checkpoint holds a state that produced a NaN) and raises
`NonFiniteLossError` naming the last good checkpoint; with ``'skip'`` the
optimizer drops non-finite updates on device (`optax.apply_if_finite`) and the
loop stops only after ``train.max_consecutive_skips`` in a row. Both the
one-step-behind fetch and this policy are `step_metrics.StepMetrics`.
"""

from __future__ import annotations

import dataclasses
import json
import time
from pathlib import Path

import jax
import ml_collections
import numpy as np
from absl import logging
from jax.experimental import multihost_utils

from llama_jax import distributed
from llama_jax import sharding as shd
from llama_jax.convert import integrity
from llama_jax.convert.layout import checkpoint_dir
from llama_jax.data.stats import SourceStats
from llama_jax.distributed import PreemptionHandler
from llama_jax.errors import ConfigError
from llama_jax.fileio import atomic_write
from llama_jax.model.config import LlamaConfig
from llama_jax.train import carbon, metrics, optim
from llama_jax.train import checkpoint as ckpt_lib
from llama_jax.train import config as train_config
from llama_jax.train import init_checkpoint as init_lib
from llama_jax.train import lora_state as lora_lib
from llama_jax.train import task_eval as task_eval_lib
from llama_jax.train.data import DataSetup, setup_data
from llama_jax.train.sft_data import setup_sft
from llama_jax.train.step import (
    abstract_train_state,
    global_batch,
    init_train_state,
    make_eval_step,
    make_train_step,
)
from llama_jax.train.step_metrics import StepMetrics
from llama_jax.train.workdir_lock import WorkdirLock


@dataclasses.dataclass
class TrainResult:
    """What a call to `train_and_evaluate` did."""

    status: str  # 'completed', 'preempted' or 'already_done'
    start_step: int
    step: int
    last_loss: float | None
    eval_losses: dict[str, float]
    wall_seconds: float
    footprint: carbon.Footprint | None = None  # Table 15: device-hours, kWh, tCO2eq


def _config_json(config: ml_collections.ConfigDict) -> dict:
    return json.loads(config.to_json_best_effort())


# Run settings a resumed run must share with the checkpoint: the data iterator's
# position, the token stream it continues and the optimizer state's structure
# depend on them. (The tokenizer's content is checked too: `check_same_tokenizer`.)
RESUME_KEYS = ("train.batch_size", "train.seq_len", "train.on_nonfinite", "data.corpus",
               "data.sources", "data.seed", "data.num_workers", "data.root", "data.tokenizer", "data.sft",
               "model.lora")


def check_resumable(saved_config: dict, config: ml_collections.ConfigDict, workdir: str) -> None:
    """Raise ConfigError naming the `RESUME_KEYS` whose values differ from the checkpoint's."""
    now = _config_json(config)

    def get(d, key):
        for part in key.split("."):
            d = d.get(part) if isinstance(d, dict) else None
        return d

    def known(key):  # a key newer than the checkpoint's trainer: not compared
        parent, _, last = key.rpartition(".")
        node = get(saved_config, parent) if parent else saved_config
        return isinstance(node, dict) and last in node

    diffs = [f"{k}: checkpoint has {get(saved_config, k)!r}, config asks for {get(now, k)!r}"
             for k in RESUME_KEYS if known(k) and get(saved_config, k) != get(now, k)]
    if diffs:
        raise ConfigError(
            f"workdir {workdir} cannot resume with these settings:\n  " + "\n  ".join(diffs)
            + "\nThe data position and optimizer state depend on them: use the values the run "
            "started with, or a fresh --workdir.")


def check_same_tokenizer(saved_digest: str | None, digest: str, path: str, workdir: str) -> None:
    """Raise ConfigError when the tokenizer file differs from the one the
    checkpoint was trained with (same path, new content, or another file)."""
    if saved_digest is not None and saved_digest != digest:
        raise ConfigError(
            f"workdir {workdir} was trained with another tokenizer than {path} (SHA-256 "
            f"{saved_digest[:12]}... vs {digest[:12]}...): resuming would continue on a "
            f"different token stream. Use the run's own tokenizer (a copy is kept at "
            f"{Path(workdir) / 'tokenizer.model'}) or a fresh --workdir.")


def mesh_and_rules(config: ml_collections.ConfigDict):
    """(mesh, rules) from the config's ``mesh`` section (sizes, ``dcn``, ``rules``)."""
    m = config.mesh
    try:
        rules = shd.make_rules(m.rules)
    except ValueError as e:
        raise ConfigError(f"mesh.rules={m.rules!r}: {e}") from e
    mesh_cfg = {axis: m[axis] for axis in shd.MESH_AXES}
    dcn = {axis: m.dcn[axis] for axis in shd.MESH_AXES if m.dcn[axis] is not None}
    if dcn:  # Otherwise automatic: hosts on `data` (or `fsdp`).
        mesh_cfg["dcn"] = dcn
    try:
        return shd.mesh_from_config(mesh_cfg), rules
    except ValueError as e:
        raise ConfigError(f"mesh: {e}") from e


def _process_allgather(x: np.ndarray) -> np.ndarray:
    """[process_count, *x.shape]: every process's host value `x` (a collective)."""
    return np.asarray(multihost_utils.process_allgather(x))


def _check_batch_divides(config, mesh) -> None:
    t = config.train
    n_batch = mesh.shape[shd.DATA] * mesh.shape[shd.FSDP]
    micro = t.batch_size // t.grad_accum_steps
    if micro % n_batch:
        raise ConfigError(
            f"train.batch_size={t.batch_size} / train.grad_accum_steps={t.grad_accum_steps} "
            f"= {micro} sequences per microbatch is not divisible by the mesh's batch axes "
            f"(data x fsdp = {n_batch}); change train.batch_size or the mesh")
    if t.seq_len % mesh.shape[shd.SEQUENCE]:
        raise ConfigError(f"train.seq_len={t.seq_len} is not divisible by "
                         f"mesh.sequence={mesh.shape[shd.SEQUENCE]}")


class _Logger:
    """Turns per-step device metrics into logged records (JSONL, TB, bar)."""

    def __init__(self, config, mcfg: LlamaConfig, workdir: str, start: int):
        t = config.train
        self.log_every, self.total = t.log_every, t.steps
        self.tokens_per_step = t.batch_size * t.seq_len
        o = config.optimizer
        self.lr = lambda count: optim.lr_at(count, o.lr, o.warmup_steps, t.steps, o.min_lr_ratio)
        main = jax.process_index() == 0
        # A resumed run's TensorBoard hides the events after `start` that the
        # JSONL drops below (they are recomputed).
        self.writer = metrics.MetricWriter(workdir, tensorboard=t.tensorboard, enabled=main,
                                           purge_step=start + 1 if start else None)
        dropped = self.writer.truncate_after(start)
        if dropped:
            logging.info("metrics.jsonl: dropped %d records after step %d (recomputed)",
                         dropped, start)
        self.bar = metrics.ProgressBar(t.steps, start, mode=t.progress if main else "log")
        self.flops_per_token = metrics.flops_per_token(mcfg, t.seq_len)
        kind = jax.devices()[0].device_kind
        self.peak = metrics.peak_flops(kind)
        self.n_devices = jax.device_count()
        logging.info("devices: %d x %s; peak %s FLOP/s per device; %.3g FLOPs per token "
                     "(6N + 6 L T d)", self.n_devices, kind,
                     f"{self.peak:.3g}" if self.peak else "unknown (MFU not reported)",
                     self.flops_per_token)
        self._window_t: float | None = None
        self._window_step = start
        self._first = start + 1  # logged too: the loss at the start, once compiled
        self._losses: list[float] = []
        self._last: tuple[int, float] = (start, float("nan"))
        self._held: tuple[int, dict] | None = None

    def due(self, step: int) -> bool:
        """Whether step `step` gets a record (the same answer on every process)."""
        return step % self.log_every == 0 or step in (self.total, self._first)

    def step_done(self, step: int, host: dict[str, float], data_stats: dict[str, float] | None,
                  hold: bool = False) -> None:
        """Record step `step`'s (1-based count of updates) host metrics and the
        per-source data counters as of that step (given on `due` steps). With
        `hold`, the record waits for `add_eval` to join the held-out losses of
        the same step."""
        now = time.perf_counter()
        if self._window_t is None:  # The first step includes compilation.
            self._window_t, self._window_step = now, step
        self._losses.append(host["loss"])
        self._last = (step, host["loss"])
        if not self.due(step):
            return
        elapsed = now - self._window_t
        steps = step - self._window_step
        record = {"tokens": step * self.tokens_per_step, "loss": host["loss"],
                  "loss_mean": float(np.mean(self._losses)),
                  # The schedule's own count: skipped updates do not advance it.
                  "lr": self.lr(int(host.get("update_count", step - 1))),
                  "grad_norm": host["grad_norm"],
                  "param_norm": host.get("param_norm", float("nan"))}
        if steps > 0 and elapsed > 0:
            tps = steps * self.tokens_per_step / elapsed
            record["tokens_per_s"] = tps
            record["steps_per_s"] = steps / elapsed
            util = metrics.mfu(tps, self.flops_per_token, self.n_devices, self.peak)
            if util is not None:
                record["mfu"] = util
        record.update(data_stats or {})
        self._window_t, self._window_step, self._losses = now, step, []
        if hold:
            self._held = (step, record)
        else:
            self._emit(step, record)

    def add_eval(self, step: int, evals: dict[str, float], seconds: float) -> None:
        """Write the held-out losses of `step` (with its training record if held);
        `seconds` spent evaluating are left out of the next throughput window."""
        if self._held is not None and self._held[0] == step:
            record = {**self._held[1], **evals}
        else:
            record = {"tokens": step * self.tokens_per_step, "loss": self._last[1], **evals}
        self._held = None
        if self._window_t is not None:
            self._window_t += seconds
        self._emit(step, record)

    def _emit(self, step: int, record: dict) -> None:
        self.writer.write(step, record)
        text = f"loss {record['loss']:.4f}"
        if "lr" in record:
            text += f" lr {record['lr']:.2e}"
        if "tokens_per_s" in record:
            text += f" {record['tokens_per_s']:.0f} tok/s"
        if "mfu" in record:
            text += f" MFU {100 * record['mfu']:.1f}%"
        evals = {k.split("/", 1)[1]: v for k, v in record.items() if k.startswith("eval_loss/")}
        if evals:
            text += " | held-out " + " ".join(f"{k} {v:.3f}" for k, v in evals.items())
        tasks = {k[5:-15]: v for k, v in record.items()  # task/<name>/primary_metric
                 if k.startswith("task/") and k.endswith("/primary_metric")}
        if tasks:
            text += " | tasks " + " ".join(f"{k} {m} {record[f'task/{k}/{m}']:.3f}"
                                           for k, m in tasks.items())
        self.bar.update(step, text)
        if not self.bar.enabled or evals or tasks:
            with self.bar.suspended():  # The log line on a line of its own.
                logging.info("step %d/%d: %s", step, self.total, text)

    def close(self) -> None:
        self.bar.close()
        self.writer.close()


def _evaluate(eval_step, params: tuple, data: DataSetup, mesh, rules) -> dict[str, float]:
    """Held-out loss per source: summed NLL / counted tokens over its eval batches.

    `params`: (params,) or, with LoRA, (adapters, base)."""
    out = {}
    for name, batches in data.eval_batches.items():
        total, count = 0.0, 0.0
        for b in batches:
            m = eval_step(params[0], global_batch(mesh, b, rules), *params[1:])
            total += float(m["loss_sum"])
            count += float(m["num_tokens"])
        if count:
            out[f"eval_loss/{name}"] = total / count
    return out


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> TrainResult:
    """Train (or resume) the run `config` describes in `workdir`.

    Returns a `TrainResult`. Raises ValueError (bad config, mismatched
    workdir, bad data) before compiling anything, and `NonFiniteLossError`
    when the loss diverges under ``train.on_nonfinite='stop'``.
    """
    t0 = time.perf_counter()
    mcfg = train_config.validate(config)
    workdir = str(workdir)
    if "://" in workdir:
        raise ConfigError(
            f"--workdir={workdir}: give a filesystem path; for object storage mount the bucket "
            "(e.g. gcsfuse) and pass the mount point")
    # First, before anything touches a JAX backend (the checkpointer does):
    # jax.distributed.initialize (and the gloo CPU-collectives choice) must
    # precede backend initialisation.
    info = distributed.initialize_from_config(config.distributed)
    if info.process_count > 1:
        logging.info("process %d of %d, %d local devices of %d", info.process_index,
                     info.process_count, info.local_device_count, info.device_count)
    Path(workdir).mkdir(parents=True, exist_ok=True)
    # One trainer per workdir, taken before the checkpointer opens (its start-up
    # deletes unfinished steps, such as another run's save in progress).
    lock = WorkdirLock(workdir)
    if jax.process_index() == 0:
        lock.acquire()
    try:
        ck = config.checkpoint
        checkpointer = ckpt_lib.Checkpointer(checkpoint_dir(workdir), every=ck.every,
                                             keep=ck.keep, async_save=ck.async_save)
        try:  # Closed on every path: an unclosed manager's threads fail at interpreter exit.
            return _train(config, mcfg, workdir, checkpointer, t0)
        finally:
            checkpointer.close()
    finally:
        lock.release()


def _train(config: ml_collections.ConfigDict, mcfg: LlamaConfig, workdir: str,
           checkpointer: ckpt_lib.Checkpointer, t0: float) -> TrainResult:
    """`train_and_evaluate` once the workdir's checkpointer is open."""
    t = config.train
    carbon_settings = carbon.CarbonSettings.from_config(t.carbon)  # Bad values fail early.
    # The newest step that verifies; a damaged newer one is reported and set aside.
    latest = checkpointer.resume_step(verify=config.checkpoint.verify)
    meta = checkpointer.read_meta(latest) if latest is not None else None
    init, lora = None, lora_lib.lora_from_config(config)
    if config.init.checkpoint:  # Its shape and tokenizer; its weights at step 0 (LoRA: always).
        init = init_lib.resolve(config, mcfg, load=meta is None or lora is not None,
                                saved_model=meta["model_config"] if meta else None)
        mcfg = init.config
    if meta is not None:
        ckpt_lib.check_model_matches(meta["model_config"], mcfg, workdir,
                                     saved_scan_layers=meta.get("scan_layers"))
        check_resumable(meta.get("config", {}), config, workdir)

    setup = setup_sft if config.data.corpus == "sft" else setup_data
    data = setup(config, mcfg, init.tokenizer_path if init else None)  # Missing paths / vocab mismatch fail here.
    tokenizer_sha256 = integrity.file_sha256(data.tokenizer_path)
    if meta is not None:
        check_same_tokenizer(meta.get("tokenizer_sha256"), tokenizer_sha256,
                             data.tokenizer_path, workdir)
    _keep_tokenizer(data.tokenizer_path, workdir)
    mesh, rules = mesh_and_rules(config)
    _check_batch_divides(config, mesh)
    # Unknown tasks, a missing data folder: before anything compiles.
    tasks = task_eval_lib.from_config(config, mcfg, data.tokenizer, mesh, rules, lora)
    skip = t.on_nonfinite == "skip"
    tx = optim.optimizer_from_config(config.optimizer, t.steps, skip_nonfinite=skip,
                                     max_consecutive_skips=t.max_consecutive_skips + 1)
    rng = jax.random.key(t.seed)
    train_iter = data.make_train_iterator()
    stats = SourceStats(data.source_names)
    # Per-source counts live on each process (its rows); they are summed over
    # processes (a collective, at the same steps everywhere) before use.
    gather = _process_allgather if jax.process_count() > 1 else None

    base = ()  # LoRA: the frozen base params, an extra argument of every step
    if lora is not None:
        base_sh = lora_lib.base_shardings(mcfg, mesh, rules)
        base = (lora_lib.place_base(init.params, base_sh, mcfg),)
        init.params = None
        lora_init, lora_abstract, lora_sh = lora_lib.lora_state(mcfg, lora, tx, mesh, rules)
    if latest is not None:
        abstract, shardings = ((lora_abstract, lora_sh) if lora is not None
                               else abstract_train_state(mcfg, tx, mesh, rules))
        state, rng, meta = checkpointer.restore(latest, abstract, abstract_rng=rng,
                                                data_iterator=train_iter)
        stats = SourceStats(data.source_names, meta.get("source_stats"))
        logging.info("resumed from step %d in %s", latest, checkpointer.directory)
    else:
        init_rng, rng = jax.random.split(rng)
        if lora is not None:
            state, shardings = lora_init(init_rng), lora_sh
        elif init is not None:
            state, shardings = init_lib.init_state_from_params(mcfg, tx, mesh, rules, init.params)
            init.params = None  # The host copy is no longer needed.
            logging.info("initialised from %s", init.path)
        else:
            state, shardings = init_train_state(mcfg, tx, mesh, rules, init_rng)
    start = int(jax.device_get(state.step))
    if start >= t.steps:
        logging.info("workdir %s already holds step %d >= train.steps=%d; nothing to do",
                     workdir, start, t.steps)
        return TrainResult("already_done", start, start, None, {}, time.perf_counter() - t0)

    lora_kw = {} if lora is None else {"lora": lora, "base_shardings": base_sh}
    train_step = make_train_step(mcfg, tx, mesh, rules, shardings,
                                 grad_accum_steps=t.grad_accum_steps, **lora_kw)
    eval_step = make_eval_step(mcfg, mesh, rules, shardings.params, **lora_kw)
    log = _Logger(config, mcfg, workdir, start)
    config_json = _config_json(config)
    log.writer.write_run_config(config_json, step=start, metric_tags=(
        "loss", "loss_mean", *(f"eval_loss/{name}" for name in data.eval_batches)))

    def save(step: int, force: bool) -> None:
        stats.sync(gather)
        meta = {"config": config_json, "model_config": mcfg.to_dict(),  # the shape only
                "scan_layers": mcfg.scan_layers,  # the stored tree's layout
                # With LoRA the params are adapters on this base (merged on export).
                "lora": None if lora is None else {**lora.to_dict(),
                                                   "base": str(Path(init.path).resolve())},
                "tokens": step * t.batch_size * t.seq_len, "source_stats": stats.state(),
                "tokenizer_sha256": tokenizer_sha256, "mesh": dict(mesh.shape),
                "jax_version": jax.__version__}
        if checkpointer.save(step, state, rng=rng, meta=meta, data_iterator=train_iter,
                             force=force):
            logging.info("checkpoint: saving step %d", step)

    def last_good() -> tuple[int | None, str]:
        checkpointer.wait()  # An in-flight save may be the last good one.
        return checkpointer.verified_step, str(checkpointer.directory)

    tracker = StepMetrics(on_nonfinite=t.on_nonfinite, max_consecutive_skips=t.max_consecutive_skips,
                          record=log.step_done, last_good=last_good)
    eval_losses: dict[str, float] = {}
    status = "completed"

    preempt = PreemptionHandler()
    step = start
    try:
        with preempt:
            for i in range(start, t.steps):
                local = next(train_iter)
                stats.update(local)
                batch = global_batch(mesh, {k: local[k] for k in data.batch_keys}, rules)
                state, dev_metrics = train_step(state, batch, *base)
                step = i + 1
                tracker.settle()  # The previous step's, while this one runs.
                data_stats = None
                if log.due(step):
                    stats.sync(gather)
                    data_stats = stats.scalars()
                tracker.defer(step, dev_metrics, data_stats)
                stopping = preempt.reached(step)
                final = step == t.steps
                due_eval = bool(data.eval_batches) and (
                    final or (t.eval_every > 0 and step % t.eval_every == 0))
                due_tasks = tasks is not None and tasks.due(step)
                if stopping or final or checkpointer.should_save(step) or due_eval or due_tasks:
                    # Never save or evaluate an unchecked state.
                    tracker.settle(hold=due_eval or due_tasks)
                if due_eval or due_tasks:  # One record; the time is left out of throughput.
                    t_eval = time.perf_counter()
                    evals = {}
                    if due_eval:
                        eval_losses = _evaluate(eval_step, (state.params, *base), data, mesh, rules)
                        evals.update(eval_losses)
                    if due_tasks:
                        evals.update(tasks(state.params, *base))
                    log.add_eval(step, evals, time.perf_counter() - t_eval)
                if stopping or final or checkpointer.should_save(step):
                    save(step, force=True)
                if stopping:
                    status = "preempted"
                    logging.warning("%s received: saved step %d; exiting cleanly",
                                    preempt.signal_name or "preemption", step)
                    break
            tracker.settle()
    finally:
        # The summary record, on every path (a run that diverged spent energy too):
        # this invocation's device-hours, energy and tCO2eq (Table 15).
        footprint = carbon.run_footprint(time.perf_counter() - t0, carbon_settings)
        log.writer.write(step, footprint.metrics())
        logging.info("footprint: %s", footprint.describe())
        log.close()
    end = int(jax.device_get(state.step)) if status != "completed" else t.steps
    return TrainResult(status, start, end, tracker.last_loss, eval_losses,
                       time.perf_counter() - t0, footprint)


def _keep_tokenizer(tok_path: str, workdir: str) -> None:
    """Copy the run's tokenizer to WORKDIR/tokenizer.model, where eval and
    generate look by default (atomically; the workdir then travels whole)."""
    if jax.process_index() != 0:
        return
    atomic_write(Path(workdir) / "tokenizer.model", Path(tok_path).read_bytes())
