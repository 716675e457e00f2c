"""Text of a generation as it grows: stop strings and stream-safe deltas.

A streamed delta must never show text that a stop string will later cut, nor
half of a multi-byte character, so `TextTracker` holds back the tail that
could still be the start of a stop string (and a trailing U+FFFD, which a
byte-fallback tokenizer shows for an unfinished character).
"""

from __future__ import annotations

from collections.abc import Sequence

from llama_jax.infer.engine import ContinuationDecoder, truncate_at_stop


def held_back(text: str, stop: Sequence[str]) -> int:
    """How many characters at the end of `text` may still grow into a stop string."""
    hold = 0
    for s in stop:
        for k in range(min(len(s) - 1, len(text)), hold, -1):
            if text.endswith(s[:k]):
                hold = k
                break
    while hold < len(text) and text[len(text) - hold - 1] == "\ufffd":
        hold += 1  # an unfinished character: its bytes decode to U+FFFD until complete
    return hold


class TextTracker:
    """The continuation text of one choice, checked for stop strings.

    Args:
      tokenizer: has ``decode(ids)``.
      prompt: the prompt's token ids (the text is decoded after them, so a
        SentencePiece leading space survives).
      stop: stop strings; the text ends before the first one.
    """

    def __init__(self, tokenizer, prompt: Sequence[int], stop: Sequence[str]):
        self._decode = ContinuationDecoder(tokenizer, [prompt])
        self.stop = tuple(s for s in stop if s)
        self.sent = 0  # characters already streamed

    def text(self, tokens: Sequence[int]) -> str:
        """The continuation's text, cut at the first stop string."""
        return truncate_at_stop(self._decode(0, tokens), self.stop)

    def hit_stop(self, tokens: Sequence[int]) -> bool:
        """True once the text contains a stop string."""
        text = self._decode(0, tokens)
        return any(s in text for s in self.stop)

    def delta(self, tokens: Sequence[int], final: bool = False) -> str:
        """New text safe to stream now (everything left when `final`)."""
        text = self.text(tokens)
        end = len(text) if final else len(text) - held_back(text, self.stop)
        if end <= self.sent:
            return ""
        out, self.sent = text[self.sent:end], end
        return out
