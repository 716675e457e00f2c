"""Optional tokenisation of the output (``--config.tokenizer=PATH``): token shards and counts.

With a tokenizer set, the last document flow also runs `TokenShardWriter`
after the output writer: task ``r`` writes ``DIR/tokens/<r>.npy`` (uint32,
each document's ids followed by the tokenizer's eos id) and
``DIR/tokens/<r>.json`` (its documents and tokens). `merge_token_counts`
sums them into ``DIR/token_counts.json``:
``{"<source>": {"documents": n, "tokens": n, "tokenizer": path, "vocab_size": v}}``
-- the per-source token count from which the Table 1 sampling weights and
epochs are computed (`llama_jax.data.stats`).
"""

from __future__ import annotations

import glob
import json
import os

import numpy as np
from datatrove.pipeline.base import PipelineStep

from llama_jax.data.tokenizer import load_tokenizer
from llama_jax.errors import ConfigError

TOKENS_DIR = "tokens"
COUNTS_FILE = "token_counts.json"


def check_tokenizer(path: str) -> int:
    """Load the tokenizer at `path` once (before any work); return its vocab size."""
    if not os.path.exists(path):
        raise ConfigError(f"--config.tokenizer={path}: no such file; give a SentencePiece "
                          "tokenizer.model or a tokenizer.json (or leave it empty to skip tokenising)")
    tokenizer = load_tokenizer(path)
    if tokenizer.vocab_size > np.iinfo(np.uint32).max:
        raise ConfigError(f"--config.tokenizer={path}: vocab {tokenizer.vocab_size} does not fit uint32")
    return int(tokenizer.vocab_size)


class TokenShardWriter(PipelineStep):
    """Tokenises every document of a task into ``<folder>/<rank>.npy`` and counts it."""

    name = "🔢 token shards"
    type = "🔢 - TOKENIZER"

    def __init__(self, tokenizer_path: str, folder: str):
        super().__init__()
        self.tokenizer_path = tokenizer_path
        self.folder = folder

    def run(self, data, rank: int = 0, world_size: int = 1):
        """Pass documents on; at the end of the task write its token shard and counts."""
        tokenizer = load_tokenizer(self.tokenizer_path)
        eos = tokenizer.eos_id
        chunks, documents = [], 0
        for doc in data:
            with self.track_time():
                ids = tokenizer.encode(doc.text)
                chunks.append(np.asarray([*ids, eos], dtype=np.uint32))  # [len + 1]
            documents += 1
            self.stat_update("tokens", value=len(ids) + 1)
            yield doc
        tokens = np.concatenate(chunks) if chunks else np.zeros(0, np.uint32)  # [task tokens]
        os.makedirs(self.folder, exist_ok=True)
        base = os.path.join(self.folder, f"{rank:05d}")
        np.save(base + ".npy.tmp.npy", tokens)
        os.replace(base + ".npy.tmp.npy", base + ".npy")
        with open(base + ".json.tmp", "w") as f:
            json.dump({"documents": documents, "tokens": int(tokens.size)}, f)
        os.replace(base + ".json.tmp", base + ".json")


def merge_token_counts(output: str, source: str, tokenizer_path: str, vocab_size: int) -> dict:
    """Sum the per-task counts into ``DIR/token_counts.json``; return that source's entry."""
    documents = tokens = 0
    for path in sorted(glob.glob(os.path.join(output, TOKENS_DIR, "*.json"))):
        with open(path) as f:
            counts = json.load(f)
        documents += counts["documents"]
        tokens += counts["tokens"]
    entry = {"documents": documents, "tokens": tokens, "tokenizer": tokenizer_path,
             "vocab_size": vocab_size}
    path = os.path.join(output, COUNTS_FILE)
    with open(path + ".tmp", "w") as f:
        json.dump({source: entry}, f, indent=1)
    os.replace(path + ".tmp", path)
    return entry
