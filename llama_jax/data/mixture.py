"""The grain input pipeline: per-source packing, weighted mixing, global batches.

How a global batch is made (all of it a pure function of the seed):

- Each source's training documents form an endless stream, a grain
  `MapDataset` (`ShuffledEpochsMapDataset`: a fresh permutation every epoch,
  then `.map` reads and tokenizes on access as `[bos] + ids + [eos]`).
- A global batch has `global_batch_size` rows; row `g` of every batch is its
  own *slot*. Slot `g` reads stream positions `g, g + G, g + 2G, ...` of every
  source (`G = global_batch_size`), so within an epoch the slots partition the
  documents, and packs them per source (`packing.RowPacker`: rows never mix
  sources; every token is an input once and a target once).
- Row `g` of step `t` comes from a stratified weighted choice: the rows of a
  batch take golden-ratio (low-discrepancy) points shifted by a seeded random
  offset per step, so every batch matches the weights within a row or two and
  each slot still sees a random sequence of sources.
- Process `p` of `P` builds only slots `[p * G/P, (p+1) * G/P)`: it reads only
  its slots' documents (sources are sharded by process), and the global batch
  is identical for any process count.
- With `num_workers > 0`, grain's `mp_prefetch` spreads the slots over worker
  processes (worker `w` owns slots `w, w + W, ...`); the round-robin
  interleave restores the same order, so batches do not depend on it either.

The iterator is a grain `DatasetIterator`: `get_state()` / `set_state()` (JSON;
per slot and source: document, offset, skip count) and
`grain.checkpoint.CheckpointSave/Restore` resume on exactly the next batch.
A state restores into an iterator built with the same sources, sizes, seed,
process layout and `num_workers`.
"""

from __future__ import annotations

import hashlib
import math
import sys
import zlib
from collections.abc import Mapping, Sequence
from typing import Any

import grain
import numpy as np
from absl import logging
from grain.experimental import index_shuffle

from llama_jax.data import sources as sources_lib
from llama_jax.data.packing import END_OF_STREAM, RowPacker
from llama_jax.data.tokenizer import TOKENIZER_TYPES, Tokenizer, load_tokenizer

# The paper's Table 1: sampling proportion (%) and epochs per source.
PAPER_MIXTURE: dict[str, float] = {
    "commoncrawl": 67.0, "c4": 15.0, "github": 4.5, "wikipedia": 4.5, "books": 4.5, "arxiv": 2.5,
    "stackexchange": 2.0,
}
PAPER_EPOCHS: dict[str, float] = {
    "commoncrawl": 1.10, "c4": 1.06, "github": 0.64, "wikipedia": 2.45, "books": 2.23, "arxiv": 1.06,
    "stackexchange": 1.03,
}

_PHI64 = 0x9E3779B97F4A7C15  # 2**64 / golden ratio: the Weyl-sequence step
_MASK64 = (1 << 64) - 1


def _splitmix64(x: int) -> int:
    """A 64-bit integer hash (splitmix64's finalizer) on Python ints."""
    x = (x + _PHI64) & _MASK64
    x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
    x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & _MASK64
    return x ^ (x >> 31)


def paper_mixture(paths: Mapping[str, str] | None = None, *, kind: str = "jsonl",
                  **spec_fields) -> list[sources_lib.SourceSpec]:
    """The paper's mixture as `SourceSpec`s; `paths` maps each name of `PAPER_MIXTURE` to its data.

    Example: `paper_mixture({'commoncrawl': '/data/ccnet/*.jsonl', ...}, kind='jsonl')`.
    Without `paths` each source's path is its name (a folder relative to the
    run's ``data.root``, as the paper configs use it).
    """
    if paths is None:
        paths = {name: name for name in PAPER_MIXTURE}
    missing = sorted(set(PAPER_MIXTURE) - set(paths))
    extra = sorted(set(paths) - set(PAPER_MIXTURE))
    if missing or extra:
        raise sources_lib.DataError(f"paper_mixture: paths needed for {sorted(PAPER_MIXTURE)}; missing {missing}, "
                                    f"unknown {extra}")
    return [sources_lib.SourceSpec(name=name, kind=kind, path=paths[name], weight=w, **spec_fields)
            for name, w in PAPER_MIXTURE.items()]


def normalized_weights(weights: Sequence[float], names: Sequence[str] | None = None) -> np.ndarray:
    """Weights scaled to sum to 1; negative, non-finite or all-zero weights are an error."""
    w = np.asarray([float(x) for x in weights], np.float64)
    names = list(names) if names is not None else [str(i) for i in range(len(w))]
    bad = [f"{n}={x!r}" for n, x in zip(names, weights, strict=True) if not (math.isfinite(float(x)) and float(x) >= 0)]
    if bad:
        raise sources_lib.DataError(f"mixture weights must be finite and >= 0; got {', '.join(bad)}")
    if w.size == 0 or w.sum() <= 0:
        given = dict(zip(names, w.tolist(), strict=True))
        raise sources_lib.DataError(f"mixture weights are all zero ({given}); give at least one source a positive "
                                    "weight")
    return w / w.sum()


def build_sources(specs: Sequence[Any]) -> list[sources_lib.DocumentSource]:
    """Document sources from specs / dicts (already-built sources pass through); names must be unique."""
    if isinstance(specs, (str, bytes)) or not isinstance(specs, Sequence) or len(specs) == 0:
        raise sources_lib.DataError("the data mixture needs a non-empty list of sources")
    built = [s if isinstance(s, sources_lib.DocumentSource) else sources_lib.build_source(s) for s in specs]
    names = [s.name for s in built]
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        raise sources_lib.DataError(f"source names must be unique; repeated: {dupes}")
    return built


def _seed32(*parts) -> int:
    return zlib.crc32("/".join(str(p) for p in parts).encode("utf-8"))


class _ReadAndTokenize:
    """Map fn: training-view document index -> int32 `[bos] + ids + [eos]` (empty array = skip)."""

    def __init__(self, view: sources_lib.IndexView, tokenizer: Tokenizer, on_error: str):
        self.view, self.tokenizer, self.on_error = view, tokenizer, on_error
        self._warned = 0

    def __call__(self, index: int) -> np.ndarray:
        try:
            text = self.view[index]
        except sources_lib.DataError as e:
            if self.on_error == "raise":
                raise
            if self._warned < 5:
                self._warned += 1
                logging.warning("skipping a bad document (on_error='skip'): %s", e)
            return np.zeros(0, np.int32)
        if not text:
            return np.zeros(0, np.int32)
        return np.asarray(self.tokenizer.encode(text, bos=True, eos=True), np.int32)


_SMALL_SOURCE = 1 << 20  # up to this many documents, permutations are materialized per epoch


def _mix64(x: np.ndarray) -> np.ndarray:
    """splitmix64 finalizer on uint64 arrays (wrapping arithmetic)."""
    x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return x ^ (x >> np.uint64(31))


class ShuffledEpochsMapDataset(grain.MapDataset):
    """Endless stream of indices into `[0, n)`: epoch after epoch, each a fresh permutation.

    Position q is document `perm_e(q % n)` of epoch `e = q // n`. Small sources
    sort by a keyed splitmix64 hash (a few epochs cached); large ones use
    grain's `index_shuffle` (O(1) memory). Both are pure functions of (seed, q).
    """

    def __init__(self, n: int, seed: int):
        super().__init__()
        if n < 1:
            raise ValueError(f"ShuffledEpochsMapDataset: n={n} must be >= 1")
        self._n, self._seed = int(n), int(seed) & 0xFFFFFFFF
        self._perms: dict[int, np.ndarray] = {}

    def __len__(self) -> int:
        return sys.maxsize

    def _perm(self, epoch: int) -> np.ndarray:
        perm = self._perms.get(epoch)
        if perm is None:
            key = np.uint64((self._seed << 32) ^ (epoch * 0x9E3779B1 & 0xFFFFFFFF))
            with np.errstate(over="ignore"):
                h = _mix64(np.arange(self._n, dtype=np.uint64) ^ _mix64(np.asarray([key]))[0])
            perm = np.argsort(h, kind="stable")
            if len(self._perms) >= 4:
                self._perms.pop(min(self._perms))
            self._perms[epoch] = perm
        return perm

    def __getitem__(self, q):
        if isinstance(q, slice):
            return self.slice(q)
        epoch, i = divmod(int(q), self._n)
        if self._n <= _SMALL_SOURCE:
            return int(self._perm(epoch)[i])
        return int(index_shuffle(i, max_index=self._n - 1, seed=(self._seed + epoch) % 2**32, rounds=4))

    def __getstate__(self):
        state = dict(self.__dict__)
        state["_perms"] = {}
        return state

    def __str__(self) -> str:
        return f"ShuffledEpochsMapDataset(n={self._n})"


def _document_stream(view: sources_lib.IndexView, tokenizer: Tokenizer, seed: int, on_error: str) -> grain.MapDataset:
    """Endless, per-epoch reshuffled, tokenized documents of one source's training view."""
    return ShuffledEpochsMapDataset(len(view), seed).map(_ReadAndTokenize(view, tokenizer, on_error))


class PackedMixtureIterDataset(grain.IterDataset):
    """Rows of this process's batch slots, step-major; supports grain's worker slicing.

    Yields one row dict at a time (batch it with `.batch(global_batch_size //
    process_count)`); see the module docstring for the layout.
    """

    def __init__(self, sources, tokenizer: Tokenizer, *, seq_len: int, global_batch_size: int, seed: int,
                 process_index: int = 0, process_count: int = 1):
        super().__init__()
        _check_layout(seq_len, global_batch_size, seed, process_index, process_count)
        self._names = [s.name for s in sources]
        self._weights = normalized_weights([s.spec.weight for s in sources], self._names)
        self._streams, self._sizes = [], []
        for s in sources:
            train, _ = sources_lib.split_heldout(s)
            if len(train) == 0:
                raise sources_lib.DataError(f"source {s.name!r} has no training documents left after holding out "
                                            f"{s.spec.heldout_fraction:.2%} of {len(s)}")
            self._sizes.append(len(train))
            self._streams.append(_document_stream(train, tokenizer, _seed32(seed, s.name), s.spec.on_error))
        live = np.flatnonzero(self._weights > 0)
        self._live_ids = live
        self._live_cdf = np.cumsum(self._weights[live])
        self._live_cdf[-1] = 1.0
        self._mix_offset = int.from_bytes(hashlib.blake2b(f"mix/{seed}".encode(), digest_size=8).digest(), "little")
        self.seq_len = seq_len
        self.global_batch_size = global_batch_size
        self.local_batch_size = global_batch_size // process_count
        self.process_index = process_index
        self.pad_id = tokenizer.pad_id
        self._slice = slice(0, None, 1)

    def set_slice(self, sl: slice, sequential_slice: bool = False) -> None:
        """Restricts this copy to the flat elements `sl` (used by `mp_prefetch` workers)."""
        if sequential_slice:
            raise ValueError("PackedMixtureIterDataset: sequential_slice is not supported; use mp_prefetch defaults")
        start, step = sl.start or 0, sl.step or 1
        cur_start, cur_step = self._slice.start or 0, self._slice.step or 1
        self._slice = slice(cur_start + start * cur_step, None, cur_step * step)

    def source_of(self, step: int, row: int) -> int:
        """Source id of global row `row` of batch `step`.

        u = frac(r_step + row * phi): the rows of one batch get a golden-ratio
        (low-discrepancy) set of points, so every batch matches the weights
        within a row or two, and a random offset per step keeps each slot's
        sequence of sources random.
        """
        u = ((_splitmix64(self._mix_offset ^ step) + row * _PHI64) & _MASK64) / 2.0**64
        return int(self._live_ids[min(np.searchsorted(self._live_cdf, u, side="right"), len(self._live_ids) - 1)])

    def __iter__(self) -> _PackedMixtureIterator:
        return _PackedMixtureIterator(self)

    def __str__(self) -> str:
        return (f"PackedMixtureIterDataset(sources={self._names}, seq_len={self.seq_len}, "
                f"global_batch_size={self.global_batch_size}, slice={self._slice})")


def _check_layout(seq_len, global_batch_size, seed, process_index, process_count):
    for name, value in (("seq_len", seq_len), ("global_batch_size", global_batch_size),
                        ("process_count", process_count)):
        if not isinstance(value, (int, np.integer)) or value < 1:
            raise ValueError(f"{name}={value!r} must be a positive integer")
    if not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ValueError(f"seed={seed!r} must be a non-negative integer")
    if not 0 <= process_index < process_count:
        raise ValueError(f"process_index={process_index} must be in [0, process_count={process_count})")
    if global_batch_size % process_count:
        raise ValueError(f"global_batch_size={global_batch_size} must be divisible by process_count={process_count}")


class _PackedMixtureIterator(grain.DatasetIterator):
    """State: next element counter and [doc, offset, skipped] per owned slot and source."""

    def __init__(self, ds: PackedMixtureIterDataset):
        super().__init__()
        self._ds = ds
        self._start, self._stride = ds._slice.start or 0, ds._slice.step or 1
        b = ds.local_batch_size
        if b % self._stride:
            raise ValueError(f"num_workers={self._stride} must divide the per-process batch size {b} "
                             "(global_batch_size // process_count), so that each worker owns whole batch rows")
        self._slots = list(range(self._start % self._stride, b, self._stride))
        self._slot_pos = {j: i for i, j in enumerate(self._slots)}
        self._packers = [[None] * len(ds._streams) for _ in self._slots]
        self._k = 0

    def _packer(self, slot_pos: int, j: int, s: int) -> RowPacker:
        p = self._packers[slot_pos][s]
        if p is None:
            g = self._ds.process_index * self._ds.local_batch_size + j
            stream, stride = self._ds._streams[s], self._ds.global_batch_size
            p = RowPacker(lambda n, stream=stream, g=g, stride=stride: stream[g + n * stride],
                          self._ds.seq_len, self._ds.pad_id)
            self._packers[slot_pos][s] = p
        return p

    def __next__(self) -> dict[str, np.ndarray]:
        ds = self._ds
        t, j = divmod(self._start + self._k * self._stride, ds.local_batch_size)
        g = ds.process_index * ds.local_batch_size + j
        s = ds.source_of(t, g)
        packer = self._packer(self._slot_pos[j], j, s)
        row = packer.next_row()
        if row is None:  # cannot happen on an endless stream
            raise RuntimeError(f"source {ds._names[s]!r} ended unexpectedly")
        self._k += 1
        q = g + row.pop("first_doc") * ds.global_batch_size  # stream position of the row's first document
        n_docs = ds._sizes[s]
        row["source_id"] = np.int32(s)
        row["epoch"] = np.int32(q // n_docs)
        row["epoch_progress"] = np.float32((q - g) / n_docs)
        return row

    def get_state(self) -> dict[str, Any]:
        empty = [0, 0, 0]
        return {
            "k": self._k,
            "packers": [[p.get_state() if p is not None else empty for p in row] for row in self._packers],
        }

    def set_state(self, state: Mapping[str, Any]) -> None:
        packers = state["packers"]
        if len(packers) != len(self._slots) or any(len(r) != len(self._ds._streams) for r in packers):
            raise ValueError("iterator state does not match this pipeline (different sources, batch size, "
                             "process count or num_workers than when it was saved)")
        self._k = int(state["k"])
        for pos, (j, row) in enumerate(zip(self._slots, packers, strict=True)):
            for s, st in enumerate(row):
                if list(st) == [0, 0, 0] and self._packers[pos][s] is None:
                    continue
                self._packer(pos, j, s).set_state(st)

    def __str__(self) -> str:
        return f"_PackedMixtureIterator(slots={len(self._slots)}, k={self._k})"


def make_train_iterator(
    sources: Sequence[Any],
    tokenizer: Tokenizer | str,
    *,
    seq_len: int,
    global_batch_size: int,
    seed: int,
    process_index: int = 0,
    process_count: int = 1,
    num_workers: int = 0,
    worker_buffer_size: int = 16,
) -> grain.DatasetIterator:
    """The endless training iterator of this process's share of every global batch.

    Args:
      sources: `SourceSpec`s, their dicts, or built document sources; weights
        come from the specs (relative; zero weight = never sampled).
      tokenizer: a `Tokenizer` or the path of its `.model` file.
      seq_len: tokens per row.
      global_batch_size: rows per global batch (all processes together).
      seed: determines document order, source choice, everything.
      process_index, process_count: this process's share is rows
        `[process_index * b, (process_index + 1) * b)` with
        `b = global_batch_size // process_count`.
      num_workers: grain `mp_prefetch` worker processes (0 = in-process); must
        divide `b`. Does not change the batches.
      worker_buffer_size: rows each worker prefetches.

    Returns:
      A grain `DatasetIterator` of dicts of numpy arrays, leading dim `b`:
      `inputs`, `targets`, `positions`, `segment_ids` int32 [b, seq_len];
      `loss_mask` float32 [b, seq_len]; per row `source_id`, `epoch` int32 [b]
      and `epoch_progress` float32 [b] (epochs of that source consumed, as
      seen from the row's slot).
    """
    if not isinstance(tokenizer, TOKENIZER_TYPES):  # a path: tokenizer.model or tokenizer.json
        tokenizer = load_tokenizer(tokenizer)
    built = build_sources(sources)
    if not isinstance(num_workers, int) or num_workers < 0:
        raise ValueError(f"num_workers={num_workers!r} must be an integer >= 0")
    ds = PackedMixtureIterDataset(built, tokenizer, seq_len=seq_len, global_batch_size=global_batch_size, seed=seed,
                                  process_index=process_index, process_count=process_count)
    if num_workers and ds.local_batch_size % num_workers:
        raise ValueError(f"num_workers={num_workers} must divide the per-process batch size {ds.local_batch_size} "
                         "(global_batch_size // process_count)")
    it_ds: grain.IterDataset = ds
    if num_workers > 0:
        from absl import flags

        if not flags.FLAGS.is_parsed():  # grain's workers read absl flags; outside absl.app use their defaults
            flags.FLAGS.mark_as_parsed()
        it_ds = it_ds.mp_prefetch(grain.MultiprocessingOptions(num_workers=num_workers,
                                                               per_worker_buffer_size=worker_buffer_size))
    return iter(it_ds.batch(ds.local_batch_size, drop_remainder=True))


def make_eval_batches(
    source: Any,
    tokenizer: Tokenizer | str,
    *,
    seq_len: int,
    batch_size: int,
    max_batches: int | None = None,
    source_id: int = 0,
    process_index: int = 0,
    process_count: int = 1,
) -> list[dict[str, np.ndarray]]:
    """Packed batches of a source's held-out documents, in order, for held-out loss.

    Same keys and dtypes as the training batches; `batch_size` is global and
    each process gets rows `[p * b, (p+1) * b)`, `b = batch_size // process_count`.
    The last batch is padded with empty rows (`loss_mask == 0`). The held-out
    documents are those `split_heldout` excludes from training.
    """
    if not isinstance(tokenizer, TOKENIZER_TYPES):  # a path: tokenizer.model or tokenizer.json
        tokenizer = load_tokenizer(tokenizer)
    (src,) = build_sources([source])
    _check_layout(seq_len, batch_size, 0, process_index, process_count)
    _, heldout = sources_lib.split_heldout(src)
    if len(heldout) == 0:
        raise sources_lib.DataError(f"source {src.name!r} has no held-out documents ({len(src)} documents, "
                                    f"heldout_fraction={src.spec.heldout_fraction}); raise heldout_fraction")
    read = _ReadAndTokenize(heldout, tokenizer, src.spec.on_error)
    packer = RowPacker(lambda n: read(n) if n < len(heldout) else END_OF_STREAM, seq_len, tokenizer.pad_id)
    b = batch_size // process_count
    lo = process_index * b
    batches = []
    while max_batches is None or len(batches) < max_batches:
        rows = []
        while len(rows) < batch_size and (row := packer.next_row()) is not None:
            rows.append(row)
        if not rows:
            break
        while len(rows) < batch_size:
            rows.append(_empty_row(seq_len, tokenizer.pad_id))
        mine = rows[lo:lo + b]
        batch = {k: np.stack([r[k] for r in mine]) for k in ("inputs", "targets", "positions", "segment_ids",
                                                             "loss_mask")}
        batch["source_id"] = np.full(b, source_id, np.int32)
        batch["epoch"] = np.zeros(b, np.int32)
        batch["epoch_progress"] = np.zeros(b, np.float32)
        batches.append(batch)
    return batches


def _empty_row(seq_len: int, pad_id: int) -> dict[str, np.ndarray]:
    z = np.zeros(seq_len, np.int32)
    return {"inputs": np.full(seq_len, pad_id, np.int32), "targets": np.full(seq_len, pad_id, np.int32),
            "positions": z, "segment_ids": z, "loss_mask": np.zeros(seq_len, np.float32), "first_doc": -1}
