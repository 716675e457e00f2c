"""Tokenizers: SentencePiece BPE trained and loaded the LLaMA way, and HF ``tokenizer.json``.

`Tokenizer` (load / encode / decode) and `train_tokenizer` (the paper's recipe:
BPE, split digits, byte fallback) live in `sentencepiece_bpe.py`;
`HFTokenizer` (a Hugging Face ``tokenizer.json``, e.g. Llama 3's BPE, behind
the same interface) in `hf_json.py`; `load_tokenizer` picks one from what a
checkpoint folder holds (`loading.py`). The CLI that trains one from local
sources is ``python -m llama_jax.data.tokenizer`` (`__main__.py`).
"""

from llama_jax.data.tokenizer.hf_json import HFTokenizer
from llama_jax.data.tokenizer.loading import (
    TOKENIZER_TYPES,
    AnyTokenizer,
    check_tokenizer_fits,
    find_tokenizer_file,
    load_tokenizer,
)
from llama_jax.data.tokenizer.sentencepiece_bpe import (
    BOS_ID,
    EOS_ID,
    LLAMA_TRAINER_SPEC,
    UNK_ID,
    Tokenizer,
    check_vocab_size,
    train_tokenizer,
)

__all__ = ["BOS_ID", "EOS_ID", "LLAMA_TRAINER_SPEC", "TOKENIZER_TYPES", "UNK_ID", "AnyTokenizer",
           "HFTokenizer", "Tokenizer", "check_tokenizer_fits", "check_vocab_size",
           "find_tokenizer_file", "load_tokenizer", "train_tokenizer"]
