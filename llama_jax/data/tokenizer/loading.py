"""Pick the tokenizer a checkpoint holds: ``tokenizer.model`` (SentencePiece) or ``tokenizer.json``.

`find_tokenizer_file` looks in one folder (``tokenizer.model`` first, so our
own HF exports, which carry both, keep their SentencePiece model);
`load_tokenizer` turns a file or folder into a `Tokenizer` or `HFTokenizer`;
`check_tokenizer_fits` refuses a tokenizer with more ids than the model has
embedding rows.
"""

from __future__ import annotations

import os
from typing import Union

from llama_jax.data.tokenizer.hf_json import TOKENIZER_JSON, HFTokenizer
from llama_jax.data.tokenizer.sentencepiece_bpe import Tokenizer
from llama_jax.errors import DataError

TOKENIZER_MODEL = "tokenizer.model"
AnyTokenizer = Union[Tokenizer, HFTokenizer]  # noqa: UP007 - a runtime alias for isinstance
TOKENIZER_TYPES = (Tokenizer, HFTokenizer)


def find_tokenizer_file(folder: str | os.PathLike) -> str | None:
    """``folder/tokenizer.model`` if it exists, else ``folder/tokenizer.json``, else None."""
    for name in (TOKENIZER_MODEL, TOKENIZER_JSON):
        path = os.path.join(os.fspath(folder), name)
        if os.path.isfile(path):
            return path
    return None


def load_tokenizer(path: str | os.PathLike) -> AnyTokenizer:
    """A SentencePiece `Tokenizer` or an `HFTokenizer` from a file or a checkpoint folder.

    A ``*.json`` file is a Hugging Face ``tokenizer.json``; any other file is
    a SentencePiece model; a folder holds one of the two (`find_tokenizer_file`).
    """
    path = os.fspath(path)
    if os.path.isdir(path):
        found = find_tokenizer_file(path)
        if found is None:
            raise FileNotFoundError(
                f"no {TOKENIZER_MODEL} or {TOKENIZER_JSON} in {path!r}; pass --tokenizer=FILE "
                "(a SentencePiece tokenizer.model or a Hugging Face tokenizer.json)")
        path = found
    if path.endswith(".json"):
        return HFTokenizer.load(path)
    return Tokenizer.load(path)


def check_tokenizer_fits(tokenizer: AnyTokenizer, vocab_size: int, model: str = "the model") -> None:
    """A `DataError` naming the tokenizer file and both sizes when it has more ids than `vocab_size`.

    Fewer ids than embedding rows is fine (checkpoints pad their vocabulary).
    """
    if tokenizer.vocab_size > vocab_size:
        raise DataError(
            f"tokenizer {tokenizer.path or type(tokenizer).__name__} has {tokenizer.vocab_size} "
            f"ids but {model} has vocab_size={vocab_size} embedding rows, so ids "
            f">= {vocab_size} have no embedding; pass the model's own tokenizer with "
            "--tokenizer=FILE (its tokenizer.model or tokenizer.json)")
