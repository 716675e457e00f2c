"""Backward Pallas kernels of `llama_jax.kernels.flash_attention`.

Two kernels, FlashAttention-2 style, each recomputing P = exp(S - lse) from
the forward's log-sum-exp instead of storing it:

* ``_dkdv_kernel``: one program per (kv block, batch, kv head). It walks the
  query blocks of every query head of its GQA group and accumulates dK and dV
  in registers, so a KV head's gradient is summed over its group without ever
  materialising per-query-head copies.
* ``_dq_kernel``: one program per (q block, batch, head); it walks the kv
  blocks that the query block can see and accumulates dQ.

Causal blocks above the diagonal are outside the loop bounds; only the
diagonal band is masked; a (q, kv) block pair whose segment-id ranges do not
overlap is skipped with `lax.cond`. All arrays arrive padded to whole blocks
(the public wrapper in `flash_attention.py` pads); `kv_len` is the real key
length, used to mask padded keys.

Both kernels target the Triton lowering of Pallas on GPUs and run on CPU with
``interpret=True``.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jax import lax
from jax.experimental import pallas as pl
from jax.experimental.pallas import triton as pltriton

from llama_jax.kernels.tiles import (
    LOG2E,
    MASK_VALUE,
    dot_nn,
    dot_nt,
    dot_tn,
    kv_loop_bounds,
    masked_scores,
    maybe_skip,
    segments_overlap,
)


def _dq_kernel(q_ref, k_ref, v_ref, do_ref, lse_ref, delta_ref, q_seg_ref, kv_seg_ref,
               dq_ref, *, sm_scale: float, causal: bool, block_q: int, block_k: int,
               kv_len: int, ragged_kv: bool):
    """dQ for one (q block, batch, head): loop over the visible kv blocks."""
    q_start = pl.program_id(0) * block_q
    q = q_ref[...]  # [block_q, head_dim]
    do = do_ref[...]  # [block_q, head_dim]
    lse2 = lse_ref[...] * LOG2E  # [block_q], base 2
    # A row with no visible key has lse = -inf; +inf makes its P exactly 0.
    lse2 = jnp.where(lse2 == MASK_VALUE, float("inf"), lse2)
    delta = delta_ref[...]  # [block_q]
    q_seg = None if q_seg_ref is None else q_seg_ref[...]

    def step(kb, dq, *, masked):
        k_start = pl.multiple_of(kb * block_k, block_k)
        ks = pl.ds(k_start, block_k)
        k_seg = None if kv_seg_ref is None else kv_seg_ref[ks]

        def compute(dq):
            k = k_ref[ks, :]  # [block_k, head_dim]
            v = v_ref[ks, :]
            s, _ = masked_scores(q, k, sm_scale * LOG2E, q_start, k_start, causal=causal,
                                 masked=masked, kv_len=kv_len, ragged_kv=ragged_kv,
                                 q_seg=q_seg, k_seg=k_seg)  # [block_q, block_k]
            p = jnp.exp2(s - lse2[:, None])
            dp = dot_nt(do, v)  # [block_q, block_k]
            ds = p * (dp - delta[:, None])
            return dq + dot_nn(ds.astype(k.dtype), k)

        skip = None if q_seg is None else segments_overlap(q_seg, k_seg)
        return maybe_skip(skip, compute, dq)

    dq = jnp.zeros(q.shape, jnp.float32)
    n_full, n_vis = kv_loop_bounds(q_start, block_q, block_k, causal=causal, kv_len=kv_len,
                                   ragged_kv=ragged_kv)
    dq = lax.fori_loop(0, n_full, functools.partial(step, masked=False), dq)
    dq = lax.fori_loop(n_full, n_vis, functools.partial(step, masked=True), dq)
    dq_ref[...] = (dq * sm_scale).astype(dq_ref.dtype)


def _dkdv_kernel(q_ref, k_ref, v_ref, do_ref, lse_ref, delta_ref, q_seg_ref, kv_seg_ref,
                 dk_ref, dv_ref, *, sm_scale: float, causal: bool, block_q: int,
                 block_k: int, kv_len: int, num_q_blocks: int, group: int,
                 ragged_kv: bool):
    """dK, dV for one (kv block, batch, kv head): loop over the group's query
    heads and the query blocks that can see this kv block."""
    kb = pl.program_id(0)
    k_start = kb * block_k
    k = k_ref[...]  # [block_k, head_dim]
    v = v_ref[...]
    k_seg = None if kv_seg_ref is None else kv_seg_ref[...]

    def step(qb, carry, *, g, masked):
        q_start = pl.multiple_of(qb * block_q, block_q)
        qs = pl.ds(q_start, block_q)
        q_seg = None if q_seg_ref is None else q_seg_ref[qs]

        def compute(carry):
            dk, dv = carry
            q = q_ref[qs, g, :]  # [block_q, head_dim]
            do = do_ref[qs, g, :]
            lse2 = lse_ref[g, qs] * LOG2E  # [block_q]
            lse2 = jnp.where(lse2 == MASK_VALUE, float("inf"), lse2)
            delta = delta_ref[g, qs]
            s, _ = masked_scores(q, k, sm_scale * LOG2E, q_start, k_start, causal=causal,
                                 masked=masked, kv_len=kv_len, ragged_kv=ragged_kv,
                                 q_seg=q_seg, k_seg=k_seg)  # [block_q, block_k]
            p = jnp.exp2(s - lse2[:, None])  # [block_q, block_k]
            dv = dv + dot_tn(p.astype(do.dtype), do)  # [block_k, head_dim]
            dp = dot_nt(do, v)  # [block_q, block_k]
            ds = p * (dp - delta[:, None])
            dk = dk + dot_tn(ds.astype(q.dtype), q)  # [block_k, head_dim]
            return dk, dv

        skip = None if q_seg is None else segments_overlap(q_seg, k_seg)
        return maybe_skip(skip, compute, carry)

    # Query blocks [lo, hi) straddle the diagonal (or the ragged end) and need
    # a mask; [hi, num_q_blocks) see the whole kv block.
    if causal:
        lo = lax.div(k_start, block_q)
        hi = jnp.minimum(lax.div(k_start + block_k - 1 + block_q - 1, block_q), num_q_blocks)
    else:
        lo = hi = 0
    if ragged_kv:  # a block holding padded keys is masked throughout ...
        hi = jnp.where(kb >= kv_len // block_k, num_q_blocks, hi)
        lo = jnp.where(k_start >= kv_len, num_q_blocks, lo)  # ... or skipped if all padding

    def head(g, carry):
        carry = lax.fori_loop(lo, hi, functools.partial(step, g=g, masked=True), carry)
        return lax.fori_loop(hi, num_q_blocks, functools.partial(step, g=g, masked=False),
                             carry)

    zeros = jnp.zeros(k.shape, jnp.float32)
    if group == 1:
        dk, dv = head(0, (zeros, zeros))
    else:
        dk, dv = lax.fori_loop(0, group, head, (zeros, zeros))
    dk_ref[...] = (dk * sm_scale).astype(dk_ref.dtype)
    dv_ref[...] = dv.astype(dv_ref.dtype)


def flash_backward_padded(q, k, v, do, lse, delta, q_seg, kv_seg, *, sm_scale: float,
                          causal: bool, kv_len: int, block_q_dq: int, block_k_dq: int,
                          block_q_dkv: int, block_k_dkv: int, num_warps: int,
                          num_stages: int, interpret: bool, out_dtype=None):
    """dq, dk, dv for block-padded inputs (see `flash_attention._flash_bwd`).

    Args:
      q, do: [batch, q_pad, heads, head_dim]; k, v: [batch, kv_pad, kv_heads, head_dim].
      lse: [batch, heads, q_pad] natural-log log-sum-exp of the forward pass.
      delta: [batch, heads, q_pad] float32 rowsum(o * do).
      q_seg, kv_seg: [batch, q_pad] / [batch, kv_pad] int32, or both None.
      out_dtype: dtype of the gradients (default: each input's dtype).
    """
    b, tq, h, d = q.shape
    tk, kvh = k.shape[1], k.shape[2]
    group = h // kvh
    has_seg = q_seg is not None
    params = pltriton.CompilerParams(num_warps=num_warps, num_stages=num_stages)
    ragged = kv_len != tk
    common = dict(sm_scale=sm_scale, causal=causal, kv_len=kv_len, ragged_kv=ragged)

    nq = tq // block_q_dq
    q_blk = pl.BlockSpec((None, block_q_dq, None, d), lambda i, j, n: (j, i, n, 0))
    kv_all = pl.BlockSpec((None, tk, None, d), lambda i, j, n: (j, 0, n // group, 0))
    row_blk = pl.BlockSpec((None, None, block_q_dq), lambda i, j, n: (j, n, i))
    dq = pl.pallas_call(
        functools.partial(_dq_kernel, block_q=block_q_dq, block_k=block_k_dq, **common),
        grid=(nq, b, h),
        in_specs=[q_blk, kv_all, kv_all, q_blk, row_blk, row_blk,
                  pl.BlockSpec((None, block_q_dq), lambda i, j, n: (j, i)) if has_seg else None,
                  pl.BlockSpec((None, tk), lambda i, j, n: (j, 0)) if has_seg else None],
        out_specs=q_blk,
        out_shape=jax.ShapeDtypeStruct(q.shape, out_dtype or q.dtype),
        compiler_params=params,
        interpret=interpret,
        name="flash_attention_dq",
    )(q, k, v, do, lse, delta, q_seg, kv_seg)

    nq, nk = tq // block_q_dkv, tk // block_k_dkv
    kv_blk = pl.BlockSpec((None, block_k_dkv, None, d), lambda i, j, n: (j, i, n, 0))
    q_group = pl.BlockSpec((None, tq, group, d), lambda i, j, n: (j, 0, n, 0))
    row_group = pl.BlockSpec((None, group, tq), lambda i, j, n: (j, n, 0))
    dk, dv = pl.pallas_call(
        functools.partial(_dkdv_kernel, block_q=block_q_dkv, block_k=block_k_dkv,
                          num_q_blocks=nq, group=group, **common),
        grid=(nk, b, kvh),
        in_specs=[q_group, kv_blk, kv_blk, q_group, row_group, row_group,
                  pl.BlockSpec((None, tq), lambda i, j, n: (j, 0)) if has_seg else None,
                  pl.BlockSpec((None, block_k_dkv), lambda i, j, n: (j, i)) if has_seg else None],
        out_specs=[kv_blk, kv_blk],
        out_shape=[jax.ShapeDtypeStruct(k.shape, out_dtype or k.dtype),
                   jax.ShapeDtypeStruct(v.shape, out_dtype or v.dtype)],
        compiler_params=params,
        interpret=interpret,
        name="flash_attention_dkdv",
    )(q, k, v, do, lse, delta, q_seg, kv_seg)
    return dq, dk, dv
