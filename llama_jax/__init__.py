"""llama_jax: the LLaMA paper as a JAX/Flax system.

Public names: the model (`Llama`, `LlamaConfig`, `PRESETS`, `count_params`) and
weight I/O (`from_pretrained`, `save_pretrained`: resolved on first use from
`llama_jax.convert`, so that importing the model, kernels or train step needs
neither safetensors nor tqdm, which the GPU benchmark image lacks). The wings
below the package: `model/`, `kernels/`, `sharding.py` (what runs on the devices); `data/` (tokenizer,
sources, grain pipeline, embedded corpus); `convert/` (Meta / HF / orbax
weights); `train/`, `eval/`, `infer/` (the jobs, each with its CLI).
"""

import importlib

from llama_jax.model import (
    PRESETS,
    REMAT_POLICIES,
    Llama,
    LlamaConfig,
    count_params,
    get_preset,
    init_cache,
    init_params,
)

__version__ = "0.1.0"

__all__ = [
    "PRESETS",
    "REMAT_POLICIES",
    "Llama",
    "LlamaConfig",
    "count_params",
    "from_pretrained",
    "get_preset",
    "init_cache",
    "init_params",
    "save_pretrained",
]


def __getattr__(name: str):
    """`from_pretrained` and `save_pretrained`, imported from `llama_jax.convert` on first use."""
    if name in ("from_pretrained", "save_pretrained"):
        return getattr(importlib.import_module("llama_jax.convert"), name)
    raise AttributeError(f"module 'llama_jax' has no attribute {name!r}")
