"""The tokenizer side of a Hugging Face export: the files `AutoTokenizer` reads.

Next to the weights, `save_pretrained(..., format="hf", tokenizer=...)` writes

- ``tokenizer.model``: our SentencePiece model, byte for byte;
- ``tokenizer.json``: the same BPE as a `tokenizers` pipeline (vocab in id
  order, merges ranked by piece score, byte fallback, the decoder that strips
  the dummy prefix) built here from the model proto, no transformers needed;
- ``tokenizer_config.json``, ``special_tokens_map.json``: bos/eos/unk/pad,
  ``add_bos_token=True``, ``add_eos_token=False``, ``model_max_length``;
- ``generation_config.json``: bos/eos/pad ids and ``max_length``.

Why ``PreTrainedTokenizerFast`` and not ``LlamaTokenizer`` (docs/convert.md):
SentencePiece always adds its dummy prefix "▁", also before text that starts
with a space. transformers 5's ``LlamaTokenizer`` rebuilds the pipeline with a
``Metaspace`` pre-tokenizer that skips the prefix when the text already starts
with one (" x" -> "▁x", ours "▁▁x"), whatever ``legacy`` / ``add_prefix_space``
say. The generic class loads ``tokenizer.json`` as written, whose normalizer
(``Prepend("▁")`` + spaces -> "▁", the pipeline transformers' own converter
uses with ``legacy=True``) prepends always, so ids equal ours. We also set
``split_special_tokens=True``: our `Tokenizer` never parses "<s>" inside text.

A checkpoint whose tokenizer is a Hugging Face ``tokenizer.json`` only (Llama 3)
loads as an `HFTokenizer`: `find_tokenizer` falls back to ``tokenizer.json``
when there is no ``tokenizer.model``, and the save functions copy its
``tokenizer.json`` and side files (``tokenizer_config.json``,
``special_tokens_map.json``) as they were read.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from sentencepiece import sentencepiece_model_pb2

from llama_jax.convert.common import ConversionError
from llama_jax.data.tokenizer import (
    BOS_ID,
    EOS_ID,
    TOKENIZER_TYPES,
    UNK_ID,
    AnyTokenizer,
    HFTokenizer,
    Tokenizer,
    check_tokenizer_fits,
    find_tokenizer_file,
)
from llama_jax.data.tokenizer import load_tokenizer as _load_any
from llama_jax.model.config import LlamaConfig

TOKENIZER_MODEL = "tokenizer.model"
TOKENIZER_JSON = "tokenizer.json"
TOKENIZER_CONFIG = "tokenizer_config.json"
SPECIAL_TOKENS_MAP = "special_tokens_map.json"
GENERATION_CONFIG = "generation_config.json"

_SPACE = "\u2581"  # SentencePiece's whitespace symbol "▁".
_Piece = sentencepiece_model_pb2.ModelProto.SentencePiece


def load_tokenizer(tokenizer: AnyTokenizer | str | Path) -> AnyTokenizer:
    """A tokenizer, a ``tokenizer.model`` / ``tokenizer.json`` path, or a folder holding one."""
    if isinstance(tokenizer, TOKENIZER_TYPES):
        return tokenizer
    try:
        return _load_any(tokenizer)
    except (FileNotFoundError, ValueError) as e:
        raise ConversionError(f"tokenizer={str(tokenizer)!r}: {e}") from e


def find_tokenizer(src: str | Path) -> Path | None:
    """The ``tokenizer.model`` (else ``tokenizer.json``) that belongs to checkpoint `src`, if any.

    Looks in `src` itself; for a Meta release (``llama/7B/`` beside
    ``llama/tokenizer.model``) in its parent; for a training checkpoint in
    its workdir (the folder holding ``checkpoints/``). The first folder that
    holds either file wins, a ``tokenizer.model`` before a ``tokenizer.json``.
    """
    src = Path(src).resolve()
    candidates = [src]
    if (src / "params.json").is_file():
        candidates.append(src.parent)
    for up in (src, src.parent, src.parent.parent):
        if (up / "checkpoints").is_dir() and (src == up or src.is_relative_to(up / "checkpoints")):
            candidates.append(up)
    for folder in candidates:
        found = find_tokenizer_file(folder)
        if found is not None:
            return Path(found)
    return None


def checkpoint_tokenizer(checkpoint: str | Path, tokenizer: str | Path | None = None
                         ) -> tuple[AnyTokenizer, str]:
    """(tokenizer, its path) for the eval / generate CLIs: `tokenizer` if given, else `find_tokenizer`.

    `tokenizer` may be a ``tokenizer.model``, a ``tokenizer.json`` or a folder
    holding one. Nothing found is a `ConversionError` saying what to pass.
    """
    path = tokenizer if tokenizer else find_tokenizer(checkpoint)
    if path is None:
        raise ConversionError(f"no {TOKENIZER_MODEL} or {TOKENIZER_JSON} in checkpoint "
                              f"{checkpoint} (nor beside it); pass --tokenizer=FILE (a "
                              "SentencePiece tokenizer.model or a Hugging Face tokenizer.json)")
    tok = load_tokenizer(path)
    return tok, os.fspath(tok.path or path)


def _model_proto(tok: Tokenizer) -> Any:
    proto = sentencepiece_model_pb2.ModelProto()
    proto.ParseFromString(tok.model_proto)
    spec, norm = proto.trainer_spec, proto.normalizer_spec
    where = tok.path or "the tokenizer"
    if spec.model_type != spec.BPE:
        raise ConversionError(f"{where}: HF export writes SentencePiece BPE models (LLaMA's); "
                              f"this one is {spec.ModelType.Name(spec.model_type)}")
    if norm.precompiled_charsmap or norm.remove_extra_whitespaces or spec.treat_whitespace_as_suffix:
        raise ConversionError(f"{where}: HF export needs the identity normaliser with "
                              "remove_extra_whitespaces=false and whitespace as prefix (LLaMA's "
                              f"trainer spec); this model uses {norm.name!r}")
    return proto


def tokenizer_json(tok: Tokenizer) -> dict[str, Any]:
    """A `tokenizers` ``tokenizer.json`` that encodes and decodes exactly as `tok`."""
    proto = _model_proto(tok)
    pieces = list(proto.pieces)
    vocab = {p.piece: i for i, p in enumerate(pieces)}
    mergeable = {p.piece: i for i, p in enumerate(pieces) if p.type == _Piece.NORMAL}
    # SentencePiece merges the adjacent pair whose union has the best score;
    # `tokenizers` merges the pair of lowest rank: rank by the union's score.
    merges = []
    for piece in sorted(mergeable, key=lambda q: (-pieces[mergeable[q]].score, mergeable[q])):
        splits = [(piece[:k], piece[k:]) for k in range(1, len(piece))]
        merges += sorted(((a, b) for a, b in splits if a in mergeable and b in mergeable),
                         key=lambda ab: (mergeable[ab[0]], mergeable[ab[1]]))
    special = {_Piece.CONTROL, _Piece.UNKNOWN}
    added = [{"id": i, "content": p.piece, "single_word": False, "lstrip": False,
              "rstrip": False, "normalized": p.type == _Piece.USER_DEFINED,
              "special": p.type in special}
             for i, p in enumerate(pieces) if p.type in special | {_Piece.USER_DEFINED}]
    unk = pieces[tok.unk_id].piece
    normalizers = [{"type": "Replace", "pattern": {"String": " "}, "content": _SPACE}]
    if proto.normalizer_spec.add_dummy_prefix:
        normalizers.insert(0, {"type": "Prepend", "prepend": _SPACE})
    decoders = [{"type": "Replace", "pattern": {"String": _SPACE}, "content": " "},
                {"type": "ByteFallback"}, {"type": "Fuse"}]
    if proto.normalizer_spec.add_dummy_prefix:
        decoders.append({"type": "Strip", "content": " ", "start": 1, "stop": 0})
    bos = pieces[tok.bos_id].piece
    return {
        "version": "1.0",
        "truncation": None,
        "padding": None,
        "added_tokens": added,
        "normalizer": {"type": "Sequence", "normalizers": normalizers},
        "pre_tokenizer": None,
        "post_processor": {
            "type": "TemplateProcessing",
            "single": [{"SpecialToken": {"id": bos, "type_id": 0}},
                       {"Sequence": {"id": "A", "type_id": 0}}],
            "pair": [{"SpecialToken": {"id": bos, "type_id": 0}},
                     {"Sequence": {"id": "A", "type_id": 0}},
                     {"SpecialToken": {"id": bos, "type_id": 1}},
                     {"Sequence": {"id": "B", "type_id": 1}}],
            "special_tokens": {bos: {"id": bos, "ids": [tok.bos_id], "tokens": [bos]}},
        },
        "decoder": {"type": "Sequence", "decoders": decoders},
        "model": {"type": "BPE", "dropout": None, "unk_token": unk,
                  "continuing_subword_prefix": None, "end_of_word_suffix": None,
                  "fuse_unk": True, "byte_fallback": proto.trainer_spec.byte_fallback,
                  "ignore_merges": False, "vocab": vocab,
                  "merges": [f"{a} {b}" for a, b in merges]},
    }


def special_tokens(tok: Tokenizer) -> dict[str, str]:
    """bos/eos/unk/pad piece strings (pad is unk: LLaMA has no pad piece)."""
    piece = tok.id_to_piece
    return {"bos_token": piece(tok.bos_id), "eos_token": piece(tok.eos_id),
            "unk_token": piece(tok.unk_id), "pad_token": piece(tok.pad_id)}


def tokenizer_config(tok: Tokenizer, config: LlamaConfig) -> dict[str, Any]:
    """``tokenizer_config.json``: the class, special tokens and framing."""
    return {
        "tokenizer_class": "PreTrainedTokenizerFast",
        **special_tokens(tok),
        "add_bos_token": True,
        "add_eos_token": False,
        # Read by LlamaTokenizer if a user forces it; legacy=True is the spelling
        # whose prefix handling is SentencePiece's (see the module docstring).
        "legacy": True,
        "split_special_tokens": True,
        "clean_up_tokenization_spaces": False,
        "model_max_length": config.max_seq_len,
        "padding_side": "left",
    }


def generation_config(config: LlamaConfig, tok: AnyTokenizer | None) -> dict[str, Any]:
    """``generation_config.json``: ids (LLaMA's 1/2/0 when no tokenizer), greedy, max_length."""
    bos, eos, pad = (BOS_ID, EOS_ID, UNK_ID) if tok is None else (tok.bos_id, tok.eos_id,
                                                                   tok.pad_id)
    if isinstance(tok, HFTokenizer) and len(tok.stop_ids) > 1:
        eos = list(tok.stop_ids)
    return {"bos_token_id": bos, "eos_token_id": eos, "pad_token_id": pad,
            "max_length": config.max_seq_len, "do_sample": False}


def _write_json(out_dir: Path, name: str, obj: Any) -> None:
    (out_dir / name).write_text(json.dumps(obj, indent=2, ensure_ascii=False) + "\n",
                                encoding="utf-8")


def save_hf_tokenizer(out_dir: Path, config: LlamaConfig, tok: AnyTokenizer | None) -> None:
    """Write generation_config.json and, given `tok`, the tokenizer files into `out_dir`."""
    _write_json(out_dir, GENERATION_CONFIG, generation_config(config, tok))
    if tok is None:
        return
    try:
        check_tokenizer_fits(tok, config.vocab_size)
    except ValueError as e:
        raise ConversionError(str(e)) from e
    if isinstance(tok, HFTokenizer):
        save_tokenizer_model(out_dir, tok)
        return
    write = lambda name, obj: _write_json(out_dir, name, obj)  # noqa: E731
    write(TOKENIZER_JSON, tokenizer_json(tok))
    write(TOKENIZER_CONFIG, tokenizer_config(tok, config))
    write(SPECIAL_TOKENS_MAP, special_tokens(tok))
    save_tokenizer_model(out_dir, tok)


def save_tokenizer_model(out_dir: Path, tok: AnyTokenizer) -> None:
    """Write the tokenizer as it was read: ``tokenizer.model`` bytes, or ``tokenizer.json``.

    An `HFTokenizer` also writes its ``tokenizer_config.json`` and
    ``special_tokens_map.json`` (the model's config files are the writer's).
    """
    if isinstance(tok, HFTokenizer):
        (out_dir / TOKENIZER_JSON).write_text(tok.tokenizer_json, encoding="utf-8")
        for name in (TOKENIZER_CONFIG, SPECIAL_TOKENS_MAP):
            if name in tok.side:
                _write_json(out_dir, name, tok.side[name])
        return
    (out_dir / TOKENIZER_MODEL).write_bytes(tok.model_proto)
