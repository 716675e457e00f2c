"""Causal multi-head attention with grouped-query heads and a KV cache.

`dot_product_attention` dispatches on `config.attention_impl`; the `xla` path
below is the plain einsum implementation every other path is tested against.
Masks come from segment ids (packed documents never attend across each other)
and a causal rule on absolute indices; no dense [len, len] mask is an input.
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax.ad_checkpoint import checkpoint_name

from llama_jax import sharding
from llama_jax.kernels.flash_attention import flash_attention
from llama_jax.kernels.ring_attention import ring_attention
from llama_jax.model.config import LlamaConfig
from llama_jax.model.layers import Linear, apply_rope, constrain

MASK_VALUE = -0.7 * float(jnp.finfo(jnp.float32).max)


def xla_attention(
    q: jax.Array,
    k: jax.Array,
    v: jax.Array,
    q_segment_ids: jax.Array | None = None,
    kv_segment_ids: jax.Array | None = None,
    *,
    causal: bool = True,
    q_offset: jax.Array | int = 0,
) -> jax.Array:
    """Attention by einsum, with GQA by grouping (K/V are never repeated).

    Args:
      q: [batch, q_len, heads, head_dim].
      k, v: [batch, kv_len, kv_heads, head_dim].
      q_segment_ids: [batch, q_len] or None; kv_segment_ids: [batch, kv_len].
      causal: key j is visible to query i iff j <= i + q_offset.
      q_offset: absolute index of the first query (decoding with a cache).

    Returns:
      [batch, q_len, heads, head_dim] in q's dtype.
    """
    b, t, h, d = q.shape
    s, kvh = k.shape[1], k.shape[2]
    if h % kvh:
        raise ValueError(f"heads={h} is not a multiple of kv_heads={kvh}")
    qg = q.reshape(b, t, kvh, h // kvh, d)  # [batch, q_len, kv_heads, group, head_dim]
    logits = jnp.einsum("btkgd,bskd->bkgts", qg, k,
                        preferred_element_type=jnp.float32)  # [batch, kv_heads, group, q_len, kv_len]
    logits = logits * (d ** -0.5)
    mask = jnp.ones((1, t, s), dtype=bool)  # [batch, q_len, kv_len]
    if causal:
        q_idx = jnp.arange(t)[:, None] + q_offset
        mask = mask & (jnp.arange(s)[None, :] <= q_idx)[None]
    if q_segment_ids is not None or kv_segment_ids is not None:
        if q_segment_ids is None or kv_segment_ids is None:
            raise ValueError("pass both q_segment_ids and kv_segment_ids, or neither")
        mask = mask & (q_segment_ids[:, :, None] == kv_segment_ids[:, None, :])
    logits = jnp.where(mask[:, None, None], logits, MASK_VALUE)
    probs = jax.nn.softmax(logits, axis=-1).astype(v.dtype)
    out = jnp.einsum("bkgts,bskd->btkgd", probs, v)  # [batch, q_len, kv_heads, group, head_dim]
    return out.reshape(b, t, h, d)


def dot_product_attention(
    q: jax.Array,
    k: jax.Array,
    v: jax.Array,
    q_segment_ids: jax.Array | None,
    kv_segment_ids: jax.Array | None,
    *,
    impl: str = "xla",
    causal: bool = True,
    q_offset: jax.Array | int = 0,
) -> jax.Array:
    """Dispatch attention to the implementation named by `impl`.

    impl: "xla" (`xla_attention`), "cudnn" (`jax.nn.dot_product_attention`
    with cuDNN; GPU only, no segment ids), "pallas" (our flash kernel,
    `llama_jax.kernels.flash_attention`; Pallas interpret mode off GPU),
    "ring" (`llama_jax.kernels.ring_attention` over the active mesh's
    `sequence` axis) or "auto" ("pallas" on GPU, "xla" elsewhere). Decoding
    steps (a cache offset) always take the einsum path.
    """
    if isinstance(q_offset, jax.Array) or q_offset != 0:
        impl = "xla"
    on_gpu = jax.default_backend() == "gpu"
    if impl == "auto":
        impl = "pallas" if on_gpu else "xla"
    if impl == "xla":
        return xla_attention(q, k, v, q_segment_ids, kv_segment_ids,
                             causal=causal, q_offset=q_offset)
    if (q_segment_ids is None) != (kv_segment_ids is None):
        raise ValueError("pass both q_segment_ids and kv_segment_ids, or neither")
    if impl == "pallas":
        if jax.default_backend() not in ("gpu", "cpu"):
            # The kernel targets Pallas' GPU (Triton) lowering; CPU runs it in
            # interpret mode for tests. Elsewhere interpret mode would be a
            # silent, very slow fallback.
            raise ValueError(
                f"attention_impl='pallas' is a GPU kernel; the backend is "
                f"{jax.default_backend()!r}: use 'xla' (or 'auto', which picks it)")
        return flash_attention(q, k, v, causal=causal, q_segment_ids=q_segment_ids,
                               kv_segment_ids=kv_segment_ids, interpret=not on_gpu)
    if impl == "cudnn":
        if not on_gpu:
            raise ValueError(f"attention_impl='cudnn' needs a GPU (backend is "
                             f"{jax.default_backend()!r}); use 'auto' or 'xla'")
        if q_segment_ids is not None:
            raise ValueError(
                "attention_impl='cudnn' cannot mask packed documents: "
                "jax.nn.dot_product_attention takes segments only as a dense [len, len] "
                "mask; use attention_impl='pallas' (or 'auto') for segment ids")
        return jax.nn.dot_product_attention(q, k, v, is_causal=causal,
                                            implementation="cudnn")
    if impl == "ring":
        return _ring_attention(q, k, v, q_segment_ids, kv_segment_ids, causal=causal,
                               on_gpu=on_gpu)
    raise ValueError(f"attention_impl={impl!r} is not one of 'xla', 'cudnn', 'pallas', "
                     "'ring', 'auto'")


def _ring_attention(q, k, v, q_segment_ids, kv_segment_ids, *, causal, on_gpu):
    """Ring attention over the active mesh's `sequence` axis; batch and heads
    stay sharded the way the active logical rules shard activations."""
    if q.shape[1] != k.shape[1] or q_segment_ids is not kv_segment_ids:
        raise ValueError("attention_impl='ring' is for self-attention over one sequence "
                         f"(q_len == kv_len, one segment_ids); got {q.shape=}, {k.shape=}")
    batch_axes = head_axes = None
    rules = nn.get_logical_axis_rules()
    if rules:
        q_spec = sharding.logical_to_spec(
            ("activation_batch", None, "activation_heads", None), tuple(rules))
        kv_spec = sharding.logical_to_spec(
            ("activation_batch", None, "activation_kv_heads", None), tuple(rules))
        if q_spec != kv_spec:
            raise ValueError(f"attention_impl='ring' needs q and k/v heads sharded alike; "
                             f"the rules give {q_spec} and {kv_spec}")
        batch_axes, head_axes = q_spec[0], q_spec[2]
    return ring_attention(q, k, v, q_segment_ids, causal=causal, axis_name=sharding.SEQUENCE,
                          batch_axes=batch_axes, head_axes=head_axes,
                          local_impl="flash" if on_gpu else "xla", interpret=not on_gpu)


class Attention(nn.Module):
    """LLaMA self-attention: wq/wk/wv, RoPE on q and k, attention, wo."""

    config: LlamaConfig
    decode: bool = False

    @nn.compact
    def __call__(
        self, x: jax.Array, positions: jax.Array, segment_ids: jax.Array | None
    ) -> jax.Array:
        cfg = self.config
        kw = dict(dtype=cfg.compute_dtype, param_dtype=cfg.weight_dtype)
        h, kvh, hd = cfg.n_heads, cfg.num_kv_heads, cfg.head_dim
        q = Linear((h, hd), ("embed", "heads", "kv"), name="wq", **kw)(x)  # [batch, len, heads, head_dim]
        k = Linear((kvh, hd), ("embed", "kv_heads", "kv"), name="wk", **kw)(x)  # [batch, len, kv_heads, head_dim]
        v = Linear((kvh, hd), ("embed", "kv_heads", "kv"), name="wv", **kw)(x)  # [batch, len, kv_heads, head_dim]
        q, k, v = (checkpoint_name(q, "wq"), checkpoint_name(k, "wk"),
                   checkpoint_name(v, "wv"))
        q = apply_rope(q, positions, cfg.rope_theta)
        k = apply_rope(k, positions, cfg.rope_theta)
        q = constrain(q, ("activation_batch", "activation_length", "activation_heads",
                          "activation_kv"))
        kv_names = ("activation_batch", "activation_length", "activation_kv_heads",
                    "activation_kv")
        k, v = constrain(k, kv_names), constrain(v, kv_names)

        q_offset = 0
        kv_segment_ids = segment_ids
        if self.decode:
            if segment_ids is None:
                segment_ids = jnp.ones(x.shape[:2], jnp.int32)
            k, v, kv_segment_ids, q_offset = self._update_cache(k, v, segment_ids)
        out = dot_product_attention(q, k, v, segment_ids, kv_segment_ids,
                                    impl=cfg.attention_impl, causal=True,
                                    q_offset=q_offset)  # [batch, len, heads, head_dim]
        out = checkpoint_name(out, "attention")
        out = Linear((cfg.dim,), ("heads", "kv", "embed"), in_dims=2, name="wo",
                     **kw)(out)  # [batch, len, embed]
        return checkpoint_name(out, "wo")

    def _update_cache(self, k, v, segment_ids):
        """Write this chunk's K/V at `cache_index`; return the whole cache.

        The cache is created (zeros) the first time with the chunk's length,
        so `llama_jax.model.llama.init_cache` sizes it by the call it traces.
        """
        b, t = k.shape[:2]
        ck = self.variable("cache", "cached_key", jnp.zeros, k.shape, k.dtype)
        cv = self.variable("cache", "cached_value", jnp.zeros, v.shape, v.dtype)
        cs = self.variable("cache", "cached_segment_ids", jnp.zeros, (b, t), jnp.int32)
        ci = self.variable("cache", "cache_index", lambda: jnp.array(0, jnp.int32))
        if self.is_initializing():
            return k, v, segment_ids, 0
        idx = ci.value
        ck.value = jax.lax.dynamic_update_slice(ck.value, k.astype(ck.value.dtype),
                                                (0, idx, 0, 0))  # [batch, cache_len, kv_heads, head_dim]
        cv.value = jax.lax.dynamic_update_slice(cv.value, v.astype(cv.value.dtype),
                                                (0, idx, 0, 0))
        cs.value = jax.lax.dynamic_update_slice(cs.value, segment_ids.astype(jnp.int32),
                                                (0, idx))  # [batch, cache_len]
        ci.value = idx + t
        return ck.value, cv.value, cs.value, idx
