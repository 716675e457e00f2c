"""Index views of document sources: the held-out split and process shards.

Views are O(1) index maps (no per-document tables), so they scale to sources
of any size, and they are picklable for grain's worker processes.
"""

from __future__ import annotations

import dataclasses
import zlib


class IndexView:
    """A random-access view of some of a source's documents (via an index map)."""

    def __init__(self, source, length: int, index_fn, label: str):
        self.source = source
        self.name = source.name
        self._len = int(length)
        self._index_fn = index_fn
        self.label = label

    def __len__(self):
        return self._len

    def source_index(self, i: int) -> int:
        """The index in the underlying source of this view's document `i`."""
        if not 0 <= i < self._len:
            raise IndexError(f"{self.label} of source {self.name!r}: document {i} out of range [0, {self._len})")
        return self._index_fn(i)

    def __getitem__(self, i: int) -> str:
        return self.source[self.source_index(i)]

    def location(self, i: int) -> str:
        return self.source.location(self.source_index(i))

    def __repr__(self):
        return f"IndexView({self.label} of {self.name!r}, docs={self._len})"


class _HeldOutMap:
    """Every `period`-th document from a name-derived `offset` is held out."""

    def __init__(self, n: int, fraction: float, salt: str):
        self.n = n
        if fraction <= 0 or n < 2:
            self.period, self.offset, self.n_heldout = 0, 0, 0
            return
        self.period = max(2, min(round(1 / fraction), n))
        self.offset = zlib.crc32(salt.encode("utf-8")) % self.period
        self.n_heldout = (n - self.offset + self.period - 1) // self.period

    def train(self, m: int) -> int:
        if not self.period:
            return m
        block, r = divmod(m, self.period - 1)
        return block * self.period + r + (r >= self.offset)

    def heldout(self, k: int) -> int:
        return k * self.period + self.offset


def split_heldout(source, fraction: float | None = None) -> tuple[IndexView, IndexView]:
    """Deterministic (train, held-out) views of a source.

    About `fraction` of the documents (default `source.spec.heldout_fraction`),
    evenly spread (every k-th from an offset derived from the source name), are
    held out; sources with >= 2 documents and fraction > 0 hold out at least one.
    Both views are O(1) index maps, so this scales to any source size.
    """
    if fraction is None:
        fraction = source.spec.heldout_fraction
    n = len(source)
    hm = _HeldOutMap(n, float(fraction), source.name)
    train = IndexView(source, n - hm.n_heldout, hm.train, "train split")
    heldout = IndexView(source, hm.n_heldout, hm.heldout, "held-out split")
    return train, heldout


def shard(source, process_index: int, process_count: int) -> IndexView:
    """This process's documents: indices `process_index::process_count`."""
    if not 0 <= process_index < process_count:
        raise ValueError(f"shard: process_index={process_index} not in [0, process_count={process_count})")
    n = len(source)
    length = max(0, (n - process_index + process_count - 1) // process_count)
    return IndexView(source, length, _Strided(process_index, process_count),
                     f"shard {process_index}/{process_count}")


@dataclasses.dataclass(frozen=True)
class _Strided:
    """Index map i -> start + i * step (picklable)."""

    start: int
    step: int

    def __call__(self, i: int) -> int:
        return self.start + i * self.step
