"""The LLaMA model: config, layers, attention, decoder stack."""

from llama_jax.model.config import PRESETS, LlamaConfig, ffn_hidden_dim, get_preset
from llama_jax.model.llama import (
    Llama,
    abstract_params,
    count_params,
    init_cache,
    init_params,
)
from llama_jax.model.remat import REMAT_POLICIES

__all__ = [
    "PRESETS",
    "REMAT_POLICIES",
    "Llama",
    "LlamaConfig",
    "abstract_params",
    "count_params",
    "ffn_hidden_dim",
    "get_preset",
    "init_cache",
    "init_params",
]
