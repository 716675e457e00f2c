"""Custom kernels: Pallas flash attention (GPU, interpretable on CPU), ring
attention over the `sequence` mesh axis, the model's plain-jnp ``xla`` path
(`xla_attention`), the plain-jnp reference all are tested against, and the
canonical-form matmul VJPs for XLA's CPU back-end (`matmul`)."""

from llama_jax.kernels.flash_attention import (
    BlockSizes,
    flash_attention,
    flash_attention_grads,
    flash_attention_with_lse,
)
from llama_jax.kernels.reference import MASK_VALUE, attention_mask, attention_reference

__all__ = ["MASK_VALUE", "BlockSizes", "attention_mask", "attention_reference", "flash_attention",
           "flash_attention_grads", "flash_attention_with_lse"]
