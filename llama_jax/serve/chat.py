"""Chat messages to prompt tokens with a chat template (`llama_jax.chat.templates`).

The template is the checkpoint's own (its ``tokenizer_config.json``
``chat_template``) or a registry name (``--chat_template``); the rendered text
is tokenized with its special-token strings (``<s>``, ``</s>``, ...) as their
single ids, and the template's end-of-turn strings become stop strings.
"""

from __future__ import annotations

import os
from collections.abc import Sequence

from llama_jax.chat.templates import encode_rendered, get_template


class ChatEncoder:
    """Callable: ``messages -> (prompt token ids, stop strings)``.

    Args:
      tokenizer: the server's tokenizer.
      name: a template name or a tokenizer_config.json path (None: the checkpoint's).
      checkpoint: the checkpoint folder whose template is the default.
    """

    def __init__(self, tokenizer, name: str | None = None,
                 checkpoint: str | os.PathLike | None = None):
        self.tokenizer = tokenizer
        self.template = get_template(name, checkpoint=checkpoint, tokenizer=tokenizer)

    @property
    def name(self) -> str:
        """The template's name."""
        return self.template.name

    def __call__(self, messages: list[dict]) -> tuple[list[int], Sequence[str]]:
        text = self.template.render(messages, add_generation_prompt=True)
        return encode_rendered(self.tokenizer, text), tuple(self.template.stop_strings)
