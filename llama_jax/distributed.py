"""Multi-process start-up: JAX's distributed runtime, driven by config or env.

One process per host (or per GPU) runs the same program; `initialize` joins
them through `jax.distributed.initialize` before any JAX computation. With
no arguments it initialises only when the environment names a multi-process
job (JAX's own variables, SLURM, Open MPI, a multi-host TPU slice) and lets
JAX auto-detect the rest; a single process is a no-op, so the same training
script runs on a laptop. It must run before anything touches a JAX backend
(the trainer calls `initialize_from_config` first thing). After it, build the
mesh with `llama_jax.sharding.mesh_from_config` (hosts go on the slow DCN
axes); each process loads only its share of every global batch (the data
pipeline's rows ``[p * B/P, (p+1) * B/P)``) and `step.global_batch` assembles
the global array.

`PreemptionHandler` turns SIGTERM/SIGINT (or JAX's multi-host preemption
notice) into a flag the training loop reads at a step boundary, so a
preempted run saves and exits with status 0.
"""

from __future__ import annotations

import dataclasses
import os
import signal
import threading
from collections.abc import Sequence
from typing import Any

import jax
import numpy as np
from absl import logging
from jax.experimental import multihost_utils

from llama_jax.errors import ConfigError

# Environment variables that mean "this is one process of a multi-process job".
_JAX_ENV = "JAX_COORDINATOR_ADDRESS"


@dataclasses.dataclass(frozen=True)
class ProcessInfo:
    """Where this process sits in the job."""

    process_index: int
    process_count: int
    local_device_count: int
    device_count: int


def process_info() -> ProcessInfo:
    """This process's index, the process count and the device counts."""
    return ProcessInfo(jax.process_index(), jax.process_count(),
                       jax.local_device_count(), jax.device_count())


def _int_env(*names: str) -> int | None:
    for name in names:
        value = os.environ.get(name)
        if value:
            try:
                return int(value.split("(")[0])
            except ValueError:
                continue
    return None


def detected_cluster() -> str | None:
    """The multi-process launcher the environment names, or None.

    JAX's own `JAX_COORDINATOR_ADDRESS`; SLURM with more than one task;
    Open MPI with more than one rank; a TPU slice with several workers.
    """
    if os.environ.get(_JAX_ENV):
        return "jax"
    if os.environ.get("SLURM_JOB_ID") and (_int_env("SLURM_STEP_NUM_TASKS", "SLURM_NTASKS") or 1) > 1:
        return "slurm"
    if (_int_env("OMPI_COMM_WORLD_SIZE") or 1) > 1:
        return "ompi"
    if "," in os.environ.get("TPU_WORKER_HOSTNAMES", "") or os.environ.get(
            "MEGASCALE_COORDINATOR_ADDRESS"):
        return "tpu"
    return None


def initialize(coordinator_address: str | None = None, num_processes: int | None = None,
               process_id: int | None = None,
               local_device_ids: int | Sequence[int] | None = None, *,
               initialization_timeout: int = 300) -> ProcessInfo:
    """Join the multi-process job, or do nothing for a single process.

    Args:
      coordinator_address: ``host:port`` of process 0's coordinator; None lets
        JAX read `JAX_COORDINATOR_ADDRESS` or detect SLURM / Open MPI / TPU.
      num_processes: total processes; 1 means single-process (no-op).
      process_id: this process's index in ``[0, num_processes)``.
      local_device_ids: the accelerators this process drives (GPU per process).
      initialization_timeout: seconds to wait for all processes.

    Returns:
      This process's `ProcessInfo` (after initialisation).

    With more than one process, CPU collectives are set to gloo
    (``jax_cpu_collectives_implementation``) first, so CPU-only jobs (and
    tests) can all-reduce across processes; the setting only affects the CPU
    backend.
    """
    if jax.distributed.is_initialized():
        return process_info()
    explicit = coordinator_address is not None or (num_processes or 1) > 1
    if num_processes == 1 or (not explicit and detected_cluster() is None):
        return process_info()
    if explicit and (coordinator_address is None or num_processes is None
                     or process_id is None) and detected_cluster() is None:
        raise ValueError(
            "distributed.initialize: outside SLURM / Open MPI / TPU, give all of "
            f"coordinator_address ({coordinator_address!r}), num_processes "
            f"({num_processes!r}) and process_id ({process_id!r})")
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    jax.distributed.initialize(coordinator_address=coordinator_address,
                               num_processes=num_processes, process_id=process_id,
                               local_device_ids=local_device_ids,
                               initialization_timeout=initialization_timeout)
    return process_info()


ENABLED = ("auto", "yes", "no")


def initialize_from_config(dist_cfg: Any = None) -> ProcessInfo:
    """`initialize` driven by a config part (the run config's ``distributed``).

    Keys (a mapping or an ml_collections ConfigDict; missing or None keys fall
    back to the environment): `enabled` ('auto': join a multi-process job
    when the config or the environment names one; 'yes': the same, but a
    single process is an error; 'no': never initialise), `coordinator_address`,
    `num_processes`, `process_id`, `local_device_ids` (ints or "0,1").

    Raises:
      ConfigError (a ValueError): an unknown `enabled`, an incomplete explicit
        spec, or ``enabled='yes'`` that ends up with one process.
    """
    def get(key):
        if dist_cfg is None:
            return None
        if hasattr(dist_cfg, "get"):
            return dist_cfg.get(key, None)
        return getattr(dist_cfg, key, None)

    enabled = get("enabled") or "auto"
    if enabled not in ENABLED:
        raise ConfigError(f"distributed.enabled={enabled!r} is not one of {ENABLED}")
    if enabled == "no":
        return process_info()
    ids = get("local_device_ids")
    if isinstance(ids, str):
        ids = [int(i) for i in ids.split(",") if i.strip()]
    elif isinstance(ids, int):
        ids = [ids]
    try:
        info = initialize(coordinator_address=get("coordinator_address") or None,
                          num_processes=get("num_processes") or None,
                          process_id=get("process_id"),
                          local_device_ids=ids or None)
    except ValueError as e:
        raise ConfigError(f"{e} (config keys distributed.coordinator_address, "
                          "distributed.num_processes, distributed.process_id)") from e
    if enabled == "yes" and info.process_count == 1:
        raise ConfigError(
            "distributed.enabled='yes' but this is a single process: set "
            "distributed.coordinator_address/num_processes/process_id or launch under "
            "SLURM / Open MPI / a TPU pod (launch/)")
    return info


def shutdown() -> None:
    """Leave the distributed runtime (a no-op when it was never started)."""
    if jax.distributed.is_initialized():
        jax.distributed.shutdown()


class PreemptionHandler:
    """SIGTERM/SIGINT -> a flag the loop checks at step boundaries.

    The first signal sets `requested`; the loop saves a checkpoint and returns
    (exit status 0). A second SIGINT raises KeyboardInterrupt at once.

    With several processes, JAX's preemption service (started by
    ``jax.distributed.initialize``) catches SIGTERM itself and agrees on a
    common step with the other hosts (`reached` asks it), so no Python handler
    is installed there; without that service the local flag is used.
    """

    SIGNALS = (signal.SIGTERM, signal.SIGINT)

    def __init__(self):
        self.signal_name: str | None = None
        self._event = threading.Event()
        self._previous: dict[int, Any] = {}

    @staticmethod
    def _jax_service() -> bool:
        """Whether JAX's preemption service runs: several processes joined by
        `jax.distributed.initialize` with ``jax_enable_preemption_service`` on
        (public API only, so it holds across JAX versions)."""
        return (jax.process_count() > 1 and jax.distributed.is_initialized()
                and bool(getattr(jax.config, "jax_enable_preemption_service", True)))

    def install(self) -> PreemptionHandler:
        if self._jax_service():
            return self
        if threading.current_thread() is not threading.main_thread():
            logging.warning("not in the main thread: SIGTERM/SIGINT handlers not installed")
            return self
        for sig in self.SIGNALS:
            self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def _handle(self, signum, frame):
        del frame
        if self._event.is_set() and signum == signal.SIGINT:
            raise KeyboardInterrupt
        self.signal_name = signal.Signals(signum).name
        self._event.set()

    @property
    def requested(self) -> bool:
        return self._event.is_set()

    def reached(self, step: int) -> bool:
        """Whether to save-and-stop after `step` (all processes agree)."""
        if self._jax_service():
            try:
                reached = multihost_utils.reached_preemption_sync_point(step)
            except RuntimeError:  # No sync manager after all: the local flag decides.
                return self.requested
            if reached:
                self.signal_name = self.signal_name or "SIGTERM"
            return reached
        return self.requested

    def uninstall(self) -> None:
        for sig, prev in self._previous.items():
            signal.signal(sig, prev)
        self._previous.clear()

    def __enter__(self) -> PreemptionHandler:
        return self.install()

    def __exit__(self, *exc) -> None:
        self.uninstall()


def to_host(x: Any) -> np.ndarray:
    """`x` as one numpy array on this host, whatever its sharding.

    A jax.Array that this process holds entirely (or that is replicated) is
    read from its local shards; one spread over several processes is gathered
    with `multihost_utils.process_allgather` (every process must call it, in
    the same order). Numpy input is returned as is.
    """
    if isinstance(x, jax.Array) and not (x.is_fully_addressable or x.is_fully_replicated):
        return np.asarray(multihost_utils.process_allgather(x, tiled=True))
    return np.asarray(x)
