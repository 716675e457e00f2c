"""Data: SentencePiece tokenizer, document sources, the grain mixture pipeline, the default corpus.

- `tokenizer`: `Tokenizer` (load / encode / decode), `train_tokenizer` (LLaMA's BPE recipe),
  `HFTokenizer` (a Hugging Face tokenizer.json), `load_tokenizer` (either, from a checkpoint).
- `sources`: `SourceSpec`, `build_source` (text / jsonl / array_record / tfds), held-out split.
- `mixture`: `make_train_iterator` (packed, mixed, per-process global batches with
  exact resume), `make_eval_batches` (held-out documents), `PAPER_MIXTURE`.
- `corpus`: `ensure_corpus` builds the embedded default corpus and its tokenizer.
- `tfds_builder`: turn a local folder of text into a TFDS array_record data set.

The names above resolve on first use (PEP 562) rather than by importing every
submodule here: ``python -m llama_jax.data.corpus`` runs that module as
``__main__``, and a package that had already imported it would hold two copies.
Code inside the package imports the submodules directly.
"""

import importlib

_EXPORTS = {
    "Tokenizer": "tokenizer", "train_tokenizer": "tokenizer", "HFTokenizer": "tokenizer",
    "load_tokenizer": "tokenizer",
    "SourceSpec": "sources", "DataError": "sources", "build_source": "sources", "split_heldout": "sources",
    "make_train_iterator": "mixture", "make_eval_batches": "mixture", "PAPER_MIXTURE": "mixture",
    "paper_mixture": "mixture",
    "ensure_corpus": "corpus", "CorpusInfo": "corpus",
    "build_text_folder_dataset": "tfds_builder",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name):
    if name in _EXPORTS:
        return getattr(importlib.import_module(f"llama_jax.data.{_EXPORTS[name]}"), name)
    raise AttributeError(f"module 'llama_jax.data' has no attribute {name!r}")
