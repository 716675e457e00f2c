"""Packing SFT examples into fixed-length rows, and the resumable batch iterator.

A row holds whole examples back to back (never a piece of one): example k
occupies ``len(ids) - 1`` positions with inputs ``ids[:-1]`` and targets
``ids[1:]``, segment id k (1, 2, ...; 0 on padding), positions restarting at 0
and ``loss_mask`` 1 where the target is a response token. Attention never
crosses segments, so a packed row computes what each example would alone.

Order: a fresh permutation of the examples every epoch (seeded by
``(seed, epoch)``), packed greedily in that order: a row takes examples while
the next one fits, so the rows of a global batch are a pure function of the
seed and the step. Every process builds the same global batch and keeps its
rows, so the batches do not depend on the process count. The iterator's state
is (epoch, cursor in the permutation, batches served): resuming continues
with exactly the next batch (grain's `DatasetIterator` checkpointing).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import grain
import numpy as np

from llama_jax.data.sft.encode import Encoded

ROW_KEYS = ("inputs", "targets", "positions", "segment_ids", "loss_mask")


def pack_row(examples: Sequence[Encoded], seq_len: int, pad_id: int) -> dict[str, np.ndarray]:
    """One packed row of `examples` (their positions must fit in `seq_len`)."""
    used = sum(len(e.ids) - 1 for e in examples)
    if used > seq_len:
        raise ValueError(f"examples of {used} positions do not fit seq_len={seq_len}")
    row = {"inputs": np.full(seq_len, pad_id, np.int32),
           "targets": np.full(seq_len, pad_id, np.int32),
           "positions": np.zeros(seq_len, np.int32),
           "segment_ids": np.zeros(seq_len, np.int32),
           "loss_mask": np.zeros(seq_len, np.float32)}
    at = 0
    for k, e in enumerate(examples, start=1):
        n = len(e.ids) - 1
        row["inputs"][at:at + n] = e.ids[:-1]
        row["targets"][at:at + n] = e.ids[1:]
        row["positions"][at:at + n] = np.arange(n)
        row["segment_ids"][at:at + n] = k
        row["loss_mask"][at:at + n] = e.mask[1:]
        at += n
    return row


class SFTIterator(grain.DatasetIterator):
    """Endless global batches of packed examples; this process's rows of each.

    Args:
      examples: the fitted examples (each at most ``seq_len + 1`` tokens).
      seq_len: positions per row.
      global_batch_size: rows per global batch.
      seed: the epoch permutations.
      pad_id: token at padded positions.
      process_index, process_count: this process keeps rows
        ``[p * b, (p + 1) * b)``, ``b = global_batch_size // process_count``.
      shuffle: False keeps file order every epoch.
    """

    def __init__(self, examples: Sequence[Encoded], *, seq_len: int, global_batch_size: int,
                 seed: int, pad_id: int, process_index: int = 0, process_count: int = 1,
                 shuffle: bool = True):
        super().__init__()
        if not examples:
            raise ValueError("no SFT examples to train on")
        if global_batch_size % process_count:
            raise ValueError(f"global_batch_size={global_batch_size} is not divisible by "
                             f"process_count={process_count}")
        self._examples = list(examples)
        self.seq_len, self.global_batch_size = seq_len, global_batch_size
        self.seed, self.pad_id, self.shuffle = seed, pad_id, shuffle
        self._b = global_batch_size // process_count
        self._lo = process_index * self._b
        self._epoch, self._cursor, self._batches = 0, 0, 0
        self._perm_epoch, self._perm = -1, None

    def _order(self, epoch: int) -> np.ndarray:
        if self._perm_epoch != epoch:
            n = len(self._examples)
            self._perm = (np.random.default_rng([self.seed, epoch]).permutation(n)
                          if self.shuffle else np.arange(n))
            self._perm_epoch = epoch
        return self._perm

    def _peek(self) -> Encoded:
        if self._cursor == len(self._examples):
            self._epoch, self._cursor = self._epoch + 1, 0
        return self._examples[self._order(self._epoch)[self._cursor]]

    def _next_row(self) -> dict[str, np.ndarray]:
        taken, used = [], 0
        while True:
            e = self._peek()
            if used + len(e.ids) - 1 > self.seq_len:
                break
            taken.append(e)
            used += len(e.ids) - 1
            self._cursor += 1
        row = pack_row(taken, self.seq_len, self.pad_id)
        row["epoch_progress"] = np.float32(self._epoch + self._cursor / len(self._examples))
        return row

    def __next__(self) -> dict[str, np.ndarray]:
        rows = [self._next_row() for _ in range(self.global_batch_size)]
        mine = rows[self._lo:self._lo + self._b]
        batch = {k: np.stack([r[k] for r in mine]) for k in ROW_KEYS}
        batch["source_id"] = np.zeros(self._b, np.int32)
        batch["epoch_progress"] = np.array([r["epoch_progress"] for r in mine], np.float32)
        batch["epoch"] = batch["epoch_progress"].astype(np.int32)
        self._batches += 1
        return batch

    def get_state(self) -> dict[str, Any]:
        return {"epoch": self._epoch, "cursor": self._cursor, "batches": self._batches,
                "examples": len(self._examples)}

    def set_state(self, state: Mapping[str, Any]) -> None:
        if int(state["examples"]) != len(self._examples):
            raise ValueError(f"the SFT iterator state is for {state['examples']} examples, this "
                             f"data has {len(self._examples)} (different file or settings)")
        self._epoch, self._cursor = int(state["epoch"]), int(state["cursor"])
        self._batches = int(state["batches"])

    def __str__(self) -> str:
        return f"SFTIterator(examples={len(self._examples)}, epoch={self._epoch})"
