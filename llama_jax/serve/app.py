"""The FastAPI app: OpenAI's completions, chat completions, models and a health check.

`create_app` wires the HTTP side to a running `Scheduler`: each handler checks
and tokenizes the request, submits one `GenRequest` per prompt and reads their
events from an asyncio queue (the scheduler thread puts into it with
``call_soon_threadsafe``). With ``stream: true`` the events go out as
server-sent events as they come (``data: {...}``, then ``data: [DONE]``);
otherwise one JSON body when every choice is done. A client that goes away
cancels its requests, which frees their slots at the next step.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator, Callable, Sequence

from fastapi import FastAPI, Request
from fastapi.responses import StreamingResponse

from llama_jax.serve import sse
from llama_jax.serve.api_errors import APIError, install_handlers
from llama_jax.serve.scheduler import GenRequest, QueueFull, Scheduler
from llama_jax.serve.schemas import ChatRequest, CompletionRequest, stop_list, unsupported

# (messages as [{"role", "content"}]) -> (prompt token ids, extra stop strings)
ChatEncoder = Callable[[list[dict]], tuple[list[int], Sequence[str]]]
_POLL_S = 0.25  # how often a waiting handler checks that its client is still there


def create_app(scheduler: Scheduler, tokenizer, *, model_name: str, api_key: str | None = None,
               chat: ChatEncoder | None = None, add_bos: bool = True) -> FastAPI:
    """The app serving `scheduler`'s model under the name `model_name`.

    Args:
      scheduler: started or not; the app does not start or stop it.
      tokenizer: ``encode(text, bos, eos)``, ``decode``, ``eos_id``.
      model_name: the id ``/v1/models`` lists and requests must name.
      api_key: if set, every route but ``/health`` needs ``Authorization: Bearer <key>``.
      chat: renders chat messages to token ids (the checkpoint's chat
        template); None answers ``/v1/chat/completions`` with a 400.
      add_bos: start text prompts with BOS.
    """
    app = FastAPI(title="llama_jax", docs_url=None, redoc_url=None)
    install_handlers(app, api_key)
    engine = scheduler.engine
    vocab = engine.config.vocab_size
    created_at = int(time.time())

    @app.get("/health")
    async def health():
        return {"status": "ok", "model": model_name, "slots": engine.slots,
                "busy_slots": scheduler.busy_slots, "waiting": scheduler.waiting,
                "stats": dict(scheduler.stats), "trace_count": engine.trace_count}

    @app.get("/v1/models")
    async def models():
        return {"object": "list", "data": [{"id": model_name, "object": "model",
                                            "created": created_at, "owned_by": "llama_jax",
                                            "max_seq_len": engine.max_seq_len}]}

    def check_common(body) -> None:
        if body.model != model_name:
            raise APIError(404, f"the model {body.model!r} does not exist; this server serves "
                           f"{model_name!r} (GET /v1/models)", param="model",
                           code="model_not_found")
        bad = unsupported(body)
        if bad:
            raise APIError(400, bad[1], param=bad[0], code="unsupported_parameter")
        if (body.n or 1) > engine.slots:
            raise APIError(400, f"n={body.n} is more than the server's {engine.slots} slots "
                           "(--slots)", param="n")

    def encode_prompts(prompt) -> list[list[int]]:
        if isinstance(prompt, str):
            prompt = [prompt]
        if prompt and isinstance(prompt[0], int):
            prompt = [prompt]
        if not prompt:
            raise APIError(400, "the prompt is empty", param="prompt")
        out = []
        for p in prompt:
            ids = tokenizer.encode(p, bos=add_bos, eos=False) if isinstance(p, str) else list(p)
            if not ids:
                raise APIError(400, "a prompt has no tokens", param="prompt")
            if any(not 0 <= t < vocab for t in ids):
                raise APIError(400, f"prompt token ids must be in [0, {vocab})", param="prompt")
            out.append(ids)
        return out

    @app.post("/v1/completions")
    async def completions(body: CompletionRequest, request: Request):
        check_common(body)
        prompts = encode_prompts(body.prompt)
        return await run(request, body, prompts, body.max_tokens or 16, stop_list(body.stop),
                         chat_mode=False)

    @app.post("/v1/chat/completions")
    async def chat_completions(body: ChatRequest, request: Request):
        check_common(body)
        if chat is None:
            raise APIError(400, "this server has no chat template; start it with "
                           "--chat_template=NAME", param="messages")
        try:
            ids, extra_stop = chat([{"role": "system" if m.role == "developer" else m.role,
                                     "content": m.text()} for m in body.messages])
        except ValueError as e:
            raise APIError(400, f"messages: {e}", param="messages") from e
        max_tokens = body.max_completion_tokens or body.max_tokens
        if max_tokens is None:
            max_tokens = max(1, engine.max_seq_len - len(ids))
        return await run(request, body, [ids], max_tokens,
                         stop_list(body.stop) + list(extra_stop), chat_mode=True)

    async def run(request: Request, body, prompts: list[list[int]], max_tokens: int,
                  stop: list[str], *, chat_mode: bool):
        limit = engine.max_seq_len
        for p in prompts:
            if len(p) + max_tokens > limit:
                raise APIError(
                    400, f"this model's context is {limit} tokens; the prompt has {len(p)} "
                    f"and max_tokens is {max_tokens} ({len(p) + max_tokens} in all). Shorten "
                    "the prompt or ask for fewer tokens", param="max_tokens" if len(p) < limit
                    else "prompt", code="context_length_exceeded")
        n = body.n or 1
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue = asyncio.Queue()

        def sink(events):
            loop.call_soon_threadsafe(queue.put_nowait, events)

        reqs = [GenRequest(prompt=p, sink=sink, max_tokens=max_tokens, n=n,
                           temperature=body.temperature if body.temperature is not None else 1.0,
                           top_p=body.top_p if body.top_p is not None else 1.0, seed=body.seed,
                           stop=stop, stream=bool(body.stream), choice_offset=i * n)
                for i, p in enumerate(prompts)]
        try:
            for r in reqs:
                scheduler.submit(r)
        except QueueFull as e:
            for r in reqs:
                r.cancel()
            raise APIError(429, f"the server is busy ({e}); retry later", "rate_limit_error",
                           code="rate_limit_exceeded", headers={"Retry-After": "1"}) from None
        rid = ("chatcmpl-" if chat_mode else "cmpl-") + uuid.uuid4().hex
        meta = (chat_mode, rid, int(time.time()), body.model)
        prompt_tokens = sum(len(p) for p in prompts)
        events = _events(queue, request, reqs, n * len(prompts))
        if body.stream:
            include_usage = bool(body.stream_options and body.stream_options.include_usage)
            return StreamingResponse(_stream(events, meta, prompt_tokens, n * len(prompts),
                                             include_usage), media_type="text/event-stream")
        texts, reasons, used = {}, {}, 0
        async for ev in events:
            if ev[0] == "error":
                raise APIError(ev[1], ev[2], ev[3])
            if ev[0] == "done":
                texts[ev[1]], reasons[ev[1]] = ev[3], ev[2]
                used += ev[4]
        choices = [sse.choice(chat_mode, i, texts[i], reasons[i]) for i in sorted(texts)]
        return sse.envelope(*meta, choices, stream=False,
                            usage_obj=sse.usage(prompt_tokens, used))

    return app


async def _events(queue: asyncio.Queue, request: Request, reqs: list[GenRequest],
                  total: int) -> AsyncIterator[tuple]:
    """The requests' events until every choice is done or one fails; cancels on exit."""
    done = 0
    try:
        while done < total:
            try:
                batch = await asyncio.wait_for(queue.get(), timeout=_POLL_S)
            except TimeoutError:
                if await request.is_disconnected():
                    return
                continue
            for ev in batch:
                yield ev
                if ev[0] == "error":
                    return
                if ev[0] == "done":
                    done += 1
    finally:
        if done < total:
            for r in reqs:
                r.cancel()


async def _stream(events: AsyncIterator[tuple], meta: tuple, prompt_tokens: int, total: int,
                  include_usage: bool) -> AsyncIterator[str]:
    """Server-sent events of `events`, then usage and ``[DONE]``."""
    chat_mode = meta[0]
    started: set[int] = set()
    finished, used = 0, 0
    try:
        async for ev in events:
            if ev[0] == "error":
                yield sse.sse({"error": {"message": ev[2], "type": ev[3], "param": None,
                                         "code": None}})
                return
            index = ev[1]
            first = index not in started
            started.add(index)
            if ev[0] == "text":
                part = sse.chunk_choice(chat_mode, index, ev[2], None, first)
                yield sse.sse(sse.envelope(*meta, [part], stream=True))
                continue
            finished += 1
            used += ev[4]
            part = sse.chunk_choice(chat_mode, index, None if chat_mode else "", ev[2], first)
            last = finished == total and not include_usage
            yield sse.sse(sse.envelope(*meta, [part], stream=True,
                                       usage_obj=sse.usage(prompt_tokens, used) if last else None))
        if include_usage:
            yield sse.sse(sse.envelope(*meta, [], stream=True,
                                       usage_obj=sse.usage(prompt_tokens, used)))
        yield sse.DONE
    finally:
        await events.aclose()
