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
