"""The code sandbox: passes good code, kills loops, blocks network and stray writes."""

import socket
import threading
import uuid

import pytest

from llama_jax.eval import sandbox

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

    def __init__(self):
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(4)
        self.sock.settimeout(0.2)
        self.port = self.sock.getsockname()[1]
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
