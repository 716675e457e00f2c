"""Safetensors files read block by block and written tensor by tensor.

The format (https://huggingface.co/docs/safetensors): an 8-byte little-endian
header length ``N``, ``N`` bytes of JSON naming every tensor's dtype, shape
and ``data_offsets`` (byte range after the header), then the raw C-order
bytes. `SafetensorsBlocks` reads only the headers up front; `block(name,
index)` copies one rectangular block of one tensor out of a memory map that
is dropped again at once, so a process touches only the bytes of the shards
it asks for and never keeps a file mapped (its resident set stays small).
`StreamedWriter` writes a file's header first (shapes and dtypes are known
before any data) and then each tensor's bytes as they come, so a sharded
save holds one tensor on the host at a time.

Every block read is counted in `READ_STATS` (bytes and blocks per process),
which the mesh loader logs and the tests check.
"""

from __future__ import annotations

import dataclasses
import json
import math
import struct
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import ml_dtypes
import numpy as np

from llama_jax.errors import ConversionError

DTYPES: dict[str, np.dtype] = {
    "F64": np.dtype(np.float64), "F32": np.dtype(np.float32), "F16": np.dtype(np.float16),
    "BF16": np.dtype(ml_dtypes.bfloat16), "I64": np.dtype(np.int64),
    "I32": np.dtype(np.int32), "I16": np.dtype(np.int16), "I8": np.dtype(np.int8),
    "U8": np.dtype(np.uint8), "BOOL": np.dtype(np.bool_),
}
CODES = {v.name: k for k, v in DTYPES.items()}
_MAX_HEADER = 100_000_000  # safetensors' own limit


@dataclasses.dataclass
class ReadStats:
    """Bytes and blocks this process copied out of checkpoint files."""

    bytes: int = 0
    blocks: int = 0

    def reset(self) -> None:
        """Start counting from zero."""
        self.bytes = self.blocks = 0


READ_STATS = ReadStats()


@dataclasses.dataclass(frozen=True)
class TensorInfo:
    """Where one tensor lives: file, dtype, shape and absolute byte offset."""

    file: Path
    dtype: np.dtype
    shape: tuple[int, ...]
    offset: int


def read_header(file: Path) -> dict[str, TensorInfo]:
    """Name -> `TensorInfo` from a .safetensors header (no tensor data is read)."""
    try:
        with open(file, "rb") as f:
            raw = f.read(8)
            if len(raw) != 8:
                raise ValueError("shorter than the 8-byte header length")
            (n,) = struct.unpack("<Q", raw)
            if n > _MAX_HEADER:
                raise ValueError(f"header length {n} is implausible")
            header = json.loads(f.read(n))
        size = file.stat().st_size
    except (OSError, ValueError) as e:  # JSONDecodeError is a ValueError
        raise ConversionError(f"{file}: not a readable safetensors file ({e})") from e
    out = {}
    for name, info in header.items():
        if name == "__metadata__":
            continue
        try:
            dtype = DTYPES[info["dtype"]]
            shape = tuple(int(s) for s in info["shape"])
            start, end = (int(o) for o in info["data_offsets"])
        except (KeyError, TypeError, ValueError) as e:
            raise ConversionError(f"{file}: tensor {name!r} has a bad header entry {info} "
                                  f"(dtype one of {sorted(DTYPES)}, shape, data_offsets)") from e
        if end - start != math.prod(shape) * dtype.itemsize or 8 + n + end > size:
            raise ConversionError(f"{file}: tensor {name!r} ({info['dtype']} {list(shape)}) "
                                  f"has data_offsets {[start, end]} that do not match its size "
                                  f"or lie past the end of the file ({size} bytes); the file "
                                  "is truncated or corrupt")
        out[name] = TensorInfo(file, dtype, shape, 8 + n + start)
    return out


class SafetensorsBlocks:
    """The tensors of several .safetensors files, read one block at a time.

    `shapes`, `dtypes` and `file_of` come from the headers. `block(name,
    index)` returns a copy of ``tensor[index]`` for a tuple of step-1 slices.
    """

    def __init__(self, files: Sequence[Path]):
        self.info: dict[str, TensorInfo] = {}
        for file in files:
            self.info.update(read_header(Path(file)))
        self.shapes = {n: i.shape for n, i in self.info.items()}
        self.dtypes = {n: i.dtype for n, i in self.info.items()}
        self.file_of = {n: i.file for n, i in self.info.items()}

    def block(self, name: str, index: tuple[slice, ...]) -> np.ndarray:
        """A C-order copy of ``tensor[index]`` (slices only), counted in `READ_STATS`."""
        info = self.info[name]
        if not info.shape:  # a scalar
            index = ()
        mm = np.memmap(info.file, dtype=info.dtype, mode="r", offset=info.offset,
                       shape=info.shape or (1,))
        out = np.array(mm[index] if info.shape else mm[0], order="C")
        del mm  # unmapped now: the pages leave this process's resident set
        READ_STATS.bytes += out.nbytes
        READ_STATS.blocks += 1
        return out


def _header_bytes(entries: Sequence[tuple[str, str, tuple[int, ...]]],
                  metadata: dict[str, str] | None) -> tuple[bytes, list[int]]:
    header: dict[str, Any] = {}
    if metadata:
        header["__metadata__"] = metadata
    offset, sizes = 0, []
    for name, dtype_name, shape in entries:
        nbytes = math.prod(shape) * DTYPES[CODES[dtype_name]].itemsize
        header[name] = {"dtype": CODES[dtype_name], "shape": list(shape),
                        "data_offsets": [offset, offset + nbytes]}
        offset += nbytes
        sizes.append(nbytes)
    raw = json.dumps(header, separators=(",", ":")).encode("utf-8")
    raw += b" " * (-len(raw) % 8)  # pad as safetensors does (8-byte aligned data)
    return struct.pack("<Q", len(raw)) + raw, sizes


class StreamedWriter:
    """Writes one .safetensors file whose tensors arrive one at a time, in order.

    Args:
      file: the file to create.
      entries: (name, numpy dtype name, shape) of every tensor, in write order.
      metadata: the header's ``__metadata__`` (e.g. ``{"format": "pt"}``).
    """

    def __init__(self, file: Path, entries: Sequence[tuple[str, str, tuple[int, ...]]],
                 metadata: dict[str, str] | None = None):
        self.file = Path(file)
        header, sizes = _header_bytes(entries, metadata)
        self._expected = [(n, d, tuple(s), b) for (n, d, s), b in zip(entries, sizes, strict=True)]
        self._next = 0
        self._f = open(self.file, "wb")  # noqa: SIM115 - closed in close()
        self._f.write(header)

    def write(self, name: str, array: np.ndarray) -> None:
        """Append tensor `name` (it must be the next one the header announced)."""
        want = self._expected[self._next]
        got = (name, np.dtype(array.dtype).name, tuple(array.shape))
        if got != want[:3]:
            raise ConversionError(f"{self.file}: expected tensor {want[:3]} next, got {got}")
        self._f.write(np.ascontiguousarray(array).tobytes())
        self._next += 1

    def close(self) -> None:
        """Close the file; every announced tensor must have been written."""
        self._f.close()
        if self._next != len(self._expected):
            missing = [e[0] for e in self._expected[self._next:]]
            raise ConversionError(f"{self.file}: closed before tensors {missing[:4]} were "
                                  "written")
