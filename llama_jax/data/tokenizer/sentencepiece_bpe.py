"""SentencePiece BPE tokenizer, trained and loaded the LLaMA way.

The paper (Section 2.1): "We tokenize the data with the byte-pair encoding
(BPE) algorithm, using the implementation from SentencePiece. Notably, we split
all numbers into individual digits, and fallback to bytes to decompose unknown
UTF-8 characters." `train_tokenizer` mirrors the trainer spec of Meta's released
`tokenizer.model`: BPE, `split_digits`, `byte_fallback`, the `identity`
normaliser with no whitespace squashing (so code and runs of spaces, tabs and
blank lines round-trip exactly), and the special ids unk=0, bos=1, eos=2, no pad
piece. `Tokenizer.load` reads that file or any other LLaMA-compatible
`tokenizer.model`. The CLI that trains one is `llama_jax.data.tokenizer.__main__`.
"""

from __future__ import annotations

import io
import os
import sys
from collections.abc import Iterable, Iterator, Sequence

import numpy as np
import sentencepiece as spm
from tqdm import tqdm

from llama_jax.errors import ConfigError, DataError
from llama_jax.fileio import atomic_write

UNK_ID, BOS_ID, EOS_ID = 0, 1, 2

# Meta's trainer spec for LLaMA's tokenizer.model (read from the released file).
LLAMA_TRAINER_SPEC = dict(
    model_type="bpe",
    character_coverage=0.99995,
    split_digits=True,
    byte_fallback=True,
    split_by_unicode_script=True,
    split_by_number=True,
    split_by_whitespace=True,
    allow_whitespace_only_pieces=True,
    normalization_rule_name="identity",
    remove_extra_whitespaces=False,
    add_dummy_prefix=True,
    unk_id=UNK_ID,
    bos_id=BOS_ID,
    eos_id=EOS_ID,
    pad_id=-1,
)


class Tokenizer:
    """A SentencePiece model with LLaMA's conventions; picklable (ships its proto).

    Build with `Tokenizer.load(path)` or `Tokenizer.from_proto(bytes)`.
    """

    def __init__(self, model_proto: bytes, path: str | None = None):
        self._proto = bytes(model_proto)
        self.path = path
        self._sp = spm.SentencePieceProcessor()
        try:
            self._sp.LoadFromSerializedProto(self._proto)
        except Exception as e:  # sentencepiece raises RuntimeError/OSError variants
            what = f"tokenizer file {path}" if path else "these tokenizer bytes"
            why = "the file is empty, 0 bytes" if not self._proto else "not a valid model file"
            raise DataError(f"{what} is not a SentencePiece model ({why}); point --tokenizer at a "
                            "LLaMA tokenizer.model, or train one with `python -m "
                            "llama_jax.data.tokenizer`") from e

    @classmethod
    def load(cls, path: str | os.PathLike) -> Tokenizer:
        """Loads a SentencePiece `.model` file (ours or Meta's `tokenizer.model`)."""
        path = os.fspath(path)
        if os.path.isdir(path):
            path = os.path.join(path, "tokenizer.model")
        if not os.path.isfile(path):
            raise FileNotFoundError(
                f"Tokenizer: no SentencePiece model at {path!r}. Train one with "
                "`python -m llama_jax.data.tokenizer --sources=... --vocab_size=... --out=PREFIX` "
                "or build the default corpus and tokenizer with `python -m llama_jax.data.corpus`.")
        with open(path, "rb") as f:
            return cls(f.read(), path=path)

    @classmethod
    def from_proto(cls, model_proto: bytes) -> Tokenizer:
        """Builds a tokenizer from serialized model bytes."""
        return cls(model_proto)

    def __getstate__(self):
        return {"proto": self._proto, "path": self.path}

    def __setstate__(self, state):
        self.__init__(state["proto"], path=state["path"])

    def __repr__(self):
        return f"Tokenizer(vocab_size={self.vocab_size}, path={self.path!r})"

    @property
    def model_proto(self) -> bytes:
        """The serialized SentencePiece model."""
        return self._proto

    @property
    def vocab_size(self) -> int:
        return self._sp.GetPieceSize()

    @property
    def bos_id(self) -> int:
        return self._sp.bos_id()

    @property
    def eos_id(self) -> int:
        return self._sp.eos_id()

    @property
    def unk_id(self) -> int:
        return self._sp.unk_id()

    @property
    def pad_id(self) -> int:
        """The id written at padded positions: the model's pad piece, else unk (LLaMA has none).

        Padded positions always carry `segment_ids == 0` and `loss_mask == 0`,
        so the value never reaches the loss.
        """
        pad = self._sp.pad_id()
        return pad if pad >= 0 else self.unk_id

    def encode(self, text: str, bos: bool = False, eos: bool = False) -> list[int]:
        """Token ids of `text`, optionally framed by bos/eos."""
        if not isinstance(text, str):
            raise TypeError(f"Tokenizer.encode expects str, got {type(text).__name__}")
        ids = self._sp.EncodeAsIds(text)
        if bos:
            ids.insert(0, self.bos_id)
        if eos:
            ids.append(self.eos_id)
        return ids

    def encode_batch(self, texts: Sequence[str], bos: bool = False, eos: bool = False,
                     num_threads: int = -1) -> list[list[int]]:
        """Encodes many texts at once (SentencePiece's C++ threads, GIL released)."""
        batch = self._sp.EncodeAsIds(list(texts), num_threads=num_threads)
        pre = [self.bos_id] if bos else []
        post = [self.eos_id] if eos else []
        return [pre + ids + post for ids in batch]

    def decode(self, ids: Iterable[int]) -> str:
        """Text of `ids`; control ids (bos, eos, pad) are dropped, unknown ids raise."""
        ids = [int(i) for i in np.asarray(list(ids) if not isinstance(ids, np.ndarray) else ids).reshape(-1)]
        n = self.vocab_size
        bad = [i for i in ids if not 0 <= i < n]
        if bad:
            raise ValueError(f"Tokenizer.decode: ids {bad[:5]} are outside the vocabulary [0, {n})")
        return self._sp.DecodeIds([i for i in ids if not self._sp.IsControl(i)])

    def id_to_piece(self, token_id: int) -> str:
        """The SentencePiece piece string of one id (e.g. '▁the', '<0x0A>')."""
        return self._sp.IdToPiece(int(token_id))

    def is_byte(self, token_id: int) -> bool:
        """Whether `token_id` is a byte-fallback piece ('<0x..>')."""
        return bool(self._sp.IsByte(int(token_id)))


def _iter_input_texts(inputs) -> Iterator[str]:
    """Texts from a mix of file paths (os.PathLike), document sources, and strings."""
    if isinstance(inputs, (str, os.PathLike)) or hasattr(inputs, "__getitem__") and hasattr(inputs, "name"):
        inputs = [inputs]
    for item in inputs:
        if isinstance(item, os.PathLike):
            path = os.fspath(item)
            try:
                with open(path, encoding="utf-8") as f:
                    yield f.read()
            except FileNotFoundError:
                raise FileNotFoundError(f"train_tokenizer: input file {path!r} does not exist") from None
            except UnicodeDecodeError as e:
                raise ValueError(f"train_tokenizer: {path!r} is not UTF-8 text ({e})") from None
        elif isinstance(item, str):
            yield item
        elif hasattr(item, "__len__") and hasattr(item, "__getitem__"):  # a DocumentSource
            for i in range(len(item)):
                yield item[i]
        else:
            raise TypeError(f"train_tokenizer: cannot read input of type {type(item).__name__}; pass "
                            "pathlib.Path files, str texts, or llama_jax.data.sources document sources")


def _count_inputs(inputs) -> int | None:
    """How many texts `_iter_input_texts` yields (None when a source has no length)."""
    if isinstance(inputs, (str, os.PathLike)) or hasattr(inputs, "__getitem__") and hasattr(inputs, "name"):
        inputs = [inputs]
    try:
        return sum(1 if isinstance(item, (str, os.PathLike)) else len(item) for item in inputs)
    except TypeError:
        return None


def _counted(texts: Iterable[str], bar: tqdm) -> Iterator[str]:
    """`texts`, ticking `bar` per text; then says the trainer has moved on to BPE."""
    for text in texts:
        yield text
        bar.update(1)
    bar.set_postfix_str("read; training BPE")


def _sentences(texts: Iterable[str], max_chars: int) -> Iterator[str]:
    """SentencePiece trains on lines: split documents at newlines, chunk overlong lines."""
    for text in texts:
        for line in text.split("\n"):
            if not line.strip():
                continue
            for start in range(0, len(line), max_chars):
                yield line[start:start + max_chars]


MIN_VOCAB_SIZE = 3 + 256 + 1


def check_vocab_size(vocab_size) -> None:
    """A `ConfigError` (a ValueError) unless `vocab_size` can hold LLaMA's pieces."""
    if isinstance(vocab_size, bool) or not isinstance(vocab_size, int) or vocab_size < MIN_VOCAB_SIZE:
        raise ConfigError(f"train_tokenizer: vocab_size={vocab_size!r} must be an int >= "
                          f"{MIN_VOCAB_SIZE} (3 special + 256 byte-fallback pieces + at least one "
                          "merge); pass a larger --vocab_size")


def train_tokenizer(
    inputs,
    model_prefix: str | os.PathLike,
    vocab_size: int,
    *,
    max_sentences: int = 5_000_000,
    max_sentence_length: int = 4192,
    num_threads: int | None = None,
    seed: int = 0,
    progress: bool | None = None,
    **spm_overrides,
) -> Tokenizer:
    """Trains a LLaMA-style SentencePiece BPE model; writes `{model_prefix}.model` and `.vocab`.

    Args:
      inputs: texts to learn from: `pathlib.Path` files (UTF-8), `str` texts, or
        document sources from `llama_jax.data.sources` (or a list mixing them).
      model_prefix: output path prefix; written atomically (temp file + rename).
      vocab_size: number of pieces, including unk/bos/eos and the 256 byte pieces.
      max_sentences: SentencePiece `input_sentence_size` (a seeded sample of
        lines when the input has more).
      max_sentence_length: longest line in bytes; longer lines are cut into chunks.
      num_threads: trainer threads (default: all cores).
      seed: seeds SentencePiece's sampling so training is reproducible.
      progress: a `tqdm` bar on stderr over the inputs read, open until the
        BPE training ends (None: only on a terminal).
      **spm_overrides: any other SentencePiece trainer option (overrides
        `LLAMA_TRAINER_SPEC`).

    Returns:
      The trained `Tokenizer`.
    """
    check_vocab_size(vocab_size)
    model_prefix = os.fspath(model_prefix)
    out_dir = os.path.dirname(os.path.abspath(model_prefix))
    os.makedirs(out_dir, exist_ok=True)
    spec = dict(LLAMA_TRAINER_SPEC)
    spec.update(vocab_size=vocab_size, input_sentence_size=max_sentences, shuffle_input_sentence=True,
                max_sentence_length=max_sentence_length, num_threads=num_threads or os.cpu_count() or 1,
                minloglevel=2)
    spec.update(spm_overrides)
    bar = tqdm(total=_count_inputs(inputs), desc="tokenizer", unit="doc", file=sys.stderr,
               disable=None if progress is None else not progress)
    sentences = _sentences(_counted(_iter_input_texts(inputs), bar), max_chars=max_sentence_length // 4)
    with bar:  # Closed on every way out, errors included.
        first = next(sentences, None)
        if first is None:
            raise ValueError("train_tokenizer: the inputs hold no text (every document is empty)")

        def all_sentences():
            yield first
            yield from sentences

        spm.set_random_generator_seed(seed)
        model = io.BytesIO()
        try:
            spm.SentencePieceTrainer.train(sentence_iterator=all_sentences(), model_writer=model, **spec)
        except RuntimeError as e:
            msg = str(e)
            if "required_chars" in msg:
                hint = (" vocab_size must hold the 3 special and 256 byte pieces plus every character kept by "
                        "character_coverage: raise vocab_size or lower character_coverage.")
            elif "vocab" in msg.lower():
                hint = " The text is too small for this vocabulary: lower vocab_size or add data."
            else:
                hint = ""
            raise ValueError(f"train_tokenizer: SentencePiece failed: {msg}.{hint}") from e
    tok = Tokenizer(model.getvalue(), path=model_prefix + ".model")
    atomic_write(model_prefix + ".model", tok.model_proto)
    vocab = "".join(f"{tok.id_to_piece(i)}\t{tok._sp.GetScore(i)}\n" for i in range(tok.vocab_size))
    atomic_write(model_prefix + ".vocab", vocab.encode("utf-8"))
    return tok
