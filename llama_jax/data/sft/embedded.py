"""The embedded instruction set: instruction/response pairs from installed Python's own text.

Nothing is downloaded and nothing is committed: the set is built on first
use from what every Python installation ships (PSF licence), in a fixed
order, so the same interpreter always builds the same file:

- "Write a Python function ..." from a standard-library function's docstring
  summary; the response is the function's source (`inspect.getsource`);
- "Explain ... in Python." from the language reference topics
  (`pydoc_data.topics.topics`); the response is the topic's first paragraphs;
- "What is the Python module ... for?" from a module's docstring; the
  response is its first paragraph.

`build_instructions` returns the conversations; `write_instructions` writes
them as chat (``{"messages": [...]}``) or alpaca (``{"instruction", "input",
"output"}``) JSONL; `ensure_instructions` builds the chat file once under the
corpus root (``$LLAMA_JAX_DATA`` or ``~/.cache/llama_jax/corpus``). CLI:
``python -m llama_jax.data.sft --out=FILE [--format=alpaca]``.
"""

from __future__ import annotations

import importlib
import inspect
import json
import os
import sys
import textwrap
import warnings
from pathlib import Path
from pydoc_data.topics import topics as PYDOC_TOPICS

from llama_jax.data.corpus import default_root
from llama_jax.fileio import atomic_write

VERSION = 1  # bump when the recipe changes (the file name carries it)
# Pure-Python standard-library modules with short, self-contained functions.
MODULES = ("base64", "bisect", "calendar", "colorsys", "copy", "difflib", "fnmatch", "fractions",
           "functools", "glob", "gzip", "heapq", "html", "keyword", "linecache", "ntpath",
           "operator", "os", "pathlib", "posixpath", "pprint", "quopri", "random", "re", "shlex",
           "shutil", "statistics", "string", "tempfile", "textwrap", "tokenize", "urllib.parse",
           "uu", "uuid", "warnings", "zipfile")
MAX_SOURCE_CHARS = 700  # functions longer than this are left out (the tiny model's context)
MAX_ANSWER_CHARS = 600


def _summary(doc: str | None) -> str | None:
    """The first paragraph of a docstring on one line, or None."""
    if not doc:
        return None
    para = inspect.cleandoc(doc).split("\n\n", 1)[0]
    text = " ".join(para.split())
    return text if 12 <= len(text) <= 300 else None


def _first_paragraphs(text: str, limit: int = MAX_ANSWER_CHARS) -> str:
    out = ""
    for para in (p.strip() for p in text.strip().split("\n\n")):
        if not para:
            continue
        if out and len(out) + len(para) + 2 > limit:
            break
        out = f"{out}\n\n{para}" if out else para
    return out[:limit].rstrip()


def _chat(question: str, answer: str) -> list[dict[str, str]]:
    return [{"role": "user", "content": question}, {"role": "assistant", "content": answer}]


def _module(name: str):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # deprecated modules (uu) still import
        try:
            return importlib.import_module(name)
        except ImportError:
            return None


def function_examples() -> list[list[dict[str, str]]]:
    """'Write a Python function ...' -> the function's source, module by module."""
    out = []
    for mod_name in MODULES:
        mod = _module(mod_name)
        if mod is None:
            continue
        for name, fn in sorted(inspect.getmembers(mod, inspect.isfunction)):
            if name.startswith("_") or fn.__module__ != mod.__name__:
                continue
            summary = _summary(fn.__doc__)
            try:
                source = inspect.getsource(fn)
            except (OSError, TypeError):
                continue
            if summary is None or len(source) > MAX_SOURCE_CHARS:
                continue
            question = (f"Write a Python function `{name}` (as in the `{mod_name}` module) for "
                        f"this docstring: {summary}")
            out.append(_chat(question, textwrap.dedent(source).strip()))
    return out


def topic_examples() -> list[list[dict[str, str]]]:
    """'Explain ...' -> the language reference topic's first paragraphs."""
    out = []
    for topic in sorted(PYDOC_TOPICS):
        answer = _first_paragraphs(PYDOC_TOPICS[topic])
        if len(answer) >= 40:
            out.append(_chat(f"Explain {topic} in Python.", answer))
    return out


def module_examples() -> list[list[dict[str, str]]]:
    """'What is the Python module ... for?' -> its docstring's first paragraph."""
    out = []
    for mod_name in MODULES:
        mod = _module(mod_name)
        summary = _summary(getattr(mod, "__doc__", None)) if mod is not None else None
        if summary:
            out.append(_chat(f"What is the Python module `{mod_name}` for?", summary))
    return out


def build_instructions() -> list[list[dict[str, str]]]:
    """Every conversation of the set, interleaved by kind in a fixed order."""
    kinds = [function_examples(), topic_examples(), module_examples()]
    out = []
    for i in range(max(len(k) for k in kinds)):
        out += [k[i] for k in kinds if i < len(k)]
    return out


def to_record(messages: list[dict[str, str]], fmt: str) -> dict:
    """One JSONL record of `fmt` ('chat' or 'alpaca') for a user/assistant pair."""
    if fmt == "chat":
        return {"messages": messages}
    if fmt == "alpaca":
        return {"instruction": messages[0]["content"], "input": "",
                "output": messages[1]["content"]}
    raise ValueError(f"format={fmt!r} is not 'chat' or 'alpaca'")


def write_instructions(path: str | os.PathLike, fmt: str = "chat") -> int:
    """Write the set to `path` as `fmt` JSONL (atomically); returns the number of lines."""
    records = [to_record(m, fmt) for m in build_instructions()]
    text = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records)
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    atomic_write(path, text.encode("utf-8"))
    return len(records)


def ensure_instructions(root: str | os.PathLike | None = None) -> Path:
    """The chat-format JSONL of the set under `root` (default: the corpus root), built once."""
    root = Path(root or default_root())
    py = f"py{sys.version_info.major}{sys.version_info.minor}"
    path = root / f"instructions-v{VERSION}-{py}.jsonl"
    if not path.is_file():
        write_instructions(path, "chat")
    return path
