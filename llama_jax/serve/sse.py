"""Response bodies and server-sent-event chunks in OpenAI's shapes."""

from __future__ import annotations

import json


def sse(obj) -> str:
    """One server-sent event: ``data: <json>`` and a blank line."""
    return f"data: {json.dumps(obj, ensure_ascii=False)}\n\n"


DONE = "data: [DONE]\n\n"


def usage(prompt_tokens: int, completion_tokens: int) -> dict:
    """The ``usage`` object."""
    return {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens}


def choice(chat: bool, index: int, text: str, finish_reason: str | None) -> dict:
    """A whole choice of a non-streamed answer."""
    if chat:
        return {"index": index, "message": {"role": "assistant", "content": text},
                "logprobs": None, "finish_reason": finish_reason}
    return {"index": index, "text": text, "logprobs": None, "finish_reason": finish_reason}


def chunk_choice(chat: bool, index: int, text: str | None, finish_reason: str | None,
                 first: bool = False) -> dict:
    """One choice's piece of a streamed chunk (chat: a ``delta``, the first with the role)."""
    if not chat:
        return {"index": index, "text": text or "", "logprobs": None,
                "finish_reason": finish_reason}
    delta = {"role": "assistant"} if first else {}
    if text is not None:
        delta["content"] = text
    return {"index": index, "delta": delta, "logprobs": None, "finish_reason": finish_reason}


def envelope(chat: bool, rid: str, created: int, model: str, choices: list[dict], *,
             stream: bool, usage_obj: dict | None = None) -> dict:
    """The object around `choices`: a completion, a chat completion, or a chunk of one."""
    kind = ("chat.completion.chunk" if stream else "chat.completion") if chat else "text_completion"
    return {"id": rid, "object": kind, "created": created, "model": model,
            "system_fingerprint": None, "choices": choices, "usage": usage_obj}
