"""The unprivileged half of a sandboxed run (see `llama_jax.eval.sandbox`); stdlib only.

`sandbox_setup` execs a fresh ``python -I -S -B -c <this file> ROOT PROGRAM HOOK
MAX_FILES`` once the namespaces, mounts and rlimits are in place, so nothing
of the set-up (ctypes, the mount code) is loaded in this interpreter. Then:

1. ``HOOK=1``: an audit hook (`sys.addaudithook`; it cannot be removed) that
   refuses writes outside ROOT, more than MAX_FILES new files, processes,
   signals, sockets of every family (AF_UNIX included), sqlite (a ``file:``
   URI, ``ATTACH DATABASE`` and ``VACUUM INTO`` write wherever they like),
   ctypes and tampering with itself. Everything it uses is bound at install
   time as default arguments of functions defined here: module globals,
   `os.path`, builtins and the `os` module can be rebound by the program
   without effect. Paths are resolved by our own realpath over captured
   `posix` functions (symlinks, ``..``, the current directory and ``dir_fd``
   arguments included). Calls that raise no audit event
   (`_posixsubprocess.fork_exec`, `os.pidfd_open`,
   `signal.pidfd_send_signal`, `os.setpriority`, ...) are swapped for
   refusals, and the modules holding the originals cannot be imported again;
2. executes PROGRAM as ``__main__``.

The hook is a second wall, a best-effort, in-process check (a second thread
swapping a symlink between the check and the system call can race it); the
namespaces of `sandbox_setup` (PID, read-only mounts, network, disk cap) are
the first, and the only boundary that holds when the hook does not.
"""

import sys


def _make_hook(root_arg, max_files):
    """The audit hook for sandbox directory `root_arg`, allowing `max_files` new files."""
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
        "shutil.rmtree": ((0, 1),),
    }
    blocked = frozenset((
        "socket.__new__", "socket.getaddrinfo", "socket.gethostbyname", "socket.gethostbyaddr",
        "socket.gethostbyname_ex", "socket.connect", "socket.bind", "socket.sendto",
        "subprocess.Popen", "os.system", "os.exec", "os.posix_spawn", "os.spawn", "os.fork",
        "os.forkpty", "os.kill", "os.killpg", "pty.spawn", "os.startfile", "webbrowser.open",
        # Ways to reach or rewrite the hook, its frames or the process's limits.
        "gc.get_objects", "gc.get_referrers", "gc.get_referents", "sys.settrace",
        "sys.setprofile", "resource.setrlimit", "resource.prlimit",
        # sqlite writes files itself (a file: URI, ATTACH DATABASE, VACUUM
        # INTO), where the hook cannot see them, even from ":memory:".
        "sqlite3.connect", "sqlite3.enable_load_extension", "sqlite3.load_extension",
        "signal.pthread_kill",
    ))
    # Native modules that reach raw memory or start processes, matched on the
    # last dotted part (the one that names the extension's init function).
    # `posix`, `_signal` and `_imp` hold the originals of what
    # `_swap_unaudited_calls` replaced.
    blocked_imports = frozenset(("ctypes", "_ctypes", "_posixsubprocess", "_testcapi",
                                 "_testinternalcapi", "posix", "_signal", "_imp"))

    created = [0]  # new files so far; only the hook holds it

    def hook(event, args, _root=root, _prefix=root + "/", _realpath=realpath,
             _path_events=path_events.get, _blocked=blocked, _imports=blocked_imports,
             _write_flags=write_flags, _getcwd=posix.getcwd, _readlink=posix.readlink,
             _listdir=posix.listdir, _stat=posix.stat, _get=tuple.__getitem__, _type=type,
             _issubclass=issubclass, _str=str, _bytes=bytes, _int=int, _len=len,
             _str_of=str.__str__, _int_text=int.__repr__, _decode=bytes.decode,
             _oserror=OSError, _error=PermissionError, _created=created, _max_files=max_files,
             _creating=("os.mkdir", "os.symlink", "os.link", "os.mkfifo", "os.mknod"),
             _o_creat=os.O_CREAT, _protected=()):
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

        def count_new_file(p, what):  # the disk cap's second wall: at most _max_files
            try:
                _stat(p)
                return  # there already: rewriting it creates nothing
            except _oserror:
                pass
            if _created[0] >= _max_files:
                raise _error(f"sandbox: {what}: the run may create at most {_max_files} "
                             "files (SandboxLimits.max_files)")
            _created[0] += 1

        if event == "open":
            path, mode, flags = args
            writing = (_type(mode) is _str and ("w" in mode or "a" in mode or "x" in mode
                                                or "+" in mode)) or (
                _type(flags) is _int and flags & _write_flags)
            if not writing or path is None or _type(path) is _int or text(path) == "/dev/null":
                return
            check(path, None, "writing")
            s = text(path)
            if (_type(mode) is _str and "r" not in mode) or (_type(flags) is _int
                                                              and flags & _o_creat):
                count_new_file(s, "writing")
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
            count_new_file(link, event)
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
                if event in _creating and event != "os.symlink":
                    p = text(args[1] if event == "os.link" else args[0])
                    if p is not None:
                        count_new_file(p, event)
            elif event in _blocked or event[:7] == "socket." or event[:7] == "ctypes.":
                raise _error(f"sandbox: {event} is blocked (no network, no processes)")

    # Before the hook exists, so no audit event refuses it: the hook guards its
    # own functions (their code, defaults) from being replaced.
    defaults = list(hook.__defaults__)
    defaults[-1] = (hook, realpath)
    hook.__defaults__ = tuple(defaults)
    return hook


def _swap_unaudited_calls():
    """Swap calls that act on other processes without raising an audit event
    for refusals (`_posixsubprocess.fork_exec` starts processes, the pidfd
    calls signal any process of the user, `setpriority` and the scheduler
    calls renice them); the hook refuses to import their modules again, and
    `_imp.create_builtin` (how `importlib` makes a fresh copy of a built-in
    module without an import event) refuses them too."""
    import _frozen_importlib
    import _imp
    import _posixsubprocess
    import _signal
    import os
    import posix
    import signal

    def refuse(*args, **kwargs):
        raise PermissionError("sandbox: acting on other processes is blocked")

    _posixsubprocess.fork_exec = refuse
    for module in (os, posix):
        for name in ("pidfd_open", "setpriority", "sched_setaffinity", "sched_setscheduler",
                     "sched_setparam", "setpgid", "setsid", "setns", "unshare"):
            if hasattr(module, name):
                setattr(module, name, refuse)
    for module in (signal, _signal):
        if hasattr(module, "pidfd_send_signal"):
            module.pidfd_send_signal = refuse
    create_builtin = _imp.create_builtin
    refused = frozenset(("posix", "_signal", "_imp", "_posixsubprocess", "_ctypes"))

    def create_builtin_checked(spec, _create=create_builtin, _refused=refused,
                               _spec=_frozen_importlib.ModuleSpec, _str=str, _type=type):
        name = spec.name
        if _type(name) is not _str or name in _refused:
            raise PermissionError(f"sandbox: importing {name!r} is blocked")
        # A spec of our own, so the name _create reads is the one checked.
        return _create(_spec(name, None, origin="built-in"))

    _imp.create_builtin = create_builtin_checked


def main(argv):
    """Install the hook (HOOK=1), then run the program (see the docstring)."""
    root, program, hook_on, max_files = argv[1], argv[2], int(argv[3]), int(argv[4])
    if hook_on:
        _swap_unaudited_calls()
        sys.addaudithook(_make_hook(root, max_files))
    sys.argv = [program]
    with open(program, encoding="utf-8") as f:
        source = f.read()
    exec(compile(source, program, "exec"), {"__name__": "__main__", "__builtins__": __builtins__})
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
