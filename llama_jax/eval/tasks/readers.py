"""Reading evaluation data sets from local files in their published formats.

JSON Lines (optionally gzipped), JSON (a list, or an object holding the list
under a key such as "Data"), Parquet (needs pyarrow), CSV/TSV, and
one-label-per-line ``.lst`` files. Every failure a user can cause (missing
file, bad JSON, missing field, a file with no records) raises `DataError`
naming the file and the expected format.

Where a task accepts the Hugging Face Parquet export of a split
(``<split>*.parquet``), it also accepts that split of a TFDS data set in
array_record format under the task's folder (``<task>/[<name>/[<config>/]<version>/]``,
e.g. built with ``tfds.data_source``/``builder.download_and_prepare(file_format=
'array_record')``) whose records have the same fields; it is read with
`tfds.builder_from_directory(...).as_data_source(split)`, without TensorFlow.
"""

from __future__ import annotations

import csv
import glob
import gzip
import json
import os
import re
from collections.abc import Sequence
from typing import Any

from llama_jax.errors import DataError

# "validation*.parquet" -> split "validation" (the HF export's split name).
_PARQUET_SPLIT = re.compile(r"^(?P<split>[a-z_]+)\*\.parquet$")
# A TFDS array_record shard: "<name>-<split>.array_record-00000-of-00001".
_TFDS_SHARD = re.compile(r"^[^-]+-(?P<split>.+)\.array_record-\d{5}-of-\d{5}$")


def _tfds_shard(root: str, split: str) -> str | None:
    """The first shard of split `split` of a TFDS data set at most three folders
    below `root` (``<name>/<config>/<version>/``), or None."""
    for depth in range(4):
        pattern = os.path.join(root, *(["*"] * depth), f"*-{split}.array_record-00000-of-*")
        hits = [h for h in sorted(glob.glob(pattern))
                if os.path.isfile(os.path.join(os.path.dirname(h), "dataset_info.json"))]
        if hits:
            return hits[-1]  # the highest version when several are there
    return None


def hf_split(split: str) -> list[str]:
    """Patterns of split `split` of a Hugging Face ``datasets`` export, in
    preference order: ``<split>.jsonl`` (``Dataset.to_json``), its gzip, sharded
    JSON Lines, and ``<split>*.parquet`` (the Hub's ``<split>-00000-of-00001.parquet``;
    this last pattern also finds a TFDS array_record split, see `find_file`)."""
    return [f"{split}.jsonl", f"{split}.jsonl.gz", f"{split}-*.jsonl", f"{split}*.parquet"]


def find_file(data_dir: str, task: str, patterns: Sequence[str], expected: str,
              required: bool = True) -> str | None:
    """The first file under ``data_dir/task`` matching one of `patterns`.

    A ``<split>*.parquet`` pattern also matches split `<split>` of a TFDS
    array_record data set under ``data_dir/task`` (see the module docstring);
    the result is then the path of its first shard, which `read_records` reads.

    Args:
      data_dir: the --data_dir root.
      task: sub-directory (the task name).
      patterns: glob patterns relative to ``data_dir/task``, in preference order.
      expected: a description of the expected format (goes in the error).
      required: raise `DataError` when nothing matches (else return None).
    """
    root = os.path.join(data_dir, task)
    splits = []
    for pattern in patterns:
        hits = sorted(glob.glob(os.path.join(root, pattern)))
        if hits:
            return hits[0]
        split = _PARQUET_SPLIT.match(pattern)
        if split:
            splits.append(split["split"])
            shard = _tfds_shard(root, split["split"])
            if shard:
                return shard
    if not required:
        return None
    names = ", ".join(os.path.join(root, p) for p in patterns)
    tfds_note = (f" (or a TFDS array_record data set with split {' / '.join(splits)})"
                 if splits else "")
    raise DataError(f"{task}: no data file found; looked for {names}{tfds_note}. Expected "
                    f"{expected}. Put the data set's published file under {root}/ (nothing is "
                    "downloaded at run time).")


def find_files(data_dir: str, task: str, patterns: Sequence[str], expected: str) -> list[str]:
    """All files under ``data_dir/task`` matching the first pattern that matches."""
    root = os.path.join(data_dir, task)
    for pattern in patterns:
        hits = sorted(glob.glob(os.path.join(root, pattern)))
        if hits:
            return hits
    names = ", ".join(os.path.join(root, p) for p in patterns)
    raise DataError(f"{task}: no data files found; looked for {names}. Expected {expected}.")


def _not_empty(records: list[Any], path: str, expected: str) -> list[Any]:
    """`records`, or a `DataError` naming `path` when it holds none (an empty file
    would otherwise score 0.0 on n=0 examples)."""
    if not records:
        raise DataError(f"{path}: holds no records (empty file); expected {expected}. Put the "
                        "data set's published file there")
    return records


def _open_text(path: str):
    if path.endswith(".gz"):
        return gzip.open(path, "rt", encoding="utf-8")
    return open(path, encoding="utf-8")


def read_jsonl(path: str, expected: str) -> list[dict[str, Any]]:
    """Records of a JSON Lines file (``.jsonl`` or ``.jsonl.gz``)."""
    records = []
    try:
        with _open_text(path) as f:
            for lineno, line in enumerate(f, 1):
                if not line.strip():
                    continue
                try:
                    rec = json.loads(line)
                except json.JSONDecodeError as e:
                    raise DataError(f"{path}:{lineno}: not valid JSON ({e.msg}); expected "
                                    f"{expected}") from None
                if not isinstance(rec, dict):
                    raise DataError(f"{path}:{lineno}: expected a JSON object per line; "
                                    f"expected {expected}")
                records.append(rec)
    except UnicodeDecodeError as e:
        raise DataError(f"{path}: not UTF-8 text ({e}); expected {expected}") from None
    except (OSError, EOFError) as e:
        raise DataError(f"{path}: cannot read ({e}); expected {expected}") from None
    return _not_empty(records, path, expected)


def read_json(path: str, expected: str, list_keys: Sequence[str] = ("Data", "data")):
    """A JSON file: a list of records, or an object with the list under `list_keys`."""
    try:
        with _open_text(path) as f:
            obj = json.load(f)
    except json.JSONDecodeError as e:
        raise DataError(f"{path}: not valid JSON (line {e.lineno}: {e.msg}); expected "
                        f"{expected}") from None
    except (OSError, UnicodeDecodeError) as e:
        raise DataError(f"{path}: cannot read ({e}); expected {expected}") from None
    if isinstance(obj, dict):
        for key in list_keys:
            if isinstance(obj.get(key), list):
                return _not_empty(obj[key], path, expected)
        return obj
    return _not_empty(obj, path, expected) if isinstance(obj, list) else obj


def read_parquet(path: str, expected: str) -> list[dict[str, Any]]:
    """Rows of a Parquet file as dicts (needs pyarrow)."""
    try:
        import pyarrow.parquet as pq
    except ImportError:
        raise DataError(f"{path}: reading Parquet needs pyarrow, which is not installed; "
                        f"`pip install pyarrow`, or provide the data as {expected}") from None
    try:
        return pq.read_table(path).to_pylist()
    except Exception as e:  # pyarrow raises several error types for bad files
        raise DataError(f"{path}: not a readable Parquet file ({e}); expected "
                        f"{expected}") from None


def _plain(value: Any) -> Any:
    """A TFDS example value as JSON-like Python: bytes -> str, numpy -> lists/scalars."""
    import numpy as np

    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, np.ndarray):
        return [_plain(v) for v in value.tolist()]
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, np.generic):
        return _plain(value.item())
    if isinstance(value, bytes):
        return value.decode("utf-8")
    return value


def read_tfds(path: str, expected: str) -> list[dict[str, Any]]:
    """Records of the split that shard `path` belongs to, of the TFDS data set in
    its folder (array_record format; read without TensorFlow)."""
    folder, name = os.path.split(path)
    match = _TFDS_SHARD.match(name)
    if not match:
        raise DataError(f"{path}: not a TFDS array_record shard; expected {expected}")
    split = match["split"]
    try:
        import tensorflow_datasets as tfds
    except ImportError:
        raise DataError(f"{folder}: reading a TFDS data set needs tensorflow-datasets; "
                        f"`pip install tensorflow-datasets`, or provide {expected}") from None
    try:
        source = tfds.builder_from_directory(folder).as_data_source(split=split)
        examples = [source[i] for i in range(len(source))]
    except Exception as e:  # tfds raises many types for a bad or partial data set
        raise DataError(f"{folder}: cannot read split {split!r} of this TFDS data set "
                        f"({type(e).__name__}: {e}); expected an array_record data set of "
                        f"{expected}") from None
    try:
        return [_plain(x) for x in examples]
    except UnicodeDecodeError as e:
        raise DataError(f"{folder}: split {split!r} has a text field that is not UTF-8 "
                        f"({e}); expected {expected}") from None


def read_records(path: str, expected: str) -> list[dict[str, Any]]:
    """Records of a .jsonl/.jsonl.gz, .json or .parquet file, or of a TFDS split
    (`path` one of its array_record shards, as `find_file` returns)."""
    if _TFDS_SHARD.match(os.path.basename(path)):
        return _not_empty(read_tfds(path, expected), path, expected)
    if path.endswith((".jsonl", ".jsonl.gz")):
        return read_jsonl(path, expected)
    if path.endswith((".json", ".json.gz")):
        recs = read_json(path, expected)
        if not isinstance(recs, list) or not all(isinstance(r, dict) for r in recs):
            raise DataError(f"{path}: expected a list of JSON objects; expected {expected}")
        return _not_empty(recs, path, expected)
    if path.endswith(".parquet"):
        return _not_empty(read_parquet(path, expected), path, expected)
    raise DataError(f"{path}: unsupported file type; expected {expected}")


def read_csv(path: str, expected: str, delimiter: str = ",", columns: int | None = None):
    """Rows (lists of strings) of a header-less CSV/TSV file."""
    try:
        with open(path, encoding="utf-8", newline="") as f:
            rows = [r for r in csv.reader(f, delimiter=delimiter) if r]
    except (OSError, UnicodeDecodeError, csv.Error) as e:
        raise DataError(f"{path}: cannot read as CSV ({e}); expected {expected}") from None
    _not_empty(rows, path, expected)
    if columns is not None:
        for i, r in enumerate(rows, 1):
            if len(r) != columns:
                raise DataError(f"{path}: row {i} has {len(r)} columns, expected {columns}: "
                                f"{expected}")
    return rows


def read_labels(path: str, n: int, expected: str) -> list[str]:
    """A ``.lst`` labels file: one label per line, `n` lines."""
    try:
        with open(path, encoding="utf-8") as f:
            labels = [line.strip() for line in f if line.strip()]
    except (OSError, UnicodeDecodeError) as e:
        raise DataError(f"{path}: cannot read labels ({e}); expected {expected}") from None
    if len(labels) != n:
        raise DataError(f"{path}: has {len(labels)} labels but the data file has {n} "
                        f"records; expected {expected}")
    return labels


def get_field(rec: dict[str, Any], path: str, index: int, source: str, expected: str):
    """``rec[a][b]`` for a dotted `path` "a.b", or a `DataError` naming it."""
    value: Any = rec
    for part in path.split("."):
        if not isinstance(value, dict) or part not in value:
            raise DataError(f"{source}: record {index} has no field {path!r}; expected "
                            f"{expected}")
        value = value[part]
    return value


def require(cond: bool, source: str, index: int, what: str, expected: str) -> None:
    """Raise a `DataError` about record `index` of `source` unless `cond`."""
    if not cond:
        raise DataError(f"{source}: record {index}: {what}; expected {expected}")
