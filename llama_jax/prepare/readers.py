"""Reading the pipeline's input: JSONL documents, with every bad record counted.

`expand_input` turns ``--config.input`` (comma-separated globs) into a sorted
file list before any executor starts (an empty match is a `ConfigError`).
`JsonlDocReader` is a datatrove reader of those files (``.jsonl``, or
``.jsonl.gz`` / ``.gz``) that never crashes mid-shard and never drops a record
silently: a corrupt gzip stream, bytes that are not UTF-8, a line that is not
JSON, a record that is not an object or has no string ``text`` -- each is a
skip counted as ``skipped_<reason>`` in the task's stats (and so in
``stats.json``) and logged with its file and line. `ShardReader` reads the
per-task shards the pipeline writes between segments, task ``r`` reading shard
``r``, so that a shard's documents stay in their task and order.
"""

from __future__ import annotations

import glob
import gzip
import importlib
import json
import os
import zlib
from collections.abc import Iterator, Sequence

from datatrove.data import Document
from datatrove.pipeline.readers.base import BaseDiskReader
from datatrove.utils.logging import logger

from llama_jax.errors import ConfigError

# Skip reasons (the stats key is "skipped_<reason>").
CORRUPT_GZIP = "corrupt_gzip"
NOT_UTF8 = "not_utf8"
NOT_JSON = "not_json"
NOT_AN_OBJECT = "not_an_object"
NO_TEXT_FIELD = "no_text_field"
TEXT_NOT_STRING = "text_not_string"
EMPTY_TEXT = "empty_text"
SKIP_REASONS = (CORRUPT_GZIP, NOT_UTF8, NOT_JSON, NOT_AN_OBJECT, NO_TEXT_FIELD, TEXT_NOT_STRING,
                EMPTY_TEXT)


# --config.input_format -> "module:callable" taking the input file list and returning
# a datatrove reader step (a source with its own format registers it here).
READERS: dict[str, str] = {
    "jsonl": "llama_jax.prepare.readers:JsonlDocReader",
    "tex": "llama_jax.prepare.arxiv:TexFileReader",  # one document per .tex file
    "stackexchange_xml": "llama_jax.prepare.stackexchange:StackExchangeXmlReader",  # Posts.xml
    "wikipedia_xml": "llama_jax.prepare.wikipedia:WikipediaDumpReader",  # pages-articles dumps
}


def make_reader(input_format: str, files: Sequence[str]):
    """The reader step of `input_format` (a `READERS` key) over `files`."""
    if input_format not in READERS:
        raise ConfigError(f"--config.input_format={input_format!r} is not one of "
                          f"{', '.join(sorted(READERS))}")
    module, name = READERS[input_format].split(":")
    return getattr(importlib.import_module(module), name)(files)


def expand_input(patterns: str, flag: str = "config.input") -> list[str]:
    """The sorted, de-duplicated absolute paths matched by comma-separated globs.

    A folder stands for the files under it (recursive, no hidden ones). An
    empty `patterns`, or one pattern matching no file, is a `ConfigError`
    naming `--<flag>` and the fix.
    """
    parts = [p.strip() for p in str(patterns).split(",") if p.strip()]
    if not parts:
        raise ConfigError(f"--{flag} is empty; give the input JSONL files as a glob, "
                          f"e.g. --{flag}='/data/cc/*.jsonl.gz' (comma-separate several)")
    files: set[str] = set()
    for part in parts:
        path = os.path.expanduser(part)
        if os.path.isdir(path):
            found = [os.path.join(root, n) for root, dirs, names in os.walk(path)
                     for n in names if not n.startswith(".")]
        else:
            found = [p for p in glob.glob(path, recursive=True) if os.path.isfile(p)]
        if not found:
            raise ConfigError(f"--{flag}: {part!r} matches no file; check the path or the glob "
                              "(quote it so the shell does not expand it)")
        files.update(os.path.abspath(p) for p in found)
    return sorted(files)


def _lines(path: str) -> Iterator[bytes | Exception]:
    """The raw lines of `path` (gunzipped when it is gzip), then an exception if the
    stream breaks (a corrupt or truncated gzip file): the lines before it still count."""
    with open(path, "rb") as f:
        is_gzip = f.read(2) == b"\x1f\x8b"
    opener = gzip.open if is_gzip else open
    try:
        with opener(path, "rb") as f:
            yield from f
    except (OSError, EOFError, zlib.error) as e:  # gzip.BadGzipFile is an OSError
        yield e


class FileListReader(BaseDiskReader):
    """A datatrove reader of an explicit list of files (subclasses implement ``read_file``).

    Task ``rank`` of ``world_size`` reads ``files[rank::world_size]`` (datatrove's
    own sharding rule); `root` is the files' common folder.
    """

    _requires_dependencies: list = []

    def __init__(self, files: Sequence[str], **kwargs):
        self.files = [os.path.abspath(f) for f in files]
        root = os.path.commonpath(self.files) if self.files else "/"
        root = root if os.path.isdir(root) else os.path.dirname(root)
        super().__init__(root, add_file_path=False, **kwargs)
        self.root = root

    def run(self, data=None, rank: int = 0, world_size: int = 1):
        """Read this task's files (``files[rank::world_size]``)."""
        if data:
            yield from data
        for doc in self.read_files_shard(self.files[rank::world_size]):
            self.update_doc_stats(doc)
            yield doc


class JsonlDocReader(FileListReader):
    """A datatrove reader of explicit JSONL files; bad records are counted skips.

    Task ``rank`` of ``world_size`` reads ``files[rank::world_size]`` (datatrove's
    own sharding rule). Each document's id is ``<file>/<line index>`` and its
    metadata holds the record's other fields and ``file_path``.

    Args:
      files: absolute input paths (see `expand_input`).
      text_key: the field holding the text.
    """

    name = "📖 JSONL (counted skips)"

    def __init__(self, files: Sequence[str], text_key: str = "text"):
        super().__init__(files, text_key=text_key)

    def count_skip(self, reason: str, where: str, detail: str = "") -> None:
        """Count one skipped record under ``skipped_<reason>`` and log where it was."""
        self.stat_update(f"skipped_{reason}")
        logger.warning(f"skipped {where}: {reason}{' (' + detail + ')' if detail else ''}")

    def parse(self, raw: bytes, path: str, index: int) -> Document | None:
        """The document in one raw line, or None after counting why it was skipped."""
        where = f"{path} line {index + 1}"
        if not raw.strip():
            return None  # a blank line is not a record
        try:
            line = raw.decode("utf-8")
        except UnicodeDecodeError as e:
            self.count_skip(NOT_UTF8, where, f"bytes {e.start}..{e.end}: {e.reason}")
            return None
        try:
            record = json.loads(line)
        except json.JSONDecodeError as e:
            self.count_skip(NOT_JSON, where, f"{e.msg} at column {e.colno}")
            return None
        if not isinstance(record, dict):
            self.count_skip(NOT_AN_OBJECT, where, type(record).__name__)
            return None
        if self.text_key not in record:
            self.count_skip(NO_TEXT_FIELD, where, f"no {self.text_key!r}; keys {sorted(record)[:8]}")
            return None
        text = record.pop(self.text_key)
        if not isinstance(text, str):
            self.count_skip(TEXT_NOT_STRING, where, type(text).__name__)
            return None
        if not text.strip():
            self.count_skip(EMPTY_TEXT, where)
            return None
        doc_id = record.pop(self.id_key, None)
        metadata = record.pop("metadata", None)
        metadata = dict(metadata) if isinstance(metadata, dict) else {}
        metadata.update(record)
        metadata.setdefault("file_path", path)
        return Document(text=text, id=str(doc_id) if doc_id is not None else f"{path}/{index}",
                        metadata=metadata)

    def read_file(self, filepath: str) -> Iterator[Document]:
        """The documents of one input file (absolute path), skips counted."""
        path = filepath if os.path.isabs(filepath) else os.path.join(self.root, filepath)
        index = 0
        for raw in _lines(path):
            if isinstance(raw, Exception):
                self.count_skip(CORRUPT_GZIP, f"{path} after line {index}",
                          f"{type(raw).__name__}: {raw}; the lines before it were read")
                return
            with self.track_time():
                doc = self.parse(raw, path, index)
            index += 1
            if doc is not None:
                yield doc

class ShardReader(JsonlDocReader):
    """Reads shard ``<folder>/<rank:05d>.jsonl.gz`` in task ``rank`` (the pipeline's
    intermediate documents); a task whose shard is absent (no document survived)
    reads nothing."""

    name = "📖 intermediate shard"

    def __init__(self, folder: str, suffix: str = ".jsonl.gz"):
        super().__init__([], text_key="text")
        self.folder = folder
        self.suffix = suffix

    def parse(self, raw: bytes, path: str, index: int) -> Document | None:
        """A shard line as our writer wrote it: text, id and metadata kept as they were."""
        record = json.loads(raw)
        return Document(text=record["text"], id=record["id"], metadata=record.get("metadata", {}))

    def run(self, data=None, rank: int = 0, world_size: int = 1):
        """Read this task's shard, if it exists."""
        if data:
            yield from data
        path = os.path.join(self.folder, f"{rank:05d}{self.suffix}")
        if os.path.isfile(path):
            for doc in self.read_files_shard([path]):
                self.update_doc_stats(doc)
                yield doc
