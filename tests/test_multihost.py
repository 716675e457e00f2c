"""Two JAX processes on localhost train like one process with the same batch.

Each worker (`tests/multihost_worker.py`) has 2 fake CPU devices, joins the
JAX distributed runtime with gloo CPU collectives, loads only its half of the
global batch and runs 3 train steps on a hybrid (DCN x ICI) mesh. The
reference is this (single) process on 4 of its 8 devices.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import jax
import multihost_worker as worker
import numpy as np
import pytest

from llama_jax import distributed
from llama_jax import sharding as shd
from llama_jax import step as st

TIMEOUT_S = 420
STEPS = 3


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("localhost", 0))
        return s.getsockname()[1]


def _reference_metrics():
    mesh = shd.make_mesh((2, 2, 1, 1), jax.devices()[:4])
    config, optimizer = worker.make_config(), worker.make_optimizer()
    state, shardings = st.init_train_state(config, optimizer, mesh, shd.DEFAULT_RULES,
                                           jax.random.key(0))
    train_step = st.make_train_step(config, optimizer, mesh, shd.DEFAULT_RULES, shardings)
    out = []
    for i in range(STEPS):
        state, m = train_step(state, st.global_batch(mesh, worker.make_batch(i)))
        out.append({k: float(v) for k, v in m.items()})
    abs_sum = float(sum(np.abs(np.asarray(x)).sum() for x in jax.tree.leaves(state.params)))
    return out, abs_sum


@pytest.mark.multiprocess
def test_two_processes_match_one(tmp_path: Path):
    port = _free_port()
    env = {k: v for k, v in os.environ.items() if k not in ("XLA_FLAGS", "JAX_PLATFORMS")}
    env["PYTHONPATH"] = os.pathsep.join(
        [str(Path(__file__).resolve().parents[1])] + env.get("PYTHONPATH", "").split(os.pathsep))
    procs, logs, outs = [], [], []
    for pid in range(2):
        out = tmp_path / f"result_{pid}.json"
        log = open(tmp_path / f"worker_{pid}.log", "w")  # noqa: SIM115 - closed below
        procs.append(subprocess.Popen(
            [sys.executable, str(Path(__file__).with_name("multihost_worker.py")),
             "--process_id", str(pid), "--num_processes", "2", "--port", str(port),
             "--local_devices", "2", "--steps", str(STEPS), "--out", str(out)],
            stdout=log, stderr=subprocess.STDOUT, env=env))
        logs.append(log)
        outs.append(out)
    try:
        # The reference runs here while the workers compile.
        ref_metrics, ref_abs_sum = _reference_metrics()
        codes = []
        for p in procs:
            try:
                codes.append(p.wait(timeout=TIMEOUT_S))
            except subprocess.TimeoutExpired:
                codes.append("timeout")
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
        for log in logs:
            log.close()
    if codes != [0, 0]:
        tails = "\n".join(
            f"--- worker {i} (exit {c}) ---\n"
            + (tmp_path / f"worker_{i}.log").read_text()[-4000:]
            for i, c in enumerate(codes))
        pytest.fail(f"multi-process workers failed: {codes}\n{tails}")

    results = [json.loads(o.read_text()) for o in outs]
    for i, r in enumerate(results):
        assert r["process_index"] == i and r["process_count"] == 2
        assert r["trace_count"] == 1
    # Each process loaded only its own half of the rows.
    assert [r["rows"] for r in results] == [[0, 4], [4, 8]]
    # Hosts on the slow (data) axis, each host's 2 devices on fsdp.
    assert results[0]["mesh_devices"] == [[0, 0], [1, 1]]
    for r in results:
        assert len(r["metrics"]) == STEPS
        for got, want in zip(r["metrics"], ref_metrics, strict=True):
            assert got["num_tokens"] == want["num_tokens"]
            np.testing.assert_allclose(got["loss"], want["loss"], rtol=1e-5)
            np.testing.assert_allclose(got["grad_norm"], want["grad_norm"], rtol=1e-5)
        np.testing.assert_allclose(r["param_abs_sum"], ref_abs_sum, rtol=1e-5)
    # Training moved: the three losses are not all equal.
    assert len({round(m["loss"], 6) for m in ref_metrics}) == STEPS


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
