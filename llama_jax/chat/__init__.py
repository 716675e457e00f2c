"""Chat: templates that turn conversations into model text (`llama_jax.chat.templates`)."""

from llama_jax.chat.templates import (
    ChatTemplate,
    alpaca_messages,
    encode_rendered,
    encode_segments,
    get_template,
    template_names,
)

__all__ = ["ChatTemplate", "alpaca_messages", "encode_rendered", "encode_segments",
           "get_template", "template_names"]
