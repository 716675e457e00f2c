"""The one plain-jnp attention: the model's ``xla`` path and every kernel's oracle.

`attention_reference` returns ``(out, lse)`` (or just ``out``) with the exact
semantics the Pallas kernel (`llama_jax.kernels.flash_attention`) and ring
attention (`llama_jax.kernels.ring_attention`) implement:

* GQA by grouping: query head ``n`` uses kv head ``n // (heads // kv_heads)``;
  K and V are never repeated.
* Causal: key j is visible to query i iff ``j <= i + q_offset`` (both counted
  from 0; ``q_offset`` is the absolute index of the first query, e.g. the KV
  cache index when decoding; with q_len != kv_len and q_offset 0 the
  sequences are aligned at their starts).
* Segment ids (packed documents): a key is visible to a query only if their
  ids are equal.
* Masked logits are `MASK_VALUE` (-inf). A row that sees no key (possible only
  with separate q/kv segment ids) has output 0 and lse -inf, and zero
  gradients: it holds no probability mass instead of averaging every value.

`attention_mask` is the one builder of the causal + segment visibility mask;
the ring's plain-jnp backward uses it too. The dense [q_len, kv_len] logits
make this O(len^2) in memory: the kernels exist for long sequences.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jax import lax

__all__ = ["MASK_VALUE", "attention_mask", "attention_reference", "check_inputs"]

# -inf, not a large negative number: a fully masked row then has exactly zero
# mass (output 0, lse -inf) in the reference and in the kernels alike.
MASK_VALUE = float("-inf")
_DTYPES = (jnp.dtype(jnp.float32), jnp.dtype(jnp.bfloat16), jnp.dtype(jnp.float16))


def check_inputs(q, k, v, segment_ids=None, q_segment_ids=None, kv_segment_ids=None):
    """Validate attention shapes and dtypes; return (q_segment_ids, kv_segment_ids).

    `segment_ids` (self-attention, q_len == kv_len) stands for both.
    """
    if q.ndim != 4 or k.ndim != 4:
        raise ValueError(f"q must be [batch, q_len, heads, head_dim] and k, v "
                         f"[batch, kv_len, kv_heads, head_dim]; got {q.shape=}, {k.shape=}")
    if v.shape != k.shape:
        raise ValueError(f"v must have k's shape; got {k.shape=}, {v.shape=}")
    batch, q_len, heads, head_dim = q.shape
    _, kv_len, kv_heads, _ = k.shape
    if k.shape[0] != batch or k.shape[3] != head_dim:
        raise ValueError(f"q and k must agree on batch and head_dim; got {q.shape=}, {k.shape=}")
    if heads % kv_heads:
        raise ValueError(f"{heads=} must be a multiple of {kv_heads=} (grouped-query attention)")
    if q_len == 0 or kv_len == 0:
        raise ValueError(f"empty sequence: {q_len=}, {kv_len=}")
    if not (q.dtype == k.dtype == v.dtype) or jnp.dtype(q.dtype) not in _DTYPES:
        raise ValueError(f"q, k, v must share one of float32/bfloat16/float16; got "
                         f"{q.dtype=}, {k.dtype=}, {v.dtype=}")
    if segment_ids is not None:
        if q_segment_ids is not None or kv_segment_ids is not None:
            raise ValueError("pass segment_ids, or q_segment_ids and kv_segment_ids, not both")
        if q_len != kv_len:
            raise ValueError(f"segment_ids needs {q_len=} == {kv_len=}; pass q_segment_ids "
                             "and kv_segment_ids instead")
        q_segment_ids = kv_segment_ids = segment_ids
    if (q_segment_ids is None) != (kv_segment_ids is None):
        raise ValueError("pass both q_segment_ids and kv_segment_ids, or neither")
    for name, seg, n in (("q_segment_ids", q_segment_ids, q_len),
                         ("kv_segment_ids", kv_segment_ids, kv_len)):
        if seg is not None:
            if tuple(seg.shape) != (batch, n):
                raise ValueError(f"{name} must be [batch, len] = {(batch, n)}; got "
                                 f"{tuple(seg.shape)}")
            if not jnp.issubdtype(seg.dtype, jnp.integer):
                raise ValueError(f"{name} must be integers; got {seg.dtype}")
    return q_segment_ids, kv_segment_ids


def attention_mask(q_len: int, kv_len: int, *, causal: bool, q_segment_ids=None,
                   kv_segment_ids=None, q_offset: jax.Array | int = 0) -> jax.Array:
    """Boolean visibility [batch or 1, q_len, kv_len]: causal and same segment.

    Args:
      q_len, kv_len: sequence lengths.
      causal: key j visible to query i only if j <= i + q_offset.
      q_segment_ids, kv_segment_ids: [batch, q_len] / [batch, kv_len], or None.
      q_offset: absolute index of the first query (may be traced).
    """
    mask = jnp.ones((1, q_len, kv_len), bool)  # [1, q_len, kv_len]
    if causal:
        q_idx = jnp.arange(q_len)[:, None] + q_offset  # [q_len, 1]
        mask = mask & (jnp.arange(kv_len)[None, :] <= q_idx)[None]
    if q_segment_ids is not None:
        same = q_segment_ids[:, :, None] == kv_segment_ids[:, None, :]  # [batch, q_len, kv_len]
        mask = mask & same
    return mask


def attention_reference(
    q: jax.Array, k: jax.Array, v: jax.Array, *, causal: bool = True,
    segment_ids: jax.Array | None = None, q_segment_ids: jax.Array | None = None,
    kv_segment_ids: jax.Array | None = None, q_offset: jax.Array | int = 0,
    sm_scale: float | None = None, return_lse: bool = False, precision=None,
):
    """Plain-jnp attention with the kernels' exact semantics (module docstring).

    Args:
      q: [batch, q_len, heads, head_dim].
      k, v: [batch, kv_len, kv_heads, head_dim]; heads % kv_heads == 0.
      causal: key j visible to query i only if j <= i + q_offset.
      segment_ids: [batch, len] when q_len == kv_len; or q_segment_ids
        [batch, q_len] and kv_segment_ids [batch, kv_len].
      q_offset: absolute index of the first query (decoding with a cache).
      sm_scale: logit scale; default head_dim ** -0.5.
      return_lse: also return the log-sum-exp.
      precision: `lax.Precision` of the two einsums (None: the default; pass
        HIGHEST for a float32 oracle on GPU/TPU).

    Returns:
      out [batch, q_len, heads, head_dim] in q's dtype, and with `return_lse`
      lse [batch, heads, q_len] float32 (natural log, -inf for a query that
      sees no key). Logits and softmax are float32; the probabilities meet V
      in V's dtype with float32 accumulation, as in the kernel.
    """
    q_seg, kv_seg = check_inputs(q, k, v, segment_ids, q_segment_ids, kv_segment_ids)
    b, t, h, d = q.shape
    s, kvh = k.shape[1], k.shape[2]
    scale = d ** -0.5 if sm_scale is None else sm_scale
    qg = q.reshape(b, t, kvh, h // kvh, d)  # [batch, q_len, kv_heads, group, head_dim]
    logits = jnp.einsum("btkgd,bskd->bkgts", qg, k, precision=precision,
                        preferred_element_type=jnp.float32)  # [batch, kv_heads, group, q_len, kv_len]
    logits = logits * scale
    mask = attention_mask(t, s, causal=causal, q_segment_ids=q_seg, kv_segment_ids=kv_seg,
                          q_offset=q_offset)[:, None, None]  # [batch, 1, 1, q_len, kv_len]
    logits = jnp.where(mask, logits, MASK_VALUE)
    m = lax.stop_gradient(jnp.max(logits, axis=-1, keepdims=True))  # [batch, kv_heads, group, q_len, 1]
    m = jnp.where(jnp.isfinite(m), m, 0.0)  # a row with no visible key: keep exp finite
    p = jnp.where(mask, jnp.exp(logits - m), 0.0)  # [batch, kv_heads, group, q_len, kv_len]
    denom = jnp.sum(p, axis=-1, keepdims=True)
    p = p / jnp.where(denom == 0.0, 1.0, denom)
    out = jnp.einsum("bkgts,bskd->btkgd", p.astype(v.dtype), v, precision=precision,
                     preferred_element_type=jnp.float32)  # [batch, q_len, kv_heads, group, head_dim]
    out = out.reshape(b, t, h, d).astype(q.dtype)  # [batch, q_len, heads, head_dim]
    if not return_lse:
        return out
    lse = (m + jnp.log(denom))[..., 0].reshape(b, h, t)  # [batch, heads, q_len]
    return out, lse
