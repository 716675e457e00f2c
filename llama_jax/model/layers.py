"""LLaMA building blocks: RMSNorm, rotary embedding, SwiGLU feed-forward, embed.

Every parameter carries logical axis names; `llama_jax.sharding` maps them to
mesh axes. Activations are tagged with `checkpoint_name` where a linear layer
produces them, so remat policies can name what to keep.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax.ad_checkpoint import checkpoint_name

from llama_jax.kernels.matmul import mixed_dot, resolve_matmul
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
    return rotate(x, rope_cos_sin(positions, rope, x.shape[-1]))


def rotate(x: jax.Array, cos_sin: tuple[jax.Array, jax.Array]) -> jax.Array:
    """`apply_rope` with its cos and sin ([batch, len, head_dim/2], `rope_cos_sin`) given.

    The model computes them once per call and hands them to every layer: in a
    fused loop XLA evaluates an inlined cos/sin once per output element, so
    per-layer cos/sin cost 2 x heads x the table, per layer, forward and backward.
    """
    head_dim = x.shape[-1]
    cos, sin = cos_sin
    cos, sin = cos[:, :, None, :], sin[:, :, None, :]  # [batch, len, 1, head_dim/2]
    x32 = x.astype(jnp.float32).reshape(*x.shape[:-1], head_dim // 2, 2)
    real, imag = x32[..., 0], x32[..., 1]  # [batch, len, heads, head_dim/2]
    out = jnp.stack([real * cos - imag * sin, real * sin + imag * cos], axis=-1)
    return out.reshape(x.shape).astype(x.dtype)  # [batch, len, heads, head_dim]


def linear_kw(config: LlamaConfig) -> dict:
    """The `Linear` keyword arguments a model's config sets (dtypes, matmul)."""
    return dict(dtype=config.compute_dtype, param_dtype=config.weight_dtype,
                matmul=config.matmul)


class Linear(nn.Module):
    """A bias-free projection over `in_axes` trailing dims to `features`.

    The kernel has shape ``in_shape + features`` with logical `names`.
    `matmul` is the config's run option (`llama_jax.kernels.matmul`); with
    "canonical" the output is `out_dtype` (None: `dtype`), else `dtype`.
    """

    features: tuple[int, ...]
    names: tuple[str, ...]
    in_dims: int = 1
    dtype: jnp.dtype = jnp.float32
    param_dtype: jnp.dtype = jnp.float32
    matmul: str = "xla"
    out_dtype: jnp.dtype | None = None

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        in_shape = x.shape[x.ndim - self.in_dims:]
        kernel = logical_param(self, "kernel", (*in_shape, *self.features),
                               self.names, DEFAULT_INIT, self.param_dtype)
        if resolve_matmul(self.matmul) == "canonical":
            lead = x.shape[:x.ndim - self.in_dims]
            k_in, n_out = math.prod(in_shape), math.prod(self.features)
            y = mixed_dot(x.reshape(*lead, k_in), kernel.reshape(k_in, n_out),
                          jnp.dtype(self.dtype), jnp.dtype(self.out_dtype or self.dtype))
            return y.reshape(*lead, *self.features)  # [..., *features]
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
        kw = linear_kw(cfg)
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
