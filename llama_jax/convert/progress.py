"""Per-tensor progress bars for conversion (tqdm), quiet off a TTY or when asked.

A 65B checkpoint is hundreds of tensors and minutes of I/O; the bar says how
far a load or save has come. It writes to stderr, only when stderr is a
terminal (tqdm's ``disable=None``), so logs, pipes and tests stay clean, and
never when the caller passes ``progress=False``.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import TypeVar

from llama_jax.progress import bar

T = TypeVar("T")


def progress_bar(items: Iterable[T], *, total: int | None, desc: str,
                 enabled: bool = True) -> Iterator[T]:
    """`items`, with a tqdm bar of `total` tensors labelled `desc`.

    Args:
      items: what to iterate (tensors, names, ...).
      total: how many there are (None: unknown).
      desc: the bar's label, e.g. "reading llama-7b".
      enabled: False never draws a bar; True draws one on a TTY only.
    """
    yield from bar(items, total=total, desc=desc, unit="tensor", leave=False,
                   progress=None if enabled else False)
