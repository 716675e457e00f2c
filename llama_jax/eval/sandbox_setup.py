"""The privileged half of a sandboxed run (see `llama_jax.eval.sandbox`); stdlib only.

Run as ``python -I -S -B sandbox_setup.py ROOT PROGRAM CPU_S MEM_B FSIZE_B NOFILE
DISK_MB MAX_FILES HIDE HOOK RO PIDNS``, usually as the first process of
``unshare -r [-n] [-m] [-p -f --mount-proc --kill-child]``:

1. ``RO=1`` (a user + mount namespace): hide ``/tmp``, ``/var/tmp``, ``/run``,
   ``/var/run``, ``/dev/shm`` and the host's temporary directory (``HIDE``,
   ``:``-separated) behind empty tmpfs mounts, so no host socket file or
   scratch file there is reachable; mount a tmpfs of ``DISK_MB`` MiB and
   ``MAX_FILES`` inodes on ROOT (the run's whole disk, gone with the
   namespace) and put PROGRAM in it; make every other mount read-only; enter
   a second user + mount namespace, in which those read-only flags are locked
   (the program, root inside, cannot remount them writable); /proc last.
2. resource limits: CPU, address space, size of one file, open descriptors,
   no core dumps;
3. ``PIDNS=1``: ask for SIGKILL when the `unshare` parent dies (the
   credentials change of step 1 clears what ``--kill-child`` set);
4. `os.execv` a fresh ``python -I -S -B`` running `sandbox_guard` (its source
   passed with ``-c``, so the guard need not be reachable after step 1),
   which installs the audit hook (``HOOK=1``) and runs PROGRAM.

This process loads ctypes for mount(2), unshare(2) and prctl(2); the exec of
step 4 drops it, so nothing loaded here is reachable from the program.
"""

import ctypes
import os
import resource
import sys

_MS_RDONLY, _MS_REMOUNT, _MS_BIND, _MS_REC, _MS_PRIVATE = 1, 32, 4096, 16384, 1 << 18
_CLONE_NEWNS, _CLONE_NEWUSER = 0x00020000, 0x10000000
_PR_SET_PDEATHSIG = 1
_HIDDEN = ("/tmp", "/var/tmp", "/run", "/var/run", "/dev/shm")
_GUARD_PATH = os.path.join(os.path.dirname(os.path.abspath(__file__)), "sandbox_guard.py")


def unescape(field):
    """A /proc/self/mountinfo path field with its octal escapes (``\\040``) decoded."""
    out, i = [], 0
    while i < len(field):
        if field[i] == "\\" and field[i + 1:i + 4].isdigit():
            out.append(chr(int(field[i + 1:i + 4], 8)))
            i += 4
        else:
            out.append(field[i])
            i += 1
    return "".join(out)


class _Libc:
    """mount(2), unshare(2) and prctl(2) raising OSError that names the call."""

    def __init__(self):
        self.libc = ctypes.CDLL(None, use_errno=True)
        self.libc.mount.argtypes = (ctypes.c_char_p, ctypes.c_char_p, ctypes.c_char_p,
                                    ctypes.c_ulong, ctypes.c_void_p)

    def _check(self, failed, what):
        if failed:
            err = ctypes.get_errno()
            raise OSError(err, f"{what}: {os.strerror(err)}")

    def mount(self, source, target, flags, fstype=None, data=None):
        self._check(self.libc.mount(source and source.encode(), target.encode(),
                                    fstype and fstype.encode(), flags,
                                    data and ctypes.c_char_p(data.encode())),
                    f"mount({target!r})")

    def unshare(self, flags):
        self._check(self.libc.unshare(flags), "unshare(CLONE_NEWUSER|CLONE_NEWNS)")

    def prctl(self, option, arg):
        self._check(self.libc.prctl(option, ctypes.c_ulong(arg), 0, 0, 0), "prctl")


def _mounts():
    with open("/proc/self/mountinfo", encoding="utf-8") as f:
        for line in f:
            fields = line.split()
            yield unescape(fields[4]), fields[fields.index("-") + 1]


def _remount_readonly(libc, target):
    keep = {os.ST_NOSUID: 2, os.ST_NODEV: 4, os.ST_NOEXEC: 8, os.ST_NOATIME: 1024,
            os.ST_NODIRATIME: 2048, os.ST_RELATIME: 1 << 21}
    try:
        have = os.statvfs(target).f_flag
    except OSError:  # a mount point we cannot reach: neither can the program
        return
    # Locked flags (nosuid, atime, ...) must be repeated or the kernel says EPERM.
    flags = _MS_REMOUNT | _MS_BIND | _MS_RDONLY
    for st_flag, ms_flag in keep.items():
        if have & st_flag:
            flags |= ms_flag
    libc.mount(None, target, flags)


# The real interpreter binary, resolved before any folder is hidden: a
# virtualenv's ``python`` is a symlink into a folder that may be hidden (a venv
# under /tmp, as CI clones often are), and ``-I -S`` needs only the base one.
_PYTHON = os.path.realpath(sys.executable)


def readonly_filesystem(root, program, disk_mb, max_files, hide):
    """Step 1 of the module docstring; returns the program's path, raises OSError."""
    libc = _Libc()
    root = os.path.realpath(root)
    with open(program, "rb") as f:
        source = f.read()
    libc.mount(None, "/", _MS_REC | _MS_PRIVATE)
    hidden = set()
    # The interpreter the program will run (and its standard library) must stay
    # visible: a virtualenv or a Python installed under /tmp is common in CI.
    needed = [_PYTHON, os.path.realpath(sys.base_prefix)]
    for path in (*_HIDDEN, *hide):
        real = os.path.realpath(path)
        if real in hidden or not os.path.isdir(real) or real == "/":
            continue
        if any(n == real or n.startswith(real + os.sep) for n in needed):
            continue  # hiding it would hide the interpreter itself
        hidden.add(real)
        libc.mount("tmpfs", real, 0, "tmpfs", "size=1m,nr_inodes=256,mode=0755")
    os.makedirs(root, mode=0o700, exist_ok=True)  # inside a hiding tmpfs, if under one
    libc.mount("tmpfs", root, 0, "tmpfs",
               f"size={max(1, int(disk_mb))}m,nr_inodes={max(1, int(max_files)) + 2},mode=0700")
    program = os.path.join(root, os.path.basename(program))
    with open(program, "wb") as f:
        f.write(source)
    os.chdir(root)  # the cwd must be the new tmpfs, not the directory below it
    for target, fstype in list(_mounts()):
        if target != root and fstype != "proc":
            _remount_readonly(libc, target)
    # Copies of these mounts in a namespace owned by a less privileged user
    # namespace keep their read-only flag locked.
    uid, gid = os.getuid(), os.getgid()
    libc.unshare(_CLONE_NEWUSER | _CLONE_NEWNS)
    for name, text in (("setgroups", "deny"), ("uid_map", f"{uid} {uid} 1"),
                       ("gid_map", f"{gid} {gid} 1")):
        with open(f"/proc/self/{name}", "w", encoding="ascii") as f:
            f.write(text)
    for target, fstype in list(_mounts()):
        if fstype == "proc":
            _remount_readonly(libc, target)
    return program


def set_limits(cpu_s, mem_b, fsize_b, nofile):
    """Step 2: rlimits, which the exec of step 4 keeps."""
    resource.setrlimit(resource.RLIMIT_CPU, (cpu_s, cpu_s + 1))
    if mem_b > 0:
        resource.setrlimit(resource.RLIMIT_AS, (mem_b, mem_b))
    resource.setrlimit(resource.RLIMIT_FSIZE, (fsize_b, fsize_b))
    resource.setrlimit(resource.RLIMIT_NOFILE, (nofile, nofile))
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))


def main(argv):
    """Set up the sandbox, then exec the guard in a fresh interpreter (see the docstring)."""
    root, program = argv[1], argv[2]
    cpu_s, mem_b, fsize_b, nofile, disk_mb, max_files = (int(x) for x in argv[3:9])
    hide = [p for p in argv[9].split(":") if p]
    hook_on, readonly, pidns = (int(x) for x in argv[10:13])
    with open(_GUARD_PATH, encoding="utf-8") as f:
        guard = f.read()
    try:
        if readonly:
            program = readonly_filesystem(root, program, disk_mb, max_files, hide)
            root = os.getcwd()
        if pidns:
            _Libc().prctl(_PR_SET_PDEATHSIG, 9)
    except OSError as e:
        print(f"sandbox: namespace set-up failed: {e}", file=sys.stderr)
        return 3
    set_limits(cpu_s, mem_b, fsize_b, nofile)
    sys.stdout.flush()
    sys.stderr.flush()
    os.execv(_PYTHON, [_PYTHON, "-I", "-S", "-B", "-c", guard, root, program,
                       str(int(hook_on)), str(max_files)])
    return 127  # not reached


if __name__ == "__main__":
    sys.exit(main(sys.argv))
