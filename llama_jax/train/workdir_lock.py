"""One trainer per workdir: an exclusive `fcntl.flock` on ``WORKDIR/.lock``.

Two runs on one workdir would interleave their saves, prune each other's
checkpoints (orbax's start-up also deletes unfinished temporary steps, such
as the other run's save in progress) and append to one ``metrics.jsonl``.
`WorkdirLock` takes the lock before the checkpointer opens and holds it for
the run; the file holds the owner's pid, host and start time so the second
run's error can name it. The kernel drops the lock when its process ends,
however it ends (SIGKILL included), so a stale file never blocks a restart;
the file itself is left in place (unlinking it would let a third run lock a
fresh inode while the second still holds the old one).

In a multi-process job only process 0 takes it: the other processes write
through the same orbax manager, and a second job's process 0 fails at once.
"""

from __future__ import annotations

import fcntl
import json
import os
import socket
import time
from pathlib import Path

from llama_jax.errors import ConfigError

LOCK_NAME = ".lock"


class WorkdirLock:
    """An exclusive, non-blocking lock on ``WORKDIR/.lock``; a context manager.

    Args:
      workdir: the training workdir (must exist).
    """

    def __init__(self, workdir: str | Path):
        self.workdir = Path(workdir)
        self.path = self.workdir / LOCK_NAME
        self._fd: int | None = None

    def acquire(self) -> WorkdirLock:
        """Take the lock, or raise ConfigError naming the process that holds it."""
        try:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as e:
            raise ConfigError(f"--workdir={self.workdir}: cannot create its lock file "
                              f"{self.path} ({e.strerror}); use a writable --workdir") from e
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _describe(os.pread(fd, 4096, 0))
            os.close(fd)
            raise ConfigError(
                f"--workdir={self.workdir} is in use by another training run ({holder}): two "
                "trainers on one workdir would overwrite each other's checkpoints. Wait for "
                "it to finish (or stop it), or use another --workdir.") from None
        except OSError as e:
            os.close(fd)
            raise ConfigError(f"--workdir={self.workdir}: cannot lock {self.path} "
                              f"({e.strerror}); use a local or lock-capable filesystem") from e
        record = {"pid": os.getpid(), "host": socket.gethostname(),
                  "started": time.strftime("%Y-%m-%d %H:%M:%S %z")}
        os.ftruncate(fd, 0)
        os.pwrite(fd, (json.dumps(record) + "\n").encode("utf-8"), 0)
        self._fd = fd
        return self

    def release(self) -> None:
        """Drop the lock (idempotent)."""
        fd, self._fd = self._fd, None
        if fd is not None:
            os.ftruncate(fd, 0)
            fcntl.flock(fd, fcntl.LOCK_UN)
            os.close(fd)

    def __enter__(self) -> WorkdirLock:
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()


def _describe(raw: bytes) -> str:
    """'pid 123 on host, started ...' from a lock file's content."""
    try:
        rec = json.loads(raw.decode("utf-8"))
        return f"pid {rec['pid']} on {rec['host']}, started {rec['started']}"
    except (ValueError, KeyError, TypeError):
        return "a process that has not yet recorded its pid"
