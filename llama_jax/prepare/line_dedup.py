"""Stage ``line_dedup``: cc_net's line-level deduplication over the whole group of shards.

The rule (Wenzek et al. 2020, `cc_net/dedup.py` + `text_normalizer.py`): split
each document on ``\\n``; normalise every line as cc_net's
``normalize_for_dedup`` does (strip; empty stays empty; lower case; every
digit (``\\d``, Unicode too) to ``0``; cc_net's Unicode punctuation characters
and the non-printing characters U+0000-U+001F and U+007F-U+009F removed);
hash it with SHA-1 and keep the first 8 bytes as a little-endian uint64 (cc_net's
``str_hash``); then remove every line whose hash occurs more than once in the
group, *first occurrence included* (cc_net's ``deduplicate_two_pass``, "what
is done in the paper"). A document left with no line is dropped
(reason ``all_lines_duplicate``).

Three datatrove runs: `HashCounter` (one task per shard) writes each shard's
distinct hashes and their counts (``counts/<rank>.npz``, uint64 + uint32);
`HashMerger` (one task) sums them and writes the sorted hashes seen more
than once (``duplicates.npy``); `LineDedupFilter` then removes those lines in
the document flow.
"""

from __future__ import annotations

import glob
import hashlib
import os
import re

import ml_collections
import numpy as np
from datatrove.pipeline.base import PipelineStep
from datatrove.pipeline.filters.base_filter import BaseFilter

from llama_jax.errors import DataError
from llama_jax.prepare.stage import IndexPass, Stage, StageEnv

# cc_net's UNICODE_PUNCT table: for dedup its characters are removed (not replaced).
UNICODE_PUNCT_CHARS = "，。、„”“«»１」「《》´∶：？！（）；–—．～’…━〈〉【】％►"
NON_PRINTING_CHARS = "".join(map(chr, [*range(0, 32), *range(127, 160)]))
_REMOVED_RE = re.compile("[" + re.escape(UNICODE_PUNCT_CHARS + NON_PRINTING_CHARS) + "]")
_DIGIT_RE = re.compile(r"\d")

ALL_LINES_DUPLICATE = "all_lines_duplicate"


def normalize_for_dedup(line: str) -> str:
    """cc_net's ``normalize_for_dedup``: the form of a line that is hashed."""
    line = line.strip()
    if not line:
        return line
    line = line.lower()
    line = _DIGIT_RE.sub("0", line)
    return _REMOVED_RE.sub("", line)


def line_hash(line: str) -> int:
    """cc_net's hash of one line: the first 8 bytes of SHA-1(normalised line), uint64 LE."""
    digest = hashlib.sha1(normalize_for_dedup(line).encode("utf-8")).digest()
    return int.from_bytes(digest[:8], "little")


def doc_hashes(text: str) -> np.ndarray:
    """The hash of every ``\\n``-separated line of `text`: uint64 [n_lines]."""
    lines = text.split("\n")
    digests = b"".join(hashlib.sha1(normalize_for_dedup(x).encode("utf-8")).digest()[:8]
                       for x in lines)
    return np.frombuffer(digests, dtype="<u8").astype(np.uint64)  # [n_lines]


def _save_atomic(path: str, save) -> None:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    tmp = f"{path}.tmp{os.getpid()}"
    with open(tmp, "wb") as f:
        save(f)
    os.replace(tmp, path)


class HashCounter(PipelineStep):
    """Index pass 1: the distinct line hashes of one shard and how often each occurs."""

    name = "#️⃣ line hash counter"
    type = "🫂 - DEDUP"

    def __init__(self, work_dir: str):
        super().__init__()
        self.work_dir = work_dir

    def run(self, data, rank: int = 0, world_size: int = 1):
        """Consume the shard's documents; write ``counts/<rank>.npz``."""
        chunks = []
        for doc in data or ():
            with self.track_time():
                chunks.append(doc_hashes(doc.text))  # [n_lines]
            self.stat_update("documents")
        hashes = np.concatenate(chunks) if chunks else np.zeros(0, np.uint64)  # [lines]
        unique, counts = np.unique(hashes, return_counts=True)  # [distinct], [distinct]
        self.stat_update("lines", value=int(hashes.size))
        self.stat_update("distinct_lines", value=int(unique.size))
        _save_atomic(os.path.join(self.work_dir, "counts", f"{rank:05d}.npz"),
                     lambda f: np.savez(f, hashes=unique, counts=counts.astype(np.uint32)))
        yield from ()


class HashMerger(PipelineStep):
    """Index pass 2 (one task): the sorted hashes that occur more than once in all shards."""

    name = "#️⃣ line hash merger"
    type = "🫂 - DEDUP"

    def __init__(self, work_dir: str, tasks: int):
        super().__init__()
        self.work_dir = work_dir
        self.tasks = tasks

    def run(self, data=None, rank: int = 0, world_size: int = 1):
        """Sum every shard's counts; write ``duplicates.npy``."""
        with self.track_time():
            self._merge()
        yield from ()

    def _merge(self) -> None:
        paths = sorted(glob.glob(os.path.join(self.work_dir, "counts", "*.npz")))
        if len(paths) != self.tasks:
            raise DataError(f"line_dedup: found {len(paths)} of {self.tasks} hash-count files in "
                            f"{self.work_dir}/counts; run the pipeline again to redo the missing tasks")
        hashes, counts = [], []
        for path in paths:
            with np.load(path) as z:
                hashes.append(z["hashes"])
                counts.append(z["counts"].astype(np.int64))
        all_hashes = np.concatenate(hashes)  # [sum distinct]
        all_counts = np.concatenate(counts)  # [sum distinct]
        unique, inverse = np.unique(all_hashes, return_inverse=True)  # [distinct], [sum distinct]
        totals = np.bincount(inverse, weights=all_counts, minlength=unique.size)  # [distinct]
        duplicates = unique[totals > 1]  # [n_dup], sorted
        self.stat_update("distinct_lines", value=int(unique.size))
        self.stat_update("duplicate_hashes", value=int(duplicates.size))
        _save_atomic(os.path.join(self.work_dir, "duplicates.npy"), lambda f: np.save(f, duplicates))


def load_duplicates(work_dir: str) -> np.ndarray:
    """The sorted duplicate hashes `HashMerger` wrote (uint64 [n_dup])."""
    path = os.path.join(work_dir, "duplicates.npy")
    if not os.path.isfile(path):
        raise DataError(f"line_dedup: {path} is missing (its index passes did not finish); run the "
                        "pipeline again")
    return np.load(path)


class LineDedupFilter(BaseFilter):
    """Removes every line whose hash is in the group's duplicates; drops emptied documents."""

    name = "✂️ line dedup (cc_net)"
    _requires_dependencies: list = []

    def __init__(self, work_dir: str):
        super().__init__()
        self.work_dir = work_dir
        self._duplicates: np.ndarray | None = None

    def filter(self, doc) -> bool | tuple[bool, str]:
        """Keep the document's unique lines (rewriting its text), or drop it if none is left."""
        if self._duplicates is None:
            self._duplicates = load_duplicates(self.work_dir)
        dups = self._duplicates
        lines = doc.text.split("\n")
        hashes = doc_hashes(doc.text)  # [n_lines]
        if dups.size:
            pos = np.minimum(np.searchsorted(dups, hashes), dups.size - 1)  # [n_lines]
            keep = dups[pos] != hashes  # [n_lines]
        else:
            keep = np.ones(len(lines), bool)  # [n_lines]
        kept = int(keep.sum())
        self.stat_update("lines_removed", value=len(lines) - kept)
        self.stat_update("lines_kept", value=kept)
        if kept == 0:
            return False, ALL_LINES_DUPLICATE
        if kept < len(lines):
            doc.metadata["original_nlines"] = len(lines)
            doc.text = "\n".join(line for line, k in zip(lines, keep, strict=True) if k)
        return True


def default_config() -> ml_collections.ConfigDict:
    """The stage's options (it has no other: cc_net's rule is fixed)."""
    c = ml_collections.ConfigDict()
    c.enabled = True
    return c


def build(cfg: ml_collections.ConfigDict, env: StageEnv) -> Stage:
    """The two index passes and the filter, all using ``env.work_dir``."""
    del cfg
    return Stage(name=env.name, steps=[LineDedupFilter(env.work_dir)],
                 index_passes=[IndexPass(steps=[HashCounter(env.work_dir)]),
                               IndexPass(steps=[HashMerger(env.work_dir, env.tasks)],
                                         reads_documents=False, tasks=1)])
