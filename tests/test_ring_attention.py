"""Ring attention on 8 fake CPU devices (sequence = 8) against the unsharded
reference: values and gradients, causal (zig-zag) and not, segment ids, the
flash kernel as the local step, and the whole model with attention_impl="ring"."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from llama_jax import sharding
from llama_jax.kernels.flash_attention import BlockSizes
from llama_jax.kernels.reference import attention_reference
from llama_jax.kernels.ring_attention import _zig_dest, ring_attention
from llama_jax.model.llama import Llama, init_params

BLOCKS16 = BlockSizes(*(16,) * 6)


# Interpret-mode kernels are big XLA programs; tests compile them at -O0.
FAST = dict(compiler_options={"xla_backend_optimization_level": 0})


def rel_err(a, b) -> float:
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(np.abs(a - b).max() / max(np.abs(b).max(), 1e-30))


@pytest.fixture(scope="module")
def seq_mesh():
    if jax.device_count() < 8:
        pytest.skip("needs 8 (fake) devices")
    return sharding.make_mesh((1, 1, 1, 8))


@pytest.fixture(scope="module")
def inputs():
    batch, seq, heads, kv_heads, head_dim = 2, 128, 4, 2, 16
    ks = jax.random.split(jax.random.key(7), 5)
    q = jax.random.normal(ks[0], (batch, seq, heads, head_dim))
    k = jax.random.normal(ks[1], (batch, seq, kv_heads, head_dim))
    v = jax.random.normal(ks[2], (batch, seq, kv_heads, head_dim))
    do = jax.random.normal(ks[3], (batch, seq, heads, head_dim))
    # Packed documents whose boundaries fall inside and across device shards.
    seg = jnp.sort(jax.random.randint(ks[4], (batch, seq), 0, 5), axis=1)
    return (q, k, v), do, seg


def value_and_grads(fn, args, do):
    @functools.partial(jax.jit, **FAST)
    def run(q, k, v):
        out, vjp = jax.vjp(fn, q, k, v)
        return out, vjp(do)

    return run(*args)


@pytest.mark.parametrize("causal,with_seg,local_impl", [
    (True, False, "xla"),
    (True, True, "xla"),
    (False, True, "xla"),
    (True, True, "flash"),
])
def test_ring_matches_reference(seq_mesh, inputs, causal, with_seg, local_impl):
    args, do, seg = inputs
    seg = seg if with_seg else None
    ring = functools.partial(ring_attention, segment_ids=seg, causal=causal,
                             local_impl=local_impl, block_sizes=BLOCKS16, interpret=True)
    with sharding.activate(seq_mesh):
        out, grads = value_and_grads(ring, args, do)
    ref_out, ref_grads = value_and_grads(
        functools.partial(attention_reference, causal=causal, segment_ids=seg), args, do)
    assert rel_err(out, ref_out) < 1e-5
    for name, g, r in zip(("dq", "dk", "dv"), grads, ref_grads, strict=True):
        assert rel_err(g, r) < 1e-5, (name, rel_err(g, r))


def test_zigzag_layout_input(seq_mesh, inputs):
    """layout="zigzag": the caller permutes once; the result is in that order."""
    args, do, seg = inputs
    n, seq = 8, args[0].shape[1]
    c = seq // (2 * n)
    # Device r holds chunks r and 2n-1-r, in that order.
    order = np.concatenate([np.arange(i * c, (i + 1) * c)
                            for r in range(n) for i in (r, 2 * n - 1 - r)])
    assert sorted(_zig_dest(ch, n) for ch in range(0, 2 * n, 2)) == list(range(n))
    perm = [x[:, order] for x in args]
    with sharding.activate(seq_mesh):
        out = jax.jit(functools.partial(ring_attention, segment_ids=seg[:, order],
                                        local_impl="xla", layout="zigzag"), **FAST)(*perm)
    ref = attention_reference(*args, causal=True, segment_ids=seg)
    assert rel_err(out, ref[:, order]) < 1e-5


def test_ring_with_flash_lowers_for_gpu(seq_mesh):
    """Forward + backward ring with the Pallas kernel cross-lowers for CUDA."""
    q = jax.ShapeDtypeStruct((2, 2048, 8, 128), jnp.bfloat16)
    kv = jax.ShapeDtypeStruct((2, 2048, 2, 128), jnp.bfloat16)
    seg = jax.ShapeDtypeStruct((2, 2048), jnp.int32)

    def loss(q, k, v, s):
        return ring_attention(q, k, v, s, local_impl="flash").astype(jnp.float32).sum()

    with sharding.activate(seq_mesh):
        lowered = jax.jit(jax.grad(loss, argnums=(0, 1, 2))).trace(q, kv, kv, seg).lower(
            lowering_platforms=("cuda",))
    text = lowered.as_text()
    for name in ("flash_attention_fwd", "flash_attention_dq", "flash_attention_dkdv",
                 "collective_permute"):
        assert name in text


def test_ring_errors(seq_mesh, inputs):
    (q, k, v), _, seg = inputs
    with pytest.raises(ValueError, match="needs a mesh with a 'sequence' axis"):
        ring_attention(q, k, v)
    with sharding.activate(seq_mesh):
        with pytest.raises(ValueError, match=r"seq_len=120 must be a multiple of 16"):
            ring_attention(q[:, :120], k[:, :120], v[:, :120])
        with pytest.raises(ValueError, match=r"segment_ids must be \[batch, len\]"):
            ring_attention(q, k, v, seg[:, :64])
        with pytest.raises(ValueError, match="local_impl='cuda' is not one of"):
            ring_attention(q, k, v, local_impl="cuda")


def test_model_ring_matches_xla(seq_mesh, gqa_config):
    """The whole model, sequence-sharded over 8 devices with ring attention,
    against the unsharded einsum path: logits and parameter gradients."""
    seq = 32
    params = init_params(gqa_config, jax.random.key(0), seq_len=seq)
    tokens = jax.random.randint(jax.random.key(1), (2, seq), 0, gqa_config.vocab_size)
    seg = jnp.array([[1] * 10 + [2] * 22, [1] * 20 + [0] * 12], jnp.int32)
    weights = jax.random.normal(jax.random.key(2), (2, seq, gqa_config.vocab_size))

    def run(cfg):
        model = Llama(cfg)

        def loss(p):
            logits = model.apply({"params": p}, tokens, segment_ids=seg)
            return jnp.sum(logits * weights), logits

        (_, logits), grads = jax.value_and_grad(loss, has_aux=True)(params)
        return logits, grads

    ref_logits, ref_grads = jax.jit(run, static_argnums=0, **FAST)(gqa_config)
    with sharding.activate(seq_mesh):
        logits, grads = jax.jit(run, static_argnums=0, **FAST)(gqa_config.replace(attention_impl="ring"))
    assert rel_err(logits, ref_logits) < 1e-5
    flat = jax.tree_util.tree_leaves_with_path(grads)
    ref_flat = jax.tree_util.tree_leaves(ref_grads)
    for (path, g), r in zip(flat, ref_flat, strict=True):
        assert rel_err(g, r) < 1e-5, (jax.tree_util.keystr(path), rel_err(g, r))
