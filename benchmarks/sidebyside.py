"""Shared pieces of the side-by-side CPU benchmarks (ours vs Hugging Face / lm-eval).

Shapes, the random HF model both sides load, the tokenizer, timing statistics,
machine facts and the JSON writer. Every benchmark alternates the two sides in
one process, so load on a shared machine hits both alike; ratios are of medians.
"""

from __future__ import annotations

import json
import os
import platform
import statistics
import time
from pathlib import Path

import jax
import torch
import transformers

import llama_jax

RESULTS = Path(__file__).parent / "results"

# The shapes: (a) 7.5M and (b) 60M parameters.
SHAPES = {
    "a": dict(hidden_size=256, num_hidden_layers=4, num_attention_heads=4, vocab_size=8000,
              intermediate_size=704),
    "b": dict(hidden_size=512, num_hidden_layers=8, num_attention_heads=8, vocab_size=32000,
              intermediate_size=1376),
}


def hf_random_model(shape: str, folder: Path, *, max_len: int = 2048, seed: int = 0,
                    vocab_size: int | None = None, tokenizer=None):
    """A random `transformers` Llama of `shape` saved to `folder` (with `tokenizer`); the model."""
    torch.manual_seed(seed)
    kw = dict(SHAPES[shape])
    if vocab_size is not None:
        kw["vocab_size"] = vocab_size
    cfg = transformers.LlamaConfig(**kw, max_position_embeddings=max_len, rms_norm_eps=1e-6,
                                   initializer_range=0.1, tie_word_embeddings=False)
    model = transformers.LlamaForCausalLM(cfg).eval()
    model.save_pretrained(folder)
    if tokenizer is not None:
        config, params = llama_jax.from_pretrained(folder, progress=False)
        llama_jax.save_pretrained(config, params, folder, format="hf", tokenizer=tokenizer,
                                  overwrite=True, progress=False)
    return model


def timed(fn) -> float:
    """Seconds of one call of `fn` (which must block until its result is ready)."""
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def stats(rates: list[float]) -> dict:
    """Median and spread (min, max) of per-run rates."""
    return {"median": statistics.median(rates), "min": min(rates), "max": max(rates),
            "runs": rates}


def machine() -> dict:
    """What the numbers were measured on."""
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next(ln.split(":", 1)[1].strip() for ln in f if ln.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return {"date": time.strftime("%Y-%m-%d"), "cpu": cpu, "cores": os.cpu_count(),
            "jax": jax.__version__, "torch": torch.__version__,
            "transformers": transformers.__version__, "torch_threads": torch.get_num_threads(),
            "backend": jax.default_backend(), "xla_flags": os.environ.get("XLA_FLAGS", "")}


def write(name: str, payload: dict, out: str | None = None) -> Path:
    """Write `payload` as JSON to `out` or benchmarks/results/<name>.json; the path."""
    path = Path(out) if out else RESULTS / f"{name}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(payload, indent=2) + "\n")
    return path
