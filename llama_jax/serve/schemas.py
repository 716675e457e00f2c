"""Request bodies of the OpenAI API, as pydantic models that refuse unknown fields.

Fields the API defines but this server does not implement (``logprobs``,
``echo``, ``suffix``, ``best_of`` > 1, penalties, ``logit_bias``) are accepted
by the schema so that `unsupported` can answer them with a 400 that names the
field, rather than a bare "extra field" 422.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field

Temperature = Annotated[float, Field(ge=0.0, le=2.0)]
TopP = Annotated[float, Field(gt=0.0, le=1.0)]
Stop = str | Annotated[list[str], Field(max_length=4)] | None


class StreamOptions(BaseModel):
    """``stream_options``: ``include_usage`` adds a last chunk with usage only."""

    model_config = ConfigDict(extra="forbid")
    include_usage: bool = False


class _Common(BaseModel):
    model_config = ConfigDict(extra="forbid")

    model: str
    temperature: Temperature | None = 1.0
    top_p: TopP | None = 1.0
    n: Annotated[int, Field(ge=1, le=128)] | None = 1
    stream: bool | None = False
    stream_options: StreamOptions | None = None
    stop: Stop = None
    seed: int | None = None
    presence_penalty: float | None = 0.0
    frequency_penalty: float | None = 0.0
    logit_bias: dict[str, float] | None = None
    user: str | None = None


class CompletionRequest(_Common):
    """``POST /v1/completions``."""

    prompt: str | list[str] | list[int] | list[list[int]]
    max_tokens: Annotated[int, Field(ge=1)] | None = 16
    logprobs: int | None = None
    echo: bool | None = False
    suffix: str | None = None
    best_of: int | None = None


class TextPart(BaseModel):
    """One text part of a message's content list."""

    model_config = ConfigDict(extra="forbid")
    type: Literal["text"]
    text: str


class ChatMessage(BaseModel):
    """One message of a conversation."""

    model_config = ConfigDict(extra="forbid")
    role: Literal["system", "developer", "user", "assistant"]
    content: str | list[TextPart]
    name: str | None = None

    def text(self) -> str:
        """The content as one string (text parts joined)."""
        if isinstance(self.content, str):
            return self.content
        return "".join(p.text for p in self.content)


class ChatRequest(_Common):
    """``POST /v1/chat/completions``."""

    messages: Annotated[list[ChatMessage], Field(min_length=1)]
    max_tokens: Annotated[int, Field(ge=1)] | None = None
    max_completion_tokens: Annotated[int, Field(ge=1)] | None = None
    logprobs: bool | None = False
    top_logprobs: int | None = None


def stop_list(stop: Stop) -> list[str]:
    """``stop`` as a list of non-empty strings."""
    if stop is None:
        return []
    return [s for s in ([stop] if isinstance(stop, str) else stop) if s]


def unsupported(req: _Common) -> tuple[str, str] | None:
    """(field, message) for the first field set to something this server does not do."""
    checks = [
        ("logprobs", bool(getattr(req, "logprobs", None))),
        ("top_logprobs", getattr(req, "top_logprobs", None) is not None),
        ("echo", bool(getattr(req, "echo", False))),
        ("suffix", getattr(req, "suffix", None) is not None),
        ("best_of", (getattr(req, "best_of", None) or 1) != (req.n or 1)
         and getattr(req, "best_of", None) is not None),
        ("presence_penalty", bool(req.presence_penalty)),
        ("frequency_penalty", bool(req.frequency_penalty)),
        ("logit_bias", bool(req.logit_bias)),
    ]
    for field, bad in checks:
        if bad:
            return field, f"'{field}' is not supported by this server; leave it out"
    return None
