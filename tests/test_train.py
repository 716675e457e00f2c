"""The main job end to end on a micro model: determinism, SIGKILL / SIGTERM resume
(bitwise), resume on another mesh, divergence, and user errors before compiling.

One uninterrupted in-process run is the reference; the other runs are
`python -m llama_jax.train` subprocesses sharing a persistent compilation
cache (so only the first one compiles) or in-process runs on another mesh.
"""

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import train_helpers as th

from llama_jax.convert import integrity
from llama_jax.convert.workdir import load_params, read_meta
from llama_jax.errors import ConfigError, DataError, NonFiniteLossError
from llama_jax.train import checkpoint as ck
from llama_jax.train import loop as trainer
from llama_jax.train import metrics, optim
from llama_jax.train.loop import train_and_evaluate

STEPS = 40
BASE = {"train.steps": STEPS, "checkpoint.every": 4, "checkpoint.keep": 20,
        "train.eval_batches": 0}


def losses(workdir) -> dict[int, float]:
    recs = [r for r in metrics.read_metrics(workdir) if "loss" in r]
    steps = [r["step"] for r in recs]
    assert len(steps) == len(set(steps)), f"duplicate step records in {workdir}: {steps}"
    return {r["step"]: r["loss"] for r in recs}


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    return th.make_data(tmp_path_factory.mktemp("data"))


@pytest.fixture(scope="module")
def reference(root, tmp_path_factory):
    """An uninterrupted in-process run of STEPS steps on 8 devices (mesh 8,1,1,1)."""
    wd = tmp_path_factory.mktemp("reference")
    result = train_and_evaluate(th.micro_config(root, **BASE), str(wd))
    assert result.status == "completed" and result.step == STEPS
    ref = losses(wd)
    assert sorted(ref) == list(range(1, STEPS + 1))
    return wd, ref


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("jax_cache")


def _cmd(root, workdir, **extra):
    overrides = {k: v for k, v in BASE.items()}
    overrides.update(extra)
    return [sys.executable, "-m", "llama_jax.train", f"--config={th.REPO / 'configs' / 'tiny.py'}",
            f"--workdir={workdir}", *th.override_flags(root, **overrides)]


def _env(cache_dir):
    env = dict(os.environ)
    env.update(JAX_COMPILATION_CACHE_DIR=str(cache_dir),
               JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0",
               JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES="0")
    return env


def _run(root, workdir, cache_dir, **extra):
    proc = subprocess.run(_cmd(root, workdir, **extra), env=_env(cache_dir), capture_output=True,
                          text=True, timeout=600, cwd=th.REPO)
    return proc


def _start(root, workdir, cache_dir, **extra):
    log = open(Path(workdir).parent / f"{Path(workdir).name}.log", "w")  # noqa: SIM115
    return subprocess.Popen(_cmd(root, workdir, **extra), env=_env(cache_dir), stdout=log,
                            stderr=subprocess.STDOUT, cwd=th.REPO), log


def _wait_for(predicate, proc, timeout=300.0):
    """Poll until `predicate()`; a hang guard, not a speed check."""
    deadline = time.monotonic() + timeout
    while not predicate():
        assert proc.poll() is None, "the training process ended before the event"
        if time.monotonic() > deadline:
            pytest.fail(f"no event within {timeout} s (hung training process?)")
        time.sleep(0.01)


def test_same_seed_same_config_same_losses(root, reference, cache_dir, tmp_path):
    """A second process with the same config: identical loss at every step.

    It also runs held-out eval, TensorBoard and the progress bar, which must
    not change the numbers."""
    _, ref = reference
    wd = tmp_path / "again"
    proc = _run(root, wd, cache_dir, **{"train.eval_every": 20, "train.eval_batches": 1,
                                        "train.tensorboard": True, "train.progress": "bar"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert losses(wd) == ref  # bitwise: floats parsed from the same JSON text
    # The tqdm bar ('\r' redraws; text mode turns them into newlines): count, ETA, rate, text.
    assert re.search(rf"100%\|[^|]+\| {STEPS}/{STEPS} \[[0-9:]+<00:00, +[0-9.]+step/s, loss [0-9]",
                     proc.stderr), proc.stderr[-2000:]
    recs = metrics.read_metrics(wd)
    evals = [r for r in recs if "eval_loss/code" in r]
    assert [r["step"] for r in evals] == [20, 40]
    assert all(np.isfinite(r["eval_loss/prose"]) for r in evals)
    last = [r for r in recs if "loss" in r][-1]
    assert last["tokens"] == STEPS * 8 * 32 and last["tokens/code"] + last["tokens/prose"] > 0
    assert last["tokens_per_s"] > 0 and "mfu" not in last  # CPU: peak unknown
    assert last["lr"] == pytest.approx(3e-4, rel=1e-5)  # 10% of the 3e-3 peak at the end
    assert list((wd / "tensorboard").glob("events.out.tfevents.*"))
    assert losses(wd)[STEPS] < losses(wd)[1] - 0.5  # it learns


def test_sigkill_then_restart_matches_uninterrupted_bitwise(root, reference, cache_dir, tmp_path):
    _, ref = reference
    wd = tmp_path / "killed"
    proc, log = _start(root, wd, cache_dir)
    try:
        _wait_for(lambda: (wd / "checkpoints" / "4").is_dir(), proc)
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=60)
    finally:
        log.close()
    assert proc.returncode == -signal.SIGKILL
    saved = ck.Checkpointer(wd / "checkpoints", every=4, keep=20).all_steps()
    assert 4 in saved and STEPS not in saved, saved
    resumed = _run(root, wd, cache_dir)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert f"resumed from step {max(saved)}" in resumed.stderr
    assert losses(wd) == ref


def test_sigterm_saves_exits_zero_and_resumes(root, reference, cache_dir, tmp_path):
    _, ref = reference
    wd = tmp_path / "preempted"
    proc, log = _start(root, wd, cache_dir)
    try:
        _wait_for(lambda: (wd / "metrics.jsonl").exists() and len(losses(wd)) >= 6, proc)
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=120)
    finally:
        log.close()
    out = (tmp_path / "preempted.log").read_text()
    assert proc.returncode == 0, out[-3000:]
    assert "SIGTERM received: saved step" in out and "preempted: step" in out
    stopped = ck.Checkpointer(wd / "checkpoints", every=4, keep=20).latest_step()
    assert 6 <= stopped < STEPS
    assert max(losses(wd)) == stopped  # the checkpoint is at the last step run
    resumed = _run(root, wd, cache_dir)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert f"resumed from step {stopped}" in resumed.stderr
    assert losses(wd) == ref


def test_resume_on_a_different_mesh(root, reference, tmp_path):
    """Saved on mesh (8,1,1,1) at step 20; resumed on (2,2,2,1): same losses to 1e-5."""
    ref_wd, ref = reference
    wd = tmp_path / "remeshed"
    shutil.copytree(ref_wd / "checkpoints" / "20", wd / "checkpoints" / "20")
    config = th.micro_config(root, **BASE, **{"mesh.data": 2, "mesh.fsdp": 2, "mesh.tensor": 2})
    result = train_and_evaluate(config, str(wd))
    assert result.start_step == 20 and result.step == STEPS
    got = losses(wd)
    assert sorted(got) == list(range(21, STEPS + 1))
    np.testing.assert_allclose([got[s] for s in got], [ref[s] for s in got], rtol=0, atol=1e-5)
    meta = read_meta(wd / "checkpoints" / str(STEPS))
    assert meta["mesh"] == {"data": 2, "fsdp": 2, "tensor": 2, "sequence": 1}


@pytest.fixture
def no_compile(monkeypatch):
    """Fail the test if anything would be initialized or compiled."""
    def boom(*args, **kwargs):
        raise AssertionError("compiled before the error was found")
    for name in ("init_train_state", "abstract_train_state", "make_train_step", "make_eval_step"):
        monkeypatch.setattr(trainer, name, boom)


def test_workdir_of_another_model_fails_before_compiling(root, reference, tmp_path, no_compile):
    ref_wd, _ = reference
    wd = tmp_path / "other"
    shutil.copytree(ref_wd / "checkpoints" / str(STEPS), wd / "checkpoints" / str(STEPS))
    config = th.micro_config(root, **BASE, **{"model.dim": 128, "model.n_layers": 3})
    with pytest.raises(ConfigError) as e:
        train_and_evaluate(config, str(wd))
    msg = str(e.value)
    assert "dim: checkpoint has 64, config asks for 128" in msg
    assert "n_layers: checkpoint has 2, config asks for 3" in msg and "fresh --workdir" in msg
    # Same model, but a batch size or data order the saved iterator position cannot continue.
    config = th.micro_config(root, **BASE, **{"train.batch_size": 16, "data.seed": 3})
    with pytest.raises(ConfigError, match=r"(?s)cannot resume.*train.batch_size: checkpoint has 8, "
                                          r"config asks for 16.*data.seed"):
        train_and_evaluate(config, str(wd))
    # Another tokenizer would shift the token stream: by name ...
    other_tok = tmp_path / "other.model"
    shutil.copyfile(root / "tok.model", other_tok)
    config = th.micro_config(root, **BASE, **{"data.tokenizer": str(other_tok)})
    with pytest.raises(ConfigError, match=r"(?s)cannot resume.*data.tokenizer: checkpoint has "
                                          r".*tok.model'.*other.model"):
        train_and_evaluate(config, str(wd))
    # ... or by content at the same path (the checkpoint records its SHA-256).
    meta_file = wd / "checkpoints" / str(STEPS) / "meta" / "metadata"
    meta = json.loads(meta_file.read_text())
    assert meta["tokenizer_sha256"] == integrity.file_sha256(str(root / "tok.model"))
    meta_file.write_text(json.dumps(dict(meta, tokenizer_sha256="0" * 64)))
    integrity.write_digests(meta_file.parents[1])  # as if saved so, not damaged
    with pytest.raises(ConfigError, match=r"trained with another tokenizer than .*tok.model"):
        train_and_evaluate(th.micro_config(root, **BASE), str(wd))


def test_missing_data_fails_before_compiling(root, tmp_path, no_compile):
    srcs = list(th.sources(root))
    srcs[1] = dict(srcs[1], path=str(tmp_path / "nowhere.jsonl"))
    with pytest.raises(DataError, match="nowhere.jsonl.*does not exist"):
        train_and_evaluate(th.micro_config(root, **{"data.sources": tuple(srcs)}), str(tmp_path / "a"))
    with pytest.raises(ConfigError, match="tokenizer .*missing.model.* does not exist"):
        train_and_evaluate(th.micro_config(root, **{"data.tokenizer": str(tmp_path / "missing.model")}),
                           str(tmp_path / "b"))
    with pytest.raises(ConfigError, match="512 pieces but the model's vocab_size is 256"):
        train_and_evaluate(th.micro_config(root, **{"model.vocab_size": 256}), str(tmp_path / "c"))


def test_cli_errors_are_clear(root, tmp_path):
    bad_key = subprocess.run(
        [sys.executable, "-m", "llama_jax.train", "--config=configs/tiny.py", f"--workdir={tmp_path}",
         "--config.train.stpes=3"], capture_output=True, text=True, timeout=300, cwd=th.REPO)
    assert bad_key.returncode == 2
    assert "unknown config key 'train.stpes'" in bad_key.stderr and "'train.steps'" in bad_key.stderr
    missing = subprocess.run(
        _cmd(root, tmp_path / "w", **{"data.tokenizer": str(tmp_path / "none.model")}),
        capture_output=True, text=True, timeout=300, cwd=th.REPO)
    assert missing.returncode == 2 and "Traceback" not in missing.stderr
    assert "error: tokenizer" in missing.stderr and "none.model" in missing.stderr


def test_nonfinite_loss_stops_and_keeps_last_good_checkpoint(root, tmp_path):
    wd = tmp_path / "diverged"
    config = th.micro_config(root, **{"train.steps": 12, "checkpoint.every": 1, "checkpoint.keep": 20,
                                      "train.eval_batches": 0, "optimizer.lr": 1e30})
    with pytest.raises(NonFiniteLossError, match=r"last good checkpoint is step \d+") as e:
        train_and_evaluate(config, str(wd))
    assert "on_nonfinite='skip'" in str(e.value)
    saved = ck.Checkpointer(wd / "checkpoints", every=1, keep=20).all_steps()
    bad_step = int(str(e.value).split()[1].rstrip(":"))
    assert saved and max(saved) < bad_step
    for step in saved:  # every checkpoint that was written holds finite parameters
        _, params = load_params(wd / "checkpoints" / str(step))
        assert all(np.isfinite(np.asarray(x)).all() for x in __import__("jax").tree.leaves(params))
    recs = [json.loads(x) for x in (wd / "metrics.jsonl").read_text().splitlines()]
    assert "device_hours" in recs[-1]  # the footprint is recorded on this path too
    recs = [r for r in recs if "device_hours" not in r]
    assert all(np.isfinite(r["loss"]) for r in recs)


def test_nonfinite_skip_drops_updates_then_gives_up(root, tmp_path):
    wd = tmp_path / "skipping"
    config = th.micro_config(root, **{"train.steps": 12, "checkpoint.every": 100,
                                      "train.eval_batches": 0, "optimizer.lr": 1e30,
                                      "train.on_nonfinite": "skip",
                                      "train.max_consecutive_skips": 2})
    with pytest.raises(NonFiniteLossError, match="after 3 skipped updates in a row"):
        train_and_evaluate(config, str(wd))
    recs = [json.loads(x) for x in (wd / "metrics.jsonl").read_text().splitlines()]
    assert "device_hours" in recs[-1]  # the footprint is recorded on this path too
    recs = [r for r in recs if "device_hours" not in r]
    # The huge first update leaves the loss finite (RMSNorm) but the gradients NaN.
    skipped = [r["step"] for r in recs
               if not (np.isfinite(float(r["loss"])) and np.isfinite(float(r["grad_norm"])))]
    assert len(skipped) == 2 and skipped == list(range(skipped[0], skipped[0] + 2))
    # The logged lr is the schedule's at the optimizer's own count, which skipped
    # updates do not advance: step s used count s - 1 - (updates skipped before s).
    lr = {r["step"]: r["lr"] for r in recs}
    for step in lr:
        count = step - 1 - sum(1 for s in skipped if s < step)
        assert lr[step] == pytest.approx(optim.lr_at(count, 1e30, 2, 12, 0.1), rel=1e-6), step
    assert lr[skipped[1]] == lr[skipped[0]]  # nothing was applied in between
