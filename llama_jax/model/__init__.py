"""The LLaMA model: config, layers, attention, decoder stack."""

from llama_jax.model.config import PRESETS, LlamaConfig, ffn_hidden_dim, get_preset
from llama_jax.model.llama import (
    REMAT_POLICIES,
    Llama,
    abstract_params,
    count_params,
    init_cache,
    init_params,
)

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
