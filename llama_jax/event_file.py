"""A minimal TensorBoard event-file writer for scalars, with no TensorFlow.

Neither TensorFlow, ``tensorboard`` nor ``tensorboardX`` is a dependency
(flax's ``flax.metrics.tensorboard`` needs TensorFlow), so this module writes
the format directly. An event file is a sequence of TFRecords::

    uint64 length | uint32 masked_crc32c(length) | data | uint32 masked_crc32c(data)

whose data are serialized ``tensorflow.Event`` protobufs. Only the fields a
scalar needs are encoded, by hand:

    Event   { double wall_time = 1; int64 step = 2; string file_version = 3;
              Summary summary = 5; }
    Summary { repeated Value value = 1; }
    Value   { string tag = 1; float simple_value = 2; }

TensorBoard reads the files (``tensorboard --logdir WORKDIR/tensorboard``).
"""

from __future__ import annotations

import os
import socket
import struct
import time
from pathlib import Path


def _crc32c_table() -> list[int]:
    poly = 0x82F63B78  # Castagnoli, reflected.
    table = []
    for i in range(256):
        crc = i
        for _ in range(8):
            crc = (crc >> 1) ^ poly if crc & 1 else crc >> 1
        table.append(crc)
    return table


_TABLE = _crc32c_table()


def crc32c(data: bytes) -> int:
    """CRC-32C (Castagnoli) of `data`, as TFRecord framing uses."""
    crc = 0xFFFFFFFF
    for b in data:
        crc = _TABLE[(crc ^ b) & 0xFF] ^ (crc >> 8)
    return crc ^ 0xFFFFFFFF


def masked_crc32c(data: bytes) -> int:
    """TFRecord's masked CRC: rotate right by 15 and add a constant."""
    crc = crc32c(data)
    return (((crc >> 15) | (crc << 17)) + 0xA282EAD8) & 0xFFFFFFFF


def _varint(n: int) -> bytes:
    if n < 0:
        n += 1 << 64  # int64 negatives are ten-byte varints.
    out = bytearray()
    while True:
        byte = n & 0x7F
        n >>= 7
        if n:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def _length_delimited(field: int, payload: bytes) -> bytes:
    return _varint(field << 3 | 2) + _varint(len(payload)) + payload


def encode_event(*, wall_time: float, step: int = 0, file_version: str | None = None,
                 scalars: dict[str, float] | None = None) -> bytes:
    """Serialize one ``Event`` protobuf (see the module docstring)."""
    out = bytearray(_varint(1 << 3 | 1) + struct.pack("<d", wall_time))
    if step:
        out += _varint(2 << 3 | 0) + _varint(int(step))
    if file_version is not None:
        out += _length_delimited(3, file_version.encode())
    if scalars:
        summary = bytearray()
        for tag, value in scalars.items():
            v = _length_delimited(1, tag.encode()) + _varint(2 << 3 | 5) + struct.pack("<f", value)
            summary += _length_delimited(1, v)
        out += _length_delimited(5, bytes(summary))
    return bytes(out)


def frame_record(data: bytes) -> bytes:
    """One TFRecord: length, its masked CRC, the data, its masked CRC."""
    length = struct.pack("<Q", len(data))
    return (length + struct.pack("<I", masked_crc32c(length)) + data
            + struct.pack("<I", masked_crc32c(data)))


def read_records(path: str | Path) -> list[bytes]:
    """The records of a TFRecord file, checking both CRCs of each."""
    data = Path(path).read_bytes()
    out, pos = [], 0
    while pos < len(data):
        length_bytes = data[pos:pos + 8]
        (length,) = struct.unpack("<Q", length_bytes)
        (crc,) = struct.unpack("<I", data[pos + 8:pos + 12])
        if crc != masked_crc32c(length_bytes):
            raise ValueError(f"{path}: bad length CRC at byte {pos}")
        record = data[pos + 12:pos + 12 + length]
        (crc,) = struct.unpack("<I", data[pos + 12 + length:pos + 16 + length])
        if crc != masked_crc32c(record):
            raise ValueError(f"{path}: bad data CRC at byte {pos}")
        out.append(record)
        pos += 16 + length
    return out


class EventFileWriter:
    """Appends scalar summaries to a new ``events.out.tfevents.*`` file in `logdir`."""

    def __init__(self, logdir: str | Path):
        self.logdir = Path(logdir)
        self.logdir.mkdir(parents=True, exist_ok=True)
        name = f"events.out.tfevents.{int(time.time())}.{socket.gethostname()}.{os.getpid()}"
        self.path = self.logdir / name
        self._file = open(self.path, "ab")  # noqa: SIM115 (closed in close()).
        self._write(encode_event(wall_time=time.time(), file_version="brain.Event:2"))

    def _write(self, event: bytes) -> None:
        self._file.write(frame_record(event))

    def scalars(self, step: int, values: dict[str, float]) -> None:
        """Write `values` (tag -> number) at `step`."""
        values = {k: float(v) for k, v in values.items()}
        if values:
            self._write(encode_event(wall_time=time.time(), step=step, scalars=values))

    def flush(self) -> None:
        self._file.flush()

    def close(self) -> None:
        if not self._file.closed:
            self._file.close()
