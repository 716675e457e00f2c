"""Flash attention for GPUs in Pallas: causal, packed documents, GQA.

Our own FlashAttention-2 kernel for the Triton lowering of Pallas (it runs on
CPU with ``interpret=True``), used by the model when
``attention_impl="pallas"`` (or ``"auto"`` on a GPU):

* Forward: one program per (q block, batch, head) streams the kv blocks with
  an online softmax (base-2 exponentials) and writes the output and the
  log-sum-exp, which the backward pass reuses instead of storing P.
* Backward (`flash_attention_bwd.py`): a dK/dV kernel and a dQ kernel; the
  in-kernel tile helpers both directions share are in `tiles.py`.
* GQA: a query head's kv head is picked in the BlockSpec index map
  (``head // group``); K and V are never repeated in memory.
* Packed documents: ``[batch, len]`` segment ids; a key is visible to a query
  only in the same segment. No dense ``[len, len]`` mask is ever built.
* Skipping: causal kv blocks entirely above the diagonal are outside the loop
  bounds, only the diagonal band is masked, and a block pair whose
  segment-id ranges are disjoint is skipped with `lax.cond`.
* Ragged lengths are padded to whole blocks here and masked in the kernel;
  head_dim is padded to a power of two (>= 16) for the Triton tiles.

Causal means key j is visible to query i iff j <= i (both counted from 0; with
q_len != kv_len the sequences are aligned at their starts). A query that sees
no key (possible only with separate q/kv segment ids) gets output 0 and
lse -inf. `llama_jax.kernels.reference.attention_reference` (re-exported here)
is the plain-jnp oracle for all of it and owns the input checks.
"""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
from jax import lax
from jax.experimental import pallas as pl
from jax.experimental.pallas import triton as pltriton

from llama_jax.kernels.flash_attention_bwd import flash_backward_padded
from llama_jax.kernels.reference import MASK_VALUE, attention_reference, check_inputs
from llama_jax.kernels.tiles import (
    LN2,
    LOG2E,
    dot_nn,
    kv_loop_bounds,
    masked_scores,
    maybe_skip,
    segments_overlap,
)

__all__ = ["MASK_VALUE", "BlockSizes", "attention_reference", "flash_attention",
           "flash_attention_with_lse", "flash_attention_grads"]

_MIN_BLOCK = 16  # Triton's tl.dot needs every tile dimension >= 16.


def _pow2(n: int) -> bool:
    return n > 0 and n & (n - 1) == 0


@dataclasses.dataclass(frozen=True)
class BlockSizes:
    """Tile sizes and Triton launch settings; tune per GPU and head_dim.

    Attributes:
      block_q, block_k: forward tiles along queries / keys.
      block_q_dkv, block_k_dkv: tiles of the dK/dV kernel.
      block_q_dq, block_k_dq: tiles of the dQ kernel.
      num_warps, num_stages: forward launch (None warps: 4 for head_dim <= 64,
        else 8).
      num_warps_bwd, num_stages_bwd: backward launch.

    All tiles are powers of two >= 16. A tile larger than the (padded)
    sequence is shrunk to fit, never below 16.
    """

    block_q: int = 128
    block_k: int = 64
    block_q_dkv: int = 32
    block_k_dkv: int = 64
    block_q_dq: int = 64
    block_k_dq: int = 32
    num_warps: int | None = None
    num_stages: int = 2
    num_warps_bwd: int = 4
    num_stages_bwd: int = 2

    def __post_init__(self):
        for f in ("block_q", "block_k", "block_q_dkv", "block_k_dkv", "block_q_dq",
                  "block_k_dq"):
            value = getattr(self, f)
            if not isinstance(value, int) or not _pow2(value) or value < _MIN_BLOCK:
                raise ValueError(f"BlockSizes.{f}={value!r} must be a power of two "
                                 f">= {_MIN_BLOCK} (Triton tile)")

    def fit(self, q_len: int, kv_len: int) -> BlockSizes:
        """These sizes shrunk to the sequence lengths (powers of two >= 16)."""
        def cap(block, n):
            return min(block, max(_MIN_BLOCK, int(pl.next_power_of_2(n))))
        return dataclasses.replace(
            self, block_q=cap(self.block_q, q_len), block_k=cap(self.block_k, kv_len),
            block_q_dkv=cap(self.block_q_dkv, q_len), block_k_dkv=cap(self.block_k_dkv, kv_len),
            block_q_dq=cap(self.block_q_dq, q_len), block_k_dq=cap(self.block_k_dq, kv_len))

    @property
    def q_multiple(self) -> int:
        """Queries are padded to a multiple of this (every q tile divides it)."""
        return max(self.block_q, self.block_q_dkv, self.block_q_dq)

    @property
    def kv_multiple(self) -> int:
        """Keys are padded to a multiple of this (every kv tile divides it)."""
        return max(self.block_k, self.block_k_dkv, self.block_k_dq)


@dataclasses.dataclass(frozen=True)
class _Static:
    """Everything static about one call (hashable: a custom_vjp nondiff arg)."""

    causal: bool
    sm_scale: float
    kv_len: int
    blocks: BlockSizes
    interpret: bool


def _fwd_kernel(q_ref, k_ref, v_ref, q_seg_ref, kv_seg_ref, o_ref, lse_ref, *,
                sm_scale: float, causal: bool, block_q: int, block_k: int, kv_len: int,
                ragged_kv: bool, num_q_blocks: int):
    """One (q block, batch, head): online softmax over the visible kv blocks."""
    # Program 0 takes the last q block: under causal masking the longest rows
    # start first, which balances the tail of the launch.
    q_start = (num_q_blocks - 1 - pl.program_id(0)) * block_q
    q = q_ref[...]  # [block_q, head_dim]
    q_seg = None if q_seg_ref is None else q_seg_ref[...]  # [block_q]
    scale = sm_scale * LOG2E  # logits in base 2: exp(x) = exp2(x * log2(e))

    def step(kb, carry, *, masked):
        k_start = pl.multiple_of(kb * block_k, block_k)
        ks = pl.ds(k_start, block_k)
        k_seg = None if kv_seg_ref is None else kv_seg_ref[ks]

        def compute(carry):
            o, m, denom = carry
            k = k_ref[ks, :]  # [block_k, head_dim]
            v = v_ref[ks, :]
            s, mask = masked_scores(q, k, scale, q_start, k_start, causal=causal,
                                    masked=masked, kv_len=kv_len, ragged_kv=ragged_kv,
                                    q_seg=q_seg, k_seg=k_seg)  # [block_q, block_k]
            m_new = jnp.maximum(m, jnp.max(s, axis=1))  # [block_q]
            if mask is not None:  # all-masked rows so far: keep exponents finite
                m_new_safe = jnp.where(m_new == MASK_VALUE, 0.0, m_new)
            else:
                m_new_safe = m_new
            alpha = jnp.exp2(m - m_new_safe)
            p = jnp.exp2(s - m_new_safe[:, None])  # [block_q, block_k]
            denom = alpha * denom + jnp.sum(p, axis=1)
            o = alpha[:, None] * o + dot_nn(p.astype(v.dtype), v)  # [block_q, head_dim]
            return o, m_new, denom

        skip = None if q_seg is None else segments_overlap(q_seg, k_seg)
        return maybe_skip(skip, compute, carry)

    carry = (jnp.zeros(q.shape, jnp.float32),
             jnp.full((block_q,), MASK_VALUE, jnp.float32),
             jnp.zeros((block_q,), jnp.float32))
    n_full, n_vis = kv_loop_bounds(q_start, block_q, block_k, causal=causal, kv_len=kv_len,
                                   ragged_kv=ragged_kv)
    carry = lax.fori_loop(0, n_full, functools.partial(step, masked=False), carry)
    o, m, denom = lax.fori_loop(n_full, n_vis, functools.partial(step, masked=True), carry)
    o_ref[...] = (o / jnp.where(denom == 0.0, 1.0, denom)[:, None]).astype(o_ref.dtype)
    lse_ref[...] = (m + jnp.log2(denom)) * LN2  # natural log; -inf where denom == 0


def _fwd_call(q, k, v, q_seg, kv_seg, st: _Static, out_dtype=None):
    """(out, lse) for block-padded inputs; lse is [batch, heads, q_pad] float32."""
    b, tq, h, d = q.shape
    tk, kvh = k.shape[1], k.shape[2]
    group = h // kvh
    bq, bk = st.blocks.block_q, st.blocks.block_k
    nq = tq // bq
    has_seg = q_seg is not None
    num_warps = st.blocks.num_warps or (4 if d <= 64 else 8)
    q_blk = pl.BlockSpec((None, bq, None, d), lambda i, j, n: (j, nq - 1 - i, n, 0))
    kv_all = pl.BlockSpec((None, tk, None, d), lambda i, j, n: (j, 0, n // group, 0))
    return pl.pallas_call(
        functools.partial(_fwd_kernel, sm_scale=st.sm_scale, causal=st.causal, block_q=bq,
                          block_k=bk, kv_len=st.kv_len, ragged_kv=st.kv_len != tk,
                          num_q_blocks=nq),
        grid=(nq, b, h),
        in_specs=[q_blk, kv_all, kv_all,
                  pl.BlockSpec((None, bq), lambda i, j, n: (j, nq - 1 - i)) if has_seg else None,
                  pl.BlockSpec((None, tk), lambda i, j, n: (j, 0)) if has_seg else None],
        out_specs=[q_blk, pl.BlockSpec((None, None, bq), lambda i, j, n: (j, n, nq - 1 - i))],
        out_shape=[jax.ShapeDtypeStruct(q.shape, out_dtype or q.dtype),
                   jax.ShapeDtypeStruct((b, h, tq), jnp.float32)],
        compiler_params=pltriton.CompilerParams(num_warps=num_warps,
                                                num_stages=st.blocks.num_stages),
        interpret=st.interpret,
        name="flash_attention_fwd",
    )(q, k, v, q_seg, kv_seg)


def _bwd_call(q, k, v, do, lse, delta, q_seg, kv_seg, st: _Static, out_dtype=None):
    bs = st.blocks
    return flash_backward_padded(
        q, k, v, do, lse, delta, q_seg, kv_seg, sm_scale=st.sm_scale, causal=st.causal,
        kv_len=st.kv_len, block_q_dq=bs.block_q_dq, block_k_dq=bs.block_k_dq,
        block_q_dkv=bs.block_q_dkv, block_k_dkv=bs.block_k_dkv, num_warps=bs.num_warps_bwd,
        num_stages=bs.num_stages_bwd, interpret=st.interpret, out_dtype=out_dtype)


def _delta(o, do):
    """rowsum(o * do) as [batch, heads, len] float32 (the softmax-backward term)."""
    return jnp.einsum("bthd,bthd->bht", o.astype(jnp.float32),
                      do.astype(jnp.float32))  # [batch, heads, len]


@functools.partial(jax.custom_vjp, nondiff_argnums=(5,))
def _flash(q, k, v, q_seg, kv_seg, st: _Static):
    return _fwd_call(q, k, v, q_seg, kv_seg, st)[0]


def _flash_fwd(q, k, v, q_seg, kv_seg, st: _Static):
    o, lse = _fwd_call(q, k, v, q_seg, kv_seg, st)
    return o, (q, k, v, q_seg, kv_seg, o, lse)


def _flash_bwd(st: _Static, res, do):
    q, k, v, q_seg, kv_seg, o, lse = res
    dq, dk, dv = _bwd_call(q, k, v, do, lse, _delta(o, do), q_seg, kv_seg, st)
    return dq, dk, dv, None, None


_flash.defvjp(_flash_fwd, _flash_bwd)


def _prepare(q, k, v, q_seg, kv_seg, *, causal, sm_scale, block_sizes, interpret):
    """Pad lengths to whole blocks and head_dim to a power of two >= 16."""
    _, q_len, _, head_dim = q.shape
    kv_len = k.shape[1]
    blocks = (block_sizes or BlockSizes()).fit(q_len, kv_len)
    if sm_scale is None:
        sm_scale = float(head_dim) ** -0.5
    d_pad = max(_MIN_BLOCK, int(pl.next_power_of_2(head_dim))) - head_dim
    tq = -(-q_len // blocks.q_multiple) * blocks.q_multiple
    tk = -(-kv_len // blocks.kv_multiple) * blocks.kv_multiple

    def pad(x, n):
        return jnp.pad(x, ((0, 0), (0, n - x.shape[1]), (0, 0), (0, d_pad)))

    def pad_seg(s, n):  # edge padding keeps a block's segment range unchanged
        return None if s is None else jnp.pad(s.astype(jnp.int32), ((0, 0), (0, n - s.shape[1])),
                                              mode="edge")

    st = _Static(causal=bool(causal), sm_scale=float(sm_scale), kv_len=kv_len, blocks=blocks,
                 interpret=bool(interpret))
    return st, pad(q, tq), pad(k, tk), pad(v, tk), pad_seg(q_seg, tq), pad_seg(kv_seg, tk)


def flash_attention(
    q: jax.Array, k: jax.Array, v: jax.Array, *, causal: bool = True,
    segment_ids: jax.Array | None = None, q_segment_ids: jax.Array | None = None,
    kv_segment_ids: jax.Array | None = None, sm_scale: float | None = None,
    block_sizes: BlockSizes | None = None, interpret: bool = False,
) -> jax.Array:
    """Differentiable flash attention (Pallas forward and backward kernels).

    Args:
      q: [batch, q_len, heads, head_dim].
      k, v: [batch, kv_len, kv_heads, head_dim]; heads % kv_heads == 0.
      causal: key j visible to query i only if j <= i.
      segment_ids: [batch, len] (q_len == kv_len): packed documents.
      q_segment_ids, kv_segment_ids: separate ids when the lengths differ.
      sm_scale: logit scale; default head_dim ** -0.5.
      block_sizes: tiles and launch settings (default `BlockSizes()`).
      interpret: run the kernels in the Pallas interpreter (CPU).

    Returns:
      [batch, q_len, heads, head_dim] in q's dtype.
    """
    q_seg, kv_seg = check_inputs(q, k, v, segment_ids, q_segment_ids, kv_segment_ids)
    st, *padded = _prepare(q, k, v, q_seg, kv_seg, causal=causal, sm_scale=sm_scale,
                           block_sizes=block_sizes, interpret=interpret)
    out = _flash(*padded, st)
    return out[:, :q.shape[1], :, :q.shape[3]]


def flash_attention_with_lse(
    q, k, v, *, causal: bool = True, q_segment_ids=None, kv_segment_ids=None,
    sm_scale: float | None = None, block_sizes: BlockSizes | None = None,
    interpret: bool = False, out_dtype=None,
) -> tuple[jax.Array, jax.Array]:
    """Forward kernel only: (out [batch, q_len, heads, head_dim], lse [batch,
    heads, q_len] float32, natural log, -inf for a query that sees no key).

    The building block of ring attention, whose custom VJP calls
    `flash_attention_grads` with the log-sum-exp of the whole ring.
    """
    q_seg, kv_seg = check_inputs(q, k, v, None, q_segment_ids, kv_segment_ids)
    st, *padded = _prepare(q, k, v, q_seg, kv_seg, causal=causal, sm_scale=sm_scale,
                           block_sizes=block_sizes, interpret=interpret)
    o, lse = _fwd_call(*padded, st, out_dtype=out_dtype)
    return o[:, :q.shape[1], :, :q.shape[3]], lse[:, :, :q.shape[1]]


def flash_attention_grads(
    q, k, v, do, lse, delta, *, causal: bool = True, q_segment_ids=None,
    kv_segment_ids=None, sm_scale: float | None = None,
    block_sizes: BlockSizes | None = None, interpret: bool = False, out_dtype=None,
) -> tuple[jax.Array, jax.Array, jax.Array]:
    """Backward kernels only: (dq, dk, dv) given the softmax statistics.

    Args:
      q, k, v: as in `flash_attention`; do: [batch, q_len, heads, head_dim].
      lse: [batch, heads, q_len] natural-log log-sum-exp over *all* keys the
        queries attend to (possibly more than this k, v: ring attention).
      delta: [batch, heads, q_len] rowsum(out * do) of the full output.

    Returns dq, dk, dv in `out_dtype` (default: q's dtype and k's dtype).
    """
    q_seg, kv_seg = check_inputs(q, k, v, None, q_segment_ids, kv_segment_ids)
    if do.shape != q.shape or lse.shape != (q.shape[0], q.shape[2], q.shape[1]) \
            or delta.shape != lse.shape:
        raise ValueError(f"do must be q's shape and lse, delta [batch, heads, q_len]; got "
                         f"{q.shape=}, {do.shape=}, {lse.shape=}, {delta.shape=}")
    st, qp, kp, vp, qsp, ksp = _prepare(q, k, v, q_seg, kv_seg, causal=causal,
                                        sm_scale=sm_scale, block_sizes=block_sizes,
                                        interpret=interpret)
    tq, d_full = qp.shape[1], qp.shape[3]
    dop = jnp.pad(do, ((0, 0), (0, tq - do.shape[1]), (0, 0), (0, d_full - do.shape[3])))
    rows = ((0, 0), (0, 0), (0, tq - lse.shape[2]))
    dq, dk, dv = _bwd_call(qp, kp, vp, dop, jnp.pad(lse.astype(jnp.float32), rows),
                           jnp.pad(delta.astype(jnp.float32), rows), qsp, ksp, st,
                           out_dtype=out_dtype)
    n, m, d = q.shape[1], k.shape[1], q.shape[3]
    return dq[:, :n, :, :d], dk[:, :m, :, :d], dv[:, :m, :, :d]
