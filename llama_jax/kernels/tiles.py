"""In-kernel helpers the flash-attention forward and backward kernels share.

Tile matmuls with float32 accumulation (`dot_nn`, `dot_nt`, `dot_tn`), the
visibility mask of one (q block, kv block) tile (`tile_mask`,
`masked_scores`), block skipping for disjoint segment ranges
(`segments_overlap`, `maybe_skip`) and the causal loop bounds
(`kv_loop_bounds`). Masked logits are `llama_jax.kernels.reference.MASK_VALUE`
(-inf), so a row with no visible key gets output 0 and lse -inf, as the
reference defines it. The kernels work in base 2 (`LOG2E`, `LN2`).
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
from jax import lax
from jax.experimental import pallas as pl

from llama_jax.kernels.reference import MASK_VALUE

__all__ = ["LN2", "LOG2E", "MASK_VALUE", "dot_nn", "dot_nt", "dot_tn", "kv_loop_bounds",
           "masked_scores", "maybe_skip", "segments_overlap", "tile_mask"]

LOG2E = math.log2(math.e)
LN2 = math.log(2.0)

_NT = (((1,), (1,)), ((), ()))  # contract the last dims: a @ b.T
_TN = (((0,), (0,)), ((), ()))  # contract the first dims: a.T @ b


def dot_nt(a: jax.Array, b: jax.Array) -> jax.Array:
    """[m, d] x [n, d] -> [m, n] in float32."""
    return lax.dot_general(a, b, _NT, preferred_element_type=jnp.float32)


def dot_tn(a: jax.Array, b: jax.Array) -> jax.Array:
    """[k, m] x [k, n] -> [m, n] in float32."""
    return lax.dot_general(a, b, _TN, preferred_element_type=jnp.float32)


def dot_nn(a: jax.Array, b: jax.Array) -> jax.Array:
    """[m, k] x [k, n] -> [m, n] in float32."""
    return lax.dot_general(a, b, (((1,), (0,)), ((), ())),
                           preferred_element_type=jnp.float32)


def tile_mask(q_start, k_start, block_q: int, block_k: int, *, causal: bool,
              kv_len: int | None, q_seg=None, k_seg=None):
    """Boolean [block_q, block_k] visibility of one tile, or None if all visible.

    Args:
      q_start, k_start: absolute index of the tile's first query / key.
      causal: key j is visible to query i iff j <= i.
      kv_len: mask keys at or beyond this index (padding), or None.
      q_seg, k_seg: [block_q] / [block_k] segment ids, or None.
    """
    mask = None
    if causal or kv_len is not None:
        k_idx = k_start + lax.broadcasted_iota(jnp.int32, (block_q, block_k), 1)
        if causal:
            q_idx = q_start + lax.broadcasted_iota(jnp.int32, (block_q, block_k), 0)
            mask = q_idx >= k_idx
        if kv_len is not None:
            in_range = k_idx < kv_len
            mask = in_range if mask is None else mask & in_range
    if q_seg is not None:
        same = q_seg[:, None] == k_seg[None, :]
        mask = same if mask is None else mask & same
    return mask


def masked_scores(q, k, scale: float, q_start, k_start, *, causal: bool, masked: bool,
                  kv_len: int, ragged_kv: bool, q_seg=None, k_seg=None):
    """Scaled logits of one tile with invisible entries at MASK_VALUE, and the mask.

    `masked` is False for tiles known to be fully visible (strictly below the
    causal diagonal and inside kv_len); then only segment ids can mask.
    Returns (s [block_q, block_k], mask or None).
    """
    s = dot_nt(q, k) * scale  # [block_q, block_k]
    mask = tile_mask(q_start, k_start, q.shape[0], k.shape[0], causal=causal and masked,
                     kv_len=kv_len if (masked and ragged_kv) else None,
                     q_seg=q_seg, k_seg=k_seg)
    if mask is not None:
        s = jnp.where(mask, s, MASK_VALUE)
    return s, mask


def segments_overlap(q_seg, k_seg):
    """False when no id of `q_seg` can equal one of `k_seg` (disjoint ranges)."""
    return (jnp.min(q_seg) <= jnp.max(k_seg)) & (jnp.min(k_seg) <= jnp.max(q_seg))


def maybe_skip(pred, fn, carry):
    """`fn(carry)` if `pred` (a traced bool, or None for always), else `carry`."""
    if pred is None:
        return fn(carry)
    return lax.cond(pred, fn, lambda c: c, carry)


def kv_loop_bounds(q_start, block_q: int, block_k: int, *, causal: bool, kv_len: int,
                   ragged_kv: bool):
    """(n_full, n_visible) for the query block starting at `q_start`.

    kv blocks [0, n_full) need no causal or padding mask; [n_full, n_visible)
    straddle the diagonal or hold padded keys; blocks from n_visible on are
    never visited (entirely above the diagonal, or entirely padding).
    """
    n_real = pl.cdiv(kv_len, block_k)
    if causal:
        n_vis = jnp.minimum(lax.div(q_start + block_q + block_k - 1, block_k), n_real)
        n_full = jnp.minimum(lax.div(q_start + 1, block_k), n_vis)
    else:
        n_vis = n_full = n_real
    if ragged_kv:
        n_full = jnp.minimum(n_full, kv_len // block_k)
    return n_full, n_vis
