"""Run untrusted generated Python (HumanEval / MBPP solutions) in a sandbox.

Each program runs in a fresh subprocess:

* its own temporary directory as cwd, HOME and TMPDIR (removed afterwards);
* resource limits set with `resource.setrlimit` before the program starts:
  CPU seconds, address space (memory), size of files written, no core dumps;
* a wall-clock timeout that kills the whole process group;
* an audit hook (`sys.addaudithook`, which cannot be removed) that refuses
  socket creation and DNS look-ups, writes / deletes / renames / chmods
  outside the sandbox directory, starting processes (subprocess, os.system,
  exec, fork, spawn), signalling other processes and loading native code via
  ctypes;
* when the kernel allows it, a new user + network namespace
  (``unshare -rn``), so even code that slips past the hook has no network.

This is defence in depth for evaluating model samples on a research
machine, not a security boundary against a determined attacker: run
untrusted code at scale inside a container or VM as well.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import functools
import os
import shutil
import signal
import subprocess
import sys
import tempfile
from collections.abc import Sequence

_GUARD = r'''
import os, resource, sys

ROOT = os.path.realpath(sys.argv[1])
PROGRAM = sys.argv[2]
CPU_S, MEM_B, FSIZE_B = (int(x) for x in sys.argv[3:6])
resource.setrlimit(resource.RLIMIT_CPU, (CPU_S, CPU_S + 1))
if MEM_B > 0:
    resource.setrlimit(resource.RLIMIT_AS, (MEM_B, MEM_B))
resource.setrlimit(resource.RLIMIT_FSIZE, (FSIZE_B, FSIZE_B))
resource.setrlimit(resource.RLIMIT_CORE, (0, 0))

_WRITE_FLAGS = os.O_WRONLY | os.O_RDWR | os.O_APPEND | os.O_CREAT | os.O_TRUNC
_PATH_EVENTS = {
    "os.remove": (0,), "os.rename": (0, 1), "os.rmdir": (0,), "os.mkdir": (0,),
    "os.chmod": (0,), "os.chown": (0,), "os.truncate": (0,), "os.link": (0, 1),
    "os.symlink": (0, 1), "os.utime": (0,), "shutil.rmtree": (0,), "os.chflags": (0,),
    "os.mkfifo": (0,), "os.mknod": (0,), "os.setxattr": (0,), "os.removexattr": (0,),
}
_BLOCKED = (
    "socket.__new__", "socket.getaddrinfo", "socket.gethostbyname", "socket.gethostbyaddr",
    "socket.gethostbyname_ex", "socket.connect", "socket.bind", "socket.sendto",
    "subprocess.Popen", "os.system", "os.exec", "os.posix_spawn", "os.spawn", "os.fork",
    "os.forkpty", "os.kill", "os.killpg", "pty.spawn", "ctypes.dlopen", "ctypes.dlsym",
    "ctypes.cdata", "os.startfile", "webbrowser.open",
)


def _inside(path):
    if isinstance(path, int):
        return True  # an already-open descriptor
    path = os.fsdecode(path)
    real = os.path.realpath(path)
    return real == ROOT or real.startswith(ROOT + os.sep)


def _hook(event, args):
    if event == "open":
        path, mode, flags = args
        writing = (isinstance(mode, str) and any(c in mode for c in "wax+")) or (
            isinstance(flags, int) and flags & _WRITE_FLAGS)
        if writing and path is not None and not _inside(path):
            raise PermissionError(f"sandbox: writing outside the sandbox is blocked: {path!r}")
    elif event in _PATH_EVENTS:
        for i in _PATH_EVENTS[event]:
            if i < len(args) and args[i] is not None and not _inside(args[i]):
                raise PermissionError(f"sandbox: {event} outside the sandbox is blocked")
    elif event in _BLOCKED or event.startswith("socket."):
        raise PermissionError(f"sandbox: {event} is blocked (no network, no processes)")


sys.addaudithook(_hook)
sys.argv = [PROGRAM]
with open(PROGRAM, encoding="utf-8") as f:
    _source = f.read()
del f
exec(compile(_source, PROGRAM, "exec"), {"__name__": "__main__", "__builtins__": __builtins__})
'''


@dataclasses.dataclass(frozen=True)
class SandboxLimits:
    """Limits for one program: wall and CPU seconds, memory and file size (MiB)."""

    timeout_s: float = 10.0
    cpu_s: int = 10
    memory_mb: int = 1024
    file_size_mb: int = 16


@dataclasses.dataclass(frozen=True)
class SandboxResult:
    """Outcome of one program: passed means exit status 0 within the limits."""

    passed: bool
    returncode: int | None
    timed_out: bool
    stdout: str
    stderr: str


@functools.lru_cache(maxsize=1)
def network_namespace_available() -> bool:
    """True if `unshare -rn` can make a user + network namespace here."""
    if shutil.which("unshare") is None:
        return False
    try:
        done = subprocess.run(["unshare", "-rn", "true"], capture_output=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return False
    return done.returncode == 0


def _read(path: str, limit: int = 1 << 16) -> str:
    with open(path, "rb") as f:
        return f.read(limit).decode("utf-8", errors="replace")


def run_python(
    code: str,
    *,
    limits: SandboxLimits = SandboxLimits(),
    network_namespace: bool | None = None,
    audit_guard: bool = True,
) -> SandboxResult:
    """Run `code` as a Python program in a sandbox; see the module docstring.

    Args:
      code: the program's source.
      limits: time, CPU, memory and file-size limits.
      network_namespace: run under ``unshare -rn`` (None: when available).
      audit_guard: install the audit hook (tests turn it off to check the
        namespace on its own; leave it on).
    """
    if network_namespace is None:
        network_namespace = network_namespace_available()
    elif network_namespace and not network_namespace_available():
        raise RuntimeError("network_namespace=True but `unshare -rn` does not work here")
    root = tempfile.mkdtemp(prefix="llama_jax_sandbox_")
    logs = tempfile.mkdtemp(prefix="llama_jax_sandbox_logs_")
    try:
        program = os.path.join(root, "program.py")
        with open(program, "w", encoding="utf-8") as f:
            f.write(code)
        guard = os.path.join(logs, "guard.py")
        with open(guard, "w", encoding="utf-8") as f:
            f.write(_GUARD if audit_guard else _GUARD.replace("sys.addaudithook(_hook)", ""))
        mem = limits.memory_mb * (1 << 20) if limits.memory_mb else 0
        cmd = [sys.executable, "-I", "-B", guard, root, program, str(int(limits.cpu_s)),
               str(mem), str(limits.file_size_mb * (1 << 20))]
        if network_namespace:
            cmd = ["unshare", "-rn", "--", *cmd]
        env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": root, "TMPDIR": root,
               "LANG": "C.UTF-8", "PYTHONHASHSEED": "0", "OMP_NUM_THREADS": "1"}
        out_path, err_path = os.path.join(logs, "stdout"), os.path.join(logs, "stderr")
        with open(out_path, "wb") as out, open(err_path, "wb") as err:
            proc = subprocess.Popen(cmd, cwd=root, env=env, stdin=subprocess.DEVNULL,
                                    stdout=out, stderr=err, start_new_session=True)
            timed_out = False
            try:
                proc.wait(timeout=limits.timeout_s)
            except subprocess.TimeoutExpired:
                timed_out = True
            finally:
                # Whatever the program left behind in its group goes too.
                try:
                    os.killpg(proc.pid, signal.SIGKILL)
                except (ProcessLookupError, PermissionError):
                    pass
                proc.wait()
        rc = None if timed_out else proc.returncode
        return SandboxResult(passed=rc == 0, returncode=rc, timed_out=timed_out,
                             stdout=_read(out_path), stderr=_read(err_path))
    finally:
        shutil.rmtree(root, ignore_errors=True)
        shutil.rmtree(logs, ignore_errors=True)


def run_many(programs: Sequence[str], *, limits: SandboxLimits = SandboxLimits(),
             workers: int = 4) -> list[SandboxResult]:
    """`run_python` over many programs, `workers` at a time, in input order."""
    with concurrent.futures.ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
        return list(pool.map(lambda c: run_python(c, limits=limits), programs))
