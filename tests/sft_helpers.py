"""Shared set-up for the finetuning tests: small chat / alpaca JSONL and a micro SFT config.

`write_chat(path)` writes short arithmetic conversations (some multi-turn,
some with a system turn) a micro model can learn; `sft_config(root, data)`
is `train_helpers.micro_config` switched to ``data.corpus='sft'``.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

import train_helpers as th


def conversations(n: int = 96, seed: int = 0) -> list[list[dict]]:
    rng = random.Random(seed)
    out = []
    for i in range(n):
        a, b = rng.randint(0, 20), rng.randint(0, 20)
        msgs = []
        if i % 3 == 0:
            msgs.append({"role": "system", "content": "You add numbers."})
        msgs += [{"role": "user", "content": f"What is {a} + {b}?"},
                 {"role": "assistant", "content": f"{a} + {b} = {a + b}."}]
        if i % 4 == 1:
            msgs += [{"role": "user", "content": "And doubled?"},
                     {"role": "assistant", "content": f"{2 * (a + b)}."}]
        out.append(msgs)
    return out


def write_chat(path: Path, n: int = 96) -> Path:
    with open(path, "w", encoding="utf-8") as f:
        for msgs in conversations(n):
            f.write(json.dumps({"messages": msgs}) + "\n")
    return path


def write_alpaca(path: Path, n: int = 32) -> Path:
    with open(path, "w", encoding="utf-8") as f:
        for msgs in conversations(n):
            user = [m for m in msgs if m["role"] == "user"][0]["content"]
            ans = [m for m in msgs if m["role"] == "assistant"][0]["content"]
            f.write(json.dumps({"instruction": user, "input": "", "output": ans}) + "\n")
    return path


def sft_config(root: Path, data: Path, **overrides):
    c = th.micro_config(root, **{"train.seq_len": 128, "model.max_seq_len": 128,
                                 "train.eval_batches": 0, **overrides})
    c.data.corpus = "sft"
    c.data.sft.path = str(data)
    c.data.sft.format = "chat"
    return c


HF = dict(hidden_size=64, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
          intermediate_size=96, vocab_size=th.VOCAB, max_position_embeddings=128,
          rms_norm_eps=1e-5)


def make_hf_checkpoint(root: Path, out: Path) -> Path:
    """A random tiny Llama saved by transformers, with our tokenizer.model beside it."""
    import shutil

    import torch
    import transformers

    torch.manual_seed(0)
    model = transformers.LlamaForCausalLM(transformers.LlamaConfig(**HF, initializer_range=0.05))
    model.save_pretrained(out)
    shutil.copy(Path(root) / "tok.model", Path(out) / "tokenizer.model")
    return Path(out)


def init_overrides(hf_dir: Path, data: Path) -> dict:
    """Overrides of `micro_config` for finetuning the HF checkpoint on `data`."""
    return {"init.checkpoint": str(hf_dir), "data.corpus": "sft", "data.sft.path": str(data),
            "data.sft.format": "chat", "data.tokenizer": "", "model.dim": None,
            "model.n_layers": None, "model.n_heads": None, "model.vocab_size": None,
            "model.multiple_of": None, "model.max_seq_len": None, "train.seq_len": 128,
            "train.eval_batches": 0}
