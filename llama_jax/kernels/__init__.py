"""Custom kernels: Pallas flash attention (GPU, interpretable on CPU) and ring
attention over the `sequence` mesh axis."""

from llama_jax.kernels.flash_attention import (
    BlockSizes,
    attention_reference,
    flash_attention,
    flash_attention_grads,
    flash_attention_with_lse,
)

__all__ = ["BlockSizes", "attention_reference", "flash_attention", "flash_attention_grads",
           "flash_attention_with_lse"]
