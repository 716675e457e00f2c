"""`llama_jax.kernels.matmul`: the linear layers' canonical-form custom VJP.

Checked against plain jnp (`mixed_dot_reference`, differentiated by JAX) and,
at the model level, against ``matmul="xla"``: values and gradients, f32 and
bf16, every leading-axis rank the model uses. On jaxlib 0.10 the compiled
backward is checked to run every dot in bf16 (no dot operand converted to
f32), which is what the custom VJP is for.
"""

from __future__ import annotations

import importlib.metadata

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from llama_jax.kernels.matmul import (
    batched_dot_nn,
    batched_dot_nt,
    mixed_dot,
    mixed_dot_reference,
    resolve_matmul,
)
from llama_jax.model import Llama, LlamaConfig

F32, BF16 = jnp.float32, jnp.bfloat16


def _operands(shape, k, n, x_dtype):
    x = jax.random.normal(jax.random.key(0), (*shape, k), F32).astype(x_dtype)
    w = 0.05 * jax.random.normal(jax.random.key(1), (k, n), F32)
    return x, w


def _loss(fn, compute, out):
    def loss(x, w):
        y = fn(x, w, compute, out).astype(F32)  # [..., n]
        return jnp.sum(jnp.sin(y))  # a cotangent that varies per element
    return loss


@pytest.mark.parametrize("lead", [(6,), (2, 5), (2, 3, 4)])
def test_f32_values_and_gradients_match_plain_jnp(lead):
    x, w = _operands(lead, 16, 12, F32)
    np.testing.assert_allclose(mixed_dot(x, w, F32, F32), mixed_dot_reference(x, w, F32, F32),
                               rtol=1e-6, atol=1e-6)
    got = jax.grad(_loss(mixed_dot, F32, F32), argnums=(0, 1))(x, w)
    want = jax.grad(_loss(mixed_dot_reference, F32, F32), argnums=(0, 1))(x, w)
    for g, r in zip(got, want, strict=True):
        assert g.dtype == r.dtype == F32
        np.testing.assert_allclose(g, r, rtol=1e-5, atol=1e-6)


def test_bf16_compute_over_f32_weights():
    """bf16 operands, f32 sums: the input gradient in bf16, the weight gradient in f32
    (the master weights' dtype), each within bf16 rounding of the f32 reference."""
    x, w = _operands((4, 8), 64, 48, BF16)
    y = mixed_dot(x, w, BF16, BF16)
    assert y.dtype == BF16
    np.testing.assert_allclose(y.astype(F32), mixed_dot_reference(x, w, BF16, F32),
                               rtol=1e-2, atol=1e-2)
    dx, dw = jax.grad(_loss(mixed_dot, BF16, F32), argnums=(0, 1))(x, w)
    rx, rw = jax.grad(_loss(mixed_dot_reference, BF16, F32), argnums=(0, 1))(x.astype(F32), w)
    assert dx.dtype == BF16 and dw.dtype == F32
    np.testing.assert_allclose(dx.astype(F32), rx, rtol=2e-2, atol=2e-2)
    scale = float(jnp.abs(rw).max())
    np.testing.assert_allclose(dw, rw, atol=1e-2 * scale)


@pytest.mark.parametrize("m", [12, 7])  # 7: a prime query count, swapped as a plain transpose
@pytest.mark.parametrize("dtype,tol", [(F32, 1e-5), (BF16, 3e-2)])
def test_attention_dots_match_einsum(m, dtype, tol):
    """`batched_dot_nt` (scores) and `batched_dot_nn` (probabilities x values): values
    and both gradients against `jnp.einsum` differentiated by JAX, in float32."""
    keys = jax.random.split(jax.random.key(4), 3)
    a = jax.random.normal(keys[0], (2, 3, m, 8), F32).astype(dtype)  # [batch, heads, m, k]
    b_nt = jax.random.normal(keys[1], (2, 3, 5, 8), F32).astype(dtype)  # [batch, heads, n, k]
    b_nn = jax.random.normal(keys[2], (2, 3, 8, 5), F32).astype(dtype)  # [batch, heads, k, n]
    cases = [(batched_dot_nt, b_nt, "bhmk,bhnk->bhmn"), (batched_dot_nn, b_nn, "bhmk,bhkn->bhmn")]
    for fn, b, spec in cases:
        ours = jax.grad(lambda a, b, fn=fn: jnp.sum(jnp.sin(fn(a, b, F32))), argnums=(0, 1))
        ref = jax.grad(lambda a, b, spec=spec: jnp.sum(jnp.sin(jnp.einsum(
            spec, a, b, precision="highest"))), argnums=(0, 1))
        np.testing.assert_allclose(fn(a, b, F32), jnp.einsum(spec, a.astype(F32), b.astype(F32)),
                                   rtol=tol, atol=tol)
        for got, want, x in zip(ours(a, b), ref(a.astype(F32), b.astype(F32)), (a, b), strict=True):
            assert got.dtype == x.dtype
            np.testing.assert_allclose(got.astype(F32), want, rtol=tol, atol=tol * 4)


def test_resolve_matmul():
    assert resolve_matmul("auto") == ("canonical" if jax.default_backend() == "cpu" else "xla")
    assert resolve_matmul("xla") == "xla" and resolve_matmul("canonical") == "canonical"
    with pytest.raises(ValueError, match="matmul='fast'"):
        resolve_matmul("fast")
    with pytest.raises(ValueError, match="matmul='fast' is not one of"):
        LlamaConfig(matmul="fast")


def _model_grads(config, params, tokens):
    def loss(p):
        logits = Llama(config).apply({"params": p}, tokens)  # [batch, len, vocab]
        return jnp.mean(jax.nn.logsumexp(logits, -1) - logits[..., 0]), logits
    return jax.grad(loss, has_aux=True)(params)


@pytest.mark.parametrize("dtype,tol", [("float32", 1e-5), ("bfloat16", 5e-2)])
def test_model_matches_the_plain_dot(dtype, tol):
    """The whole model (scanned layers, GQA, the output head) gives the same logits and
    gradients with ``matmul="canonical"`` as with ``matmul="xla"``."""
    base = LlamaConfig(dim=64, n_layers=2, n_heads=4, n_kv_heads=2, vocab_size=96,
                       multiple_of=16, max_seq_len=16, dtype=dtype, attention_impl="xla")
    tokens = jax.random.randint(jax.random.key(2), (2, 12), 0, base.vocab_size)
    params = Llama(base).init(jax.random.key(3), tokens)["params"]
    g_xla, logits_xla = _model_grads(base.replace(matmul="xla"), params, tokens)
    g_can, logits_can = _model_grads(base.replace(matmul="canonical"), params, tokens)
    np.testing.assert_allclose(logits_can, logits_xla, rtol=tol, atol=tol)
    for (path, a), b in zip(jax.tree_util.tree_leaves_with_path(g_can),
                            jax.tree_util.tree_leaves(g_xla), strict=True):
        assert a.dtype == b.dtype == F32, path
        scale = float(jnp.abs(b).max()) + 1e-12
        np.testing.assert_allclose(a, b, atol=tol * scale, err_msg=jax.tree_util.keystr(path))


@pytest.mark.skipif(jax.default_backend() != "cpu"
                    or not importlib.metadata.version("jaxlib").startswith("0.10."),
                    reason="the YNNPACK dot rules were read from jaxlib 0.10's CPU back-end")
def test_compiled_backward_keeps_every_dot_in_bf16():
    """No dot of the compiled forward + backward has an f32 operand made from bf16:
    the weight gradient's transpose stays a copy, not a folded, upcast dot."""
    x, w = _operands((8, 16), 64, 96, BF16)
    step = jax.jit(jax.grad(_loss(mixed_dot, BF16, F32), argnums=(0, 1)))
    text = step.lower(x, w).compile().as_text()
    converts = [line for line in text.splitlines()
                if " convert(" in line and "= f32[" in line and "bf16" in line.split("convert(")[1]]
    assert not converts, "\n".join(converts)
    plain = jax.jit(jax.grad(lambda x, w: jnp.sum(jnp.sin(
        jnp.dot(x, w.astype(BF16)).astype(F32))), argnums=(0, 1)))
    text = plain.lower(x, w).compile().as_text()
    # The check can fail: JAX's own transpose does upcast (if this stops holding, the
    # custom VJP may no longer be needed; re-measure benchmarks/train_step.py).
    assert any(" convert(" in line and "= f32[" in line for line in text.splitlines())


@pytest.mark.skipif(jax.default_backend() != "cpu"
                    or not importlib.metadata.version("jaxlib").startswith("0.10."),
                    reason="XLA's CPU fusion choices were read from jaxlib 0.10")
def test_rope_cos_sin_are_computed_once_per_step():
    """The model computes RoPE's cos and sin once (`llama._materialized`): the compiled
    gradient of a 3-layer unrolled model has one cos per conditional branch, not one
    per layer, q / k and direction (XLA inlines them into every consumer otherwise)."""
    config = LlamaConfig(dim=64, n_layers=3, n_heads=4, vocab_size=64, multiple_of=16,
                         max_seq_len=16, scan_layers=False, attention_impl="xla")
    tokens = jnp.zeros((2, 16), jnp.int32)
    params = Llama(config).init(jax.random.key(0), tokens)["params"]
    loss = jax.jit(jax.grad(lambda p: jnp.sum(Llama(config).apply({"params": p}, tokens))))
    assert loss.lower(params).compile().as_text().count(" cosine(") == 2
