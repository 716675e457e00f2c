"""llama_jax: the LLaMA paper as a JAX/Flax system.

Public names: the model (`Llama`, `LlamaConfig`, `PRESETS`, `count_params`) and
weight I/O (`from_pretrained`, `save_pretrained`, loaded on first use so that
importing the package does not import the converters).
"""

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


def __getattr__(name):
    if name in ("from_pretrained", "save_pretrained"):
        from llama_jax import convert

        return getattr(convert, name)
    raise AttributeError(f"module 'llama_jax' has no attribute {name!r}")
