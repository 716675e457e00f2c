"""Train a SentencePiece BPE tokenizer the paper's way from local sources.

    python -m llama_jax.data.tokenizer --sources=/data/code,/data/books.jsonl \
        --vocab_size=32000 --out=/models/tokenizer

Sources are paths, folders, globs, ``*.jsonl``, ``*.array_record`` or
``KIND=PATH`` (`llama_jax.data.sources.source_from_arg`); writes ``OUT.model``
and ``OUT.vocab`` (`train_tokenizer`).
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Sequence

from absl import logging

from llama_jax.cli import handle_errors, user_errors
from llama_jax.data import sources as sources_lib
from llama_jax.data.tokenizer.sentencepiece_bpe import train_tokenizer


@handle_errors
def main(argv: Sequence[str] | None = None) -> int:
    """CLI: train a tokenizer from sources (paths, folders, globs, .jsonl, .array_record).

    Returns the exit status (`llama_jax.cli`: 2 for a missing or bad source).
    """
    parser = argparse.ArgumentParser(prog="python -m llama_jax.data.tokenizer", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sources", required=True,
                        help="comma-separated sources: text files/folders/globs, *.jsonl, *.array_record, "
                             "or KIND=PATH (kinds: text, jsonl, array_record, tfds)")
    parser.add_argument("--vocab_size", type=int, required=True)
    parser.add_argument("--out", required=True, help="output prefix; writes OUT.model and OUT.vocab")
    parser.add_argument("--field", default="text", help="JSON field holding the text (jsonl sources)")
    parser.add_argument("--max_sentences", type=int, default=5_000_000)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    logging.use_absl_handler()  # INFO lines (skipped documents, ...) on stderr
    logging.set_verbosity(logging.INFO)
    start = time.perf_counter()
    with user_errors():  # a bad source, text or vocab size
        srcs = [sources_lib.build_source(sources_lib.source_from_arg(a, field=args.field))
                for a in args.sources.split(",") if a]
        tok = train_tokenizer(srcs, args.out, args.vocab_size, max_sentences=args.max_sentences,
                              seed=args.seed)
    took = time.perf_counter() - start
    docs = sum(len(s) for s in srcs)
    print(f"trained {tok.path}: vocab_size={tok.vocab_size} from {docs} documents in {took:.1f}s")
    sample = "def f(x):\n\treturn 12345  # ok"
    print(f"sample {sample!r} -> {[tok.id_to_piece(i) for i in tok.encode(sample)]}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
