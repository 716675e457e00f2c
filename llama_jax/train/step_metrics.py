"""The training loop's per-step bookkeeping: one-step-behind metrics and the non-finite policy.

`StepMetrics` holds the device metrics of the step just dispatched and fetches
them (a host sync) only after the next step has been queued, so the host never
waits on the device between steps. Each fetched step is checked: a finite loss
and gradient norm go to the `record` callback; a non-finite one either stops
the run (``on_nonfinite='stop'``) or, with ``'skip'`` (the optimizer has already
dropped the update on device), is recorded and counted, and the run stops only
after more than ``max_consecutive_skips`` in a row. Stopping raises
`NonFiniteLossError` naming the last good checkpoint.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from typing import Any

import jax
from absl import logging

from llama_jax.errors import ConfigError, NonFiniteLossError
from llama_jax.train.config import ON_NONFINITE

# record(step, host_metrics, data_stats, hold): the logger's `step_done`.
Record = Callable[[int, dict[str, float], "dict[str, float] | None", bool], None]


class StepMetrics:
    """One-step-behind fetch of a train step's metrics plus the stop/skip policy.

    Args:
      on_nonfinite: 'stop' (raise at the first non-finite step) or 'skip'.
      max_consecutive_skips: with 'skip', how many non-finite steps in a row
        are tolerated; the next one raises.
      record: called with (step, host metrics, data stats, hold) for every
        step that does not stop the run (skipped steps included).
      last_good: returns (last good checkpoint step or None, checkpoint folder);
        called only when stopping (it may wait for an in-flight save).
      fetch: device -> host transfer of a metrics dict (`jax.device_get`).
    """

    def __init__(self, *, on_nonfinite: str, max_consecutive_skips: int, record: Record,
                 last_good: Callable[[], tuple[int | None, str]],
                 fetch: Callable[[Any], Mapping[str, Any]] = jax.device_get):
        if on_nonfinite not in ON_NONFINITE:
            raise ConfigError(f"train.on_nonfinite={on_nonfinite!r} is not one of {ON_NONFINITE}")
        self.skip = on_nonfinite == "skip"
        self.max_consecutive_skips = max_consecutive_skips
        self._record, self._last_good, self._fetch = record, last_good, fetch
        self.pending: tuple[int, Any, dict | None] | None = None
        self.skips = 0  # non-finite steps in a row (with 'skip')
        self.last_loss: float | None = None  # loss of the last finite step

    def defer(self, step: int, device_metrics: Any, data_stats: dict | None = None) -> None:
        """Hold `step`'s metrics (still on device) until the next `settle`."""
        if self.pending is not None:
            raise RuntimeError(f"step {step} deferred while step {self.pending[0]} is unsettled; "
                               "call settle() first")
        self.pending = (step, device_metrics, data_stats)

    def settle(self, hold: bool = False) -> dict[str, float] | None:
        """Fetch and check the held step (if any); returns its host metrics.

        `hold` is passed on to `record` (the record waits for held-out losses).
        Raises `NonFiniteLossError` when the policy says stop.
        """
        if self.pending is None:
            return None
        step, dev, data_stats = self.pending
        self.pending = None
        host = {k: float(v) for k, v in self._fetch(dev).items()}
        if not (math.isfinite(host["loss"]) and math.isfinite(host["grad_norm"])):
            if self.skip:
                self.skips += 1
                logging.warning("step %d: non-finite loss or gradient (loss %s, gradient norm %s): "
                                "update skipped (%d in a row)", step, host["loss"],
                                host["grad_norm"], self.skips)
                if self.skips <= self.max_consecutive_skips:
                    self._record(step, host, data_stats, hold)
                    return host
            self._stop(step, host)
        self.skips = 0
        self.last_loss = host["loss"]
        self._record(step, host, data_stats, hold)
        return host

    def _stop(self, step: int, host: dict[str, float]) -> None:
        good, directory = self._last_good()
        why = f"after {self.skips} skipped updates in a row" if self.skip else "non-finite"
        raise NonFiniteLossError(
            f"step {step}: loss {host['loss']}, gradient norm {host['grad_norm']} ({why})."
            f" Stopped without saving this state; the last good checkpoint is "
            f"{'step ' + str(good) if good is not None else 'none'} in {directory}. "
            "Lower optimizer.lr, raise optimizer.warmup_steps, "
            "or set train.on_nonfinite='skip' to drop such updates.")
