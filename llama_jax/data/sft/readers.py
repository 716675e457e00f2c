"""Instruction data in the shapes people have, read from JSONL as conversations.

One JSON object per line, in one of three formats:

- ``alpaca``: ``{"instruction", "input" (optional), "output"}`` (Stanford
  Alpaca), as `llama_jax.chat.alpaca_messages` turns it into messages;
- ``flan``: ``{"inputs", "targets"}`` (FLAN / Chung et al. 2022): one user
  turn and one assistant turn;
- ``chat``: ``{"messages": [{"role", "content"}, ...]}`` with ``system``,
  ``user`` and ``assistant`` turns, at least one of them an assistant's.

A bad line (not JSON, its format's fields missing or not strings, an unknown
role, no assistant turn) raises a `DataError` naming the file and line, or
with ``on_error='skip'`` is skipped and counted by reason (`ReadStats`).
"""

from __future__ import annotations

import collections
import dataclasses
import json
import os
from collections.abc import Iterator, Mapping
from typing import Any

from llama_jax.chat.templates import alpaca_messages, check_messages
from llama_jax.errors import DataError

FORMATS = ("alpaca", "flan", "chat")
ON_ERROR = ("raise", "skip")


@dataclasses.dataclass
class Example:
    """One conversation and where it came from."""

    messages: list[dict[str, str]]
    where: str  # "FILE:LINE"


@dataclasses.dataclass
class ReadStats:
    """Lines read and skipped (by reason) while reading a file."""

    read: int = 0
    skipped: collections.Counter = dataclasses.field(default_factory=collections.Counter)


def _strings(record: Mapping[str, Any], keys: tuple[str, ...], where: str, fmt: str,
             required: tuple[str, ...]) -> dict[str, str]:
    missing = [k for k in required if k not in record]
    if missing:
        raise DataError(f"{where}: a {fmt} record needs the fields {list(required)}; "
                        f"missing {missing} (the line has {sorted(record)[:8]})")
    out = {}
    for k in keys:
        v = record.get(k, "")
        if not isinstance(v, str):
            raise DataError(f"{where}: field {k!r} must be a string, got {type(v).__name__}")
        out[k] = v
    return out


def to_messages(record: Any, fmt: str, where: str) -> list[dict[str, str]]:
    """The conversation of one parsed JSONL record of format `fmt`; DataError if malformed."""
    if not isinstance(record, Mapping):
        raise DataError(f"{where}: each line must be a JSON object, got {type(record).__name__}")
    if fmt == "alpaca":
        f = _strings(record, ("instruction", "input", "output"), where, fmt,
                     ("instruction", "output"))
        return alpaca_messages(f["instruction"], f["input"], f["output"])
    if fmt == "flan":
        f = _strings(record, ("inputs", "targets"), where, fmt, ("inputs", "targets"))
        return [{"role": "user", "content": f["inputs"]},
                {"role": "assistant", "content": f["targets"]}]
    if fmt != "chat":
        raise DataError(f"unknown SFT format {fmt!r}; use one of {FORMATS}")
    if "messages" not in record:
        raise DataError(f"{where}: a chat record needs a 'messages' list (the line has "
                        f"{sorted(record)[:8]})")
    messages = record["messages"]
    check_messages(messages, where)
    if not any(m["role"] == "assistant" for m in messages):
        raise DataError(f"{where}: the conversation has no assistant turn, so there is no "
                        "response to train on")
    return [{"role": m["role"], "content": m["content"]} for m in messages]


def read_jsonl(path: str | os.PathLike, fmt: str, *, on_error: str = "raise",
               stats: ReadStats | None = None) -> Iterator[Example]:
    """The conversations of a JSONL file in `fmt`, in file order (blank lines ignored).

    Raises DataError for a missing file, and (with ``on_error='raise'``) for the
    first bad line, naming ``FILE:LINE``; with 'skip' bad lines are counted in
    `stats.skipped` by the reason's first words.
    """
    if fmt not in FORMATS:
        raise DataError(f"unknown SFT format {fmt!r}; use one of {FORMATS}")
    if on_error not in ON_ERROR:
        raise DataError(f"on_error={on_error!r} is not one of {ON_ERROR}")
    stats = stats if stats is not None else ReadStats()
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise DataError(f"SFT data file {path!r} does not exist")
    with open(path, encoding="utf-8", errors="strict") as f:
        lineno = 0
        while True:
            lineno += 1
            where = f"{path}:{lineno}"
            try:
                line = f.readline()
            except UnicodeDecodeError as e:
                raise DataError(f"{where}: not UTF-8 ({e})") from e
            if not line:
                return
            if not line.strip():
                continue
            stats.read += 1
            try:
                try:
                    record = json.loads(line)
                except json.JSONDecodeError as e:
                    raise DataError(f"{where}: not valid JSON ({e})") from e
                yield Example(to_messages(record, fmt, where), where)
            except DataError as e:
                if on_error == "raise":
                    raise
                stats.skipped[_reason(str(e))] += 1


def _reason(message: str) -> str:
    """A short key for a skip counter: the message without its FILE:LINE prefix."""
    text = message.split(": ", 1)[-1]
    return " ".join(text.split()[:6])
