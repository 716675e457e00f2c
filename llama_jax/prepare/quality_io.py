"""Reading local document sets for the quality models' training CLIs.

`ngram_lm` and `reference_train` train from "high quality" / "reference" and
random documents a user has on disk: JSONL (one JSON object a line, its text
under `text_key`), gzipped JSONL (``.jsonl.gz`` / ``.json.gz``), or plain
``.txt`` files (one document per file). Bad input is a `DataError` naming the
file (and line) and the fix, never a silent skip.
"""

from __future__ import annotations

import glob
import gzip
import json
import os
from collections.abc import Iterator

from llama_jax.errors import DataError

JSONL_SUFFIXES = (".jsonl", ".json", ".jsonl.gz", ".json.gz", ".ndjson")


def expand_globs(patterns: str, flag: str) -> list[str]:
    """The sorted files matching comma-separated glob(s) `patterns`; none is a `DataError` naming `flag`."""
    files: list[str] = []
    for pattern in (p.strip() for p in patterns.split(",")):
        if pattern:
            files.extend(sorted(f for f in glob.glob(os.path.expanduser(pattern)) if os.path.isfile(f)))
    if not files:
        raise DataError(f"{flag}={patterns!r} matches no file; pass a glob of .jsonl, .jsonl.gz or .txt files")
    return sorted(dict.fromkeys(files))


def iter_texts(path: str, text_key: str = "text") -> Iterator[str]:
    """The document texts of one file (JSONL, gzipped JSONL, or a whole ``.txt``)."""
    opener = gzip.open if path.endswith(".gz") else open
    try:
        if not path.endswith(JSONL_SUFFIXES):
            with opener(path, "rt", encoding="utf-8") as f:
                yield f.read()
            return
        with opener(path, "rt", encoding="utf-8") as f:
            for line_no, line in enumerate(f, 1):
                if not line.strip():
                    continue
                try:
                    record = json.loads(line)
                except json.JSONDecodeError as e:
                    raise DataError(f"{path}:{line_no}: not a JSON object ({e.msg}); "
                                    "fix or remove the line") from e
                text = record.get(text_key) if isinstance(record, dict) else None
                if not isinstance(text, str):
                    raise DataError(f"{path}:{line_no}: no string field {text_key!r}; "
                                    "pass --text_key=FIELD naming the field that holds the text")
                yield text
    except (UnicodeDecodeError, EOFError, gzip.BadGzipFile) as e:
        raise DataError(f"{path}: cannot be read as UTF-8 text ({type(e).__name__}: {e}); "
                        "re-encode or remove the file") from e


def iter_all_texts(files: list[str], text_key: str = "text", max_docs: int = 0) -> Iterator[str]:
    """The texts of all `files` in order, at most `max_docs` of them (0: all)."""
    n = 0
    for path in files:
        for text in iter_texts(path, text_key):
            yield text
            n += 1
            if max_docs and n >= max_docs:
                return
