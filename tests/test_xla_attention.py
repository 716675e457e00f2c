"""The model's `xla` attention path against the plain-jnp reference: values and
gradients, GQA, packed segments, a cache offset, fully masked rows, bf16."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from llama_jax.kernels.reference import attention_reference
from llama_jax.kernels.xla_attention import xla_attention


def _inputs(b, t, s, h, kvh, d, dtype=jnp.float32, seed=0):
    ks = jax.random.split(jax.random.key(seed), 3)
    q = jax.random.normal(ks[0], (b, t, h, d), jnp.float32).astype(dtype)
    k = jax.random.normal(ks[1], (b, s, kvh, d), jnp.float32).astype(dtype)
    v = jax.random.normal(ks[2], (b, s, kvh, d), jnp.float32).astype(dtype)
    return q, k, v


CASES = [  # (batch, q_len, kv_len, heads, kv_heads, head_dim, causal, q_offset)
    (2, 16, 16, 4, 4, 8, True, 0),
    (2, 16, 16, 8, 2, 16, True, 0),  # GQA, groups of 4
    (1, 12, 12, 6, 3, 8, False, 0),
    (3, 1, 20, 4, 2, 8, True, 9),  # a decoding step: one query at cache index 9
    (2, 4, 24, 4, 1, 8, True, 17),  # a chunk at an offset, multi-query
]


@pytest.mark.parametrize("case", CASES)
def test_values_and_gradients_equal_the_reference(case):
    b, t, s, h, kvh, d, causal, offset = case
    q, k, v = _inputs(b, t, s, h, kvh, d)
    rng = np.random.default_rng(1)
    kv_seg = jnp.asarray(np.sort(rng.integers(0, 3, (b, s)), axis=1), jnp.int32)
    q_seg = kv_seg[:, offset:offset + t] if t <= s - offset else kv_seg[:, :t]
    for segs in ((None, None), (q_seg, kv_seg)):
        want = attention_reference(q, k, v, causal=causal, q_segment_ids=segs[0],
                                   kv_segment_ids=segs[1], q_offset=offset)
        got = xla_attention(q, k, v, *segs, causal=causal, q_offset=offset)
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)

        def ref_loss(q, k, v, sg=segs):
            out = attention_reference(q, k, v, causal=causal, q_segment_ids=sg[0],
                                      kv_segment_ids=sg[1], q_offset=offset)
            return jnp.sum(out * jnp.cos(out))

        def new_loss(q, k, v, sg=segs):
            out = xla_attention(q, k, v, *sg, causal=causal, q_offset=offset)
            return jnp.sum(out * jnp.cos(out))

        g_want = jax.grad(ref_loss, argnums=(0, 1, 2))(q, k, v)
        g_got = jax.grad(new_loss, argnums=(0, 1, 2))(q, k, v)
        for a, w in zip(g_got, g_want, strict=True):
            np.testing.assert_allclose(a, w, rtol=1e-4, atol=1e-5)


def test_a_query_that_sees_no_key_gives_zero_and_zero_gradients():
    q, k, v = _inputs(1, 4, 4, 2, 1, 8)
    q_seg = jnp.asarray([[1, 1, 2, 2]], jnp.int32)
    kv_seg = jnp.asarray([[1, 1, 3, 3]], jnp.int32)  # segment 2 has no keys
    out = xla_attention(q, k, v, q_seg, kv_seg, causal=False)
    assert bool(jnp.all(jnp.isfinite(out)))
    np.testing.assert_array_equal(out[0, 2:], 0.0)
    np.testing.assert_allclose(out, attention_reference(q, k, v, causal=False, q_segment_ids=q_seg,
                                                        kv_segment_ids=kv_seg), atol=1e-6)
    gq = jax.grad(lambda q: jnp.sum(xla_attention(q, k, v, q_seg, kv_seg, causal=False)))(q)
    np.testing.assert_array_equal(gq[0, 2:], 0.0)
    assert bool(jnp.all(jnp.isfinite(gq)))


def test_bfloat16_matches_the_reference():
    q, k, v = _inputs(2, 32, 32, 8, 4, 16, dtype=jnp.bfloat16)
    got = xla_attention(q, k, v, causal=True)
    want = attention_reference(q, k, v, causal=True)
    assert got.dtype == jnp.bfloat16
    np.testing.assert_allclose(got.astype(np.float32), want.astype(np.float32), atol=2e-2)
