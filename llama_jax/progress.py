"""tqdm progress bars for the long jobs: drawn on a terminal, or when asked.

One rule for every bar (evaluation per task, generation, conversion per
tensor, corpus build, training): ``progress=None`` draws only when stderr is a
terminal, True always, False never; bars go to stderr, so logs, pipes and
tests stay clean. tqdm is imported only when a bar is drawn: the GPU
benchmark image (see ``benchmarks/gpu_suite.sh``) has no tqdm, and code that
draws no bar must import there.
"""

from __future__ import annotations

import sys
from collections.abc import Iterable
from typing import Any


class NullBar:
    """What `bar` returns when nothing is drawn: tqdm's methods, doing nothing."""

    def __init__(self, iterable: Iterable | None = None):
        self._iterable = iterable if iterable is not None else ()
        self.n = 0

    def __iter__(self):
        return iter(self._iterable)

    def __enter__(self) -> NullBar:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def update(self, n: int = 1) -> None:
        self.n += n

    def set_postfix_str(self, *args, **kwargs) -> None:
        del args, kwargs

    def close(self) -> None:
        pass


def drawn(progress: bool | None, stream: Any = None) -> bool:
    """Whether a bar is drawn: `progress`, or (None) whether `stream` (stderr) is a TTY."""
    if progress is not None:
        return bool(progress)
    stream = stream if stream is not None else sys.stderr
    return bool(getattr(stream, "isatty", lambda: False)())


def bar(iterable: Iterable | None = None, *, total: int | None = None, desc: str | None = None,
        unit: str = "it", progress: bool | None = None, **kwargs: Any):
    """A tqdm bar on stderr, or a `NullBar` when `drawn(progress)` is False.

    Use it as a context manager (or iterate it), so an error mid-way still
    closes the bar before the one-line error message is printed.
    """
    if not drawn(progress, kwargs.get("file")):
        return NullBar(iterable)
    from tqdm.auto import tqdm  # Only here: see the module docstring.

    kwargs.setdefault("file", sys.stderr)
    kwargs.setdefault("dynamic_ncols", True)
    return tqdm(iterable, total=total, desc=desc, unit=unit, **kwargs)
