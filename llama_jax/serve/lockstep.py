"""Serving from several processes: every process runs the same device calls.

A model sharded over several hosts is one SPMD program: every process must
make the same compiled call with the same arguments, in the same order.
Only process 0 runs the HTTP server and the `Scheduler`; it talks to a
`LockstepEngine`, which has `SlotEngine`'s interface and, before each device
call, broadcasts the call (an opcode and its arguments packed in one fixed
int32 vector) to every process with `multihost_utils.broadcast_one_to_all`.
The other processes run `follow`, which receives each command and makes the
same call on their own `SlotEngine`, until process 0 sends STOP.

While no request is running, process 0 sends a NOOP every `heartbeat_s`
seconds, so the followers never sit in one collective for long (a CPU
collective can time out; a dead leader is then noticed by the job's own
heartbeats).

The reference is the single-process engine: a 2-process server answers as a
1-process one does (tests/test_serve_multihost.py).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Sequence

import jax
import numpy as np
from absl import logging
from jax.experimental import multihost_utils

from llama_jax.serve.slots import SlotEngine

NOOP, PREFILL, COPY, DECODE, RECOVER, STOP = range(6)
_HEADER = 10  # op, slot, start, bucket, n_tokens, src, dst, temperature, top_p, key words


def _key_words(key: jax.Array) -> np.ndarray:
    """A typed PRNG key as its raw uint32 words viewed as int32."""
    return np.asarray(jax.random.key_data(key), np.uint32).reshape(-1).view(np.int32)


class Command:
    """The packed form of one engine call: `encode` on process 0, `decode` everywhere."""

    def __init__(self, engine: SlotEngine):
        self.key_size = _key_words(jax.random.key(0)).size
        self.max_bucket = max(engine.buckets)
        self.slots = engine.slots
        self.size = _HEADER + self.key_size + self.max_bucket + self.slots

    def encode(self, op: int, *, slot: int = 0, start: int = 0, bucket: int = 0,
               tokens: Sequence[int] = (), src: int = 0, dst: int = 0,
               temperature: float = 0.0, top_p: float = 1.0, key: jax.Array | None = None,
               active: np.ndarray | None = None) -> np.ndarray:
        """One int32 vector holding the call (floats by their bits)."""
        if len(tokens) > self.max_bucket:
            raise ValueError(f"a prefill chunk of {len(tokens)} tokens is longer than the "
                             f"largest bucket ({self.max_bucket})")
        buf = np.zeros((self.size,), np.int32)
        floats = np.asarray([temperature, top_p], np.float32).view(np.int32)
        buf[:9] = [op, slot, start, bucket, len(tokens), src, dst, *floats]
        buf[9] = self.key_size
        k0 = _HEADER
        if key is not None:
            buf[k0:k0 + self.key_size] = _key_words(key)
        t0 = k0 + self.key_size
        buf[t0:t0 + len(tokens)] = np.asarray(tokens, np.int32)
        if active is not None:
            buf[t0 + self.max_bucket:] = np.asarray(active, bool)
        return buf

    def decode(self, buf: np.ndarray) -> dict:
        """The call's fields from its vector (what `encode` packed)."""
        buf = np.asarray(buf, np.int32)
        op, slot, start, bucket, n, src, dst = (int(v) for v in buf[:7])
        temperature, top_p = (float(v) for v in buf[7:9].view(np.float32))
        k0, t0 = _HEADER, _HEADER + self.key_size
        key = jax.random.wrap_key_data(buf[k0:t0].view(np.uint32))
        return dict(op=op, slot=slot, start=start, bucket=bucket, tokens=buf[t0:t0 + n].tolist(),
                    src=src, dst=dst, temperature=temperature, top_p=top_p, key=key,
                    active=buf[t0 + self.max_bucket:].astype(bool))


def execute(engine: SlotEngine, call: dict):
    """Make the decoded `call` on `engine`; returns what the engine returns."""
    op = call["op"]
    if op == PREFILL:
        return engine.prefill(call["slot"], call["tokens"], call["start"], call["bucket"],
                              call["key"], call["temperature"], call["top_p"])
    if op == COPY:
        return engine.copy(call["src"], call["dst"], call["key"])
    if op == DECODE:
        return engine.decode(call["active"])
    if op == RECOVER:
        return engine.recover()
    return None


class LockstepEngine:
    """Process 0's `SlotEngine`: each call is broadcast, then made here too.

    Args:
      engine: this process's `SlotEngine` (every process builds the same one).
      heartbeat_s: seconds without a call after which a NOOP is broadcast.
    """

    def __init__(self, engine: SlotEngine, heartbeat_s: float = 2.0):
        self.engine = engine
        self.command = Command(engine)
        self._lock = threading.Lock()
        self._last = time.monotonic()
        self._closed = False
        self._beat = threading.Thread(target=self._heartbeat, args=(heartbeat_s,), daemon=True,
                                      name="lockstep-heartbeat")
        self._beat.start()

    def __getattr__(self, name):  # slots, buckets, chunks, max_seq_len, trace_count, ...
        return getattr(self.engine, name)

    def _send(self, op: int, **fields):
        with self._lock:
            if self._closed:
                raise RuntimeError("the lockstep engine is closed")
            buf = self.command.encode(op, **fields)
            multihost_utils.broadcast_one_to_all(buf)
            self._last = time.monotonic()
            if op == STOP:
                self._closed = True
                return None
            return execute(self.engine, self.command.decode(buf))

    def _heartbeat(self, every: float) -> None:
        while not self._closed:
            time.sleep(every / 2)
            if time.monotonic() - self._last >= every and not self._closed:
                try:
                    self._send(NOOP)
                except RuntimeError:
                    return

    def prefill(self, slot: int, tokens: Sequence[int], start: int, bucket: int, key: jax.Array,
                temperature: float, top_p: float) -> None:
        """`SlotEngine.prefill` on every process."""
        self._send(PREFILL, slot=slot, tokens=list(tokens), start=start, bucket=bucket, key=key,
                   temperature=temperature, top_p=top_p)

    def copy(self, src: int, dst: int, key: jax.Array) -> None:
        """`SlotEngine.copy` on every process."""
        self._send(COPY, src=src, dst=dst, key=key)

    def decode(self, active: np.ndarray) -> np.ndarray:
        """`SlotEngine.decode` on every process; the sampled tokens."""
        return self._send(DECODE, active=active)

    def recover(self) -> bool:
        """`SlotEngine.recover` on every process."""
        return bool(self._send(RECOVER))

    def warmup(self) -> None:
        """`SlotEngine.warmup`'s calls, each on every process."""
        key = jax.random.key(0)
        for b in self.engine.buckets:
            self.prefill(0, [0], 0, b, key, 0.0, 1.0)
        self.copy(0, 0, key)
        self.decode(np.zeros((self.engine.slots,), bool))

    def close(self) -> None:
        """Tell every follower to return (idempotent)."""
        if not self._closed:
            self._send(STOP)


def follow(engine: SlotEngine) -> int:
    """A follower's loop: make every call process 0 broadcasts; returns the calls made.

    A call that fails here fails on process 0 too (same program, same
    arguments); the failure is swallowed so the follower stays in step, and
    process 0's `Scheduler` decides what to do (it sends RECOVER if the
    state was lost); it is logged here.
    """
    command = Command(engine)
    calls = 0
    while True:
        buf = np.asarray(multihost_utils.broadcast_one_to_all(
            np.zeros((command.size,), np.int32)))
        call = command.decode(buf)
        if call["op"] == STOP:
            return calls
        if call["op"] == NOOP:
            continue
        try:
            execute(engine, call)
        except Exception as e:  # noqa: BLE001 - process 0 sees the same failure and handles it
            logging.warning("device call %d (op %d) failed on this process: %s", calls,
                            call["op"], e)
        calls += 1
