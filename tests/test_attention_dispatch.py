"""`dot_product_attention` dispatch by `attention_impl`: the model with our
Pallas kernel (interpret mode on CPU) equals the einsum path, `auto` picks the
einsum path off GPU, decoding keeps the einsum path, and misuse errors."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from llama_jax.model.attention import dot_product_attention, xla_attention
from llama_jax.model.llama import Llama, init_cache, init_params

# Interpret-mode kernels are big XLA programs; tests compile them at -O0.
FAST = dict(compiler_options={"xla_backend_optimization_level": 0})


def rel_err(a, b) -> float:
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(np.abs(a - b).max() / max(np.abs(b).max(), 1e-30))


def logits_and_grads(cfg, params, tokens, seg, weights):
    model = Llama(cfg)

    def loss(p):
        logits = model.apply({"params": p}, tokens, segment_ids=seg)
        return jnp.sum(logits * weights), logits

    (_, logits), grads = jax.value_and_grad(loss, has_aux=True)(params)
    return logits, grads


@pytest.mark.parametrize("config_name", ["tiny_config", "gqa_config"])
def test_model_pallas_matches_xla(config_name, request):
    cfg = request.getfixturevalue(config_name)
    seq = 24  # not a multiple of the 16/32 tiles: exercises padding and masking
    params = init_params(cfg, jax.random.key(0), seq_len=seq)
    tokens = jax.random.randint(jax.random.key(1), (2, seq), 0, cfg.vocab_size)
    seg = jnp.array([[1] * 9 + [2] * 15, [1] * 17 + [0] * 7], jnp.int32)
    weights = jax.random.normal(jax.random.key(2), (2, seq, cfg.vocab_size))
    run = jax.jit(logits_and_grads, static_argnums=0, **FAST)
    ref_logits, ref_grads = run(cfg, params, tokens, seg, weights)
    logits, grads = run(cfg.replace(attention_impl="pallas"), params, tokens, seg, weights)
    assert rel_err(logits, ref_logits) < 1e-5
    flat = jax.tree_util.tree_leaves_with_path(grads)
    for (path, g), r in zip(flat, jax.tree_util.tree_leaves(ref_grads), strict=True):
        assert rel_err(g, r) < 1e-5, (jax.tree_util.keystr(path), rel_err(g, r))


def _qkv(seq=16):
    ks = jax.random.split(jax.random.key(3), 3)
    q = jax.random.normal(ks[0], (1, seq, 4, 16))
    k = jax.random.normal(ks[1], (1, seq, 2, 16))
    v = jax.random.normal(ks[2], (1, seq, 2, 16))
    return q, k, v


def test_auto_is_xla_off_gpu():
    q, k, v = _qkv()
    seg = jnp.array([[1] * 6 + [2] * 10])
    out = dot_product_attention(q, k, v, seg, seg, impl="auto")
    assert jax.default_backend() != "gpu"
    np.testing.assert_array_equal(out, xla_attention(q, k, v, seg, seg))


def test_pallas_call_matches_xla():
    q, k, v = _qkv(24)
    seg = jnp.array([[1] * 6 + [2] * 18])
    out = jax.jit(functools.partial(dot_product_attention, impl="pallas"), **FAST)(
        q, k, v, seg, seg)
    assert rel_err(out, xla_attention(q, k, v, seg, seg)) < 1e-5


def test_decoding_with_pallas_config_uses_the_cache_path(gqa_config):
    """A cache offset routes to the einsum path, so decode works with any impl."""
    cfg = gqa_config.replace(attention_impl="pallas")
    params = init_params(gqa_config, jax.random.key(0))
    tokens = jax.random.randint(jax.random.key(1), (1, 6), 0, cfg.vocab_size)

    @functools.partial(jax.jit, **FAST)
    def run(params, tokens):
        full = Llama(gqa_config).apply({"params": params}, tokens)
        decoder = Llama(cfg, decode=True)
        logits, state = decoder.apply(
            {"params": params, "cache": init_cache(cfg, 1, 8)}, tokens[:, :5],
            positions=jnp.arange(5)[None], mutable=["cache"])
        step, _ = decoder.apply({"params": params, "cache": state["cache"]}, tokens[:, 5:],
                                positions=jnp.array([[5]]), mutable=["cache"])
        return full, logits, step

    full, logits, step = run(params, tokens)
    assert rel_err(logits, full[:, :5]) < 1e-5
    assert rel_err(step[:, 0], full[:, 5]) < 1e-5


def test_dispatch_errors():
    q, k, v = _qkv()
    seg = jnp.ones((1, 16), jnp.int32)
    with pytest.raises(ValueError, match="attention_impl='cudnn' needs a GPU"):
        dot_product_attention(q, k, v, None, None, impl="cudnn")
    with pytest.raises(ValueError, match="needs a mesh with a 'sequence' axis"):
        dot_product_attention(q, k, v, seg, seg, impl="ring")
    with pytest.raises(ValueError, match="is not one of"):
        dot_product_attention(q, k, v, None, None, impl="flash")
    with pytest.raises(ValueError, match="pass both q_segment_ids and kv_segment_ids"):
        dot_product_attention(q, k, v, seg, None, impl="pallas")
