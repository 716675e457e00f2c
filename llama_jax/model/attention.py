"""Causal multi-head attention with grouped-query heads and a KV cache.

`dot_product_attention` dispatches on the run option `config.attention_impl`;
the `xla` path is `llama_jax.kernels.xla_attention.xla_attention`, plain jnp
laid out for XLA's dots, tested against
`llama_jax.kernels.reference.attention_reference`, the one plain-jnp
attention every path is tested against. Masks come from
segment ids (packed documents never attend across each other) and a causal
rule on absolute indices; no dense [len, len] mask is an input. The model
passes ``segment_ids=None`` down when its caller has none.
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
from absl import logging
from jax import lax
from jax.ad_checkpoint import checkpoint_name

from llama_jax import sharding
from llama_jax.kernels.flash_attention import flash_attention
from llama_jax.kernels.ring_attention import ring_attention
from llama_jax.kernels.xla_attention import xla_attention
from llama_jax.model.config import ATTENTION_IMPLS, LlamaConfig
from llama_jax.model.layers import Linear, constrain, linear_kw, rotate

_warned_cudnn_segments = False


def resolve_impl(impl: str, q_offset: jax.Array | int = 0) -> str:
    """The implementation `impl` names on this backend ("auto" resolved).

    A cache offset (traced, or non-zero) means a decoding step: always "xla".
    Raises ValueError for an unknown name, "cudnn" off GPU, and "pallas" on a
    backend it neither lowers to nor interprets usefully.
    """
    if impl not in ATTENTION_IMPLS:
        raise ValueError(f"attention_impl={impl!r} is not one of {ATTENTION_IMPLS}")
    if isinstance(q_offset, jax.Array) or q_offset != 0:
        return "xla"
    backend = jax.default_backend()
    if impl == "auto":
        return "pallas" if backend == "gpu" else "xla"
    if impl == "pallas" and backend not in ("gpu", "cpu"):
        # The kernel targets Pallas' GPU (Triton) lowering; CPU runs it in
        # interpret mode for tests. Elsewhere interpret mode would be a silent,
        # very slow fallback.
        raise ValueError(f"attention_impl='pallas' is a GPU kernel; the backend is "
                         f"{backend!r}: use 'xla' (or 'auto', which picks it)")
    if impl == "cudnn" and backend != "gpu":
        raise ValueError(f"attention_impl='cudnn' needs a GPU (backend is {backend!r}); "
                         "use 'auto' or 'xla'")
    return impl


def cudnn_attention(q: jax.Array, k: jax.Array, v: jax.Array, *, causal: bool) -> jax.Array:
    """cuDNN fused attention (`jax.nn.dot_product_attention`), no segment mask."""
    return jax.nn.dot_product_attention(q, k, v, is_causal=causal,
                                        implementation="cudnn")  # [batch, q_len, heads, head_dim]


def _cudnn(q, k, v, q_segment_ids, kv_segment_ids, *, causal):
    """cuDNN where the batch needs no segment mask, the reference elsewhere.

    `jax.nn.dot_product_attention` takes segments only as a dense [len, len]
    mask, which this project does not build. Segment ids are values, unknown
    at trace time, so rather than fail every caller that passes them (the
    trainer's packed batches, the scorer, the generator's padded prompts) the
    choice is made at run time: when every row holds a single segment (an
    unpacked, unpadded batch) the mask is plain causal and cuDNN runs; otherwise
    the reference runs (correct, O(len^2) memory), with a one-time warning that
    names 'pallas' for packed documents. Callers without packing should pass
    segment_ids=None, which goes to cuDNN with no run-time check.
    """
    if q_segment_ids is None:
        return cudnn_attention(q, k, v, causal=causal)
    global _warned_cudnn_segments
    if not _warned_cudnn_segments:
        _warned_cudnn_segments = True
        logging.warning(
            "attention_impl='cudnn' got segment ids: batches whose rows each hold one "
            "segment run cuDNN, packed or padded rows run the plain-jnp reference "
            "(O(len^2) memory); for packed documents use attention_impl='pallas' (or 'auto')")
    first = q_segment_ids[:, :1]  # [batch, 1]
    uniform = jnp.all(q_segment_ids == first) & jnp.all(kv_segment_ids == first)
    return lax.cond(uniform,
                    lambda: cudnn_attention(q, k, v, causal=causal),
                    lambda: xla_attention(q, k, v, q_segment_ids, kv_segment_ids,
                                          causal=causal))


def dot_product_attention(
    q: jax.Array,
    k: jax.Array,
    v: jax.Array,
    q_segment_ids: jax.Array | None,
    kv_segment_ids: jax.Array | None,
    *,
    impl: str = "auto",
    causal: bool = True,
    q_offset: jax.Array | int = 0,
    matmul: str = "auto",
) -> jax.Array:
    """Dispatch attention to the implementation named by `impl`.

    impl: "xla" (`xla_attention`: the reference's semantics, plain jnp), "cudnn"
    (`jax.nn.dot_product_attention` with cuDNN; GPU only; with segment ids it
    runs cuDNN only for batches of one segment per row, see `_cudnn`),
    "pallas" (our flash kernel, `llama_jax.kernels.flash_attention`; Pallas
    interpret mode on CPU), "ring" (`llama_jax.kernels.ring_attention` over
    the active mesh's `sequence` axis) or "auto" ("pallas" on GPU, "xla"
    elsewhere). Decoding steps (a cache offset) always take the "xla" path.
    `matmul` (the model's run option) goes to `xla_attention`.
    """
    if (q_segment_ids is None) != (kv_segment_ids is None):
        raise ValueError("pass both q_segment_ids and kv_segment_ids, or neither")
    impl = resolve_impl(impl, q_offset)
    if impl == "xla":
        return xla_attention(q, k, v, q_segment_ids, kv_segment_ids,
                             causal=causal, q_offset=q_offset, matmul=matmul)
    if impl == "pallas":
        return flash_attention(q, k, v, causal=causal, q_segment_ids=q_segment_ids,
                               kv_segment_ids=kv_segment_ids,
                               interpret=jax.default_backend() != "gpu")
    if impl == "cudnn":
        return _cudnn(q, k, v, q_segment_ids, kv_segment_ids, causal=causal)
    return _ring_attention(q, k, v, q_segment_ids, kv_segment_ids, causal=causal,
                           on_gpu=jax.default_backend() == "gpu")


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
        self, x: jax.Array, cos_sin: tuple[jax.Array, jax.Array],
        segment_ids: jax.Array | None,
    ) -> jax.Array:
        cfg = self.config
        kw = linear_kw(cfg)
        h, kvh, hd = cfg.n_heads, cfg.num_kv_heads, cfg.head_dim
        q = Linear((h, hd), ("embed", "heads", "kv"), name="wq", **kw)(x)  # [batch, len, heads, head_dim]
        k = Linear((kvh, hd), ("embed", "kv_heads", "kv"), name="wk", **kw)(x)  # [batch, len, kv_heads, head_dim]
        v = Linear((kvh, hd), ("embed", "kv_heads", "kv"), name="wv", **kw)(x)  # [batch, len, kv_heads, head_dim]
        q, k, v = (checkpoint_name(q, "wq"), checkpoint_name(k, "wk"),
                   checkpoint_name(v, "wv"))
        # Scaled frequencies (cfg's RoPE scaling) before any attention path or
        # the cache, so every implementation and every cached key sees them.
        q = rotate(q, cos_sin)
        k = rotate(k, cos_sin)
        q = constrain(q, ("activation_batch", "activation_length", "activation_heads",
                          "activation_kv"))
        kv_names = ("activation_batch", "activation_length", "activation_kv_heads",
                    "activation_kv")
        k, v = constrain(k, kv_names), constrain(v, kv_names)

        if not self.decode:
            out = dot_product_attention(q, k, v, segment_ids, segment_ids,
                                        impl=cfg.attention_impl, causal=True,
                                        matmul=cfg.matmul)  # [batch, len, heads, head_dim]
        else:
            out = self._attend_cache(q, k, v, segment_ids)  # [batch, len, heads, head_dim]
        out = checkpoint_name(out, "attention")
        out = Linear((cfg.dim,), ("heads", "kv", "embed"), in_dims=2, name="wo",
                     **kw)(out)  # [batch, len, embed]
        return checkpoint_name(out, "wo")

    def _attend_cache(self, q, k, v, segment_ids):
        """Write this chunk's K/V into the cache and attend q to the whole cache.

        Steps with a cache offset take the reference path. With
        attention_impl='cudnn' a prefill into an empty cache (index 0) is
        attention over the chunk itself and runs cuDNN (a `lax.cond` on the
        index), for unpadded prompts (one segment per row, or none given).
        """
        cfg = self.config
        seg = jnp.ones(q.shape[:2], jnp.int32) if segment_ids is None else segment_ids
        ck, cv, cs, idx = self._update_cache(k, v, seg)
        kv_seg = None if segment_ids is None else cs
        q_seg = segment_ids

        def cached():
            return dot_product_attention(q, ck, cv, q_seg, kv_seg, impl=cfg.attention_impl,
                                         causal=True, q_offset=idx, matmul=cfg.matmul)

        if self.is_initializing() or resolve_impl(cfg.attention_impl) != "cudnn":
            return cached()
        return lax.cond(idx == 0,
                        lambda: _cudnn(q, k, v, q_seg, q_seg, causal=True),
                        cached)

    def _update_cache(self, k, v, segment_ids):
        """Write this chunk's K/V at `cache_index`; return the whole cache.

        The cache is created (zeros) the first time with the chunk's length,
        so `llama_jax.model.llama.init_cache` sizes it by the call it traces.
        It is stored heads-major, ``[batch, kv_heads, cache_len, head_dim]``,
        the layout attention's batched dots read: stored as the chunks come
        (``[batch, len, kv_heads, head_dim]``) XLA transposed the whole cache
        twice per layer and step (on the CPU, a third of a decode step at
        batch 16). What is returned is the attention paths' layout again, a
        transpose XLA folds into the dots.
        """
        b, t, kvh, d = k.shape
        ck = self.variable("cache", "cached_key", jnp.zeros, (b, kvh, t, d), k.dtype)
        cv = self.variable("cache", "cached_value", jnp.zeros, (b, kvh, t, d), v.dtype)
        cs = self.variable("cache", "cached_segment_ids", jnp.zeros, (b, t), jnp.int32)
        ci = self.variable("cache", "cache_index", lambda: jnp.array(0, jnp.int32))
        if self.is_initializing():
            return k, v, segment_ids, 0
        idx = ci.value
        ck.value = jax.lax.dynamic_update_slice(
            ck.value, k.swapaxes(1, 2).astype(ck.value.dtype),
            (0, 0, idx, 0))  # [batch, kv_heads, cache_len, head_dim]
        cv.value = jax.lax.dynamic_update_slice(
            cv.value, v.swapaxes(1, 2).astype(cv.value.dtype), (0, 0, idx, 0))
        cs.value = jax.lax.dynamic_update_slice(cs.value, segment_ids.astype(jnp.int32),
                                                (0, idx))  # [batch, cache_len]
        ci.value = idx + t
        return (ck.value.swapaxes(1, 2), cv.value.swapaxes(1, 2), cs.value,
                idx)  # k, v: [batch, cache_len, kv_heads, head_dim]
