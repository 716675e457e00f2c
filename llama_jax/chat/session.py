"""A multi-turn chat over one model: history, context budget, streamed replies.

`ChatSession` keeps the conversation, renders it with a `ChatTemplate`, drops
the oldest exchanges (never the system turn or the new message) when the
prompt plus the reply budget would pass the model's context, and streams the
reply through a callback as the generator's chunks arrive
(`Generator.generate_tokens`'s ``is_finished`` hook runs between chunks).
Text that could be the start of a stop string is held back until it is known
not to be one, so a stream never shows a stop string.
"""

from __future__ import annotations

from collections.abc import Callable

from llama_jax.chat.templates import ChatTemplate, encode_rendered
from llama_jax.errors import DataError
from llama_jax.infer.engine import (
    GREEDY,
    ContinuationDecoder,
    Generator,
    SamplingConfig,
    end_ids,
    truncate_at_stop,
)


def _held_back(text: str, stops: tuple[str, ...]) -> int:
    """How many trailing characters of `text` could begin a stop string."""
    hold = 0
    for s in stops:
        for k in range(min(len(s) - 1, len(text)), 0, -1):
            if text.endswith(s[:k]):
                hold = max(hold, k)
                break
    return hold


class ChatSession:
    """A conversation with one model.

    Args:
      generator: the model (its `max_seq_len` bounds prompt + reply).
      tokenizer: the model's tokenizer.
      template: how turns become text.
      system: an optional system message, kept through `reset` and trimming.
      max_new_tokens: the most tokens of one reply.
      sampling: greedy by default.
      seed: sampling seed of the first reply (each reply uses the next one).
    """

    def __init__(self, generator: Generator, tokenizer, template: ChatTemplate, *,
                 system: str | None = None, max_new_tokens: int = 256,
                 sampling: SamplingConfig = GREEDY, seed: int = 0):
        room = generator.config.max_seq_len - max_new_tokens
        if max_new_tokens < 1 or room < 1:
            raise ValueError(f"max_new_tokens={max_new_tokens} must be >= 1 and leave room for "
                             f"a prompt in max_seq_len={generator.config.max_seq_len}")
        self.generator, self.tokenizer, self.template = generator, tokenizer, template
        self.system = system
        self.max_new_tokens = max_new_tokens
        self.sampling = sampling
        self.seed = seed
        self.history: list[dict[str, str]] = []
        self.dropped = 0  # exchanges trimmed from the front so far

    def reset(self) -> None:
        """Forget the conversation (the system message stays)."""
        self.history = []

    def messages(self, user: str | None = None) -> list[dict[str, str]]:
        """The conversation as template messages, with `user` as the newest turn."""
        head = [{"role": "system", "content": self.system}] if self.system else []
        tail = [{"role": "user", "content": user}] if user is not None else []
        return head + self.history + tail

    def prompt_ids(self, user: str) -> list[int]:
        """Token ids of the prompt for a reply to `user`, oldest exchanges dropped to fit.

        Raises DataError when even the system turn and `user` alone do not fit.
        """
        room = self.generator.config.max_seq_len - self.max_new_tokens
        while True:
            ids = encode_rendered(self.tokenizer,
                                  self.template.render(self.messages(user), add_generation_prompt=True))
            if len(ids) <= room:
                return ids
            if not self.history:
                raise DataError(f"the message is {len(ids)} tokens with the template; at most "
                                f"{room} fit (max_seq_len {self.generator.config.max_seq_len} "
                                f"- max_new_tokens {self.max_new_tokens}); shorten it")
            self.history = self.history[2:]  # one user + assistant exchange
            self.dropped += 1

    def reply(self, user: str, on_text: Callable[[str], None] | None = None) -> str:
        """Generate the assistant's reply to `user`, streaming text to `on_text`."""
        ids = self.prompt_ids(user)
        stops = tuple(s for s in self.template.stop_strings if s)
        decode = ContinuationDecoder(self.tokenizer, [ids])
        shown = [0]

        def emit(text: str, final: bool) -> None:
            upto = len(text) if final else len(text) - _held_back(text, stops)
            if on_text is not None and upto > shown[0]:
                on_text(text[shown[0]:upto])
            shown[0] = max(shown[0], upto)

        def finished(_, toks: list[int]) -> bool:
            text = decode(0, toks)
            cut = truncate_at_stop(text, stops)
            emit(cut, final=False)
            return len(cut) < len(text)

        out = self.generator.generate_tokens(
            [ids], max_new_tokens=self.max_new_tokens, sampling=self.sampling,
            eos_id=end_ids(self.tokenizer), seed=self.seed, is_finished=finished, progress=False)
        text = truncate_at_stop(decode(0, out[0][0]), stops)
        emit(text, final=True)
        self.seed += 1
        self.history += [{"role": "user", "content": user},
                         {"role": "assistant", "content": text}]
        return text
