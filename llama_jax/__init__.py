"""llama_jax: the LLaMA paper as a JAX/Flax system.

Public names: the model (`Llama`, `LlamaConfig`, `PRESETS`, `count_params`) and
weight I/O (`from_pretrained`, `save_pretrained`). The wings below the package:
`model/`, `kernels/`, `sharding.py` (what runs on the devices); `data/` (tokenizer,
sources, grain pipeline, embedded corpus); `convert/` (Meta / HF / orbax
weights); `train/`, `eval/`, `infer/` (the jobs, each with its CLI).
"""

from llama_jax.convert import from_pretrained, save_pretrained
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

