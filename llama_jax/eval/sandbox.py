"""Run untrusted generated Python (HumanEval / MBPP solutions) in a sandbox.

Each program runs in a fresh subprocess:

* its own temporary directory as cwd, HOME and TMPDIR (removed afterwards);
* resource limits set with `resource.setrlimit` before the program starts:
  CPU seconds, address space (memory), size of files written, no core dumps;
* a wall-clock timeout that kills the whole process group;
* when the kernel allows it (unprivileged user namespaces), a user + mount
  namespace in which every mount except the sandbox directory is read-only,
  with the read-only flags locked (see `sandbox_guard`): the program cannot
  write, delete or rename anything outside its directory, whatever Python
  it runs;
* when the kernel allows it, a network namespace with no interfaces but
  loopback (``unshare -n``), so the program has no network;
* an audit hook (`sys.addaudithook`, which cannot be removed) that refuses
  socket creation and DNS look-ups, writes / deletes / renames / chmods /
  links outside the sandbox directory (paths resolved through symlinks,
  ``..``, the current directory and ``dir_fd``), starting processes
  (subprocess, os.system, exec, fork, spawn), signalling other processes,
  importing ctypes and tampering with the hook. It binds everything it uses
  when it is installed, so rebinding `os.path.realpath`, module globals or
  builtins does not weaken it.

The program runs in `llama_jax/eval/sandbox_guard.py`. This is defence in
depth for evaluating model samples on a research machine, not a security
boundary against a determined attacker (the hook is in-process and can be
raced by a second thread; without user namespaces only the hook stands
between the program and your files): run untrusted code at scale inside a
container or VM as well.
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

_GUARD_PATH = os.path.join(os.path.dirname(os.path.abspath(__file__)), "sandbox_guard.py")


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


@functools.lru_cache(maxsize=1)
def readonly_filesystem_available() -> bool:
    """True if a user + mount namespace with everything but the sandbox
    directory read-only can be set up here (``unshare -rm`` and mount(2))."""
    if shutil.which("unshare") is None:
        return False
    try:
        done = _run("pass\n", SandboxLimits(timeout_s=30.0), network_namespace=False,
                    readonly_filesystem=True, audit_guard=False)
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
    readonly_filesystem: bool | None = None,
    audit_guard: bool = True,
) -> SandboxResult:
    """Run `code` as a Python program in a sandbox; see the module docstring.

    Args:
      code: the program's source.
      limits: time, CPU, memory and file-size limits.
      network_namespace: run in a new network namespace, without network
        (None: when available).
      readonly_filesystem: run in a mount namespace where everything outside
        the sandbox directory is read-only (None: when available).
      audit_guard: install the audit hook (tests turn it off to check the
        namespaces on their own; leave it on).

    Raises:
      RuntimeError: a namespace asked for with True is not available here.
    """
    if network_namespace is None:
        network_namespace = network_namespace_available()
    elif network_namespace and not network_namespace_available():
        raise RuntimeError("network_namespace=True but `unshare -rn` does not work here")
    if readonly_filesystem is None:
        readonly_filesystem = readonly_filesystem_available()
    elif readonly_filesystem and not readonly_filesystem_available():
        raise RuntimeError("readonly_filesystem=True but a user + mount namespace "
                           "(`unshare -rm` and mount) does not work here")
    return _run(code, limits, network_namespace=network_namespace,
                readonly_filesystem=readonly_filesystem, audit_guard=audit_guard)


def _run(code: str, limits: SandboxLimits, *, network_namespace: bool,
         readonly_filesystem: bool, audit_guard: bool) -> SandboxResult:
    root = tempfile.mkdtemp(prefix="llama_jax_sandbox_")
    logs = tempfile.mkdtemp(prefix="llama_jax_sandbox_logs_")
    try:
        program = os.path.join(root, "program.py")
        with open(program, "w", encoding="utf-8") as f:
            f.write(code)
        mem = limits.memory_mb * (1 << 20) if limits.memory_mb else 0
        cmd = [sys.executable, "-I", "-B", _GUARD_PATH, root, program, str(int(limits.cpu_s)),
               str(mem), str(limits.file_size_mb * (1 << 20)), str(int(audit_guard)),
               str(int(readonly_filesystem))]
        flags = "-r" + "n" * network_namespace + "m" * readonly_filesystem
        if flags != "-r":
            cmd = ["unshare", flags, "--", *cmd]
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
