"""RoPE frequencies: the paper's unscaled RoPE and its context-extension scalings.

Each scaling type computes inverse frequencies (and a scale on cos/sin) the
way transformers' ``modeling_rope_utils.py`` does, op for op in float32:

- ``None``: ``theta^(-2i/d)`` (Su et al.; the LLaMA paper).
- ``"linear"``: position interpolation (Chen et al. 2023): frequencies / s.
- ``"dynamic"``: dynamic NTK: the base grows with the current length L past the
  original length L0: ``theta * (s * L / L0 - (s - 1)) ** (d / (d - 2))``.
- ``"yarn"`` (Peng et al. 2023): interpolate low frequencies, keep high ones,
  a linear ramp between ``beta_fast`` / ``beta_slow`` rotations, and an
  attention factor (``0.1 ln s + 1`` by default) that scales cos and sin, so
  q.k logits are scaled by its square, as in HF.
- ``"llama3"`` (Meta, Llama 3.1): wavelengths above ``L0 / low_freq_factor``
  are divided by s, those below ``L0 / high_freq_factor`` kept, smoothed in
  between.

Dynamic NTK and the KV cache. HF's ``dynamic_rope_update`` recomputes the
frequencies on each forward call from ``seq_len = max(position_ids) + 1``
(over the whole batch) when it grows past the longest length seen, and resets
them to the unscaled ones when a call's length drops below L0. Inside one
``generate`` the length only grows (the prefill, then one position per step),
so each call uses the frequencies of ``max(max position + 1, L0)``: that is
what `inverse_frequencies` computes, statelessly, inside the jitted step.
Keys already in the KV cache keep the rotation they were written with (HF
caches rotated keys too), so greedy decoding matches HF token for token past
L0. Not reproduced: across separate calls HF keeps the largest frequencies seen
until a call shorter than L0 resets them; ours depend on the current call only.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp

from llama_jax.model.config import LlamaConfig

# The frequencies are computed with jnp inside the traced step (from iota, not
# as captured numpy constants), so remat recomputes them instead of saving them.


def rope_frequencies(head_dim: int, theta: float) -> jax.Array:
    """Meta's (and HF's default) inverse frequencies: theta^(-2i/d) for i < d/2."""
    exponents = jnp.arange(0, head_dim, 2, dtype=jnp.float32) / head_dim
    return 1.0 / (theta ** exponents)  # [head_dim // 2]


def _linear(cfg: LlamaConfig, dim: int) -> jax.Array:
    return rope_frequencies(dim, cfg.rope_theta) / cfg.rope_scaling_factor


def _llama3(cfg: LlamaConfig, dim: int) -> jax.Array:
    inv = rope_frequencies(dim, cfg.rope_theta)
    factor, low, high = cfg.rope_scaling_factor, cfg.rope_low_freq_factor, cfg.rope_high_freq_factor
    old_len = cfg.rope_original_len
    low_wavelen, high_wavelen = old_len / low, old_len / high
    wavelen = 2 * math.pi / inv
    scaled = jnp.where(wavelen > low_wavelen, inv / factor, inv)
    smooth = (old_len / wavelen - low) / (high - low)
    smoothed = (1 - smooth) * scaled / factor + smooth * scaled
    medium = ~(wavelen < high_wavelen) & ~(wavelen > low_wavelen)
    return jnp.where(medium, smoothed, scaled)  # [head_dim // 2]


def yarn_attention_factor(cfg: LlamaConfig) -> float:
    """YaRN's cos/sin scale: the configured one, else HF's mscale rule."""
    if cfg.rope_attention_factor is not None:
        return float(cfg.rope_attention_factor)

    def get_mscale(scale, mscale=1.0):
        return 1.0 if scale <= 1 else 0.1 * mscale * math.log(scale) + 1.0

    factor = cfg.rope_scaling_factor
    if cfg.rope_mscale and cfg.rope_mscale_all_dim:
        return float(get_mscale(factor, cfg.rope_mscale)
                     / get_mscale(factor, cfg.rope_mscale_all_dim))
    return get_mscale(factor)


def _yarn(cfg: LlamaConfig, dim: int) -> jax.Array:
    base, factor, orig = cfg.rope_theta, cfg.rope_scaling_factor, cfg.rope_original_len

    def correction_dim(rotations):
        return (dim * math.log(orig / (rotations * 2 * math.pi))) / (2 * math.log(base))

    low, high = correction_dim(cfg.rope_beta_fast), correction_dim(cfg.rope_beta_slow)
    if cfg.rope_truncate:
        low, high = math.floor(low), math.ceil(high)
    low, high = max(low, 0), min(high, dim - 1)
    if low == high:
        high += 0.001  # HF: prevent a zero-width ramp.
    pos_freqs = base ** (jnp.arange(0, dim, 2, dtype=jnp.float32) / dim)  # [dim // 2]
    extrapolation = 1.0 / pos_freqs
    interpolation = 1.0 / (factor * pos_freqs)
    ramp = jnp.clip((jnp.arange(dim // 2, dtype=jnp.float32) - low) / (high - low), 0, 1)
    keep = 1 - ramp  # 1: extrapolate (high frequencies), 0: interpolate.
    return interpolation * (1 - keep) + extrapolation * keep  # [dim // 2]


def _dynamic(cfg: LlamaConfig, dim: int, seq_len: jax.Array | int | None) -> jax.Array:
    orig = cfg.rope_original_len
    seq = jnp.maximum(jnp.asarray(orig if seq_len is None else seq_len, jnp.int32), orig)
    factor = cfg.rope_scaling_factor
    ratio = factor * seq.astype(jnp.float32) / orig - (factor - 1)
    base = cfg.rope_theta * ratio ** (dim / (dim - 2))  # float32 scalar
    exponents = jnp.arange(0, dim, 2, dtype=jnp.float32) / dim
    return 1.0 / (base ** exponents)  # [dim // 2]


def inverse_frequencies(
    cfg: LlamaConfig, seq_len: jax.Array | int | None = None
) -> tuple[jax.Array, float]:
    """(inverse frequencies [head_dim // 2] float32, cos/sin scale) for `cfg`.

    `seq_len` is the current call's length (max position + 1); only
    "dynamic" uses it (None: the original length, i.e. no scaling).
    """
    dim, kind = cfg.head_dim, cfg.rope_scaling_type
    if kind is None:
        return rope_frequencies(dim, cfg.rope_theta), 1.0
    if kind == "linear":
        return _linear(cfg, dim), 1.0
    if kind == "llama3":
        return _llama3(cfg, dim), 1.0
    if kind == "yarn":
        return _yarn(cfg, dim), yarn_attention_factor(cfg)
    if kind == "dynamic":
        return _dynamic(cfg, dim, seq_len), 1.0
    raise ValueError(f"rope_scaling_type={kind!r} is not supported")


def rope_cos_sin(positions: jax.Array, rope: float | LlamaConfig,
                 head_dim: int) -> tuple[jax.Array, jax.Array]:
    """cos and sin [batch, len, head_dim // 2] of `positions` [batch, len], float32.

    `rope` is a RoPE base (unscaled RoPE) or a `LlamaConfig` (its scaling). The
    YaRN attention factor multiplies both, as HF's rotary embedding does.
    """
    if isinstance(rope, LlamaConfig):
        seq_len = None
        if rope.rope_scaling_type == "dynamic":
            seq_len = jnp.max(positions) + 1  # over the whole batch, as HF
        inv_freq, scale = inverse_frequencies(rope, seq_len)
    else:
        inv_freq, scale = rope_frequencies(head_dim, rope), 1.0
    angles = positions.astype(jnp.float32)[..., None] * inv_freq  # [batch, len, head_dim/2]
    cos, sin = jnp.cos(angles), jnp.sin(angles)
    if scale != 1.0:
        cos, sin = cos * scale, sin * scale
    return cos, sin
