"""Writing files a user keeps: never in place.

Every rewrite of such a file (metrics.jsonl, manifests, digests, tokenizers,
evaluation results) goes through `atomic_write`, so a crash or a kill during
the write never destroys the last good copy.
"""

from __future__ import annotations

import os
import tempfile


def atomic_write(path: str | os.PathLike, data: bytes) -> None:
    """Write `data` to `path` through a temp file in the same folder and `os.replace`.

    A kill or a full disk at any moment leaves either the old file or the new
    one, never a half-written file; the temp file is removed on failure.
    """
    fd, tmp = tempfile.mkstemp(dir=os.path.dirname(os.path.abspath(path)), prefix=".tmp-")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def unwritable_parent(path: str | os.PathLike) -> str | None:
    """Why `path` cannot be created or written as a folder, or None.

    Looks at the nearest existing ancestor (or `path` itself): a file there,
    or a folder where a real write fails (`os.access` says yes to root on a
    read-only mount), is the reason returned. Creates nothing.
    """
    probe = os.path.abspath(os.fspath(path))
    while not os.path.exists(probe):
        probe = os.path.dirname(probe)
    if not os.path.isdir(probe):
        return f"{probe} is a file, not a folder"
    try:
        tempfile.TemporaryFile(dir=probe).close()
    except OSError as e:
        return f"the folder {probe} is not writable ({e.strerror or e})"
    return None
