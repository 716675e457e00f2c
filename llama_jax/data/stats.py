"""Tokens and epochs seen per data source, summed over every process of the job.

The training loop counts each batch it loads (`SourceStats.update`), folds the
counts of all processes together at logging and checkpoint steps
(`SourceStats.sync`), logs them as ``tokens/<source>`` and ``epoch/<source>``
and saves them in each checkpoint, which is what Table 1's epochs per source
are read from.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import numpy as np


class SourceStats:
    """Tokens and epochs seen per data source, for the whole (multi-process) job.

    `update(batch)` with every batch this process loads: rows carry
    ``source_id`` (index into `names`), ``loss_mask`` (tokens are counted from
    it) and ``epoch_progress`` (epochs of that source consumed, fractional) or
    the integer ``epoch``. Those counts stay pending on this process until
    `sync(gather)` folds every process's pending counts into the job's totals,
    which `state()` (for checkpoints) and `scalars()` (for logs) report.
    `sync` with a `gather` is a collective: every process calls it at the same
    step. Epochs are the furthest any row of the source has reached.
    """

    def __init__(self, names: list[str], state: Mapping[str, Any] | None = None):
        self.names = list(names)
        self.tokens = {n: 0 for n in self.names}
        self.epochs = {n: 0.0 for n in self.names}
        if state:
            self.tokens.update({k: int(v) for k, v in state.get("tokens", {}).items()
                                if k in self.tokens})
            self.epochs.update({k: float(v) for k, v in state.get("epochs", {}).items()
                                if k in self.epochs})
        self._tokens = np.zeros(len(self.names), np.int64)  # pending, this process
        self._epochs = np.zeros(len(self.names), np.float64)

    def update(self, batch: Mapping[str, Any]) -> None:
        """Count one batch of this process (numpy arrays as the iterator yields them)."""
        if "source_id" not in batch:
            return
        n = len(self.names)
        sid = np.asarray(batch["source_id"]).reshape(-1)
        counts = np.asarray(batch["loss_mask"]).reshape(sid.shape[0], -1).sum(axis=1)
        self._tokens += np.rint(np.bincount(sid, weights=counts, minlength=n)[:n]).astype(np.int64)
        key = "epoch_progress" if "epoch_progress" in batch else "epoch"
        if key in batch:
            np.maximum.at(self._epochs, sid, np.asarray(batch[key], np.float64).reshape(-1))

    def sync(self, gather: Callable[[np.ndarray], Any] | None = None) -> None:
        """Fold the pending counts of all processes into the totals.

        `gather(x)` returns the stack ``[process_count, *x.shape]`` of every
        process's `x` (`jax.experimental.multihost_utils.process_allgather`);
        None for a single process. Token counts travel as two int32 words each
        (JAX's default int32 cannot hold a long run's int64 counts).
        """
        tokens, epochs = self._tokens, self._epochs
        if gather is not None:
            words = np.stack([tokens >> 31, tokens & (2**31 - 1)]).astype(np.int32)  # [2, n]
            got = np.asarray(gather(words)).reshape(-1, 2, len(self.names)).astype(np.int64)
            tokens = ((got[:, 0] << 31) + got[:, 1]).sum(axis=0)
            epochs = np.asarray(gather(epochs.astype(np.float32)), np.float64)
            epochs = epochs.reshape(-1, len(self.names)).max(axis=0)
        for i, name in enumerate(self.names):
            self.tokens[name] += int(tokens[i])
            self.epochs[name] = max(self.epochs[name], round(float(epochs[i]), 6))
        self._tokens = np.zeros_like(self._tokens)
        self._epochs = np.zeros_like(self._epochs)

    def state(self) -> dict:
        """The totals as of the last `sync` (JSON-able; restores with the constructor)."""
        return {"tokens": dict(self.tokens), "epochs": dict(self.epochs)}

    def scalars(self) -> dict[str, float]:
        """``tokens/<source>`` and ``epoch/<source>`` as of the last `sync`."""
        out: dict[str, float] = {f"tokens/{n}": self.tokens[n] for n in self.names}
        out.update({f"epoch/{n}": self.epochs[n] for n in self.names})
        return out
