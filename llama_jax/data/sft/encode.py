"""Conversations -> token ids and a per-token response mask, fitted to the sequence.

The template renders a conversation and cuts it into prompt and response
pieces (`ChatTemplate.segments`); `encode_segments` tokenises the whole text
once and marks the response tokens (each assistant reply and the end-of-turn
text after it, e.g. ``</s>``). With ``train_on='last'`` only the last
assistant turn is a response. An example of n tokens fills n - 1 positions of
a packed row (inputs ``ids[:-1]``, targets ``ids[1:]``), so one longer than
``seq_len + 1`` tokens is truncated to its first ``seq_len + 1`` or dropped
(``too_long``); a truncated example whose responses were all cut is dropped
too. Both are counted in `EncodeStats`.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Sequence

import numpy as np

from llama_jax.chat.templates import ChatTemplate, encode_segments
from llama_jax.data.sft.readers import Example
from llama_jax.errors import DataError

TRAIN_ON = ("all", "last")
TOO_LONG = ("truncate", "drop")


@dataclasses.dataclass
class EncodeStats:
    """What fitting the examples to the sequence did."""

    examples: int = 0  # kept
    truncated: int = 0
    dropped_too_long: int = 0
    dropped_no_response: int = 0  # truncation cut every response token
    response_tokens: int = 0  # target positions that count in the loss


@dataclasses.dataclass(frozen=True)
class Encoded:
    """One example's ids (int32 [n]) and its 0/1 response mask (int8 [n])."""

    ids: np.ndarray
    mask: np.ndarray


def response_segments(segments: Sequence[tuple[str, bool]], train_on: str):
    """`segments` with only the last response kept as one under ``train_on='last'``."""
    if train_on == "all":
        return list(segments)
    last = max(i for i, (_, r) in enumerate(segments) if r)
    return [(text, r and i == last) for i, (text, r) in enumerate(segments)]


def encode_example(tokenizer, template: ChatTemplate, example: Example,
                   train_on: str = "all") -> Encoded:
    """Ids and response mask of one conversation (DataError names its line)."""
    if train_on not in TRAIN_ON:
        raise DataError(f"train_on={train_on!r} is not one of {TRAIN_ON}")
    try:
        segments = template.segments(example.messages)
    except DataError as e:
        raise DataError(f"{example.where}: {e}") from e
    ids, mask = encode_segments(tokenizer, response_segments(segments, train_on))
    return Encoded(np.asarray(ids, np.int32), np.asarray(mask, np.int8))


def fit_examples(encoded: Iterable[Encoded], seq_len: int, too_long: str = "truncate",
                 stats: EncodeStats | None = None) -> list[Encoded]:
    """The examples that fit `seq_len` positions, truncated or dropped per `too_long`."""
    if too_long not in TOO_LONG:
        raise DataError(f"too_long={too_long!r} is not one of {TOO_LONG}")
    stats = stats if stats is not None else EncodeStats()
    out = []
    for e in encoded:
        if len(e.ids) > seq_len + 1:
            if too_long == "drop":
                stats.dropped_too_long += 1
                continue
            e = Encoded(e.ids[:seq_len + 1], e.mask[:seq_len + 1])
            stats.truncated += 1
        counted = int(e.mask[1:].sum())  # a response token counts as a target
        if len(e.ids) < 2 or counted == 0:
            stats.dropped_no_response += 1
            continue
        stats.examples += 1
        stats.response_tokens += counted
        out.append(e)
    return out
