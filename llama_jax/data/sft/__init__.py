"""Supervised finetuning data: JSONL readers, response masks, packing, the embedded set.

`readers` (Alpaca / FLAN / chat JSONL -> conversations), `encode` (template
rendering -> ids and response mask, fitted to the sequence), `pack` (packed
rows with segment ids and a resumable batch iterator), `embedded` (an
instruction set built from installed packages' text).
"""

from llama_jax.data.sft.encode import Encoded, EncodeStats, encode_example, fit_examples
from llama_jax.data.sft.pack import SFTIterator, pack_row
from llama_jax.data.sft.readers import FORMATS, Example, ReadStats, read_jsonl, to_messages

__all__ = ["FORMATS", "EncodeStats", "Encoded", "Example", "ReadStats", "SFTIterator",
           "encode_example", "fit_examples", "pack_row", "read_jsonl", "to_messages"]
