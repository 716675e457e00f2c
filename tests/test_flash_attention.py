"""The Pallas flash-attention kernel (interpret mode) against `attention_reference`:
values and gradients over shapes, tiles, causal, segment ids, GQA and ragged
lengths; block skipping; the Triton lowering; shape validation."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from llama_jax.kernels.flash_attention import (
    BlockSizes,
    flash_attention,
    flash_attention_grads,
    flash_attention_with_lse,
)
from llama_jax.kernels.reference import attention_reference

TOL = {jnp.float32: 1e-5, jnp.bfloat16: 2e-2}


# Interpret-mode kernels are big XLA programs; tests compile them at -O0.
FAST = dict(compiler_options={"xla_backend_optimization_level": 0})


def rel_err(a, b) -> float:
    """max |a - b| / max |b| (a norm-wise relative error)."""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(np.abs(a - b).max() / max(np.abs(b).max(), 1e-30))


def blocks(bq, bk, bq_dkv=None, bk_dkv=None, bq_dq=None, bk_dq=None):
    return BlockSizes(block_q=bq, block_k=bk, block_q_dkv=bq_dkv or bq,
                      block_k_dkv=bk_dkv or bk, block_q_dq=bq_dq or bq, block_k_dq=bk_dq or bk)


def make_inputs(seed, batch, q_len, kv_len, heads, kv_heads, head_dim, dtype, segments):
    ks = jax.random.split(jax.random.key(seed), 6)
    q = jax.random.normal(ks[0], (batch, q_len, heads, head_dim), jnp.float32).astype(dtype)
    k = jax.random.normal(ks[1], (batch, kv_len, kv_heads, head_dim), jnp.float32).astype(dtype)
    v = jax.random.normal(ks[2], (batch, kv_len, kv_heads, head_dim), jnp.float32).astype(dtype)
    do = jax.random.normal(ks[3], (batch, q_len, heads, head_dim), jnp.float32).astype(dtype)
    seg = {}
    if segments:
        # Packed documents: sorted ids, several per row (ids start at 0 = padding).
        q_seg = jnp.sort(jax.random.randint(ks[4], (batch, q_len), 0, segments), axis=1)
        if q_len == kv_len:
            seg = dict(segment_ids=q_seg)
        else:
            kv_seg = jnp.sort(jax.random.randint(ks[5], (batch, kv_len), 0, segments), axis=1)
            seg = dict(q_segment_ids=q_seg, kv_segment_ids=kv_seg)
    return (q, k, v), do, seg


def value_and_grads(fn, args, do):
    """Output and the cotangents (dq, dk, dv) of `do`, in one jit."""
    @functools.partial(jax.jit, **FAST)
    def run(q, k, v):
        out, vjp = jax.vjp(fn, q, k, v)
        return out, vjp(do.astype(out.dtype))

    return run(*args)


def check_against_reference(*, batch=1, q_len, kv_len=None, heads=2, kv_heads=2, head_dim=16,
                            causal=True, segments=0, bs=None, dtype=jnp.float32, seed=0):
    kv_len = kv_len or q_len
    args, do, seg = make_inputs(seed, batch, q_len, kv_len, heads, kv_heads, head_dim, dtype,
                                segments)
    kernel = functools.partial(flash_attention, causal=causal, block_sizes=bs, interpret=True,
                               **seg)
    # The oracle computes in float32 from the same (possibly bf16) inputs.
    f32 = [x.astype(jnp.float32) for x in args]
    out, grads = value_and_grads(kernel, args, do)
    ref_out, ref_grads = value_and_grads(
        functools.partial(attention_reference, causal=causal, **seg), f32, do)
    tol = TOL[dtype]
    assert out.dtype == dtype and out.shape == args[0].shape
    assert rel_err(out, ref_out) < tol, rel_err(out, ref_out)
    for name, g, r, x in zip(("dq", "dk", "dv"), grads, ref_grads, args, strict=True):
        assert g.shape == x.shape and g.dtype == x.dtype
        assert rel_err(g, r) < tol, (name, rel_err(g, r))


# (q_len, kv_len, heads, kv_heads, head_dim, causal, segments, blocks, dtype)
SWEEP = [
    # Block-aligned causal MHA.
    (32, 32, 2, 2, 16, True, 0, blocks(16, 16), jnp.float32),
    # Ragged length, GQA 2, packed documents.
    (40, 40, 4, 2, 16, True, 3, blocks(16, 16), jnp.float32),
    # Non-causal, GQA 4, unequal forward/backward tiles, packed documents.
    (48, 48, 4, 1, 32, False, 4, blocks(32, 16, 16, 32, 32, 16), jnp.float32),
    # q_len < kv_len and both ragged, separate q/kv segment ids.
    (24, 40, 2, 1, 16, True, 2, blocks(16, 32), jnp.float32),
    # q_len > kv_len, non-causal.
    (40, 24, 4, 4, 16, False, 0, blocks(16, 16), jnp.float32),
    # head_dim 64, larger tiles, causal + segments.
    (64, 64, 2, 2, 64, True, 3, blocks(32, 32), jnp.float32),
    # head_dim 8 and 24 are padded to the next power of two inside the wrapper.
    (24, 24, 4, 1, 8, True, 2, blocks(16, 16), jnp.float32),
    (33, 33, 2, 2, 24, True, 0, blocks(16, 16), jnp.float32),
    # bfloat16.
    (64, 64, 4, 2, 32, True, 3, blocks(16, 32), jnp.bfloat16),
    (48, 48, 2, 2, 64, False, 0, blocks(32, 16), jnp.bfloat16),
]


@pytest.mark.parametrize("q_len,kv_len,heads,kv_heads,head_dim,causal,segments,bs,dtype", SWEEP)
def test_matches_reference(q_len, kv_len, heads, kv_heads, head_dim, causal, segments, bs, dtype):
    check_against_reference(q_len=q_len, kv_len=kv_len, heads=heads, kv_heads=kv_heads,
                            head_dim=head_dim, causal=causal, segments=segments, bs=bs,
                            dtype=dtype, batch=2 if segments else 1)


@pytest.mark.slow
@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16])
@pytest.mark.parametrize("causal", [True, False])
@pytest.mark.parametrize("segments", [0, 4])
@pytest.mark.parametrize("group", [1, 2, 4])
@pytest.mark.parametrize("q_len,bs", [(16, blocks(16, 16)), (72, blocks(32, 16)),
                                      (96, blocks(16, 32, 32, 16, 16, 32))])
def test_matches_reference_sweep(dtype, causal, segments, group, q_len, bs):
    check_against_reference(batch=2, q_len=q_len, heads=4, kv_heads=4 // group, head_dim=64,
                            causal=causal, segments=segments, bs=bs, dtype=dtype, seed=q_len)


def test_default_block_sizes_head_dim_128():
    check_against_reference(q_len=136, heads=2, kv_heads=1, head_dim=128, segments=3, batch=1)


def test_rows_that_see_no_key_are_zero():
    """Separate q/kv segment ids: queries of a segment absent from the keys."""
    args, do, _ = make_inputs(3, 1, 32, 32, 2, 2, 16, jnp.float32, 0)
    q_seg = jnp.array([[1] * 16 + [2] * 16])
    kv_seg = jnp.array([[1] * 32])
    seg = dict(q_segment_ids=q_seg, kv_segment_ids=kv_seg)
    kernel = functools.partial(flash_attention, causal=False, block_sizes=blocks(16, 16),
                               interpret=True, **seg)
    out, grads = value_and_grads(kernel, args, do)
    ref_out, ref_grads = value_and_grads(
        functools.partial(attention_reference, causal=False, **seg), args, do)
    assert np.all(np.asarray(out[:, 16:]) == 0.0)
    assert rel_err(out, ref_out) < 1e-5
    for g, r in zip(grads, ref_grads, strict=True):
        assert np.isfinite(np.asarray(g)).all() and rel_err(g, r) < 1e-5
    _, lse = flash_attention_with_lse(*args, causal=False, block_sizes=blocks(16, 16),
                                      interpret=True, **seg)
    assert np.all(np.isneginf(np.asarray(lse[:, :, 16:])))


def test_lse_and_standalone_grads_match_reference():
    """The ring-attention building blocks: (out, lse) and grads from lse/delta."""
    args, do, seg = make_inputs(4, 2, 40, 40, 4, 2, 16, jnp.float32, 3)
    kw = dict(causal=True, q_segment_ids=seg["segment_ids"], kv_segment_ids=seg["segment_ids"],
              block_sizes=blocks(16, 16), interpret=True)
    out, lse = jax.jit(functools.partial(flash_attention_with_lse, **kw), **FAST)(*args)
    ref_out, ref_lse = attention_reference(*args, causal=True, return_lse=True, **seg)
    assert rel_err(out, ref_out) < 1e-5 and rel_err(lse, ref_lse) < 1e-5
    delta = jnp.einsum("bthd,bthd->bht", out, do)
    grads = jax.jit(functools.partial(flash_attention_grads, **kw), **FAST)(*args, do, lse, delta)
    _, ref_grads = value_and_grads(functools.partial(attention_reference, causal=True, **seg),
                                   args, do)
    for g, r in zip(grads, ref_grads, strict=True):
        assert rel_err(g, r) < 1e-5


@pytest.mark.parametrize("kind", ["causal", "segments"])
def test_masked_blocks_are_skipped_not_computed(kind):
    """NaN in K/V blocks that no query may see: a kernel that loaded them and
    masked afterwards would produce NaN (0 * NaN); skipping leaves them unread."""
    args, do, _ = make_inputs(5, 1, 32, 64, 2, 2, 16, jnp.float32, 0)
    q, k, v = args
    if kind == "causal":  # keys 32.. are above the diagonal of every query
        seg, ref_seg, causal = {}, {}, True
    else:  # keys 32.. belong to a segment no query has
        q_seg = jnp.zeros((1, 32), jnp.int32)
        kv_seg = jnp.concatenate([q_seg, jnp.ones((1, 32), jnp.int32)], axis=1)
        seg = dict(q_segment_ids=q_seg, kv_segment_ids=kv_seg)
        ref_seg = dict(q_segment_ids=q_seg, kv_segment_ids=kv_seg[:, :32])
        causal = False
    poison = jnp.full_like(k[:, 32:], jnp.nan)
    k_bad = jnp.concatenate([k[:, :32], poison], axis=1)
    v_bad = jnp.concatenate([v[:, :32], poison], axis=1)
    kernel = functools.partial(flash_attention, causal=causal, block_sizes=blocks(16, 16),
                               interpret=True, **seg)
    out, (dq, dk, dv) = value_and_grads(kernel, (q, k_bad, v_bad), do)
    ref_out, (rdq, rdk, rdv) = value_and_grads(
        functools.partial(attention_reference, causal=causal, **ref_seg),
        (q, k[:, :32], v[:, :32]), do)
    assert rel_err(out, ref_out) < 1e-5 and rel_err(dq, rdq) < 1e-5
    assert rel_err(dk[:, :32], rdk) < 1e-5 and rel_err(dv[:, :32], rdv) < 1e-5
    assert np.all(np.asarray(dk[:, 32:]) == 0) and np.all(np.asarray(dv[:, 32:]) == 0)


@pytest.mark.parametrize("segments", [False, True])
def test_lowers_to_triton_for_gpu(segments):
    """Cross-lower forward + backward for CUDA on this CPU machine: every
    kernel must pass the Pallas Triton lowering (tile sizes, primitives)."""
    q = jax.ShapeDtypeStruct((2, 1000, 8, 128), jnp.bfloat16)
    kv = jax.ShapeDtypeStruct((2, 1000, 2, 128), jnp.bfloat16)
    seg = jax.ShapeDtypeStruct((2, 1000), jnp.int32)

    def loss(q, k, v, *s):
        out = flash_attention(q, k, v, segment_ids=s[0] if s else None)
        return out.astype(jnp.float32).sum()

    args = (q, kv, kv, seg) if segments else (q, kv, kv)
    lowered = jax.jit(jax.grad(loss, argnums=(0, 1, 2))).trace(*args).lower(
        lowering_platforms=("cuda",))
    text = lowered.as_text()
    for name in ("flash_attention_fwd", "flash_attention_dq", "flash_attention_dkdv"):
        assert name in text
    assert text.count("__gpu$xla.gpu.triton") + text.count("triton_kernel_call") >= 3


def test_shape_validation():
    q = jnp.zeros((1, 32, 4, 16))
    kv = jnp.zeros((1, 32, 2, 16))
    with pytest.raises(ValueError, match=r"q must be \[batch, q_len"):
        flash_attention(q[0], kv, kv, interpret=True)
    with pytest.raises(ValueError, match="heads=4 must be a multiple of kv_heads=3"):
        bad = jnp.zeros((1, 32, 3, 16))
        flash_attention(q, bad, bad, interpret=True)
    with pytest.raises(ValueError, match="v must have k's shape"):
        flash_attention(q, kv, kv[:, :16], interpret=True)
    with pytest.raises(ValueError, match="head_dim"):
        flash_attention(q, kv[..., :8], kv[..., :8], interpret=True)
    with pytest.raises(ValueError, match=r"segment_ids must be \[batch, len\]"):
        flash_attention(q, kv, kv, q_segment_ids=jnp.zeros((1, 31), jnp.int32),
                        kv_segment_ids=jnp.zeros((1, 32), jnp.int32), interpret=True)
    with pytest.raises(ValueError, match="pass both q_segment_ids and kv_segment_ids"):
        flash_attention(q, kv, kv, q_segment_ids=jnp.zeros((1, 32), jnp.int32), interpret=True)
    with pytest.raises(ValueError, match="q_len=32 == kv_len=16"):
        flash_attention(q, kv[:, :16], kv[:, :16], segment_ids=jnp.zeros((1, 32), jnp.int32),
                        interpret=True)
    with pytest.raises(ValueError, match="float32/bfloat16/float16"):
        flash_attention(q, kv.astype(jnp.bfloat16), kv, interpret=True)
    with pytest.raises(ValueError, match="must be integers"):
        flash_attention(q, kv, kv, segment_ids=jnp.zeros((1, 32)), interpret=True)
    with pytest.raises(ValueError, match=r"BlockSizes.block_k=24 must be a power of two"):
        BlockSizes(block_k=24)
    with pytest.raises(ValueError, match=r"BlockSizes.block_q=8 must be a power of two >= 16"):
        BlockSizes(block_q=8)


def test_block_sizes_fit_short_sequences():
    bs = BlockSizes().fit(20, 5)
    assert (bs.block_q, bs.block_k, bs.block_k_dkv, bs.block_k_dq) == (32, 16, 16, 16)
    assert bs.q_multiple == 32 and bs.kv_multiple == 16
