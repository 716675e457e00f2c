"""Two JAX processes on localhost train like one process with the same global batch.

`python -m llama_jax.train` runs as 2 processes with 2 fake CPU devices each,
joined through `distributed.*` config keys (gloo CPU collectives); the mesh
puts the processes on the `data` axis (DCN) and each process loads only its
half of every global batch. The reference is `train_and_evaluate` in this
(single) process on its 8 devices with the same config: losses, gradient
norms, held-out loss and the per-source token counts (summed over processes)
must match.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import jax
import numpy as np
import pytest
import train_helpers as th
from process_helpers import LoggedProcesses, free_port

from llama_jax import distributed
from llama_jax.convert.workdir import read_meta
from llama_jax.errors import ConfigError
from llama_jax.train import metrics
from llama_jax.train.loop import train_and_evaluate

TIMEOUT_S = 420
STEPS = 3
RUN = {"train.steps": STEPS, "checkpoint.every": 100, "train.eval_batches": 1}


def _records(workdir: Path) -> dict[int, dict]:
    return {r["step"]: r for r in metrics.read_metrics(workdir) if "loss" in r}


@pytest.mark.multiprocess
def test_two_processes_train_like_one(tmp_path: Path):
    root = th.make_data(tmp_path / "data")
    port = free_port()
    env = {k: v for k, v in os.environ.items() if k not in ("XLA_FLAGS", "JAX_PLATFORMS")}
    env.update(XLA_FLAGS="--xla_force_host_platform_device_count=2", JAX_PLATFORMS="cpu")
    env["PYTHONPATH"] = os.pathsep.join([str(th.REPO)] + env.get("PYTHONPATH", "").split(os.pathsep))
    two = tmp_path / "two"
    runs = []
    for pid in range(2):
        flags = th.override_flags(root, **RUN, **{
            "distributed.enabled": "yes", "distributed.coordinator_address": f"localhost:{port}",
            "distributed.num_processes": 2, "distributed.process_id": pid})
        runs.append((f"process_{pid}", [
            sys.executable, "-m", "llama_jax.train", f"--config={th.REPO / 'configs' / 'tiny.py'}",
            f"--workdir={two}", *flags], env))
    with LoggedProcesses(runs, tmp_path, cwd=th.REPO, timeout_s=TIMEOUT_S) as procs:
        # The reference runs here while the processes compile.
        one = tmp_path / "one"
        ref = train_and_evaluate(th.micro_config(root, **RUN), str(one))
        codes = procs.wait()
    out = [(tmp_path / f"process_{i}.log").read_text() for i in range(2)]
    if codes != [0, 0]:
        pytest.fail(f"training processes failed: {codes}\n" + "\n".join(
            f"--- process {i} (exit {c}) ---\n{text[-4000:]}"
            for i, (c, text) in enumerate(zip(codes, out, strict=True))))
    for i, text in enumerate(out):
        assert f"process {i} of 2, 2 local devices of 4" in text
        assert f"completed: step {STEPS}" in text

    got, want = _records(two), _records(one)
    assert sorted(got) == sorted(want) == list(range(1, STEPS + 1))
    for step in want:
        np.testing.assert_allclose(got[step]["loss"], want[step]["loss"], rtol=1e-5)
        np.testing.assert_allclose(got[step]["grad_norm"], want[step]["grad_norm"], rtol=1e-5)
        assert got[step]["lr"] == want[step]["lr"]
        # Per-source tokens are the whole job's (each process saw half the rows).
        for name in ("code", "prose"):
            assert got[step][f"tokens/{name}"] == want[step][f"tokens/{name}"]
            assert got[step][f"epoch/{name}"] == pytest.approx(want[step][f"epoch/{name}"])
    last = want[STEPS]
    assert last["tokens/code"] > 0 and last["tokens/prose"] > 0
    for name in ("code", "prose"):
        np.testing.assert_allclose(got[STEPS][f"eval_loss/{name}"], ref.eval_losses[f"eval_loss/{name}"],
                                   rtol=1e-5)
    assert len({round(want[s]["loss"], 6) for s in want}) == STEPS  # training moved
    meta2, meta1 = (read_meta(w / "checkpoints" / str(STEPS)) for w in (two, one))
    assert meta2["source_stats"] == meta1["source_stats"]
    assert meta2["mesh"] == {"data": 4, "fsdp": 1, "tensor": 1, "sequence": 1}


def _clear_cluster_env(monkeypatch):
    for var in ("JAX_COORDINATOR_ADDRESS", "SLURM_JOB_ID", "SLURM_NTASKS", "SLURM_STEP_NUM_TASKS",
                "OMPI_COMM_WORLD_SIZE", "TPU_WORKER_HOSTNAMES", "MEGASCALE_COORDINATOR_ADDRESS"):
        monkeypatch.delenv(var, raising=False)


def test_initialize_single_process_is_noop(monkeypatch):
    _clear_cluster_env(monkeypatch)
    assert distributed.detected_cluster() is None
    info = distributed.initialize()
    assert info.process_count == 1 and info.process_index == 0
    assert info.device_count == jax.device_count()
    assert not jax.distributed.is_initialized()
    assert distributed.initialize(num_processes=1).process_count == 1


def test_initialize_needs_full_explicit_spec(monkeypatch):
    _clear_cluster_env(monkeypatch)
    with pytest.raises(ValueError, match=r"give all of coordinator_address .*process_id \(None\)"):
        distributed.initialize(coordinator_address="localhost:1234", num_processes=2)


def test_detected_cluster_from_env(monkeypatch):
    _clear_cluster_env(monkeypatch)
    monkeypatch.setenv("SLURM_JOB_ID", "7")
    monkeypatch.setenv("SLURM_NTASKS", "1")
    assert distributed.detected_cluster() is None  # a one-task SLURM job
    monkeypatch.setenv("SLURM_NTASKS", "4")
    assert distributed.detected_cluster() == "slurm"
    monkeypatch.delenv("SLURM_JOB_ID")
    monkeypatch.setenv("OMPI_COMM_WORLD_SIZE", "2")
    assert distributed.detected_cluster() == "ompi"


def test_initialize_from_config_enabled(monkeypatch):
    _clear_cluster_env(monkeypatch)
    assert distributed.initialize_from_config({"enabled": "no"}).process_count == 1
    assert distributed.initialize_from_config({"enabled": "auto"}).process_count == 1
    with pytest.raises(ConfigError, match="distributed.enabled='yes' but this is a single process"):
        distributed.initialize_from_config({"enabled": "yes"})
    with pytest.raises(ConfigError, match=r"distributed.enabled='maybe' is not one of"):
        distributed.initialize_from_config({"enabled": "maybe"})
    with pytest.raises(ConfigError, match=r"give all of .*config keys distributed.coordinator_address"):
        distributed.initialize_from_config({"coordinator_address": "localhost:1", "num_processes": 2})
    assert not jax.distributed.is_initialized()
