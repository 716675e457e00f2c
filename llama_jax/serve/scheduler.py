"""The continuous-batching scheduler: one thread that owns the device.

HTTP handlers `submit` a `GenRequest` (one prompt, ``n`` choices) and read its
events from their `sink`. The thread loops: take waiting requests while
enough slots are free (first come, first served), run a bounded number of
prefill chunks, then one decode step over every slot; finished choices free
their slot at once, so new requests join the very next step.

Faults stay inside their request: an exception while handling one request
(prefill, detokenizing, a stop check) fails that request with a 500 event and
frees its slots; a request past its deadline gets a 504 event; a cancelled one
(the client went away) is dropped. A full queue is refused at `submit`
(`QueueFull`, which the app turns into a 429).
"""

from __future__ import annotations

import collections
import dataclasses
import secrets
import threading
import time
import zlib
from collections.abc import Callable, Sequence

import jax
import numpy as np
from absl import logging

from llama_jax.serve.slots import SlotEngine
from llama_jax.serve.text import TextTracker


class QueueFull(Exception):
    """The scheduler holds `max_queue` waiting requests already."""


@dataclasses.dataclass(eq=False)
class GenRequest:
    """One prompt to continue ``n`` times; events go to `sink`.

    Events (lists of tuples, one call per scheduler step):
      ("text", choice, delta)                 streamed text (only if `stream`)
      ("done", choice, finish_reason, text, completion_tokens)
      ("error", status, message, type)        the request failed; no more events
    """

    prompt: list[int]
    sink: Callable[[list[tuple]], None]
    max_tokens: int
    n: int = 1
    temperature: float = 0.0
    top_p: float = 1.0
    seed: int | None = None
    stop: Sequence[str] = ()
    stream: bool = False
    choice_offset: int = 0
    timeout: float | None = None
    cancelled: bool = False
    # Set by the scheduler.
    deadline: float = float("inf")
    slots: list[int] = dataclasses.field(default_factory=list)
    chunks: list[tuple[int, int, int]] = dataclasses.field(default_factory=list)
    failed: bool = False

    def cancel(self) -> None:
        """Drop this request at the next step (the client went away)."""
        self.cancelled = True


@dataclasses.dataclass(eq=False)
class _Choice:
    request: GenRequest
    index: int
    text: TextTracker
    tokens: list[int] = dataclasses.field(default_factory=list)
    done: bool = False


def choice_key(seed: int, prompt: Sequence[int], choice: int) -> jax.Array:
    """The key of `llama_jax.infer.engine.row_keys`: seeded runs sample like `Generator`."""
    crc = zlib.crc32(np.asarray(prompt, np.int32).tobytes()) & 0x7FFFFFFF
    return jax.random.fold_in(jax.random.fold_in(jax.random.key(seed), crc), choice)


class Scheduler:
    """Runs `engine` in a background thread for requests from any thread.

    Args:
      engine: the slots and compiled functions.
      tokenizer: ``decode`` and ``eos_id`` (text, stop strings, EOS).
      max_queue: most requests waiting for a slot; more are refused.
      request_timeout: seconds a request may take (None: no limit).
      prefill_chunks: most prefill chunks between two decode steps.
    """

    def __init__(self, engine: SlotEngine, tokenizer, *, max_queue: int = 64,
                 request_timeout: float | None = None, prefill_chunks: int = 4):
        self.engine = engine
        self.tokenizer = tokenizer
        self.max_queue = int(max_queue)
        self.request_timeout = request_timeout
        self.prefill_chunks = max(1, int(prefill_chunks))
        self._cond = threading.Condition()
        self._waiting: collections.deque[GenRequest] = collections.deque()
        self._prefilling: list[GenRequest] = []
        self._running: dict[int, _Choice] = {}  # slot -> choice
        self._free = list(range(engine.slots))
        self._stop = False
        self.stats = collections.Counter()
        self._thread = threading.Thread(target=self._loop, name="llama-jax-scheduler", daemon=True)

    def start(self) -> None:
        """Start the scheduler thread."""
        self._thread.start()

    def close(self) -> None:
        """Stop the thread (waiting and running requests get a 503 event)."""
        with self._cond:
            self._stop = True
            self._cond.notify()
        if self._thread.is_alive():
            self._thread.join(timeout=30)

    @property
    def busy_slots(self) -> int:
        """Slots held by running or prefilling requests."""
        return self.engine.slots - len(self._free)

    @property
    def waiting(self) -> int:
        """Requests waiting for a slot."""
        return len(self._waiting)

    def submit(self, request: GenRequest) -> None:
        """Queue `request`; raises `QueueFull` when `max_queue` are waiting."""
        if request.n > self.engine.slots:
            raise ValueError(f"n={request.n} is more than the server's {self.engine.slots} slots")
        timeout = request.timeout if request.timeout is not None else self.request_timeout
        request.deadline = time.monotonic() + timeout if timeout else float("inf")
        with self._cond:
            if self._stop:
                raise QueueFull("the server is shutting down")
            if len(self._waiting) >= self.max_queue:
                self.stats["rejected"] += 1
                raise QueueFull(f"{len(self._waiting)} requests are waiting (--max_queue)")
            self._waiting.append(request)
            self._cond.notify()

    # ----- the thread ---------------------------------------------------------
    def _loop(self) -> None:
        while True:
            with self._cond:
                while not (self._stop or self._waiting or self._prefilling or self._running):
                    self._cond.wait()
                if self._stop:
                    break
                self._admit()
            events: dict[GenRequest, list[tuple]] = collections.defaultdict(list)
            try:
                self._expire(events)
                self._prefill(events)
                if self._running:
                    self._step(events)
            except Exception as e:  # noqa: BLE001 - a scheduler bug must not stop serving
                self._fail_all(events, e)
            self._flush(events)
        self._shutdown()

    def _fail_all(self, events, error: BaseException) -> None:
        """Fail every request that holds a slot (their caches are gone)."""
        self.engine.recover()
        held = set(self._prefilling) | {c.request for c in self._running.values()}
        for req in held:
            self._fail(req, events, error)

    def _admit(self) -> None:
        while self._waiting and len(self._free) >= self._waiting[0].n:
            req = self._waiting.popleft()
            if req.seed is None:
                req.seed = secrets.randbits(31)
            req.slots = [self._free.pop(0) for _ in range(req.n)]
            req.chunks = self.engine.chunks(len(req.prompt))
            self._prefilling.append(req)
            self.stats["admitted"] += 1

    def _end(self, req: GenRequest, events, error: tuple | None = None, reason: str = "") -> None:
        """Take `req` out of every list and free its slots."""
        with self._cond:
            if req in self._waiting:
                self._waiting.remove(req)
        if req in self._prefilling:
            self._prefilling.remove(req)
        for slot in req.slots:
            self._running.pop(slot, None)
            self._free.append(slot)
        req.slots = []
        if error is not None:
            req.failed = True
            events[req] = [error]
        if reason:
            self.stats[reason] += 1

    def _expire(self, events) -> None:
        now = time.monotonic()
        with self._cond:
            queued = list(self._waiting)
        live = {c.request for c in self._running.values()}
        for req in queued + self._prefilling + list(live):
            if req.cancelled:
                self._end(req, events, reason="cancelled")
            elif now > req.deadline:
                self._end(req, events, ("error", 504, "the request ran past the server's "
                                        "request timeout (--request_timeout)", "timeout_error"),
                          reason="timeout")

    def _fail(self, req: GenRequest, events, error: BaseException) -> None:
        logging.exception("request failed: %s", error)
        self._end(req, events, ("error", 500, f"the server failed on this request: "
                                f"{type(error).__name__}: {error}", "server_error"),
                  reason="failed")

    def _prefill(self, events) -> None:
        budget = self.prefill_chunks
        for req in list(self._prefilling):
            try:
                keys = [choice_key(req.seed, req.prompt, j) for j in range(req.n)]
                while req.chunks and budget > 0:
                    start, length, bucket = req.chunks.pop(0)
                    self.engine.prefill(req.slots[0], req.prompt[start:start + length], start,
                                        bucket, keys[0], req.temperature, req.top_p)
                    budget -= 1
                if req.chunks:
                    return
                for j, slot in enumerate(req.slots[1:], 1):
                    self.engine.copy(req.slots[0], slot, keys[j])
                self._prefilling.remove(req)
                for j, slot in enumerate(req.slots):
                    self._running[slot] = _Choice(req, req.choice_offset + j,
                                                  TextTracker(self.tokenizer, req.prompt, req.stop))
            except Exception as e:  # noqa: BLE001 - one request's fault stays in it
                self._fail(req, events, e)
                if self.engine.recover():  # the device call lost every slot's cache
                    self._fail_all(events, e)
                    return
            if budget <= 0:
                return

    def _step(self, events) -> None:
        active = np.zeros((self.engine.slots,), bool)
        active[list(self._running)] = True
        try:
            tokens = self.engine.decode(active)
        except Exception as e:  # noqa: BLE001 - the device step failed: fail its requests
            self._fail_all(events, e)
            return
        eos = self.tokenizer.eos_id
        for slot, choice in list(self._running.items()):
            req = choice.request
            if req.failed or slot not in self._running:
                continue
            try:
                self._advance(choice, int(tokens[slot]), eos, events)
            except Exception as e:  # noqa: BLE001 - one request's fault stays in it
                self._fail(req, events, e)
                continue
            if choice.done:
                self._running.pop(slot)
                self._free.append(slot)
                req.slots.remove(slot)
                if not req.slots:
                    self.stats["completed"] += 1

    def _advance(self, choice: _Choice, token: int, eos: int | None, events) -> None:
        req = choice.request
        reason = None
        if eos is not None and token == eos:
            reason = "stop"
        else:
            choice.tokens.append(token)
            if choice.text.stop and choice.text.hit_stop(choice.tokens):
                reason = "stop"
            elif len(choice.tokens) >= req.max_tokens:
                reason = "length"
        if reason is None:
            if req.stream:
                delta = choice.text.delta(choice.tokens)
                if delta:
                    events[req].append(("text", choice.index, delta))
            return
        choice.done = True
        out = []
        if req.stream:
            delta = choice.text.delta(choice.tokens, final=True)
            if delta:
                out.append(("text", choice.index, delta))
        out.append(("done", choice.index, reason, choice.text.text(choice.tokens),
                    len(choice.tokens)))
        events[req].extend(out)

    def _flush(self, events) -> None:
        for req, evs in events.items():
            if not evs:
                continue
            try:
                req.sink(evs)
            except Exception:  # noqa: BLE001 - its reader is gone (closed event loop)
                req.cancel()

    def _shutdown(self) -> None:
        events: dict[GenRequest, list[tuple]] = collections.defaultdict(list)
        with self._cond:
            reqs = list(self._waiting)
        reqs += self._prefilling + list({c.request for c in self._running.values()})
        for req in reqs:
            self._end(req, events, ("error", 503, "the server is shutting down",
                                    "server_error"))
        self._flush(events)
