"""Chat templates: a registry of built-in formats and any Hugging Face Jinja template.

A template turns a conversation (``[{"role": "system"|"user"|"assistant",
"content": str}, ...]``) into the text a model sees. Three are built in:

- ``llama2``: Meta's Llama-2 chat layout (``<s>[INST] <<SYS>>\\n...\\n<</SYS>>\\n\\n
  ... [/INST] answer </s>``), written as the Jinja template of Meta's
  ``tokenizer_config.json`` so it renders exactly as `transformers` does; its
  tokens equal Meta's ``chat_completion`` reference (``llama/generation.py``);
- ``alpaca``: the Stanford Alpaca instruction prompt (``### Instruction:`` /
  ``### Response:``), the plain template for instruction data;
- ``chatml``: ``<|im_start|>role\\n...<|im_end|>``.

Any other template comes from a ``tokenizer_config.json`` (its
``chat_template``), rendered the way `transformers.apply_chat_template` does:
a sandboxed Jinja environment with ``trim_blocks`` / ``lstrip_blocks``, the
``raise_exception`` and ``strftime_now`` globals, a ``tojson`` that does not
escape HTML, and the special-token strings (``bos_token``, ``eos_token``, ...)
in the context.

`ChatTemplate.segments` cuts a rendered conversation into prompt and response
pieces, the basis of response-only loss masks; `encode_segments` turns them
into ids and a per-token mask, tokenising the whole text once so masking never
changes the tokens.
"""

from __future__ import annotations

import dataclasses
import datetime
import json
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import jinja2
import jinja2.ext
from jinja2.sandbox import ImmutableSandboxedEnvironment

from llama_jax.errors import ConfigError, DataError

ROLES = ("system", "user", "assistant")
TOKENIZER_CONFIG = "tokenizer_config.json"

# meta-llama/Llama-2-7b-chat-hf's tokenizer_config.json "chat_template", verbatim.
LLAMA2_TEMPLATE = (
    "{% if messages[0]['role'] == 'system' %}{% set loop_messages = messages[1:] %}"
    "{% set system_message = messages[0]['content'] %}{% else %}"
    "{% set loop_messages = messages %}{% set system_message = false %}{% endif %}"
    "{% for message in loop_messages %}"
    "{% if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}"
    "{{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}"
    "{% endif %}"
    "{% if loop.index0 == 0 and system_message != false %}"
    "{% set content = '<<SYS>>\\n' + system_message + '\\n<</SYS>>\\n\\n' + message['content'] %}"
    "{% else %}{% set content = message['content'] %}{% endif %}"
    "{% if message['role'] == 'user' %}"
    "{{ bos_token + '[INST] ' + content.strip() + ' [/INST]' }}"
    "{% elif message['role'] == 'assistant' %}"
    "{{ ' '  + content.strip() + ' ' + eos_token }}"
    "{% endif %}{% endfor %}"
)

ALPACA_PREAMBLE = ("Below is an instruction that describes a task. Write a response that "
                   "appropriately completes the request.")
ALPACA_INPUT_PREAMBLE = ("Below is an instruction that describes a task, paired with an input "
                         "that provides further context. Write a response that appropriately "
                         "completes the request.")

# Alpaca's prompt (tatsu-lab/stanford_alpaca train.py PROMPT_DICT) over messages:
# a system turn replaces the preamble; every user turn is an instruction.
ALPACA_TEMPLATE = (
    "{{ bos_token }}"
    "{% if messages[0]['role'] == 'system' %}{{ messages[0]['content'] }}"
    "{% set loop_messages = messages[1:] %}{% else %}"
    "{{ '" + ALPACA_PREAMBLE + "' }}{% set loop_messages = messages %}{% endif %}"
    "{% for message in loop_messages %}"
    "{% if message['role'] == 'user' %}"
    "{{ '\\n\\n### Instruction:\\n' + message['content'] + '\\n\\n### Response:\\n' }}"
    "{% elif message['role'] == 'assistant' %}{{ message['content'] + eos_token }}"
    "{% else %}{{ raise_exception('alpaca: a system turn may only come first') }}"
    "{% endif %}{% endfor %}"
)

CHATML_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)

BUILTIN = {"llama2": LLAMA2_TEMPLATE, "alpaca": ALPACA_TEMPLATE, "chatml": CHATML_TEMPLATE}
_STOPS = {"llama2": ("</s>",), "alpaca": ("</s>",), "chatml": ("<|im_end|>",)}


def template_names() -> list[str]:
    """The registry's template names."""
    return sorted(BUILTIN)


def alpaca_messages(instruction: str, input: str = "", output: str | None = None) -> list[dict]:
    """An Alpaca record as messages, so the ``alpaca`` template renders Alpaca's prompt.

    With an ``input``, the preamble is Alpaca's "paired with an input" one and
    the input follows the instruction under ``### Input:``, as Alpaca's
    ``prompt_input`` does.
    """
    if input:
        messages = [{"role": "system", "content": ALPACA_INPUT_PREAMBLE},
                    {"role": "user", "content": f"{instruction}\n\n### Input:\n{input}"}]
    else:
        messages = [{"role": "user", "content": instruction}]
    if output is not None:
        messages.append({"role": "assistant", "content": output})
    return messages


def _raise_exception(message):
    raise jinja2.exceptions.TemplateError(message)


def _tojson(x, ensure_ascii=False, indent=None, separators=None, sort_keys=False):
    return json.dumps(x, ensure_ascii=ensure_ascii, indent=indent, separators=separators,
                      sort_keys=sort_keys)


def _compile(source: str, where: str) -> jinja2.Template:
    """`source` compiled in the environment `transformers.apply_chat_template` uses."""
    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True,
                                        extensions=[jinja2.ext.loopcontrols])
    env.filters["tojson"] = _tojson
    env.globals["raise_exception"] = _raise_exception
    env.globals["strftime_now"] = lambda fmt: datetime.datetime.now().strftime(fmt)
    try:
        return env.from_string(source)
    except jinja2.exceptions.TemplateSyntaxError as e:
        raise ConfigError(f"chat template {where}: Jinja syntax error at line {e.lineno}: "
                          f"{e.message}") from e


def _token_text(value: Any) -> str | None:
    """A special token from tokenizer_config.json: a string or an AddedToken dict."""
    if isinstance(value, Mapping):
        return value.get("content")
    return value if isinstance(value, str) else None


def check_messages(messages: Sequence[Mapping[str, Any]], where: str = "conversation") -> None:
    """Raise DataError unless every message has a known role and string content."""
    if not isinstance(messages, Sequence) or isinstance(messages, str) or not messages:
        raise DataError(f"{where}: messages must be a non-empty list of "
                        "{'role': ..., 'content': ...} objects")
    for i, m in enumerate(messages):
        if not isinstance(m, Mapping) or "role" not in m or "content" not in m:
            raise DataError(f"{where}: message {i} must be an object with 'role' and "
                            f"'content', got {m!r:.80}")
        if m["role"] not in ROLES:
            raise DataError(f"{where}: message {i} has role {m['role']!r}; roles are "
                            f"{', '.join(ROLES)}")
        if not isinstance(m["content"], str):
            raise DataError(f"{where}: message {i} content must be a string, got "
                            f"{type(m['content']).__name__}")


@dataclasses.dataclass(frozen=True)
class ChatTemplate:
    """A compiled chat template bound to its special-token strings.

    Attributes:
      name: registry name, or the file the template came from.
      source: the Jinja source.
      special_tokens: the strings the template sees as ``bos_token``,
        ``eos_token``, ``unk_token``, ``pad_token``.
      stop_strings: end-of-turn strings a generated reply stops at.
    """

    name: str
    source: str
    special_tokens: Mapping[str, str] = dataclasses.field(
        default_factory=lambda: {"bos_token": "<s>", "eos_token": "</s>"})
    stop_strings: tuple[str, ...] = ("</s>",)

    def __post_init__(self):
        object.__setattr__(self, "_compiled", _compile(self.source, self.name))

    def render(self, messages: Sequence[Mapping[str, Any]],
               add_generation_prompt: bool = True) -> str:
        """The conversation as text, as `transformers.apply_chat_template(tokenize=False)`."""
        check_messages(messages, f"chat template {self.name}")
        plain = [dict(m) for m in messages]
        try:
            return self._compiled.render(messages=plain, add_generation_prompt=add_generation_prompt,
                                         **self.special_tokens)
        except jinja2.exceptions.TemplateError as e:
            raise DataError(f"chat template {self.name}: {e}") from e

    def segments(self, messages: Sequence[Mapping[str, Any]]) -> list[tuple[str, bool]]:
        """The rendered conversation cut into (text, is_response) pieces.

        Each assistant turn's piece is what the template adds between the
        prompt for it (``add_generation_prompt=True`` on the turns before) and
        the conversation including it: the reply and its end-of-turn text.
        The pieces concatenate to ``render(messages, add_generation_prompt=False)``.
        Raises DataError for a conversation without an assistant turn, or for
        a template whose renderings are not prefixes of each other.
        """
        check_messages(messages, f"chat template {self.name}")
        turns = [i for i, m in enumerate(messages) if m["role"] == "assistant"]
        if not turns:
            raise DataError(f"chat template {self.name}: the conversation has no assistant "
                            "turn, so there is no response to train on")
        full = self.render(messages, add_generation_prompt=False)
        pieces, done = [], 0
        for i in turns:
            prompt = self.render(messages[:i], add_generation_prompt=True) if i else ""
            upto = self.render(messages[:i + 1], add_generation_prompt=False)
            if not (full.startswith(upto) and upto.startswith(prompt) and len(prompt) >= done):
                raise DataError(f"chat template {self.name}: rendering turn {i} is not a prefix "
                                "of the whole conversation, so responses cannot be masked; "
                                "use another template")
            if len(prompt) > done:
                pieces.append((full[done:len(prompt)], False))
            pieces.append((full[len(prompt):len(upto)], True))
            done = len(upto)
        if done < len(full):
            pieces.append((full[done:], False))
        return pieces


def special_token_ids(tokenizer) -> dict[str, int]:
    """Special-token strings of `tokenizer` and their ids (bos, eos, and any it names).

    A tokenizer may name more through a ``special_token_ids`` mapping
    (Hugging Face ``tokenizer.json`` tokenizers do); SentencePiece ones have
    their bos and eos pieces.
    """
    named = getattr(tokenizer, "special_token_ids", None)
    ids = dict(named) if named else {}
    for tid in (tokenizer.bos_id, tokenizer.eos_id):
        if tid is not None and tid >= 0:
            ids.setdefault(tokenizer.id_to_piece(tid), tid)
    return ids


def encode_rendered(tokenizer, text: str) -> list[int]:
    """Ids of rendered chat text: special-token strings become their single ids.

    The text between special tokens is encoded without bos/eos, each stretch
    on its own, as a `tokenizers` tokenizer does around its added tokens
    (`transformers.apply_chat_template(tokenize=True)`).
    """
    specials = special_token_ids(tokenizer)
    order = sorted(specials, key=len, reverse=True)  # longest match first
    ids, start, i = [], 0, 0
    while i < len(text):
        hit = next((s for s in order if s and text.startswith(s, i)), None)
        if hit is None:
            i += 1
            continue
        if i > start:
            ids += tokenizer.encode(text[start:i])
        ids.append(specials[hit])
        i = start = i + len(hit)
    if start < len(text):
        ids += tokenizer.encode(text[start:])
    return ids


def encode_segments(tokenizer, segments: Sequence[tuple[str, bool]]) -> tuple[list[int], list[int]]:
    """Ids of the whole conversation and a 0/1 mask, 1 on response tokens.

    The text is tokenised once; a piece's tokens are those past the tokens of
    the text before it (the longest common prefix, so a token that straddles
    a boundary counts with the later piece).
    """
    full = "".join(text for text, _ in segments)
    ids = encode_rendered(tokenizer, full)
    mask = [0] * len(ids)
    start, prefix = 0, ""
    for text, is_response in segments:
        prefix += text
        head = encode_rendered(tokenizer, prefix)
        end = len(ids) if prefix == full else _common_prefix(head, ids)
        if is_response:
            mask[start:end] = [1] * (end - start)
        start = max(start, end)
    return ids, mask


def _common_prefix(a: Sequence[int], b: Sequence[int]) -> int:
    n = 0
    for x, y in zip(a, b, strict=False):
        if x != y:
            break
        n += 1
    return n


def _from_tokenizer_config(path: Path) -> ChatTemplate:
    try:
        cfg = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as e:
        raise ConfigError(f"chat template: cannot read {path}: {e}") from e
    source = cfg.get("chat_template")
    if isinstance(source, list):  # [{"name": "default", "template": ...}, ...]
        named = {t.get("name"): t.get("template") for t in source if isinstance(t, Mapping)}
        source = named.get("default")
    if not isinstance(source, str) or not source:
        raise ConfigError(f"chat template: {path} has no chat_template; pass "
                          f"--chat_template=NAME (one of {', '.join(template_names())})")
    special = {k: v for k in ("bos_token", "eos_token", "unk_token", "pad_token")
               if (v := _token_text(cfg.get(k))) is not None}
    eos = special.get("eos_token")
    stops = tuple(dict.fromkeys(
        [eos] * bool(eos) + [s for s in ("<|im_end|>", "<|eot_id|>") if s in source]))
    return ChatTemplate(name=str(path), source=source, special_tokens=special,
                        stop_strings=stops)


def _config_file(path: Path) -> Path | None:
    if path.is_dir():
        path = path / TOKENIZER_CONFIG
    return path if path.is_file() else None


def get_template(name: str | None = None, *, checkpoint: str | os.PathLike | None = None,
                 tokenizer=None) -> ChatTemplate:
    """A chat template by registry name, file, or from a checkpoint folder.

    Args:
      name: a registry name (`template_names`), or a path to a
        ``tokenizer_config.json`` or a folder holding one. None: the
        checkpoint's own template if it has one, else ``llama2``.
      checkpoint: a checkpoint folder, consulted when `name` is None.
      tokenizer: when given, the built-in templates use its bos / eos pieces.

    Raises:
      ConfigError: an unknown name, or a file without a usable template.
    """
    if name is None:
        cfg = _config_file(Path(checkpoint)) if checkpoint is not None else None
        if cfg is not None and "chat_template" in json.loads(cfg.read_text(encoding="utf-8")):
            return _from_tokenizer_config(cfg)
        name = "llama2"
    if name in BUILTIN:
        special = {"bos_token": "<s>", "eos_token": "</s>"}
        if tokenizer is not None:
            special = {"bos_token": tokenizer.id_to_piece(tokenizer.bos_id),
                       "eos_token": tokenizer.id_to_piece(tokenizer.eos_id)}
        stops = _STOPS[name] if name == "chatml" else (special["eos_token"],)
        return ChatTemplate(name=name, source=BUILTIN[name], special_tokens=special,
                            stop_strings=stops)
    cfg = _config_file(Path(name))
    if cfg is None:
        raise ConfigError(f"unknown chat template {name!r}: use one of "
                          f"{', '.join(template_names())}, or a path to a tokenizer_config.json")
    return _from_tokenizer_config(cfg)
