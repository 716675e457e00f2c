"""A Hugging Face ``tokenizer.json`` (Llama 3's BPE, any fast tokenizer) behind `Tokenizer`'s interface.

`HFTokenizer.load(path)` reads ``tokenizer.json`` through the `tokenizers`
library and takes its special ids from the checkpoint folder as transformers
resolves them:

- the tokenizer's own ``bos_token`` / ``eos_token`` / ``pad_token`` /
  ``unk_token`` from ``tokenizer_config.json``, overridden by
  ``special_tokens_map.json`` when the config has no ``added_tokens_decoder``
  (transformers 5's legacy merge); a token given as a dict
  (``{"content": ...}``) counts by its content;
- for an id the tokenizer files do not name, ``generation_config.json``'s then
  ``config.json``'s ``bos_token_id`` / ``eos_token_id`` / ``pad_token_id`` (a
  list of eos ids: the first is `eos_id`);
- `stop_ids`: the tokenizer's eos, then every ``eos_token_id`` of
  ``generation_config.json`` (else ``config.json``), as generate stops on;
- an ``unk_token`` absent everywhere falls back to the BPE model's own (a
  byte-level BPE has none: `unk_id` is None); pad falls back to unk, then eos.

Text is encoded with ``add_special_tokens=False`` and framed by our ``bos`` /
``eos`` flags, so the template in the file's post-processor never adds a
second BOS. Special-token strings inside text are matched as single ids (the
`tokenizers` default), unless ``tokenizer_config.json`` sets
``split_special_tokens`` (our SentencePiece export does: its ``<s>`` in text is
plain text, as in `Tokenizer`). `decode` drops special ids and never applies
transformers' ``clean_up_tokenization_spaces``, so round trips are exact.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np
import tokenizers

from llama_jax.errors import DataError

TOKENIZER_JSON = "tokenizer.json"
# The files beside tokenizer.json that name the special tokens, in the order read.
SIDE_FILES = ("tokenizer_config.json", "special_tokens_map.json", "generation_config.json",
              "config.json")
_BYTE_PIECE = re.compile(r"<0x[0-9A-Fa-f]{2}>")


def _read_json(path: str) -> dict[str, Any]:
    try:
        with open(path, encoding="utf-8") as f:
            obj = json.load(f)
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise DataError(f"{path} is not valid JSON ({e}); restore the checkpoint's copy") from None
    if not isinstance(obj, dict):
        raise DataError(f"{path} holds a JSON {type(obj).__name__}, not an object")
    return obj


def _content(token: Any) -> str | None:
    """The string of a special token written as "str" or {"content": "str", ...}."""
    if isinstance(token, dict):
        token = token.get("content")
    return token if isinstance(token, str) and token else None


class HFTokenizer:
    """A `tokenizers.Tokenizer` with LLaMA's `Tokenizer` interface; picklable.

    Build with `HFTokenizer.load(path)` (a ``tokenizer.json`` or the folder
    holding it) or directly from the JSON text and the side files' contents.

    Args:
      tokenizer_json: the text of ``tokenizer.json``.
      side: the parsed side files by name (`SIDE_FILES`; missing ones left out).
      path: where ``tokenizer.json`` was read from (for messages).
    """

    def __init__(self, tokenizer_json: str, side: dict[str, dict[str, Any]] | None = None,
                 path: str | None = None):
        self._json = tokenizer_json
        self.side = {k: v for k, v in (side or {}).items() if k in SIDE_FILES}
        self.path = path
        where = path or "these tokenizer.json contents"
        try:
            self._tk = tokenizers.Tokenizer.from_str(tokenizer_json)
        except Exception as e:  # tokenizers raises bare Exception subclasses
            raise DataError(f"{where} is not a Hugging Face tokenizer.json ({e}); point "
                            "--tokenizer at the checkpoint's tokenizer.json or tokenizer.model") from e
        vocab = self._tk.get_vocab(with_added_tokens=True)
        self._vocab_size = max(vocab.values()) + 1 if vocab else 0
        cfg = self.side.get("tokenizer_config.json", {})
        self._tk.encode_special_tokens = bool(cfg.get("split_special_tokens", False))
        self._special = frozenset(i for i, a in self._tk.get_added_tokens_decoder().items()
                                  if a.special)
        model = json.loads(tokenizer_json).get("model") or {}
        self._byte_fallback = bool(model.get("byte_fallback"))
        self._resolve_ids(where, model.get("unk_token"))

    def _resolve_ids(self, where: str, model_unk: Any) -> None:
        cfg = dict(self.side.get("tokenizer_config.json", {}))
        if "added_tokens_decoder" not in cfg:  # transformers 5: the legacy map then overrides
            cfg.update(self.side.get("special_tokens_map.json", {}))
        model_cfgs = [self.side.get(n, {}) for n in ("generation_config.json", "config.json")]
        ids: dict[str, Any] = {}
        for name in ("bos", "eos", "pad", "unk"):
            token = _content(cfg.get(f"{name}_token"))
            if token is not None:
                tid = self._tk.token_to_id(token)
                if tid is None:
                    raise DataError(f"{where}: {name}_token {token!r} (tokenizer_config.json / "
                                    "special_tokens_map.json) is not in its vocabulary; fix the "
                                    "token or use the checkpoint's own tokenizer files")
                ids[name] = [tid]
                continue
            for mc in model_cfgs:
                value = mc.get(f"{name}_token_id")
                if value is not None:
                    ids[name] = [int(v) for v in (value if isinstance(value, list) else [value])]
                    break
        if "unk" not in ids:
            if isinstance(model_unk, str) and self._tk.token_to_id(model_unk) is not None:
                ids["unk"] = [self._tk.token_to_id(model_unk)]
        first = {k: (v[0] if v else None) for k, v in ids.items()}
        self._bos, self._eos, self._unk = first.get("bos"), first.get("eos"), first.get("unk")
        pad = first.get("pad")
        self._pad = pad if pad is not None else self._unk if self._unk is not None else self._eos
        stops = list(ids.get("eos", []))
        # transformers' generate stops on generation_config.json's eos ids (config.json's
        # when there is no generation_config.json); the tokenizer's eos comes first.
        gen = self.side.get("generation_config.json", self.side.get("config.json", {}))
        value = gen.get("eos_token_id")
        for v in (value if isinstance(value, list) else [value]) if value is not None else []:
            if int(v) not in stops:
                stops.append(int(v))
        self._stops = tuple(stops)
        for name, tid in (("bos", self._bos), ("eos", self._eos), ("pad", self._pad)):
            if tid is not None and not 0 <= tid < self._vocab_size:
                raise DataError(f"{where}: {name} id {tid} is outside the vocabulary "
                                f"[0, {self._vocab_size}); fix the checkpoint's config files")

    @classmethod
    def load(cls, path: str | os.PathLike) -> HFTokenizer:
        """Loads ``tokenizer.json`` (a file, or a folder holding it) and the side files beside it."""
        path = os.fspath(path)
        if os.path.isdir(path):
            path = os.path.join(path, TOKENIZER_JSON)
        if not os.path.isfile(path):
            raise FileNotFoundError(f"HFTokenizer: no tokenizer.json at {path!r}; point --tokenizer "
                                    "at the checkpoint's tokenizer.json or tokenizer.model")
        try:
            with open(path, encoding="utf-8") as f:
                text = f.read()
        except UnicodeDecodeError as e:
            raise DataError(f"{path} is not UTF-8 JSON ({e}); is it a tokenizer.json?") from None
        folder = os.path.dirname(os.path.abspath(path))
        side = {n: _read_json(os.path.join(folder, n)) for n in SIDE_FILES
                if os.path.isfile(os.path.join(folder, n))}
        return cls(text, side, path=path)

    def __getstate__(self):
        return {"json": self._json, "side": self.side, "path": self.path}

    def __setstate__(self, state):
        self.__init__(state["json"], state["side"], path=state["path"])

    def __repr__(self):
        return f"HFTokenizer(vocab_size={self.vocab_size}, path={self.path!r})"

    @property
    def tokenizer_json(self) -> str:
        """The ``tokenizer.json`` text this tokenizer was built from."""
        return self._json

    @property
    def vocab_size(self) -> int:
        """Number of ids: the largest id (added tokens included) plus one."""
        return self._vocab_size

    @property
    def bos_id(self) -> int | None:
        return self._bos

    @property
    def eos_id(self) -> int | None:
        return self._eos

    @property
    def stop_ids(self) -> tuple[int, ...]:
        """Every end-of-sequence id: the tokenizer's eos, then the model configs' ``eos_token_id``s."""
        return self._stops

    @property
    def unk_id(self) -> int | None:
        """The unknown-token id; None for a byte-level BPE (every byte has a token)."""
        return self._unk

    @property
    def pad_id(self) -> int:
        """The id written at padded positions: pad, else unk, else eos (never reaches the loss)."""
        return self._pad if self._pad is not None else 0

    def _frame(self, ids: list[int], bos: bool, eos: bool) -> list[int]:
        for flag, name, tid in ((bos, "bos", self._bos), (eos, "eos", self._eos)):
            if flag and tid is None:
                raise DataError(f"{self.path or 'the tokenizer'} names no {name} token (no "
                                f"{name}_token in tokenizer_config.json, no {name}_token_id in "
                                f"generation_config.json / config.json); add one, or encode without "
                                f"it (--no{name} where a CLI has it)")
        return [self._bos] * bos + ids + [self._eos] * eos

    def encode(self, text: str, bos: bool = False, eos: bool = False) -> list[int]:
        """Token ids of `text`, optionally framed by bos/eos; special-token strings are single ids."""
        if not isinstance(text, str):
            raise TypeError(f"HFTokenizer.encode expects str, got {type(text).__name__}")
        return self._frame(self._tk.encode(text, add_special_tokens=False).ids, bos, eos)

    def encode_batch(self, texts: Sequence[str], bos: bool = False, eos: bool = False,
                     num_threads: int = -1) -> list[list[int]]:
        """Encodes many texts at once (the library's Rust threads; `num_threads` is ignored)."""
        del num_threads  # tokenizers sizes its pool from RAYON_NUM_THREADS
        batch = self._tk.encode_batch(list(texts), add_special_tokens=False)
        return [self._frame(e.ids, bos, eos) for e in batch]

    def decode(self, ids: Iterable[int]) -> str:
        """Text of `ids`; special ids (bos, eos, pad, ...) are dropped, unknown ids raise."""
        ids = [int(i) for i in np.asarray(list(ids) if not isinstance(ids, np.ndarray) else ids).reshape(-1)]
        n = self.vocab_size
        bad = [i for i in ids if not 0 <= i < n]
        if bad:
            raise ValueError(f"HFTokenizer.decode: ids {bad[:5]} are outside the vocabulary [0, {n})")
        return self._tk.decode(ids, skip_special_tokens=True)

    def id_to_piece(self, token_id: int) -> str:
        """The token string of one id (e.g. 'Ġthe' in a byte-level BPE, '<0x0A>')."""
        piece = self._tk.id_to_token(int(token_id))
        if piece is None:
            raise ValueError(f"HFTokenizer.id_to_piece: id {token_id} is not in the vocabulary "
                             f"[0, {self.vocab_size})")
        return piece

    def is_byte(self, token_id: int) -> bool:
        """Whether `token_id` is a byte-fallback piece ('<0x..>'); a byte-level BPE has none."""
        if not self._byte_fallback:
            return False
        piece = self._tk.id_to_token(int(token_id))
        return piece is not None and bool(_BYTE_PIECE.fullmatch(piece))

    def is_special(self, token_id: int) -> bool:
        """Whether `token_id` is a special added token (dropped by `decode`)."""
        return int(token_id) in self._special
