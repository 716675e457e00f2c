"""The program a sandboxed run starts (see `llama_jax.eval.sandbox`); stdlib only.

Run as ``python -I -B sandbox_guard.py ROOT PROGRAM CPU_S MEM_B FSIZE_B HOOK RO``:

1. ``RO=1`` (the process already runs under ``unshare -rm``): make every mount
   read-only except a bind mount of ROOT, then enter a second user + mount
   namespace, in which those read-only flags are locked (the program, root in
   the inner namespace, cannot remount them writable); /proc last.
2. resource limits (CPU, address space, file size, no core dumps);
3. ``HOOK=1``: an audit hook (`sys.addaudithook`; it cannot be removed) that
   refuses writes outside ROOT, processes, sockets, ctypes and tampering with
   itself. Everything it uses is bound at install time as default arguments of
   functions defined here: module globals, `os.path`, builtins and the `os`
   module can be rebound by the program without effect. Paths are resolved by
   our own realpath over captured `posix` functions (symlinks, ``..``, the
   current directory and ``dir_fd`` arguments included);
4. executes PROGRAM as ``__main__``.

The hook is a best-effort, in-process check (a second thread swapping a
symlink between the check and the system call can race it); the read-only
mount namespace of step 1 is the boundary that holds when the hook does not.
"""

import sys

_MS_RDONLY, _MS_REMOUNT, _MS_BIND, _MS_REC, _MS_PRIVATE = 1, 32, 4096, 16384, 1 << 18
_CLONE_NEWNS, _CLONE_NEWUSER = 0x00020000, 0x10000000


def _unescape(field):
    """A /proc/self/mountinfo path field: octal escapes (``\\040``) decoded."""
    out, i = [], 0
    while i < len(field):
        if field[i] == "\\" and field[i + 1:i + 4].isdigit():
            out.append(chr(int(field[i + 1:i + 4], 8)))
            i += 4
        else:
            out.append(field[i])
            i += 1
    return "".join(out)


def _readonly_filesystem(root):
    """Step 1 of the module docstring; raises OSError naming what failed."""
    import ctypes
    import os

    libc = ctypes.CDLL(None, use_errno=True)
    libc.mount.argtypes = (ctypes.c_char_p, ctypes.c_char_p, ctypes.c_char_p,
                           ctypes.c_ulong, ctypes.c_void_p)
    keep = {os.ST_NOSUID: 2, os.ST_NODEV: 4, os.ST_NOEXEC: 8, os.ST_NOATIME: 1024,
            os.ST_NODIRATIME: 2048, os.ST_RELATIME: 1 << 21}

    def mount(source, target, flags):
        if libc.mount(source and source.encode(), target.encode(), None, flags, None):
            err = ctypes.get_errno()
            raise OSError(err, f"mount({target!r}): {os.strerror(err)}")

    def remount_readonly(target):
        try:
            have = os.statvfs(target).f_flag
        except OSError:  # a mount point we cannot reach: neither can the program
            return
        # Locked flags (nosuid, atime, ...) must be repeated or the kernel says EPERM.
        flags = _MS_REMOUNT | _MS_BIND | _MS_RDONLY
        for st_flag, ms_flag in keep.items():
            if have & st_flag:
                flags |= ms_flag
        mount(None, target, flags)

    def mounts():
        with open("/proc/self/mountinfo", encoding="utf-8") as f:
            for line in f:
                fields = line.split()
                yield _unescape(fields[4]), fields[fields.index("-") + 1]

    mount(None, "/", _MS_REC | _MS_PRIVATE)
    root = os.path.realpath(root)
    mount(root, root, _MS_BIND | _MS_REC)
    os.chdir(root)  # the cwd must be the bind mount (writable), not the directory below it
    for target, fstype in list(mounts()):
        if target != root and fstype != "proc":
            remount_readonly(target)
    # Copies of these mounts in a namespace owned by a less privileged user
    # namespace keep their read-only flag locked.
    uid, gid = os.getuid(), os.getgid()
    if libc.unshare(_CLONE_NEWUSER | _CLONE_NEWNS):
        err = ctypes.get_errno()
        raise OSError(err, f"unshare(CLONE_NEWUSER|CLONE_NEWNS): {os.strerror(err)}")
    for name, text in (("setgroups", "deny"), ("uid_map", f"{uid} {uid} 1"),
                       ("gid_map", f"{gid} {gid} 1")):
        with open(f"/proc/self/{name}", "w", encoding="ascii") as f:
            f.write(text)
    for target, fstype in list(mounts()):
        if fstype == "proc":
            remount_readonly(target)
    # Nothing of ctypes stays importable: the hook refuses to import it again.
    for name in [m for m in sys.modules if m in ("ctypes", "_ctypes") or m.startswith("ctypes.")]:
        del sys.modules[name]


def _set_limits(cpu_s, mem_b, fsize_b):
    import resource

    resource.setrlimit(resource.RLIMIT_CPU, (cpu_s, cpu_s + 1))
    if mem_b > 0:
        resource.setrlimit(resource.RLIMIT_AS, (mem_b, mem_b))
    resource.setrlimit(resource.RLIMIT_FSIZE, (fsize_b, fsize_b))
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))


def _make_hook(root_arg):
    """The audit hook for sandbox directory `root_arg` (see the module docstring)."""
    import os
    import posix

    def realpath(path, base, _lstat=posix.lstat, _readlink=posix.readlink, _list=list,
                 _reversed=reversed, _get=tuple.__getitem__, _oserror=OSError,
                 _error=PermissionError):
        """`path` (exact str) resolved against absolute `base`; like posixpath.realpath."""
        if path[:1] != "/":
            path = base + "/" + path
        pending = _list(_reversed(path.split("/")))
        resolved, links = "", 0
        while pending:
            name = pending.pop()
            if name == "" or name == ".":
                continue
            if name == "..":
                resolved = resolved[:resolved.rfind("/")] if resolved else ""
                continue
            candidate = resolved + "/" + name
            try:
                mode = _get(_lstat(candidate), 0)
            except _oserror:
                resolved = candidate  # does not exist (yet): taken literally
                continue
            if mode & 0o170000 == 0o120000:  # a symlink: splice its target in
                links += 1
                if links > 40:
                    raise _error(f"sandbox: too many symlinks in {path!r}")
                target = _readlink(candidate)
                if target[:1] == "/":
                    resolved = ""
                pending.extend(_reversed(target.split("/")))
            else:
                resolved = candidate
        return resolved or "/"

    root = realpath(os.getcwd() if root_arg == "." else root_arg, "/")
    write_flags = os.O_WRONLY | os.O_RDWR | os.O_APPEND | os.O_CREAT | os.O_TRUNC
    # event -> ((path index, dir_fd index or None), ...); os.symlink is special.
    path_events = {
        "os.remove": ((0, 1),), "os.rmdir": ((0, 1),), "os.mkdir": ((0, 2),),
        "os.rename": ((0, 2), (1, 3)), "os.link": ((0, 2), (1, 3)), "os.chmod": ((0, 2),),
        "os.chown": ((0, 3),), "os.utime": ((0, 3),), "os.truncate": ((0, None),),
        "os.chflags": ((0, None),), "os.mkfifo": ((0, 2),), "os.mknod": ((0, 3),),
        "os.setxattr": ((0, None),), "os.removexattr": ((0, None),),
        "shutil.rmtree": ((0, 1),), "sqlite3.connect": ((0, None),),
    }
    blocked = frozenset((
        "socket.__new__", "socket.getaddrinfo", "socket.gethostbyname", "socket.gethostbyaddr",
        "socket.gethostbyname_ex", "socket.connect", "socket.bind", "socket.sendto",
        "subprocess.Popen", "os.system", "os.exec", "os.posix_spawn", "os.spawn", "os.fork",
        "os.forkpty", "os.kill", "os.killpg", "pty.spawn", "os.startfile", "webbrowser.open",
        # Ways to reach or rewrite the hook, its frames or the process's limits.
        "gc.get_objects", "gc.get_referrers", "gc.get_referents", "sys.settrace",
        "sys.setprofile", "resource.setrlimit", "resource.prlimit",
    ))
    # Native modules that reach raw memory or start processes, matched on the
    # last dotted part (the one that names the extension's init function).
    blocked_imports = frozenset(("ctypes", "_ctypes", "_posixsubprocess", "_testcapi",
                                 "_testinternalcapi"))

    def hook(event, args, _root=root, _prefix=root + "/", _realpath=realpath,
             _path_events=path_events.get, _blocked=blocked, _imports=blocked_imports,
             _write_flags=write_flags, _getcwd=posix.getcwd, _readlink=posix.readlink,
             _listdir=posix.listdir, _stat=posix.stat, _get=tuple.__getitem__, _type=type,
             _issubclass=issubclass, _str=str, _bytes=bytes, _int=int, _len=len,
             _str_of=str.__str__, _int_text=int.__repr__, _decode=bytes.decode,
             _oserror=OSError, _error=PermissionError, _protected=()):
        # Nothing below runs the program's code: no isinstance (which reads
        # __class__), no __fspath__, no methods of subclasses.
        def text(p):  # the path as an exact str, or None
            t = _type(p)
            if t is _str:
                return p
            if _issubclass(t, _bytes):
                return _decode(p, "utf-8", "surrogateescape")
            if _issubclass(t, _str):
                return _str_of(p)
            return None

        def fd_path(fd):  # where descriptor `fd` (an int or a str of digits) points
            try:
                return _readlink("/proc/self/fd/" + (fd if _type(fd) is _str else _int_text(fd)))
            except _oserror:
                return None

        def inside(real):
            return real == _root or real[:_len(_prefix)] == _prefix

        def check(p, dir_fd, what):
            if _issubclass(_type(p), _int):
                real = fd_path(p)  # an open descriptor: where does it point?
                if real is None or real[:1] != "/" or inside(_realpath(real, "/")):
                    return
                raise _error(f"sandbox: {what} on a file outside the sandbox is blocked")
            s = text(p)
            if s is None:
                raise _error(f"sandbox: {what} needs a str or bytes path")
            if s[:1] == "/" or dir_fd is None or dir_fd == -1 or dir_fd == -100:
                base = _getcwd()
            else:
                base = fd_path(dir_fd)
                if base is None or base[:1] != "/":
                    raise _error(f"sandbox: {what} relative to descriptor {dir_fd} is blocked")
            if not inside(_realpath(s, base)):
                raise _error(f"sandbox: {what} outside the sandbox is blocked: {s!r}")

        if event == "open":
            path, mode, flags = args
            writing = (_type(mode) is _str and ("w" in mode or "a" in mode or "x" in mode
                                                or "+" in mode)) or (
                _type(flags) is _int and flags & _write_flags)
            if not writing or path is None or _type(path) is _int or text(path) == "/dev/null":
                return
            check(path, None, "writing")
            s = text(path)
            if mode is None and s[:1] != "/":
                # os.open: the audit event does not say which dir_fd a relative
                # path is relative to, so it must stay inside from every open
                # directory (and the cwd, checked above).
                try:
                    fds = _listdir("/proc/self/fd")
                except _oserror:
                    raise _error("sandbox: cannot list open descriptors; use an absolute "
                                 "path") from None
                for fd in fds:
                    base = fd_path(fd)
                    if base is None or base[:1] != "/":
                        continue
                    try:
                        is_dir = _get(_stat(base), 0) & 0o170000 == 0o040000
                    except _oserror:
                        continue
                    if is_dir and not inside(_realpath(s, base)):
                        raise _error(f"sandbox: os.open({s!r}) may be relative to a directory "
                                     "outside the sandbox; blocked")
        elif event == "os.symlink":
            check(args[1], args[2], "os.symlink")
            target, link = text(args[0]), text(args[1])
            if target is None or link is None:
                raise _error("sandbox: os.symlink needs str or bytes paths")
            if target[:1] != "/":  # relative to the link's own directory
                base = _getcwd() if args[2] in (None, -1, -100) else fd_path(args[2])
                full = _realpath(link, base or "/")
                target = full[:full.rfind("/")] + "/" + target
            if not inside(_realpath(target, "/")):
                raise _error(f"sandbox: a symlink to {text(args[0])!r} outside the sandbox "
                             "is blocked")
        elif event == "object.__setattr__" or event == "object.__delattr__":
            for obj in _protected:
                if args[0] is obj:
                    raise _error("sandbox: changing the sandbox's own functions is blocked")
        elif event == "import":
            name = text(args[0])
            if name is None or name[name.rfind(".") + 1:] in _imports or name[:7] == "ctypes.":
                raise _error(f"sandbox: importing {name} is blocked")
        else:
            spec = _path_events(event)
            if spec is not None:
                for i, d in spec:
                    if i < _len(args) and args[i] is not None:
                        if event == "shutil.rmtree" and text(args[i]) is None:
                            continue  # a path object: the os.* events below it are checked
                        check(args[i], args[d] if d is not None and d < _len(args) else None,
                              event)
            elif event in _blocked or event[:7] == "socket." or event[:7] == "ctypes.":
                raise _error(f"sandbox: {event} is blocked (no network, no processes)")

    # Before the hook exists, so no audit event refuses it: the hook guards its
    # own functions (their code, defaults) from being replaced.
    defaults = list(hook.__defaults__)
    defaults[-1] = (hook, realpath)
    hook.__defaults__ = tuple(defaults)
    return hook


def _block_process_spawning():
    """Swap `_posixsubprocess.fork_exec` (it starts processes without an audit
    event) for a refusal; the hook refuses to import the module again."""
    import _posixsubprocess

    def fork_exec(*args, **kwargs):
        raise PermissionError("sandbox: starting processes is blocked")

    _posixsubprocess.fork_exec = fork_exec


def main(argv):
    """Set up the sandbox in this process, then run the program (see the docstring)."""
    root, program = argv[1], argv[2]
    cpu_s, mem_b, fsize_b, hook_on, readonly = (int(x) for x in argv[3:8])
    if readonly:
        try:
            _readonly_filesystem(root)
        except OSError as e:
            print(f"sandbox: read-only filesystem set-up failed: {e}", file=sys.stderr)
            return 3
    _set_limits(cpu_s, mem_b, fsize_b)
    if hook_on:
        _block_process_spawning()
        sys.addaudithook(_make_hook(root))
    sys.argv = [program]
    with open(program, encoding="utf-8") as f:
        source = f.read()
    exec(compile(source, program, "exec"), {"__name__": "__main__", "__builtins__": __builtins__})
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
