"""Ring (context-parallel) attention over the `sequence` mesh axis.

The sequence is split over the n devices of the axis. Each device keeps its
queries; K/V blocks (and their segment ids) travel around the ring with
`lax.ppermute` while every device attends its queries to the block it holds,
and the partial results are merged through their log-sum-exp. The next
block's transfer is issued before the current block's attention, so XLA can
overlap them.

Causal load balance (zig-zag layout): the sequence is cut into 2n chunks and
device r holds chunks r and 2n-1-r. Against a block from device s != r,
either both local query chunks see the block's early chunk in full (s < r), or
the local late chunk sees the whole block (s > r): every device does the same
2c x c work on every step (c = chunk length), and the diagonal step costs the
same too. With ``layout="natural"`` the inputs are contiguous shards and are
moved to and from zig-zag order with two `ppermute`s each; ``"zigzag"`` means
the caller already holds that order (for example a data pipeline that permutes
tokens and positions once).

Gradients are exact: a `jax.custom_vjp` runs a second ring in which dK/dV
accumulators travel with their K/V block and return home after n steps, while
dQ accumulates locally, all from the global log-sum-exp and
delta = rowsum(out * dout).

Local attention on each step is our Pallas kernel (``local_impl="flash"``) or
`llama_jax.kernels.reference.attention_reference` on the local chunks
(``"xla"``, fast on CPU; its backward here builds the same
`attention_mask`); no [len, len] mask of the whole sequence either way.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any

import jax
import jax.numpy as jnp
from jax import lax
from jax.sharding import PartitionSpec as P

from llama_jax.kernels.flash_attention import (
    BlockSizes,
    flash_attention_grads,
    flash_attention_with_lse,
)
from llama_jax.kernels.reference import attention_mask, attention_reference
from llama_jax.sharding import SEQUENCE

LOCAL_IMPLS = ("flash", "xla")
LAYOUTS = ("natural", "zigzag")


@dataclasses.dataclass(frozen=True)
class _Ring:
    """Static description of one ring call (a custom_vjp nondiff argument)."""

    mesh: Any
    axis: str
    n: int
    causal: bool
    layout: str
    local_impl: str
    sm_scale: float
    blocks: BlockSizes | None
    interpret: bool
    qkv_spec: P
    seg_spec: P
    row_spec: P


# ----------------------------------------------------------------------------
# Local attention on one step: (out float32, lse) forward, (dq, dk, dv) backward.


def _local_fwd(cfg: _Ring, q, k, v, q_seg, k_seg, causal: bool):
    if cfg.local_impl == "flash":
        return flash_attention_with_lse(
            q, k, v, causal=causal, q_segment_ids=q_seg, kv_segment_ids=k_seg,
            sm_scale=cfg.sm_scale, block_sizes=cfg.blocks, interpret=cfg.interpret,
            out_dtype=jnp.float32)
    f32 = jnp.float32
    return attention_reference(q.astype(f32), k.astype(f32), v.astype(f32), causal=causal,
                               q_segment_ids=q_seg, kv_segment_ids=k_seg,
                               sm_scale=cfg.sm_scale, return_lse=True,
                               precision=lax.Precision.HIGHEST)


def _local_bwd(cfg: _Ring, q, k, v, do, lse, delta, q_seg, k_seg, causal: bool):
    """Gradients of this block given the *global* lse and delta (float32)."""
    if cfg.local_impl == "flash":
        return flash_attention_grads(
            q, k, v, do, lse, delta, causal=causal, q_segment_ids=q_seg,
            kv_segment_ids=k_seg, sm_scale=cfg.sm_scale, block_sizes=cfg.blocks,
            interpret=cfg.interpret, out_dtype=jnp.float32)
    f32, hi = jnp.float32, lax.Precision.HIGHEST
    b, t, h, d = q.shape
    s, kvh = k.shape[1], k.shape[2]
    g = h // kvh
    qg = q.astype(f32).reshape(b, t, kvh, g, d)  # [batch, q_len, kv_heads, group, head_dim]
    dog = do.astype(f32).reshape(b, t, kvh, g, d)  # [batch, q_len, kv_heads, group, head_dim]
    kf, vf = k.astype(f32), v.astype(f32)
    logits = jnp.einsum("btkgd,bskd->bkgts", qg, kf,
                        precision=hi) * cfg.sm_scale  # [batch, kv_heads, group, q_len, kv_len]
    mask = attention_mask(t, s, causal=causal, q_segment_ids=q_seg,
                          kv_segment_ids=k_seg)  # [batch or 1, q_len, kv_len]
    lse = lse.reshape(b, kvh, g, t)[..., None]  # [batch, kv_heads, group, q_len, 1]
    lse = jnp.where(lse == -jnp.inf, jnp.inf, lse)  # rows that see nothing: P = 0
    p = jnp.where(mask[:, None, None], jnp.exp(logits - lse), 0.0)
    dv = jnp.einsum("bkgts,btkgd->bskd", p, dog, precision=hi)  # [batch, kv_len, kv_heads, head_dim]
    dp = jnp.einsum("btkgd,bskd->bkgts", dog, vf, precision=hi)  # [batch, kv_heads, group, q_len, kv_len]
    ds = p * (dp - delta.reshape(b, kvh, g, t)[..., None])  # [batch, kv_heads, group, q_len, kv_len]
    dq = jnp.einsum("bkgts,bskd->btkgd", ds, kf,
                    precision=hi) * cfg.sm_scale  # [batch, q_len, kv_heads, group, head_dim]
    dk = jnp.einsum("bkgts,btkgd->bskd", ds, qg, precision=hi) * cfg.sm_scale  # [batch, kv_len, kv_heads, head_dim]
    return dq.reshape(b, t, h, d), dk, dv  # dq: [batch, q_len, heads, head_dim]


def _merge(o1, lse1, o2, lse2):
    """Combine two normalised partial attentions through their log-sum-exp."""
    m = jnp.maximum(lse1, lse2)
    m = jnp.where(m == -jnp.inf, 0.0, m)  # both empty: keep the exponents finite
    w1, w2 = jnp.exp(lse1 - m), jnp.exp(lse2 - m)  # [batch, heads, len]
    total = w1 + w2
    def weight(w):
        return (w / jnp.where(total == 0.0, 1.0, total)).transpose(0, 2, 1)[..., None]  # [batch, len, heads, 1]
    return o1 * weight(w1) + o2 * weight(w2), m + jnp.log(total)


def _seg_slice(seg, sl):
    return None if seg is None else seg[:, sl]


# ----------------------------------------------------------------------------
# Zig-zag layout: device r holds chunks (r, 2n-1-r) of the 2n chunks.


def _zig_dest(chunk: int, n: int) -> int:
    return chunk if chunk < n else 2 * n - 1 - chunk


def _to_zigzag(x, cfg: _Ring, r):
    """Contiguous shard (chunks 2r, 2r+1) -> zig-zag shard (chunks r, 2n-1-r)."""
    n = cfg.n
    c = x.shape[1] // 2
    perm0 = [(i, _zig_dest(2 * i, n)) for i in range(n)]
    perm1 = [(i, _zig_dest(2 * i + 1, n)) for i in range(n)]
    got0 = lax.ppermute(x[:, :c], cfg.axis, perm0)  # an even chunk
    got1 = lax.ppermute(x[:, c:], cfg.axis, perm1)  # an odd chunk
    even = r % 2 == 0  # device r's first zig-zag chunk (r) is even iff r is
    return jnp.concatenate([jnp.where(even, got0, got1), jnp.where(even, got1, got0)], axis=1)


def _from_zigzag(x, cfg: _Ring, r):
    """Inverse of `_to_zigzag`."""
    n = cfg.n
    c = x.shape[1] // 2
    perm0 = [(_zig_dest(2 * i, n), i) for i in range(n)]
    perm1 = [(_zig_dest(2 * i + 1, n), i) for i in range(n)]
    even = r % 2 == 0
    first, second = x[:, :c], x[:, c:]
    back0 = lax.ppermute(jnp.where(even, first, second), cfg.axis, perm0)
    back1 = lax.ppermute(jnp.where(even, second, first), cfg.axis, perm1)
    return jnp.concatenate([back0, back1], axis=1)


def _shift(tree, cfg: _Ring):
    """Send to the next device on the ring (receive from the previous one)."""
    perm = [(i, (i + 1) % cfg.n) for i in range(cfg.n)]
    return jax.tree_util.tree_map(lambda x: lax.ppermute(x, cfg.axis, perm), tree)


def _case(cfg: _Ring, src, r):
    """0: own block (causal), 1: block from an earlier device, 2: from a later one."""
    return jnp.where(src == r, 0, jnp.where(src < r, 1, 2))


# ----------------------------------------------------------------------------
# Forward and backward rings (bodies of shard_map).


def _attend(cfg: _Ring, q, q_seg, block, src, r):
    """Partial (out float32, lse) of the local queries against one K/V block."""
    k, v, k_seg = block
    if not cfg.causal:
        return _local_fwd(cfg, q, k, v, q_seg, k_seg, False)
    c = q.shape[1] // 2
    early, late = slice(0, c), slice(c, None)

    def own():
        return _local_fwd(cfg, q, k, v, q_seg, k_seg, True)

    def from_earlier():  # both query chunks see the block's early chunk in full
        return _local_fwd(cfg, q, k[:, early], v[:, early], q_seg,
                          _seg_slice(k_seg, early), False)

    def from_later():  # only the late query chunk sees the (whole) block
        o, lse = _local_fwd(cfg, q[:, late], k, v, _seg_slice(q_seg, late), k_seg, False)
        o = jnp.concatenate([jnp.zeros_like(o), o], axis=1)  # [batch, 2c, heads, head_dim]
        lse = jnp.concatenate([jnp.full_like(lse, -jnp.inf), lse], axis=2)  # [batch, heads, 2c]
        return o, lse

    return lax.switch(_case(cfg, src, r), [own, from_earlier, from_later])


def _grads(cfg: _Ring, q, q_seg, do, lse, delta, block, src, r):
    """(dq, dk, dv) float32 contributions of one K/V block."""
    k, v, k_seg = block
    if not cfg.causal:
        return _local_bwd(cfg, q, k, v, do, lse, delta, q_seg, k_seg, False)
    c = q.shape[1] // 2
    early, late = slice(0, c), slice(c, None)

    def own():
        return _local_bwd(cfg, q, k, v, do, lse, delta, q_seg, k_seg, True)

    def from_earlier():
        dq, dk, dv = _local_bwd(cfg, q, k[:, early], v[:, early], do, lse, delta, q_seg,
                                _seg_slice(k_seg, early), False)
        pad = ((0, 0), (0, c), (0, 0), (0, 0))
        return dq, jnp.pad(dk, pad), jnp.pad(dv, pad)  # dk, dv: [batch, 2c, kv_heads, head_dim]

    def from_later():
        dq, dk, dv = _local_bwd(cfg, q[:, late], k, v, do[:, late], lse[:, :, late],
                                delta[:, :, late], _seg_slice(q_seg, late), k_seg, False)
        return jnp.pad(dq, ((0, 0), (c, 0), (0, 0), (0, 0))), dk, dv  # dq: [batch, 2c, heads, head_dim]

    return lax.switch(_case(cfg, src, r), [own, from_earlier, from_later])


def _ring_fwd_local(cfg: _Ring, q, k, v, seg):
    r = lax.axis_index(cfg.axis)
    if cfg.causal and cfg.layout == "natural":
        q, k, v = (_to_zigzag(x, cfg, r) for x in (q, k, v))
        seg = None if seg is None else _to_zigzag(seg, cfg, r)
    b, t, h, d = q.shape
    o = jnp.zeros((b, t, h, d), jnp.float32)
    lse = jnp.full((b, h, t), -jnp.inf, jnp.float32)

    def step(s, carry):
        o, lse, block = carry
        nxt = _shift(block, cfg)  # issued first: overlaps with this step's attention
        o2, lse2 = _attend(cfg, q, seg, block, (r - s) % cfg.n, r)
        return (*_merge(o, lse, o2, lse2), nxt)

    o, lse, block = lax.fori_loop(0, cfg.n - 1, step, (o, lse, (k, v, seg)))
    o2, lse2 = _attend(cfg, q, seg, block, (r - cfg.n + 1) % cfg.n, r)
    o, lse = _merge(o, lse, o2, lse2)
    o = o.astype(q.dtype)
    out = _from_zigzag(o, cfg, r) if cfg.causal and cfg.layout == "natural" else o
    return out, (q, k, v, seg, o, lse)


def _ring_bwd_local(cfg: _Ring, q, k, v, seg, o, lse, do):
    r = lax.axis_index(cfg.axis)
    zig = cfg.causal and cfg.layout == "natural"
    if zig:
        do = _to_zigzag(do, cfg, r)
    delta = jnp.einsum("bthd,bthd->bht", o.astype(jnp.float32),
                       do.astype(jnp.float32))  # [batch, heads, len]

    def step(s, carry, *, last=False):
        dq, block, dk, dv = carry
        nxt = None if last else _shift(block, cfg)
        dq_s, dk_s, dv_s = _grads(cfg, q, seg, do, lse, delta, block, (r - s) % cfg.n, r)
        # The accumulators travel with their block; after n shifts they are home.
        dk, dv = _shift((dk + dk_s, dv + dv_s), cfg)
        return dq + dq_s, nxt, dk, dv

    zeros = functools.partial(jnp.zeros, dtype=jnp.float32)
    carry = (zeros(q.shape), (k, v, seg), zeros(k.shape), zeros(v.shape))
    carry = lax.fori_loop(0, cfg.n - 1, step, carry)
    dq, _, dk, dv = step(cfg.n - 1, carry, last=True)
    grads = (dq.astype(q.dtype), dk.astype(k.dtype), dv.astype(v.dtype))
    if zig:
        grads = tuple(_from_zigzag(g, cfg, r) for g in grads)
    return grads


def _smap(cfg: _Ring, fn, in_specs, out_specs):
    return jax.shard_map(functools.partial(fn, cfg), mesh=cfg.mesh, in_specs=in_specs,
                         out_specs=out_specs, check_vma=False)


def _specs(cfg: _Ring, seg):
    return (cfg.qkv_spec,) * 3 + (None if seg is None else cfg.seg_spec,)


def _res_specs(cfg: _Ring, seg):
    return (*_specs(cfg, seg), cfg.qkv_spec, cfg.row_spec)


@functools.partial(jax.custom_vjp, nondiff_argnums=(4,))
def _ring(q, k, v, seg, cfg: _Ring):
    return _ring_fwd(q, k, v, seg, cfg)[0]


def _ring_fwd(q, k, v, seg, cfg: _Ring):
    fn = _smap(cfg, _ring_fwd_local, _specs(cfg, seg), (cfg.qkv_spec, _res_specs(cfg, seg)))
    return fn(q, k, v, seg)


def _ring_bwd(cfg: _Ring, res, do):
    seg = res[3]
    fn = _smap(cfg, _ring_bwd_local, (*_res_specs(cfg, seg), cfg.qkv_spec),
               (cfg.qkv_spec,) * 3)
    dq, dk, dv = fn(*res, do)
    return dq, dk, dv, None


_ring.defvjp(_ring_fwd, _ring_bwd)


def ring_attention(
    q: jax.Array, k: jax.Array, v: jax.Array, segment_ids: jax.Array | None = None, *,
    causal: bool = True, mesh=None, axis_name: str = SEQUENCE, batch_axes=None,
    head_axes=None, local_impl: str = "flash", layout: str = "natural",
    sm_scale: float | None = None, block_sizes: BlockSizes | None = None,
    interpret: bool = False,
) -> jax.Array:
    """Attention with the sequence sharded over mesh axis `axis_name`.

    Args:
      q: [batch, len, heads, head_dim]; k, v: [batch, len, kv_heads, head_dim]
        (global arrays; their `len` dimension is split over `axis_name`).
      segment_ids: [batch, len] packed-document ids, or None.
      causal: causal attention (zig-zag load balancing) or full attention.
      mesh: the mesh; default the one made current by `jax.set_mesh`
        (`llama_jax.sharding.activate`).
      axis_name: the ring axis (default `llama_jax.sharding.SEQUENCE`).
      batch_axes, head_axes: mesh axes the batch / head dimensions are
        sharded over (None: replicated), e.g. ("data", "fsdp") and "tensor".
      local_impl: "flash" (Pallas kernel) or "xla" (jnp on the local chunks).
      layout: "natural" (contiguous shards) or "zigzag" (already permuted).
      sm_scale, block_sizes, interpret: as in `flash_attention`.

    Returns:
      [batch, len, heads, head_dim] in q's dtype, sharded like q.
    """
    if mesh is None:
        mesh = jax.sharding.get_abstract_mesh()
    if mesh is None or mesh.empty or axis_name not in mesh.axis_names:
        names = () if mesh is None or mesh.empty else mesh.axis_names
        raise ValueError(f"ring attention needs a mesh with a {axis_name!r} axis; the active "
                         f"mesh has axes {names}. Pass mesh=... or wrap the call in "
                         "llama_jax.sharding.activate(mesh)")
    if local_impl not in LOCAL_IMPLS:
        raise ValueError(f"{local_impl=} is not one of {LOCAL_IMPLS}")
    if layout not in LAYOUTS:
        raise ValueError(f"{layout=} is not one of {LAYOUTS}")
    if q.ndim != 4 or k.shape != v.shape or k.ndim != 4 or q.shape[:2] != k.shape[:2]:
        raise ValueError(f"q must be [batch, len, heads, head_dim] and k, v [batch, len, "
                         f"kv_heads, head_dim] of the same len; got {q.shape=}, {k.shape=}, "
                         f"{v.shape=}")
    n = mesh.shape[axis_name]
    seq_len = q.shape[1]
    chunks = 2 * n if causal else n
    if seq_len % chunks:
        raise ValueError(f"{seq_len=} must be a multiple of {chunks} ({'2 x ' if causal else ''}"
                         f"{axis_name!r} axis size {n}) for ring attention")
    if segment_ids is not None:
        if tuple(segment_ids.shape) != q.shape[:2]:
            raise ValueError(f"segment_ids must be [batch, len] = {q.shape[:2]}; got "
                             f"{tuple(segment_ids.shape)}")
        segment_ids = segment_ids.astype(jnp.int32)
    cfg = _Ring(
        mesh=mesh, axis=axis_name, n=n, causal=bool(causal), layout=layout,
        local_impl=local_impl,
        sm_scale=float(q.shape[-1] ** -0.5 if sm_scale is None else sm_scale),
        blocks=block_sizes, interpret=bool(interpret),
        qkv_spec=P(batch_axes, axis_name, head_axes, None),
        seg_spec=P(batch_axes, axis_name), row_spec=P(batch_axes, head_axes, axis_name))
    return _ring(q, k, v, segment_ids, cfg)
