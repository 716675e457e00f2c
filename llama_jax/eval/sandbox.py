"""Run untrusted generated Python (HumanEval / MBPP solutions) in a sandbox.

Each program runs in a fresh subprocess behind these walls, the first four
where the kernel allows them (unprivileged user namespaces: ``unshare -r``):

* a PID namespace (``unshare --pid --fork --mount-proc --kill-child``): no
  process outside the sandbox is visible, so none can be signalled (``kill``,
  ``pidfd_send_signal``) or reniced, the evaluator included; every process
  the program starts dies with it;
* a user + mount namespace (`sandbox_setup`): ``/tmp``, ``/run``,
  ``/var/run``, ``/dev/shm`` and the host's temporary directory hidden behind
  empty tmpfs mounts (no host socket file there can be reached), every other
  mount read-only with the flag locked, and the program's directory a tmpfs of
  `SandboxLimits.disk_mb` MiB and `max_files` files: the program cannot write,
  delete or rename anything outside it, nor fill the disk, whatever Python it
  runs;
* a network namespace with only loopback (``unshare -n``): no network, and
  abstract AF_UNIX sockets of the host are out of reach;
* a clean interpreter: the set-up (which needs ctypes) runs in a helper that
  then execs (`os.execv`) a fresh ``python -I -S -B``, so nothing it loaded is
  reachable from the program (`object.__subclasses__()` finds no ctypes);
* resource limits: CPU seconds, address space, size of one file, open
  descriptors, no core dumps; a wall-clock timeout that kills the whole tree;
* its own directory as cwd, HOME and TMPDIR (removed afterwards);
* an audit hook (`sandbox_guard`, the second wall, never the first) that
  refuses sockets of every family, DNS, writes / deletes / renames / chmods /
  links outside the directory, more than `max_files` new files, processes,
  signals, pidfds, renicing, sqlite connections, ctypes and tampering with
  itself.

`SandboxResult.walls` says which walls a run had. Without user namespaces
only the hook and the limits remain, and the hook is in-process (a second
thread can race its path checks; a native extension it does not know of can
bypass it): then nothing but the hook keeps the program from your files and
processes. This is defence in depth for model samples on a research machine,
not a security boundary against a determined attacker: run untrusted code at
scale inside a container or VM as well.
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

_SETUP_PATH = os.path.join(os.path.dirname(os.path.abspath(__file__)), "sandbox_setup.py")


@dataclasses.dataclass(frozen=True)
class SandboxLimits:
    """Limits for one program: wall and CPU seconds; memory, one file's size and
    the whole run's disk (MiB, the disk a tmpfs where mount namespaces work);
    files the run may create and descriptors it may hold open."""

    timeout_s: float = 10.0
    cpu_s: int = 10
    memory_mb: int = 1024
    file_size_mb: int = 16
    disk_mb: int = 64
    max_files: int = 1024
    open_files: int = 256


@dataclasses.dataclass(frozen=True)
class SandboxResult:
    """Outcome of one program: passed means exit status 0 within the limits."""

    passed: bool
    returncode: int | None
    timed_out: bool
    stdout: str
    stderr: str
    walls: tuple[str, ...] = ()  # of "pid", "mount", "net", "hook": the walls it had


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
def pid_namespace_available() -> bool:
    """True if `unshare -r --pid --fork --mount-proc` can make a PID namespace here."""
    if shutil.which("unshare") is None:
        return False
    try:
        done = subprocess.run(["unshare", "-rm", "--pid", "--fork", "--mount-proc",
                               "--kill-child", "true"], capture_output=True, timeout=10)
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
                    readonly_filesystem=True, pid_namespace=False, audit_guard=False)
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
    pid_namespace: bool | None = None,
    audit_guard: bool = True,
) -> SandboxResult:
    """Run `code` as a Python program in a sandbox; see the module docstring.

    Args:
      code: the program's source.
      limits: time, CPU, memory, file-size, disk and file-count limits.
      network_namespace: run in a new network namespace, without network
        (None: when available).
      readonly_filesystem: run in a mount namespace where everything outside
        the sandbox directory is read-only or hidden, the directory a tmpfs of
        `limits.disk_mb` (None: when available).
      pid_namespace: run in a new PID namespace, where no outside process is
        visible (None: when available).
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
    if pid_namespace is None:
        pid_namespace = pid_namespace_available()
    elif pid_namespace and not pid_namespace_available():
        raise RuntimeError("pid_namespace=True but `unshare -r --pid --fork --mount-proc` "
                           "does not work here")
    return _run(code, limits, network_namespace=network_namespace,
                readonly_filesystem=readonly_filesystem, pid_namespace=pid_namespace,
                audit_guard=audit_guard)


def _kill_tree(pid: int) -> None:
    """SIGKILL `pid`'s children (the PID namespace's first process: its death
    ends every process in the namespace), then `pid`'s process group."""
    try:
        with open(f"/proc/{pid}/task/{pid}/children", encoding="ascii") as f:
            children = [int(c) for c in f.read().split()]
    except OSError:
        children = []
    for child in children:
        try:
            os.kill(child, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
    try:
        os.killpg(pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


def _run(code: str, limits: SandboxLimits, *, network_namespace: bool,
         readonly_filesystem: bool, pid_namespace: bool, audit_guard: bool) -> SandboxResult:
    root = tempfile.mkdtemp(prefix="llama_jax_sandbox_")
    logs = tempfile.mkdtemp(prefix="llama_jax_sandbox_logs_")
    try:
        program = os.path.join(root, "program.py")
        with open(program, "w", encoding="utf-8") as f:
            f.write(code)
        mem = limits.memory_mb * (1 << 20) if limits.memory_mb else 0
        hide = ":".join(sorted({tempfile.gettempdir(), os.path.dirname(root)}))
        cmd = [sys.executable, "-I", "-S", "-B", _SETUP_PATH, root, program,
               str(int(limits.cpu_s)), str(mem), str(limits.file_size_mb * (1 << 20)),
               str(int(limits.open_files)), str(int(limits.disk_mb)), str(int(limits.max_files)),
               hide, str(int(audit_guard)), str(int(readonly_filesystem)), str(int(pid_namespace))]
        flags = "-r" + "n" * network_namespace + "m" * (readonly_filesystem or pid_namespace)
        pid_flags = ["--pid", "--fork", "--mount-proc", "--kill-child"] if pid_namespace else []
        if flags != "-r":
            cmd = ["unshare", flags, *pid_flags, "--", *cmd]
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
                _kill_tree(proc.pid)
            finally:
                # Whatever the program left behind in its group goes too.
                try:
                    os.killpg(proc.pid, signal.SIGKILL)
                except (ProcessLookupError, PermissionError):
                    pass
                proc.wait()
        rc = None if timed_out else proc.returncode
        walls = tuple(name for name, on in (("pid", pid_namespace), ("mount", readonly_filesystem),
                                            ("net", network_namespace), ("hook", audit_guard))
                      if on)
        return SandboxResult(passed=rc == 0, returncode=rc, timed_out=timed_out,
                             stdout=_read(out_path), stderr=_read(err_path), walls=walls)
    finally:
        shutil.rmtree(root, ignore_errors=True)
        shutil.rmtree(logs, ignore_errors=True)


def run_many(programs: Sequence[str], *, limits: SandboxLimits = SandboxLimits(),
             workers: int = 4) -> list[SandboxResult]:
    """`run_python` over many programs, `workers` at a time, in input order."""
    with concurrent.futures.ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
        return list(pool.map(lambda c: run_python(c, limits=limits), programs))
