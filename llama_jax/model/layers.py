"""LLaMA building blocks: RMSNorm, rotary embedding, SwiGLU feed-forward, embed.

Every parameter carries logical axis names; `llama_jax.sharding` maps them to
mesh axes. Activations are tagged with `checkpoint_name` where a linear layer
produces them, so remat policies can name what to keep.
"""

from __future__ import annotations

from collections.abc import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax.ad_checkpoint import checkpoint_name

from llama_jax.model.config import LlamaConfig
from llama_jax.model.rope import rope_cos_sin
from llama_jax.model.rope import rope_frequencies as rope_frequencies  # re-exported
from llama_jax.sharding import with_logical_constraint

DEFAULT_INIT = nn.initializers.normal(stddev=0.02)


def constrain(x: jax.Array, names: Sequence[str | None]) -> jax.Array:
    """Sharding constraint by logical names; a no-op outside a rules context.

    Delegates to `llama_jax.sharding.with_logical_constraint`, which raises for
    a logical name that has no rule (instead of silently replicating).
    """
    return with_logical_constraint(x, tuple(names))


def logical_param(
    module: nn.Module, name: str, shape: Sequence[int], names: Sequence[str],
    init=DEFAULT_INIT, dtype=jnp.float32,
) -> jax.Array:
    """A parameter annotated with logical axis `names` (one per dimension)."""
    if len(names) != len(shape):
        raise ValueError(f"{name}: {len(shape)} dims but logical names {names}")
    return module.param(name, nn.with_logical_partitioning(init, tuple(names)),
                        tuple(shape), dtype)


class RMSNorm(nn.Module):
    """Root-mean-square norm (Zhang & Sennrich, 2019), computed in float32."""

    eps: float = 1e-6
    dtype: jnp.dtype = jnp.float32
    param_dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        scale = logical_param(self, "scale", (x.shape[-1],), ("norm",),
                              nn.initializers.ones, self.param_dtype)
        x32 = x.astype(jnp.float32)
        normed = x32 * jax.lax.rsqrt(jnp.mean(x32 * x32, axis=-1, keepdims=True)
                                     + self.eps)
        # Meta: `self._norm(x.float()).type_as(x) * self.weight`.
        return normed.astype(self.dtype) * scale.astype(self.dtype)


def apply_rope(x: jax.Array, positions: jax.Array, rope: float | LlamaConfig) -> jax.Array:
    """Rotary embedding in Meta's convention (interleaved pairs).

    Meta views the last axis as complex numbers ``x[2i] + 1j * x[2i+1]`` and
    multiplies by ``exp(1j * pos * freq_i)``. Computed in float32.

    Args:
      x: [batch, len, heads, head_dim].
      positions: [batch, len] integer positions.
      rope: a RoPE base (unscaled RoPE) or the model's `LlamaConfig`, whose
        RoPE scaling (`llama_jax.model.rope`) sets the frequencies.
    """
    head_dim = x.shape[-1]
    cos, sin = rope_cos_sin(positions, rope, head_dim)  # [batch, len, head_dim/2]
    cos, sin = cos[:, :, None, :], sin[:, :, None, :]  # [batch, len, 1, head_dim/2]
    x32 = x.astype(jnp.float32).reshape(*x.shape[:-1], head_dim // 2, 2)
    real, imag = x32[..., 0], x32[..., 1]  # [batch, len, heads, head_dim/2]
    out = jnp.stack([real * cos - imag * sin, real * sin + imag * cos], axis=-1)
    return out.reshape(x.shape).astype(x.dtype)  # [batch, len, heads, head_dim]


class Linear(nn.Module):
    """A bias-free projection over `in_axes` trailing dims to `features`.

    The kernel has shape ``in_shape + features`` with logical `names`.
    """

    features: tuple[int, ...]
    names: tuple[str, ...]
    in_dims: int = 1
    dtype: jnp.dtype = jnp.float32
    param_dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        in_shape = x.shape[x.ndim - self.in_dims:]
        kernel = logical_param(self, "kernel", (*in_shape, *self.features),
                               self.names, DEFAULT_INIT, self.param_dtype)
        x = x.astype(self.dtype)
        kernel = kernel.astype(self.dtype)
        contract = (tuple(range(x.ndim - self.in_dims, x.ndim)),
                    tuple(range(self.in_dims)))
        return jax.lax.dot_general(x, kernel, (contract, ((), ())))


class FeedForward(nn.Module):
    """SwiGLU feed-forward: w2(silu(w1 x) * w3 x)."""

    config: LlamaConfig

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        cfg = self.config
        kw = dict(dtype=cfg.compute_dtype, param_dtype=cfg.weight_dtype)
        hidden = cfg.ffn_dim
        gate = Linear((hidden,), ("embed", "mlp"), name="w1", **kw)(x)  # [batch, len, mlp]
        gate = checkpoint_name(gate, "w1")
        up = Linear((hidden,), ("embed", "mlp"), name="w3", **kw)(x)  # [batch, len, mlp]
        up = checkpoint_name(up, "w3")
        h = nn.silu(gate) * up
        h = constrain(h, ("activation_batch", "activation_length", "activation_mlp"))
        out = Linear((cfg.dim,), ("mlp", "embed"), name="w2", **kw)(h)  # [batch, len, embed]
        return checkpoint_name(out, "w2")


class Embed(nn.Module):
    """Token embedding table [vocab, dim]; `attend` is the tied LM head."""

    config: LlamaConfig

    def setup(self):
        cfg = self.config
        self.embedding = logical_param(self, "embedding", (cfg.vocab_size, cfg.dim),
                                       ("vocab", "embed"), DEFAULT_INIT, cfg.weight_dtype)

    def _table(self) -> jax.Array:
        # Gather the FSDP shards of the table before use (as for any FSDP
        # weight); else GSPMD keeps `embed` split and must replicate the
        # [batch, len, embed] output to reach the batch sharding.
        return constrain(self.embedding, ("vocab", "activation_embed"))

    def __call__(self, tokens: jax.Array) -> jax.Array:
        x = jnp.take(self._table(), tokens, axis=0)  # [batch, len, embed]
        return x.astype(self.config.compute_dtype)

    def attend(self, x: jax.Array) -> jax.Array:
        """Logits of hidden states `x` [batch, len, embed] against the table (tied head)."""
        dtype = self.config.compute_dtype
        return jnp.einsum("ble,ve->blv", x.astype(dtype),
                          self._table().astype(dtype))  # [batch, len, vocab]
