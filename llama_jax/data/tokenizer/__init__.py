"""Tokenizers: SentencePiece BPE trained and loaded the LLaMA way.

`Tokenizer` (load / encode / decode) and `train_tokenizer` (the paper's recipe:
BPE, split digits, byte fallback) live in `sentencepiece_bpe.py`; the CLI that
trains one from local sources is ``python -m llama_jax.data.tokenizer``
(`__main__.py`).
"""

from llama_jax.data.tokenizer.sentencepiece_bpe import (
    BOS_ID,
    EOS_ID,
    LLAMA_TRAINER_SPEC,
    UNK_ID,
    Tokenizer,
    check_vocab_size,
    train_tokenizer,
)

__all__ = ["BOS_ID", "EOS_ID", "LLAMA_TRAINER_SPEC", "UNK_ID", "Tokenizer",
           "check_vocab_size", "train_tokenizer"]
