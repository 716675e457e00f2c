"""Localhost multi-process tests: a free port and processes whose output goes to log files."""

from __future__ import annotations

import socket
import subprocess
from collections.abc import Sequence
from pathlib import Path


def free_port() -> int:
    """A TCP port on localhost that was free a moment ago (for a coordinator)."""
    with socket.socket() as s:
        s.bind(("localhost", 0))
        return s.getsockname()[1]


class LoggedProcesses:
    """Processes started at once, each writing stdout + stderr to ``folder/<name>.log``.

    Use as a context manager: work done inside the block overlaps the
    processes; `wait` collects their exit codes ("timeout" past `timeout_s`);
    leaving the block kills what still runs and closes the logs.
    """

    def __init__(self, runs: Sequence[tuple[str, list[str], dict]], folder: Path, *,
                 cwd: Path, timeout_s: float):
        self.names = [name for name, _, _ in runs]
        self.folder, self.timeout_s = folder, timeout_s
        self._logs = [open(folder / f"{name}.log", "w") for name in self.names]  # noqa: SIM115
        self._procs = [subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env, cwd=cwd)
                       for (_, cmd, env), log in zip(runs, self._logs, strict=True)]

    def __enter__(self) -> LoggedProcesses:
        return self

    def __exit__(self, *exc) -> None:
        for p in self._procs:
            if p.poll() is None:
                p.kill()
                p.wait()
        for log in self._logs:
            log.close()

    def wait(self) -> list[int | str]:
        """Each process's exit code, or "timeout"."""
        codes: list[int | str] = []
        for p in self._procs:
            try:
                codes.append(p.wait(timeout=self.timeout_s))
            except subprocess.TimeoutExpired:
                codes.append("timeout")
        return codes

    def logs(self) -> dict[str, str]:
        """Each process's log text by name."""
        return {name: (self.folder / f"{name}.log").read_text() for name in self.names}
