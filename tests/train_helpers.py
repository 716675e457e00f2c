"""Shared set-up for the training tests: tiny data, a tokenizer, a micro config.

`make_data(root)` writes two small text sources (Python standard-library
modules, one file per document, and a JSONL of paragraphs) and trains a
512-piece SentencePiece model on them; `micro_config(data_dir, **overrides)`
is `configs/tiny.py` shrunk to a 2-layer dim-64 model, seq 32, batch 8.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
VOCAB = 512


def make_data(root: Path) -> Path:
    """Two small sources under `root` and `root/tok.model`; returns `root`."""
    from llama_jax.data.tokenizer import train_tokenizer

    root = Path(root)
    if (root / "tok.model").exists():
        return root
    code = root / "code"
    code.mkdir(parents=True, exist_ok=True)
    lib = Path(os.__file__).parent
    names = ["textwrap.py", "colorsys.py", "bisect.py", "heapq.py", "fnmatch.py", "keyword.py",
             "glob.py", "shlex.py", "string.py", "numbers.py", "abc.py", "copy.py", "this.py",
             "queue.py", "sched.py", "stat.py", "token.py", "struct.py", "random.py", "base64.py"]
    for n in names:
        (code / n).write_text((lib / n).read_text(encoding="utf-8"), encoding="utf-8")
    from pydoc_data.topics import topics

    paras = [p.strip() for text in topics.values() for p in text.split("\n\n")
             if len(p.strip()) > 200][:400]
    with open(root / "prose.jsonl", "w", encoding="utf-8") as f:
        for p in paras:
            f.write(json.dumps({"text": p}) + "\n")
    train_tokenizer([code / n for n in names] + paras, root / "tok", VOCAB, num_threads=1)
    return root


def sources(root: Path) -> tuple:
    return ({"name": "code", "kind": "text", "path": str(Path(root) / "code"), "weight": 2.0},
            {"name": "prose", "kind": "jsonl", "path": str(Path(root) / "prose.jsonl"),
             "weight": 1.0})


def micro_config(root: Path, **overrides):
    """configs/tiny.py with a micro model on the test data; `overrides` by dotted key."""
    sys.path.insert(0, str(REPO))
    from llama_jax.train import load_config_file

    c = load_config_file(str(REPO / "configs" / "tiny.py"))
    c.model.dim = 64
    c.model.n_layers = 2
    c.model.n_heads = 4
    c.model.vocab_size = VOCAB
    c.model.multiple_of = 32
    c.model.max_seq_len = 64
    c.train.steps = 8
    c.train.batch_size = 8
    c.train.seq_len = 32
    c.train.log_every = 1
    c.train.eval_every = 0
    c.train.eval_batches = 1
    c.train.progress = "log"
    c.train.tensorboard = False
    c.checkpoint.every = 4
    c.checkpoint.keep = 2
    c.data.corpus = "sources"
    c.data.sources = sources(root)
    c.data.tokenizer = str(Path(root) / "tok.model")
    c.optimizer.lr = 3e-3
    c.optimizer.warmup_steps = 2
    for key, value in overrides.items():
        node = c
        *path, last = key.split(".")
        for p in path:
            node = node[p]
        node[last] = value
    return c


def override_flags(root: Path, **extra) -> list[str]:
    """The command-line form of `micro_config` (for subprocess runs)."""
    flags = {
        "model.dim": 64, "model.n_layers": 2, "model.n_heads": 4, "model.vocab_size": VOCAB,
        "model.multiple_of": 32, "model.max_seq_len": 64, "train.steps": 8,
        "train.batch_size": 8, "train.seq_len": 32, "train.log_every": 1,
        "train.eval_every": 0, "train.eval_batches": 1, "train.progress": "log",
        "train.tensorboard": False, "checkpoint.every": 4, "checkpoint.keep": 2,
        "data.corpus": "sources", "data.sources": repr(sources(root)),
        "data.tokenizer": str(Path(root) / "tok.model"), "optimizer.lr": 3e-3,
        "optimizer.warmup_steps": 2,
    }
    flags.update(extra)
    return [f"--config.{k}={v}" for k, v in flags.items()]
