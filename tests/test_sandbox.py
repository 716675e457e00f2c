"""The code sandbox: passes good code, kills loops, blocks network and stray writes."""

import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path

import pytest

from llama_jax.eval import sandbox, sandbox_setup

FAST = sandbox.SandboxLimits(timeout_s=5.0, cpu_s=5, memory_mb=512)


def test_correct_solution_passes_and_wrong_one_fails():
    good = "def add(a, b):\n    return a + b\n\nassert add(2, 3) == 5\nprint('ok')\n"
    res = sandbox.run_python(good, limits=FAST)
    assert res.passed and res.returncode == 0 and res.stdout == "ok\n"
    bad = "def add(a, b):\n    return a - b\n\nassert add(2, 3) == 5\n"
    res = sandbox.run_python(bad, limits=FAST)
    assert not res.passed and "AssertionError" in res.stderr


def test_infinite_loop_is_killed():
    res = sandbox.run_python("while True:\n    pass\n",
                             limits=sandbox.SandboxLimits(timeout_s=1.0, cpu_s=30))
    assert res.timed_out and not res.passed and res.returncode is None


def test_cpu_limit_kills_busy_child_before_wall_clock():
    res = sandbox.run_python("while True:\n    pass\n",
                             limits=sandbox.SandboxLimits(timeout_s=30.0, cpu_s=1))
    assert not res.passed and not res.timed_out and res.returncode != 0


class _Listener:
    """A local TCP server that records whether anyone connected."""

    def __init__(self, sock=None, address=("127.0.0.1", 0)):
        self.sock = sock if sock is not None else socket.socket()
        self.sock.bind(address)
        self.sock.listen(4)
        self.sock.settimeout(0.2)
        self.port = self.sock.getsockname()[1] if self.sock.family == socket.AF_INET else None
        self.connections = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def _serve(self):
        while not self._stop.is_set():
            try:
                conn, _ = self.sock.accept()
            except OSError:
                continue
            self.connections += 1
            conn.close()

    def close(self):
        self._stop.set()
        self._thread.join()
        self.sock.close()


@pytest.fixture()
def listener():
    srv = _Listener()
    yield srv
    srv.close()


def _connect_code(port):
    return ("import socket\n"
            f"s = socket.create_connection(('127.0.0.1', {port}), timeout=3)\n"
            "s.sendall(b'hello')\n")


def test_network_call_succeeds_without_guards(listener):
    # The control: the same program does reach the server when unguarded.
    res = sandbox.run_python(_connect_code(listener.port), limits=FAST,
                             network_namespace=False, audit_guard=False)
    assert res.passed, res.stderr
    assert listener.connections == 1


def test_network_call_is_blocked_by_the_audit_hook(listener):
    res = sandbox.run_python(_connect_code(listener.port), limits=FAST, network_namespace=False)
    assert not res.passed
    assert "PermissionError" in res.stderr and "blocked" in res.stderr
    assert listener.connections == 0


@pytest.mark.skipif(not sandbox.network_namespace_available(),
                    reason="unshare -rn is not permitted on this machine")
def test_network_call_is_blocked_by_the_namespace(listener):
    res = sandbox.run_python(_connect_code(listener.port), limits=FAST,
                             network_namespace=True, audit_guard=False)
    assert not res.passed and "OSError" in res.stderr
    assert listener.connections == 0


def test_write_outside_is_blocked_inside_is_allowed(tmp_path):
    target = tmp_path / f"escape_{uuid.uuid4().hex}.txt"
    keep = tmp_path / "keep.txt"
    keep.write_text("still here")
    code = (f"try:\n    open({str(target)!r}, 'w').write('x')\nexcept PermissionError as e:\n"
            "    print('blocked', e)\n"
            "import os\n"
            f"try:\n    os.remove({str(keep)!r})\nexcept PermissionError:\n"
            "    print('remove blocked')\n"
            "with open('inside.txt', 'w') as f:\n    f.write('fine')\n"
            "print(open('inside.txt').read())\n")
    res = sandbox.run_python(code, limits=FAST)
    assert res.passed, res.stderr
    assert res.stdout.splitlines()[0].startswith("blocked")
    assert "remove blocked" in res.stdout and res.stdout.rstrip().endswith("fine")
    assert not target.exists() and keep.read_text() == "still here"


def test_subprocess_is_blocked_and_memory_is_limited():
    res = sandbox.run_python("import subprocess\nsubprocess.run(['true'])\n", limits=FAST)
    assert not res.passed and "subprocess.Popen is blocked" in res.stderr
    res = sandbox.run_python("x = bytearray(2 * 1024 ** 3)\n", limits=FAST)
    assert not res.passed and "MemoryError" in res.stderr


def test_run_many_keeps_order():
    progs = ["import sys; sys.exit(0)", "import sys; sys.exit(3)", "print('x')"]
    res = sandbox.run_many(progs, limits=FAST, workers=2)
    assert [r.passed for r in res] == [True, False, True]
    assert res[1].returncode == 3


# --------------------------------------------------------------------------
# Escapes: each program tries to change a file outside its directory. The
# audit hook alone must stop every one, and so must the read-only mount
# namespace alone (where the kernel allows it).

_ESCAPES = {
    "rebind_os_path_realpath": (
        "os.path.realpath = lambda p, *a, **k: os.getcwd()\n"
        "open(TARGET, 'w').write('x')\n"),
    "rebind_guard_globals": (
        "import __main__\n__main__.ROOT = '/'\n__main__._inside = lambda p: True\n"
        "__main__._hook = lambda e, a: None\n"
        "open(TARGET, 'w').write('x')\n"),
    "rebind_builtins_and_posix": (
        "import builtins, posix\nhere = os.getcwd()\n"
        "builtins.isinstance = lambda *a: False\nbuiltins.len = lambda x: 0\n"
        "os.lstat = posix.lstat = lambda *a, **k: os.stat(here)\n"
        "os.getcwd = posix.getcwd = lambda: here\n"
        "os.chdir(OUTDIR)\nopen(NAME, 'w').write('x')\n"),
    "chdir_out_then_relative_write": "os.chdir(OUTDIR)\nopen(NAME, 'w').write('x')\n",
    "os_open": "os.close(os.open(TARGET, os.O_WRONLY | os.O_CREAT))\n",
    "os_open_relative_to_outside_dir_fd": (
        "fd = os.open(OUTDIR, os.O_RDONLY)\n"
        "os.close(os.open(NAME, os.O_WRONLY | os.O_CREAT, dir_fd=fd))\n"),
    "os_open_dotdot_from_inside_dir_fd": (
        "top = os.open('.', os.O_RDONLY)\nos.makedirs('a/b/c/d/e/f/g/h')\nos.chdir('a/b/c/d/e/f/g/h')\n"
        "rel = os.path.relpath(TARGET, os.path.dirname(SANDBOX))\n"
        "os.close(os.open('../' + rel, os.O_WRONLY | os.O_CREAT, dir_fd=top))\n"),
    "rename_victim_in": "os.rename(VICTIM, 'stolen')\n",
    "replace_onto_victim": "open('mine', 'w').write('x')\nos.replace('mine', VICTIM)\n",
    "remove_victim": "os.remove(VICTIM)\n",
    "unlink_victim_with_dir_fd": (
        "fd = os.open(OUTDIR, os.O_RDONLY)\nos.unlink(os.path.basename(VICTIM), dir_fd=fd)\n"),
    "truncate_victim": "os.truncate(VICTIM, 0)\n",
    "chmod_victim_by_descriptor": "os.chmod(os.open(VICTIM, os.O_RDONLY), 0o777)\n",
    "shutil_copy_out": "open('mine', 'w').write('x')\nshutil.copy('mine', TARGET)\n",
    "shutil_move_victim_in": "shutil.move(VICTIM, 'here')\n",
    "shutil_rmtree_outside": "shutil.rmtree(OUTDIR)\n",
    "pathlib_write_text": "pathlib.Path(TARGET).write_text('x')\n",
    "sqlite_database_outside": "sqlite3.connect(TARGET).execute('create table t (x)')\n",
    "symlink_to_outside_then_write": "os.symlink(OUTDIR, 'link')\nopen('link/' + NAME, 'w').write('x')\n",
    "relative_symlink_moved_to_point_outside": (
        "os.makedirs('a/b')\nos.symlink('../..', 'a/b/up')\nos.rename('a/b', 'b')\n"
        "rel = os.path.relpath(TARGET, os.path.dirname(SANDBOX))\n"
        "open('b/up/' + rel, 'w').write('x')\n"),
    "hard_link_to_victim": "os.link(VICTIM, 'hl')\nopen('hl', 'w').write('pwned')\n",
    # sqlite opens and writes files itself, out of the hook's sight.
    "sqlite_file_uri": (
        "sqlite3.connect('file:' + TARGET + '?mode=rwc', uri=True).execute('create table t (x)')\n"),
    "sqlite_attach_database": (
        "c = sqlite3.connect(':memory:')\nc.execute('attach database ? as o', (TARGET,))\n"
        "c.execute('create table o.t (x)')\nc.commit()\n"),
    "sqlite_vacuum_into": (
        "c = sqlite3.connect(':memory:')\nc.execute('create table t (x)')\n"
        "c.execute('vacuum into ?', (TARGET,))\n"),
}

# Attacks on the hook itself (meaningless without it).
_HOOK_ESCAPES = {
    "replace_hook_code_found_by_gc": (
        "import gc, types\n"
        "for o in gc.get_objects():\n"
        "    if isinstance(o, types.FunctionType) and 'guard' in o.__code__.co_filename:\n"
        "        o.__code__ = (lambda *a, **k: None).__code__\n"
        "open(TARGET, 'w').write('x')\n"),
    "import_ctypes": "import ctypes\nctypes.memmove\n",
    "load_ctypes_extension_under_another_name": (
        "import importlib.machinery, importlib.util\n"
        "path = importlib.util.find_spec('_ctypes').origin\n"
        "loader = importlib.machinery.ExtensionFileLoader('x._ctypes', path)\n"
        "importlib.util.module_from_spec(importlib.util.spec_from_loader('x._ctypes', loader))\n"),
    "reimport_posixsubprocess": (
        "import sys\nsys.modules.pop('_posixsubprocess', None)\nimport _posixsubprocess\n"),
    "posixsubprocess_fork_exec": (  # what subprocess.Popen calls, minus its audit event
        "import _posixsubprocess\nerr_r, err_w = os.pipe()\n"
        "_posixsubprocess.fork_exec([b'/bin/sh', b'-c', ('touch ' + TARGET).encode()],\n"
        "    (b'/bin/sh',), True, (err_w,), None, None, -1, -1, -1, -1, -1, -1, err_r, err_w,\n"
        "    True, False, -1, None, None, None, -1, None, False)\n"
        "import time\ntime.sleep(0.5)\nassert os.path.exists(TARGET)\n"),
}


def _escape_program(attack, target, victim):
    header = (
        "import os, pathlib, shutil, sqlite3\n"
        f"TARGET, VICTIM = {str(target)!r}, {str(victim)!r}\n"
        "OUTDIR, NAME = os.path.dirname(TARGET), os.path.basename(TARGET)\n"
        "SANDBOX = os.getcwd()\n")
    body = "".join("    " + line + "\n" for line in attack.splitlines())
    return (header + "try:\n" + body + "    print('ESCAPED')\n"
            "except (OSError, sqlite3.Error) as e:\n    print('BLOCKED', type(e).__name__, e)\n")


def _victim_in(folder):
    victim = folder / "victim.txt"
    victim.write_text("precious")
    victim.chmod(0o640)
    return folder / f"escape_{uuid.uuid4().hex}.txt", victim


@pytest.fixture()
def outside(tmp_path):
    return _victim_in(tmp_path)


def _visible_base() -> Path:
    """A writable folder the mount namespace does not hide: beside the tests, or
    the home folder when the checkout itself lies under a hidden one (/tmp)."""
    hidden = [os.path.realpath(h) for h in (*sandbox_setup._HIDDEN, tempfile.gettempdir())]
    for base in (Path(__file__).parent, Path.home()):
        real = os.path.realpath(base)
        if not any(real == h or real.startswith(h + os.sep) for h in hidden) and \
                os.access(real, os.W_OK):
            return base
    pytest.skip("no writable folder outside the ones the sandbox hides")


@pytest.fixture()
def outside_visible():
    # The mount namespace hides /tmp (where tmp_path lives) altogether; files in
    # a visible folder stay visible there, so its read-only mounts are tested.
    folder = Path(tempfile.mkdtemp(prefix=".sandbox_outside_", dir=_visible_base()))
    yield _victim_in(folder)
    shutil.rmtree(folder, ignore_errors=True)


def _assert_untouched(res, target, victim, layers):
    assert "ESCAPED" not in res.stdout, res.stdout + res.stderr
    assert res.stdout.startswith("BLOCKED"), res.stdout + res.stderr
    assert any(layer in res.stdout for layer in layers), res.stdout
    assert not target.exists()
    assert victim.read_text() == "precious" and victim.stat().st_mode & 0o777 == 0o640
    assert sorted(p.name for p in victim.parent.iterdir()) == ["victim.txt"]


@pytest.mark.parametrize("attack", sorted({**_ESCAPES, **_HOOK_ESCAPES}))
def test_audit_hook_alone_blocks_escape(attack, outside):
    target, victim = outside
    code = _escape_program({**_ESCAPES, **_HOOK_ESCAPES}[attack], target, victim)
    res = sandbox.run_python(code, limits=FAST, readonly_filesystem=False)
    _assert_untouched(res, target, victim, ["PermissionError sandbox:"])


_needs_mount_ns = pytest.mark.skipif(not sandbox.readonly_filesystem_available(),
                                     reason="no unprivileged user + mount namespaces here")


@_needs_mount_ns
@pytest.mark.parametrize("attack", sorted(_ESCAPES))
def test_readonly_mount_namespace_alone_blocks_escape(attack, outside_visible):
    target, victim = outside_visible
    code = _escape_program(_ESCAPES[attack], target, victim)
    res = sandbox.run_python(code, limits=FAST, readonly_filesystem=True, audit_guard=False)
    # Links and renames across the sandbox's bind mount fail before the
    # read-only check (EXDEV), sqlite says only that it cannot open the file.
    _assert_untouched(res, target, victim, ["Read-only file system", "cross-device link",
                                            "unable to open database"])


def test_escapes_succeed_without_either_layer(outside):
    # The control: the same programs do reach the files when unguarded.
    target, victim = outside
    for attack in ("rebind_os_path_realpath", "remove_victim"):
        res = sandbox.run_python(_escape_program(_ESCAPES[attack], target, victim),
                                 limits=FAST, readonly_filesystem=False, audit_guard=False)
        assert "ESCAPED" in res.stdout, res.stderr
    assert target.exists() and not victim.exists()


_BUSY_SOLUTION = """
import os, pathlib, shutil, tempfile, collections, typing

class P(typing.NamedTuple):
    x: int = 1

def solve(xs):
    return sorted(xs, reverse=True)[:2]

os.makedirs('work/sub', exist_ok=True)
pathlib.Path('work/sub/a.txt').write_text('a')
fd = os.open('work', os.O_RDONLY)
os.close(os.open('b.txt', os.O_WRONLY | os.O_CREAT, dir_fd=fd))
os.rename('b.txt', 'c.txt', src_dir_fd=fd, dst_dir_fd=fd)
os.close(fd)
os.symlink('sub/a.txt', 'work/link')
open('work/link', 'a').write('b')
with tempfile.NamedTemporaryFile('w', delete=False) as f:
    f.write('t')
shutil.copy(f.name, 'copy.txt')
with open(os.devnull, 'w') as f:
    f.write('discarded')
os.chdir('work')
open('rel.txt', 'w').write('r')
os.chdir('..')
shutil.rmtree('work')
assert not os.path.exists('work') and P().x == 1 and collections.Counter('aab')['a'] == 2
assert solve([3, 1, 4, 1, 5]) == [5, 4]
print('ok')
"""


@pytest.mark.parametrize("layers", ["hook", "mount", "both"])
def test_correct_solution_with_file_work_inside_passes(layers):
    if layers != "hook" and not sandbox.readonly_filesystem_available():
        pytest.skip("no unprivileged user + mount namespaces here")
    res = sandbox.run_python(_BUSY_SOLUTION, limits=FAST, audit_guard=layers != "mount",
                             readonly_filesystem=layers != "hook")
    assert res.passed and res.stdout == "ok\n", res.stderr


# --------------------------------------------------------------------------
# The evaluator and its neighbours: processes, the disk, host sockets.

HOOK_ONLY = {"readonly_filesystem": False, "network_namespace": False, "pid_namespace": False}
NAMESPACES_ONLY = {"audit_guard": False}
_needs_pid_ns = pytest.mark.skipif(not sandbox.pid_namespace_available(),
                                   reason="no unprivileged PID namespaces here")


@pytest.fixture()
def sibling():
    """A sleeping process of the same user that the sandbox must not reach."""
    proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    yield proc
    proc.kill()
    proc.wait()


def _harm_program(pids):
    return (
        "import os, signal\n"
        f"for pid in [p for p in (os.getppid(), *{tuple(pids)!r}) if p > 1]:\n"
        "    for name, act in (\n"
        "            ('pidfd', lambda: signal.pidfd_send_signal(os.pidfd_open(pid), signal.SIGKILL)),\n"
        "            ('renice', lambda: os.setpriority(os.PRIO_PROCESS, pid, 19)),\n"
        "            ('kill', lambda: os.kill(pid, signal.SIGKILL))):\n"
        "        try:\n"
        "            act()\n"
        "            print('DID', name, pid)\n"
        "        except Exception as e:\n"
        "            print('FAILED', name, pid, type(e).__name__)\n")


@pytest.mark.parametrize("walls", [pytest.param(NAMESPACES_ONLY, marks=_needs_pid_ns), HOOK_ONLY],
                         ids=["pid_namespace", "hook"])
def test_program_cannot_signal_or_renice_the_evaluator_or_its_neighbours(walls, sibling):
    evaluator = os.getpid()
    res = sandbox.run_python(_harm_program([sibling.pid, evaluator]), limits=FAST, **walls)
    assert "DID" not in res.stdout, res.stdout + res.stderr
    assert res.stdout.count("FAILED") >= 6, res.stdout + res.stderr
    assert sibling.poll() is None  # still running, and we are too
    assert os.getpriority(os.PRIO_PROCESS, sibling.pid) == os.getpriority(os.PRIO_PROCESS, 0)
    assert ("pid" in res.walls) == (walls is NAMESPACES_ONLY)


def _processes_with(token):
    found = []
    for pid in os.listdir("/proc"):
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                if token.encode() in f.read():
                    found.append(int(pid))
        except OSError:
            pass
    return found


@_needs_pid_ns
def test_no_process_outlives_the_sandbox():
    # A new session leaves the process group the timeout kills; the PID
    # namespace takes it down with the program all the same.
    token = f"sandbox-daemon-{uuid.uuid4().hex}"
    code = ("import os, sys, time\n"
            "if os.fork() == 0:\n"
            "    os.setsid()\n"
            f"    os.execv(sys.executable, [sys.executable, '-c', 'import time; time.sleep(30)', {token!r}])\n"
            "try:\n    os.setsid()\nexcept OSError:\n    pass\ntime.sleep(0.5)\nprint('forked', flush=True)\ntime.sleep(30)\n")
    res = sandbox.run_python(code, limits=sandbox.SandboxLimits(timeout_s=1.5, cpu_s=5),
                             **NAMESPACES_ONLY)
    # The kernel kills a namespace's processes when its init dies, but not at
    # the same instant: a busy machine may still be reaping them. One that
    # outlives the sandbox would sleep for 30 s, far past this grace.
    deadline = time.monotonic() + 5.0
    left = _processes_with(token)
    while left and time.monotonic() < deadline:
        time.sleep(0.1)
        left = _processes_with(token)
    for pid in left:
        os.kill(pid, signal.SIGKILL)
    assert res.timed_out and res.stdout == "forked\n", res.stderr
    assert left == []


_CTYPES_ROUTE = """
import sys
seen, todo = set(), [object]
while todo:
    cls = todo.pop()
    for sub in type.__subclasses__(cls):
        if sub not in seen:
            seen.add(sub)
            todo.append(sub)
found = {c.__name__: c for c in seen if 'ctypes' in str(type.__dict__['__module__'].__get__(c))}
print('CTYPES', len(found), sorted(m for m in sys.modules if 'ctypes' in m))
if 'CDLL' in found:  # raw libc: no audit hook sees any of this
    libc = found['CDLL'](None)
    pid = libc.fork()
    if pid == 0:
        libc._exit(0)
    print('DID fork' if pid > 0 else 'FAILED fork')
    print('DID socket' if libc.socket(2, 1, 0) >= 0 else 'FAILED socket')
    print('DID shell' if libc.system(b'true') == 0 else 'FAILED shell')
import os, socket
for name, act in (('fork', os.fork), ('socket', socket.socket), ('shell', lambda: os.system('true')),
                  ('ctypes', lambda: __import__('ctypes'))):
    try:
        if act() == 0 and name == 'fork':
            os._exit(0)
        print('DID', name)
    except Exception as e:
        print('FAILED', name, type(e).__name__)
"""


def test_no_ctypes_reachable_through_subclasses_and_hook_holds():
    res = sandbox.run_python(_CTYPES_ROUTE, limits=FAST)
    assert res.passed, res.stderr
    assert res.stdout.startswith("CTYPES 0 []\n"), res.stdout
    assert "DID" not in res.stdout and res.stdout.count("FAILED") == 4, res.stdout


_BURST = """
import os
made, error = 0, None
try:
    for i in range(COUNT):
        with open(f'f{i}', 'wb') as f:
            f.write(b'x' * SIZE)
        made += 1
except OSError as e:
    error = e
total = sum(os.path.getsize(n) for n in os.listdir('.') if n.startswith('f'))
files = sum(n.startswith('f') for n in os.listdir('.'))
print(made, files, total, type(error).__name__, error)
"""


def _burst(count, size):
    return _BURST.replace("COUNT", str(count)).replace("SIZE", str(size))


@_needs_mount_ns
def test_disk_cap_stops_a_burst_of_bytes():
    limits = sandbox.SandboxLimits(timeout_s=10.0, cpu_s=5, memory_mb=512, disk_mb=4)
    res = sandbox.run_python(_burst(12, 1 << 20), limits=limits, **NAMESPACES_ONLY)
    made, files, total, error = res.stdout.split()[:4]
    assert error == "OSError" and "No space left" in res.stdout, res.stdout + res.stderr
    assert int(total) <= 4 << 20 and int(made) < 4


@pytest.mark.parametrize("walls", [pytest.param(NAMESPACES_ONLY, marks=_needs_mount_ns), HOOK_ONLY],
                         ids=["tmpfs", "hook"])
def test_file_cap_stops_a_burst_of_files(walls):
    limits = sandbox.SandboxLimits(timeout_s=10.0, cpu_s=5, memory_mb=512, max_files=20,
                                   file_size_mb=1)
    res = sandbox.run_python(_burst(200, 10), limits=limits, **walls)
    made, files, total, error = res.stdout.split()[:4]
    assert error in ("OSError", "PermissionError"), res.stdout + res.stderr
    assert int(made) <= 20 and int(files) <= 20
    assert int(total) <= 20 * (1 << 20)  # at most max_files files of at most file_size_mb


class _UnixListener(_Listener):
    """An AF_UNIX server on a socket file under the host's /tmp."""

    def __init__(self):
        self.folder = tempfile.mkdtemp(prefix="sbx_sock_")
        self.path = os.path.join(self.folder, "host.sock")
        super().__init__(socket.socket(socket.AF_UNIX), self.path)

    def close(self):
        super().close()
        shutil.rmtree(self.folder, ignore_errors=True)


@pytest.mark.parametrize("walls", [pytest.param({}, marks=_needs_mount_ns), NAMESPACES_ONLY,
                                   HOOK_ONLY], ids=["all", "namespaces", "hook"])
def test_host_unix_socket_is_out_of_reach(walls):
    if walls is NAMESPACES_ONLY and not sandbox.readonly_filesystem_available():
        pytest.skip("no unprivileged user + mount namespaces here")
    srv = _UnixListener()
    try:
        code = ("import socket, time\ns = socket.socket(socket.AF_UNIX)\n"
                f"s.connect({srv.path!r})\ns.sendall(b'hello')\ntime.sleep(0.3)\n")
        res = sandbox.run_python(code, limits=FAST, **walls)
        time.sleep(0.3)
        assert not res.passed and ("FileNotFoundError" in res.stderr
                                   or "PermissionError: sandbox:" in res.stderr), res.stderr
        assert srv.connections == 0
    finally:
        srv.close()


_FRESH_BUILTIN_ROUTES = {  # ways to a copy of a module whose calls the hook swapped
    "importlib_builtin_spec": (
        "import importlib.machinery, importlib.util\n"
        "spec = importlib.machinery.BuiltinImporter.find_spec('_signal')\n"
        "importlib.util.module_from_spec(spec).pidfd_send_signal\n"),
    "sys_modules_pop": "import sys\nsys.modules.pop('posix')\nimport posix\nposix.pidfd_open\n",
    "imp_create_builtin": (
        "import _imp, importlib.machinery\n"
        "_imp.create_builtin(importlib.machinery.ModuleSpec('posix', None)).pidfd_open\n"),
}


@pytest.mark.parametrize("route", sorted(_FRESH_BUILTIN_ROUTES))
def test_hook_refuses_fresh_copies_of_swapped_modules(route):
    res = sandbox.run_python(_FRESH_BUILTIN_ROUTES[route], limits=FAST, **HOOK_ONLY)
    assert not res.passed and "PermissionError: sandbox: importing" in res.stderr, res.stderr


@pytest.mark.skipif(shutil.which("unshare") is None, reason="needs util-linux unshare")
def test_namespaces_hold_when_the_interpreter_lives_under_a_hidden_folder(tmp_path, monkeypatch):
    """A virtualenv under /tmp (as CI clones often are): /tmp is hidden inside
    the mount namespace, so the sandbox must exec the real interpreter, not the
    venv's symlink, or the namespaces would silently fall away."""
    link_dir = Path(tempfile.mkdtemp(prefix="sbx_venv_"))  # under the hidden temp dir
    try:
        link = link_dir / "python"
        link.symlink_to(os.path.realpath(sys.executable))
        monkeypatch.setattr(sys, "executable", str(link))
        sandbox.readonly_filesystem_available.cache_clear()
        available = sandbox.readonly_filesystem_available()
        baseline = subprocess.run(["unshare", "-rm", "true"], capture_output=True).returncode == 0
        assert available == baseline  # the walls do not depend on where the venv lives
        if available:
            res = sandbox.run_python("print('ok')", readonly_filesystem=True)
            assert res.passed and res.stdout.strip() == "ok", res.stderr
            assert "mount" in res.walls
    finally:
        sandbox.readonly_filesystem_available.cache_clear()
        shutil.rmtree(link_dir, ignore_errors=True)
