"""Exact document dedup over all shards, stage ``exact_dedup`` (GitHub's file dedup).

Two index passes and a filter, all datatrove steps:

1. `HashDocuments` (one task per shard): the SHA-1 of each document's UTF-8
   text with its (shard, index), written sorted, split by the first hash
   byte into ``finder_tasks`` buckets;
2. `FindDuplicates` (``finder_tasks`` tasks): merges a bucket over all shards
   and marks every occurrence of a hash but the first in (shard, index) order;
3. `DropDuplicates` (in the document flow): drops the marked documents,
   counted as ``duplicate``.

datatrove's own ExactDedup steps are not used: they hash with 64 bits and
break ties between shards in heap order, while GitHub's rule here is "keep the
first occurrence in (shard, index) order", which must not depend on it.
"""

from __future__ import annotations

import hashlib

import ml_collections
import numpy as np
from datatrove.data import Document, DocumentsPipeline
from datatrove.io import get_datafolder
from datatrove.pipeline.base import PipelineStep
from datatrove.pipeline.filters.base_filter import BaseFilter

from llama_jax.errors import ConfigError
from llama_jax.prepare.stage import IndexPass, Stage, StageEnv

SIG_DTYPE = np.dtype([("hash", "S20"), ("shard", "<u4"), ("index", "<u4")])


def default_config() -> ml_collections.ConfigDict:
    """``finder_tasks``: parallel tasks of the duplicate finder (hash buckets)."""
    c = ml_collections.ConfigDict()
    c.enabled = True
    c.finder_tasks = 1
    return c


def content_hash(text: str) -> bytes:
    """The SHA-1 digest of `text` as UTF-8 (20 bytes)."""
    return hashlib.sha1(text.encode("utf-8", errors="surrogatepass")).digest()


def _save(folder, path: str, array: np.ndarray) -> None:
    with folder.open(path, "wb") as f:
        np.save(f, array, allow_pickle=False)


def _load(folder, path: str) -> np.ndarray:
    with folder.open(path, "rb") as f:
        return np.load(f, allow_pickle=False)


class HashDocuments(PipelineStep):
    """Pass 1: every document's SHA-1 and (shard, index), bucketed by hash."""

    type = "DEDUP"
    name = "exact dedup: hash"

    def __init__(self, work_dir: str, finder_tasks: int):
        super().__init__()
        self.work_dir = work_dir
        self.finder_tasks = finder_tasks

    def run(self, data: DocumentsPipeline, rank: int = 0, world_size: int = 1) -> DocumentsPipeline:
        """Writes ``sigs/<bucket>/<shard>.npy``; yields nothing."""
        sigs = []
        for index, doc in enumerate(data):
            self.stat_update("documents")
            sigs.append((content_hash(doc.text), rank, index))
        sigs = np.array(sigs, dtype=SIG_DTYPE)  # [docs]
        sigs.sort(order=["hash", "index"])
        buckets = np.frombuffer(sigs["hash"].tobytes(), np.uint8)[::20] % self.finder_tasks if len(sigs) else []
        folder = get_datafolder(self.work_dir)
        for bucket in range(self.finder_tasks):
            _save(folder, f"sigs/{bucket:04d}/{rank:05d}.npy", sigs[np.asarray(buckets) == bucket])
        return
        yield


class FindDuplicates(PipelineStep):
    """Pass 2: within one hash bucket, every occurrence after the first in (shard, index) order."""

    type = "DEDUP"
    name = "exact dedup: find"

    def __init__(self, work_dir: str):
        super().__init__()
        self.work_dir = work_dir

    def run(self, data: DocumentsPipeline = None, rank: int = 0, world_size: int = 1) -> DocumentsPipeline:
        """Writes ``dups/<bucket>/<shard>.npy`` (sorted document indices); yields nothing."""
        folder = get_datafolder(self.work_dir)
        files = folder.list_files(subdirectory=f"sigs/{rank:04d}", glob_pattern="*.npy")
        parts = [_load(folder, path) for path in files]
        sigs = np.concatenate(parts) if parts else np.zeros(0, SIG_DTYPE)  # [docs in bucket]
        order = np.lexsort((sigs["index"], sigs["shard"], sigs["hash"]))
        sigs = sigs[order]
        repeated = np.zeros(len(sigs), bool)
        repeated[1:] = sigs["hash"][1:] == sigs["hash"][:-1]
        dups = sigs[repeated]
        self.stat_update("duplicates", value=int(len(dups)))
        for shard in np.unique(dups["shard"]):
            indices = np.sort(dups["index"][dups["shard"] == shard]).astype(np.uint32)
            _save(folder, f"dups/{rank:04d}/{int(shard):05d}.npy", indices)
        return
        yield


class DropDuplicates(BaseFilter):
    """In the flow: drops the documents pass 2 marked (``duplicate``)."""

    name = "exact dedup: drop"

    def __init__(self, work_dir: str):
        super().__init__()
        self.work_dir = work_dir
        self._dups: set[int] = set()
        self._index = 0

    def run(self, data: DocumentsPipeline, rank: int = 0, world_size: int = 1) -> DocumentsPipeline:
        """Loads this shard's marks, then filters."""
        folder = get_datafolder(self.work_dir)
        self._dups = set()
        if folder.isdir("dups"):
            for bucket in folder.list_files(include_directories=True, recursive=False, subdirectory="dups"):
                path = f"{bucket}/{rank:05d}.npy"
                if folder.isfile(path):
                    self._dups.update(int(i) for i in _load(folder, path))
        self._index = 0
        yield from super().run(data, rank, world_size)

    def filter(self, doc: Document) -> bool | tuple[bool, str]:
        """False (``duplicate``) for a marked document."""
        index, self._index = self._index, self._index + 1
        return (False, "duplicate") if index in self._dups else True


def build(cfg: ml_collections.ConfigDict, env: StageEnv) -> Stage:
    """The two index passes and the drop step, with files under ``env.work_dir``."""
    if cfg.finder_tasks < 1 or cfg.finder_tasks > 256:
        raise ConfigError(f"--config.{env.name}.finder_tasks={cfg.finder_tasks}; use 1..256")
    return Stage(
        name=env.name,
        steps=[DropDuplicates(env.work_dir)],
        index_passes=[
            IndexPass(steps=[HashDocuments(env.work_dir, cfg.finder_tasks)], reads_documents=True),
            IndexPass(steps=[FindDuplicates(env.work_dir)], reads_documents=False, tasks=cfg.finder_tasks),
        ],
    )
