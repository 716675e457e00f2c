"""Random-access document sources: text files, JSONL, array_record, TFDS.

Every source is a sequence of documents (`len(src)`, `src[i] -> str`), built
from a frozen `SourceSpec` by `build_source`. Text and JSONL sources are indexed
and validated once when built; array_record and TFDS records are decoded when
read. Bad input never disappears silently: with `on_error='raise'` (default) a
`DataError` names the file and line/record; with `on_error='skip'` the bad
document is left out, counted in `source.stats` and logged. Empty documents
carry no tokens and are always skipped and counted; a source left with no
documents is an error.

Sources are split into a training view and a deterministic held-out view
(`split_heldout`, ~`heldout_fraction` of documents, evenly spread) and can be
sharded by process (`shard`). The training pipeline shards finer, by batch row
(see `llama_jax.data.mixture`).

TFDS data sets are read through `tfds.data_source` (array_record files; no
TensorFlow needed); `llama_jax.data.tfds_builder` makes one from a folder.
"""

from __future__ import annotations

import dataclasses
import glob
import json
import math
import os
from collections.abc import Mapping
from typing import Any

import numpy as np
from absl import logging

from llama_jax.data.views import IndexView, shard, split_heldout
from llama_jax.errors import DataError

__all__ = ["KINDS", "ON_ERROR", "RECORD_FORMATS", "ArrayRecordSource", "DataError", "DocumentSource", "IndexView",
           "JsonlSource", "SourceSpec", "TextFilesSource", "TfdsSource", "build_source", "shard", "source_from_arg",
           "split_heldout"]

KINDS = ("text", "jsonl", "array_record", "tfds")
ON_ERROR = ("raise", "skip")
RECORD_FORMATS = ("text", "json")



@dataclasses.dataclass(frozen=True)
class SourceSpec:
    """Where one source's documents live and how to read them.

    Attributes:
      name: short name ('github', 'books'); used in logs, metrics, seeds.
      kind: 'text' (a file, a folder (recursive) or a glob; one file = one
        document), 'jsonl' (file/folder/glob; one line = one document, text in
        `field`), 'array_record' (file/glob; one record = one document, UTF-8
        text or a JSON object, see `record_format`), or 'tfds' (a data set name
        with `data_dir`, or a built data set's version folder; text in `field`).
      path: see `kind`.
      weight: relative sampling weight in the mixture (>= 0).
      field: JSON / TFDS feature holding the text.
      split: TFDS split.
      data_dir: TFDS data dir (for a data set name).
      record_format: array_record payload: 'text' (UTF-8 bytes) or 'json'.
      on_error: 'raise' or 'skip' (counted) for undecodable documents.
      heldout_fraction: share of documents held out of training for eval.
    """

    name: str
    kind: str
    path: str
    weight: float = 1.0
    field: str = "text"
    split: str = "train"
    data_dir: str | None = None
    record_format: str = "text"
    on_error: str = "raise"
    heldout_fraction: float = 0.01

    def __post_init__(self):
        def fail(msg):
            raise DataError(f"SourceSpec {self.name!r}: {msg}")

        if not isinstance(self.name, str) or not self.name:
            raise DataError(f"SourceSpec: name must be a non-empty string, got {self.name!r}")
        if self.kind not in KINDS:
            fail(f"kind={self.kind!r} must be one of {KINDS}")
        if not isinstance(self.path, (str, os.PathLike)) or not os.fspath(self.path):
            fail("path is empty; set it to the data's location")
        object.__setattr__(self, "path", os.fspath(self.path))
        try:
            weight = float(self.weight)
        except (TypeError, ValueError):
            fail(f"weight={self.weight!r} is not a number")
        if not math.isfinite(weight) or weight < 0:
            fail(f"weight={self.weight!r} must be a finite number >= 0")
        object.__setattr__(self, "weight", weight)
        if self.on_error not in ON_ERROR:
            fail(f"on_error={self.on_error!r} must be one of {ON_ERROR}")
        if self.record_format not in RECORD_FORMATS:
            fail(f"record_format={self.record_format!r} must be one of {RECORD_FORMATS}")
        if not 0 <= float(self.heldout_fraction) < 0.5:
            fail(f"heldout_fraction={self.heldout_fraction!r} must be in [0, 0.5)")

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> SourceSpec:
        """Builds a spec from a plain dict / ConfigDict; unknown keys are an error."""
        d = dict(d)
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - names)
        if unknown:
            raise DataError(f"SourceSpec.from_dict: unknown keys {unknown}; valid keys are {sorted(names)}")
        return cls(**d)

    def to_dict(self) -> dict[str, Any]:
        """Plain-dict form (round-trips through `from_dict`)."""
        return dataclasses.asdict(self)

    def replace(self, **changes) -> SourceSpec:
        """A copy with some fields changed."""
        return dataclasses.replace(self, **changes)


def source_from_arg(arg: str, *, field: str = "text", weight: float = 1.0) -> SourceSpec:
    """A spec from a CLI string: 'KIND=PATH' or a path whose kind is inferred."""
    kind = None
    if "=" in arg and arg.split("=", 1)[0] in KINDS:
        kind, arg = arg.split("=", 1)
    elif arg.endswith((".jsonl", ".jsonl*", ".json")):
        kind = "jsonl"
    elif ".array_record" in arg:
        kind = "array_record"
    else:
        kind = "text"
    name = os.path.basename(os.path.normpath(arg.split("*")[0])) or "source"
    return SourceSpec(name=name, kind=kind, path=arg, weight=weight, field=field)


class DocumentSource:
    """Base class: a random-access sequence of document texts.

    Subclasses set `name`, `spec`, `stats` and implement `__len__`,
    `__getitem__` and `location(i)` (a human-readable place for messages).
    """

    name: str
    spec: SourceSpec

    def __init__(self, spec: SourceSpec):
        self.spec = spec
        self.name = spec.name
        self.stats = {"skipped": 0, "empty": 0, "skipped_examples": []}

    def __len__(self) -> int:
        raise NotImplementedError

    def __getitem__(self, index: int) -> str:
        raise NotImplementedError

    def location(self, index: int) -> str:
        return f"{self.name}[{index}]"

    def _skip(self, where: str, reason: str) -> None:
        self.stats["skipped"] += 1
        if len(self.stats["skipped_examples"]) < 10:
            self.stats["skipped_examples"].append(f"{where}: {reason}")

    def _finish_index(self, what: str) -> None:
        s = self.stats
        if s["skipped"]:
            logging.warning("source %r: skipped %d bad documents (on_error='skip'), e.g. %s",
                            self.name, s["skipped"], s["skipped_examples"][:3])
        if s["empty"]:
            logging.info("source %r: skipped %d empty documents", self.name, s["empty"])
        if len(self) == 0:
            raise DataError(f"source {self.name!r} ({self.spec.kind} at {self.spec.path!r}) has no documents: "
                            f"{what} ({s['empty']} empty, {s['skipped']} skipped as bad). Point it at real text.")

    def _check_index(self, index: int) -> int:
        n = len(self)
        if not -n <= index < n:
            raise IndexError(f"source {self.name!r}: document {index} out of range [0, {n})")
        return index % n

    def __repr__(self):
        return f"{type(self).__name__}(name={self.name!r}, docs={len(self)}, path={self.spec.path!r})"


def _expand_paths(spec: SourceSpec, suffix: str | None = None) -> list[str]:
    """Files named by a file path, a folder (recursive, no hidden files) or a glob; sorted."""
    path = os.path.expanduser(spec.path)
    if any(ch in path for ch in "*?["):
        files = [p for p in glob.glob(path, recursive=True) if os.path.isfile(p)]
        if not files:
            raise DataError(f"source {spec.name!r}: no files match {spec.path!r}; check the pattern")
    elif os.path.isdir(path):
        files = []
        for root, dirs, names in os.walk(path):
            dirs[:] = sorted(d for d in dirs if not d.startswith("."))
            files += [os.path.join(root, n) for n in names
                      if not n.startswith(".") and (suffix is None or n.endswith(suffix))]
        if not files:
            raise DataError(f"source {spec.name!r}: folder {spec.path!r} holds no "
                            f"{'*' + suffix + ' ' if suffix else ''}files")
    elif os.path.isfile(path):
        files = [path]
    else:
        raise DataError(f"source {spec.name!r} ({spec.kind}): path {spec.path!r} does not exist")
    return sorted(files)


def _decode_utf8(data: bytes, where: str) -> str:
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise DataError(f"{where}: bytes {e.start}..{e.end} are not valid UTF-8 ({e.reason}); re-encode the "
                        "file as UTF-8 or set on_error='skip' to skip such documents (they are counted)") from None


class TextFilesSource(DocumentSource):
    """One document per file: a file, a folder (recursive) or a glob of UTF-8 text files."""

    def __init__(self, spec: SourceSpec):
        super().__init__(spec)
        files = []
        for path in _expand_paths(spec):
            with open(path, "rb") as f:
                data = f.read()
            try:
                text = _decode_utf8(data, f"source {spec.name!r}: file {path}")
            except DataError as e:
                if spec.on_error == "raise":
                    raise
                self._skip(path, str(e))
                continue
            if not text.strip():
                self.stats["empty"] += 1
                continue
            files.append(path)
        self.files = files
        self._finish_index(f"{len(files)} readable non-empty files under {spec.path!r}")

    def __len__(self):
        return len(self.files)

    def location(self, index):
        return f"source {self.name!r}: file {self.files[index]}"

    def __getitem__(self, index):
        path = self.files[self._check_index(index)]
        with open(path, "rb") as f:
            return _decode_utf8(f.read(), self.location(index))


class JsonlSource(DocumentSource):
    """One document per line of JSONL files; the text is the string in `spec.field`.

    Built by one validating scan that records each line's byte offset.
    """

    def __init__(self, spec: SourceSpec):
        super().__init__(spec)
        self.files = _expand_paths(spec, suffix=None)
        file_ids, offsets, lengths, line_nos = [], [], [], []
        for fid, path in enumerate(self.files):
            with open(path, "rb") as f:
                offset = 0
                for line_no, raw in enumerate(f, start=1):
                    where = f"source {spec.name!r}: {path} line {line_no}"
                    n = len(raw)
                    try:
                        text = self._parse(raw, where)
                    except DataError as e:
                        if spec.on_error == "raise":
                            raise
                        self._skip(f"{path}:{line_no}", str(e))
                        text = None
                    if text is not None and text.strip():
                        file_ids.append(fid)
                        offsets.append(offset)
                        lengths.append(n)
                        line_nos.append(line_no)
                    elif text is not None:
                        self.stats["empty"] += 1
                    offset += n
        self._file_ids = np.asarray(file_ids, np.int32)
        self._offsets = np.asarray(offsets, np.int64)
        self._lengths = np.asarray(lengths, np.int64)
        self._line_nos = np.asarray(line_nos, np.int64)
        self._finish_index(f"{len(self.files)} file(s) with no usable lines")

    def _parse(self, raw: bytes, where: str) -> str | None:
        if not raw.strip():
            return ""  # a blank line: counted as an empty document
        line = _decode_utf8(raw, where)
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as e:
            raise DataError(f"{where} is not valid JSON ({e.msg} at column {e.colno}); fix the line or set "
                            "on_error='skip' to skip such lines (they are counted)") from None
        if not isinstance(obj, dict) or self.spec.field not in obj:
            keys = sorted(obj) if isinstance(obj, dict) else type(obj).__name__
            raise DataError(f"{where} has no field {self.spec.field!r} (found {keys}); set the source's "
                            "`field` to the key that holds the text")
        text = obj[self.spec.field]
        if not isinstance(text, str):
            raise DataError(f"{where}: field {self.spec.field!r} is {type(text).__name__}, not a string")
        return text

    def __len__(self):
        return len(self._offsets)

    def location(self, index):
        return f"source {self.name!r}: {self.files[self._file_ids[index]]} line {self._line_nos[index]}"

    def __getitem__(self, index):
        index = self._check_index(index)
        with open(self.files[self._file_ids[index]], "rb") as f:
            f.seek(int(self._offsets[index]))
            raw = f.read(int(self._lengths[index]))
        return self._parse(raw, self.location(index))


class _RecordSource(DocumentSource):
    """Shared decoding for record-based sources (bytes or JSON payloads)."""

    def _text_of(self, payload: Any, index: int) -> str:
        where = self.location(index)
        if isinstance(payload, Mapping):
            if self.spec.field not in payload:
                raise DataError(f"{where} has no feature {self.spec.field!r} (found {sorted(payload)}); "
                                "set the source's `field`")
            payload = payload[self.spec.field]
        if isinstance(payload, np.ndarray):
            payload = payload.item() if payload.shape == () else payload.tobytes()
        if isinstance(payload, bytes):
            payload = _decode_utf8(payload, where)
        if not isinstance(payload, str):
            raise DataError(f"{where}: expected text, got {type(payload).__name__}")
        return payload


class ArrayRecordSource(_RecordSource):
    """One document per array_record record: UTF-8 text, or a JSON object (`record_format='json'`)."""

    def __init__(self, spec: SourceSpec):
        super().__init__(spec)
        self.files = _expand_paths(spec)
        self._reader = None
        self._len = len(self._open())
        if self._len == 0:
            self._finish_index(f"{len(self.files)} array_record file(s) with 0 records")

    def _open(self):
        if self._reader is None:
            from array_record.python.array_record_data_source import ArrayRecordDataSource
            self._reader = ArrayRecordDataSource(self.files)
        return self._reader

    def __getstate__(self):
        state = dict(self.__dict__)
        state["_reader"] = None  # reopened lazily in the new process
        return state

    def __len__(self):
        return self._len

    def location(self, index):
        return f"source {self.name!r}: array_record {self.spec.path} record {index}"

    def __getitem__(self, index):
        index = self._check_index(index)
        raw = self._open()[index]
        if self.spec.record_format == "json":
            try:
                raw = json.loads(_decode_utf8(raw, self.location(index)))
            except json.JSONDecodeError as e:
                raise DataError(f"{self.location(index)} is not valid JSON ({e.msg})") from None
        return self._text_of(raw, index)


class TfdsSource(_RecordSource):
    """A TFDS data set in array_record format, through `tfds.data_source` (no TensorFlow).

    `spec.path` is either a built data set folder (holding `dataset_info.json`)
    or a data set name (optionally 'name:version') looked up in `spec.data_dir`.
    """

    def __init__(self, spec: SourceSpec):
        super().__init__(spec)
        self._ds = None
        self._len = len(self._open())
        if self._len == 0:
            self._finish_index(f"TFDS split {spec.split!r} is empty")

    def _open(self):
        if self._ds is None:
            import tensorflow_datasets as tfds

            spec = self.spec
            path = os.path.expanduser(spec.path)
            try:
                if os.path.isdir(path):
                    if not os.path.exists(os.path.join(path, "dataset_info.json")):
                        raise DataError(f"source {spec.name!r}: {spec.path!r} is not a built TFDS data set "
                                        "(no dataset_info.json); pass the version folder, e.g. .../name/1.0.0")
                    self._ds = tfds.builder_from_directory(path).as_data_source(split=spec.split)
                else:
                    self._ds = tfds.data_source(spec.path, split=spec.split, data_dir=spec.data_dir,
                                                download=False)
            except DataError:
                raise
            except Exception as e:  # tfds raises many types (DatasetNotFoundError, AssertionError, ...)
                raise DataError(f"source {spec.name!r}: cannot open TFDS data set {spec.path!r} split "
                                f"{spec.split!r} (data_dir={spec.data_dir!r}): {type(e).__name__}: {e}. Build "
                                "it first (array_record format), e.g. with llama_jax.data.tfds_builder") from e
        return self._ds

    def __getstate__(self):
        state = dict(self.__dict__)
        state["_ds"] = None
        return state

    def __len__(self):
        return self._len

    def location(self, index):
        return f"source {self.name!r}: TFDS {self.spec.path}[{self.spec.split}] record {index}"

    def __getitem__(self, index):
        index = self._check_index(index)
        return self._text_of(self._open()[index], index)


_SOURCE_CLASSES = {"text": TextFilesSource, "jsonl": JsonlSource, "array_record": ArrayRecordSource,
                   "tfds": TfdsSource}


def build_source(spec: SourceSpec | Mapping[str, Any]) -> DocumentSource:
    """The document source a spec (or its dict form) describes."""
    if not isinstance(spec, SourceSpec):
        spec = SourceSpec.from_dict(spec)
    return _SOURCE_CLASSES[spec.kind](spec)
