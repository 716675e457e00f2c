"""Writing documents: JSONL shards (what `llama_jax.data.sources` reads) and array_record.

One shard per task, named by the task's rank (``00003.jsonl``), so a restarted
task rewrites its own shard and nothing else. Each line is
``{"text": ..., "id": ..., "metadata": {...}}`` with sorted keys and no ASCII
escaping: the same documents give the same bytes, whichever executor ran them.

Formats (``--config.output_format``):

* ``jsonl``: plain ``.jsonl`` shards; `llama_jax.data.sources` reads the folder
  as a ``kind='jsonl'`` source (it reads uncompressed files only);
* ``jsonl.gz``: gzipped shards (smaller; the gzip header holds a timestamp, so
  two runs are equal after decompression, not byte for byte);
* ``array_record``: one JSON record per document (``kind='array_record'``,
  ``record_format='json'``).
"""

from __future__ import annotations

import json
import os

from datatrove.data import Document
from datatrove.pipeline.base import PipelineStep
from datatrove.pipeline.writers.disk_base import DiskWriter

from llama_jax.errors import ConfigError

FORMATS = ("jsonl", "jsonl.gz", "array_record")


def record_of(document: Document) -> dict:
    """The JSON object written for `document`."""
    return {"text": document.text, "id": document.id, "metadata": document.metadata}


def dumps(document: Document) -> bytes:
    """`document` as one deterministic JSONL line (UTF-8, sorted keys, newline)."""
    return _line(record_of(document))


def _line(record: dict) -> bytes:
    return (json.dumps(record, ensure_ascii=False, sort_keys=True, default=_plain) + "\n").encode()


def _plain(value):
    """numpy scalars (a model's score) as Python numbers."""
    if hasattr(value, "item"):
        return value.item()
    raise TypeError(f"{type(value).__name__} is not JSON serializable")


class JsonlShardWriter(DiskWriter):
    """datatrove writer of one JSONL shard per task (stdlib json; datatrove's own
    JsonlWriter needs orjson, which the [prepare] extra does not install).

    Args:
      folder: the output folder.
      compression: None (``.jsonl``) or "gzip" (``.jsonl.gz``).
    """

    default_output_filename = "${rank}.jsonl"
    name = "💾 JSONL shards"
    _requires_dependencies: list = []

    def __init__(self, folder: str, compression: str | None = None):
        super().__init__(folder, output_filename="${rank}.jsonl", compression=compression, mode="wb")
        self.folder = folder

    def _write(self, document: dict, file_handler, _filename: str) -> None:
        file_handler.write(_line(document))

    def _default_adapter(self, document: Document) -> dict:
        return record_of(document)


class ArrayRecordShardWriter(PipelineStep):
    """Writes task ``rank``'s documents to ``<folder>/<rank:05d>.array_record``, one
    JSON record per document, and passes them on."""

    name = "💾 array_record shards"
    type = "💽 - WRITER"

    def __init__(self, folder: str):
        super().__init__()
        self.folder = folder

    def run(self, data, rank: int = 0, world_size: int = 1):
        """Write every document of the task (the file is complete when the task ends)."""
        from array_record.python.array_record_module import ArrayRecordWriter

        os.makedirs(self.folder, exist_ok=True)
        path = os.path.join(self.folder, f"{rank:05d}.array_record")
        writer = None
        try:
            for doc in data:
                if writer is None:
                    writer = ArrayRecordWriter(path, "group_size:1")
                with self.track_time():
                    writer.write(dumps(doc)[:-1])
                self.stat_update("total")
                yield doc
        finally:
            if writer is not None:
                writer.close()


def make_writer(folder: str, output_format: str):
    """The writer step for `output_format` (one of `FORMATS`)."""
    if output_format == "jsonl":
        return JsonlShardWriter(folder)
    if output_format == "jsonl.gz":
        return JsonlShardWriter(folder, compression="gzip")
    if output_format == "array_record":
        return ArrayRecordShardWriter(folder)
    raise ConfigError(f"--config.output_format={output_format!r} is not one of {FORMATS}")
