"""Remat policies: same gradients as no remat; save_linear saves exactly the
named linear-layer outputs (plus the block's inputs)."""

from __future__ import annotations

import contextlib
import io
import types

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.ad_checkpoint import print_saved_residuals

from llama_jax.model import init_params
from llama_jax.model.llama import Block, _block_class
from llama_jax.model.remat import LINEAR_NAMES, REMAT_POLICIES
from llama_jax.train import step as st

B, L = 2, 16


def _batch(vocab: int):
    rng = np.random.default_rng(0)
    tokens = rng.integers(0, vocab, size=(B, L + 1)).astype(np.int32)
    segment_ids = np.repeat(np.array([[1] * 10 + [2] * 6]), B, axis=0).astype(np.int32)
    positions = np.where(segment_ids == 1, np.arange(L), np.arange(L) - 10).astype(np.int32)
    return {"inputs": tokens[:, :-1], "targets": tokens[:, 1:], "positions": positions,
            "segment_ids": segment_ids, "loss_mask": np.ones((B, L), np.float32)}


@pytest.fixture(scope="module")
def grads_by_policy(gqa_config):
    """Gradients of the loss for every policy (one compile each), plus the
    unrolled stack (`scan_layers=False`) under save_linear."""
    params = jax.jit(lambda r: init_params(gqa_config, r))(jax.random.key(1))
    batch = _batch(gqa_config.vocab_size)
    out = {}
    variants = [(p, True) for p in REMAT_POLICIES] + [("save_linear", False)]
    for policy, scan in variants:
        cfg = gqa_config.replace(remat_policy=policy, scan_layers=scan)
        if not scan:  # unrolled params: layers_i instead of a stacked `layers`
            p = dict(params)
            stacked = p.pop("layers")
            for i in range(cfg.n_layers):
                p[f"layers_{i}"] = jax.tree.map(lambda x, i=i: x[i], stacked)
        else:
            p = params
        grad = jax.jit(jax.grad(lambda q, b, cfg=cfg: st.loss_fn(q, b, cfg)[0]))(p, batch)
        if not scan:  # back to the stacked layout for comparison
            grad = dict(grad)
            layers = [grad.pop(f"layers_{i}") for i in range(cfg.n_layers)]
            grad["layers"] = jax.tree.map(lambda *xs: jnp.stack(xs), *layers)
        out[(policy, scan)] = jax.tree.map(np.asarray, grad)
    return out


@pytest.mark.parametrize("variant", [(p, True) for p in REMAT_POLICIES if p != "none"]
                         + [("save_linear", False)],
                         ids=lambda v: f"{v[0]}-{'scan' if v[1] else 'unrolled'}")
def test_policy_gives_same_gradients(variant, grads_by_policy):
    want = grads_by_policy[("none", True)]
    got = grads_by_policy[variant]
    for (path, w), g in zip(jax.tree_util.tree_flatten_with_path(want)[0], jax.tree.leaves(got),
                            strict=True):
        scale = np.max(np.abs(w))
        assert scale > 0, jax.tree_util.keystr(path)
        np.testing.assert_allclose(g, w, rtol=1e-6, atol=1e-6 * scale,
                                   err_msg=f"{variant} {jax.tree_util.keystr(path)}")


def _residuals(config, policy):
    """saved_residuals of one remat'ed decoder block, as the model builds it."""
    cfg = config.replace(remat_policy=policy, scan_layers=False)
    block = _block_class(cfg, Block)(cfg)
    # Abstract inputs: residuals are found by tracing, nothing runs.
    x = jax.ShapeDtypeStruct((B, L, cfg.dim), jnp.float32)
    segment_ids = jax.ShapeDtypeStruct((B, L), jnp.int32)
    half = jax.ShapeDtypeStruct((B, L, cfg.head_dim // 2), jnp.float32)
    cos_sin = (half, half)  # RoPE's cos and sin, computed once by the model
    params = jax.eval_shape(block.init, jax.random.key(0), x, cos_sin, segment_ids)["params"]
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        print_saved_residuals(lambda p, x, cs, seg: block.apply({"params": p}, x, cs, seg),
                              params, x, cos_sin, segment_ids)
    # One line per residual: "<type>[shape] <description>".
    return [tuple(line.split(" ", 1)) for line in out.getvalue().splitlines() if line]


def _split(residuals):
    """(names of `checkpoint_name`d residuals, other descriptions)."""
    named, other = [], []
    for _, desc in residuals:
        if desc.startswith("named '"):
            named.append(desc.split("'")[1])
        else:
            other.append(desc)
    return named, other


def _only_inputs(other):
    return all(d.startswith("from the argument") for d in other)


def test_save_linear_saves_exactly_the_linear_outputs(gqa_config):
    named, other = _split(_residuals(gqa_config, "save_linear"))
    # w2's output only feeds the residual add, whose backward needs no value,
    # so autodiff never asks to keep it; every other linear output is kept.
    assert sorted(named) == sorted(n for n in LINEAR_NAMES if n != "w2")
    assert len(named) == len(set(named))
    assert _only_inputs(other), other  # params, x, RoPE's cos / sin, segment ids
    assert any("argument x" in d for d in other)


def test_other_policies_residuals(gqa_config):
    named, other = _split(_residuals(gqa_config, "full"))
    assert named == [] and _only_inputs(other), other
    named, other = _split(_residuals(gqa_config, "save_linear_and_attention"))
    assert sorted(named) == sorted([n for n in LINEAR_NAMES if n != "w2"] + ["attention"])
    assert _only_inputs(other), other
    # Offloaded residuals live in host memory; nothing named stays on device.
    res = _residuals(gqa_config, "offload_linear")
    named, other = _split(res)
    host = [t.replace("<host>", "") for t, _ in res if "<host>" in t]
    assert named == [] and len(host) == len(LINEAR_NAMES) - 1
    linear = sorted(t for t, d in _residuals(gqa_config, "save_linear") if d.startswith("named"))
    assert sorted(host) == linear


def test_offload_needs_pinned_host_memory(gqa_config):
    cfg = gqa_config.replace(remat_policy="offload_linear")
    mesh = jax.sharding.Mesh(np.array(jax.devices()[:1]), ("data",))
    st.check_remat_backend(cfg, mesh)  # the CPU backend has pinned_host memory
    device = types.SimpleNamespace(
        platform="fake", addressable_memories=lambda: [types.SimpleNamespace(kind="device")],
        __str__=lambda self: "fake:0")
    fake_mesh = types.SimpleNamespace(local_devices=[device])
    with pytest.raises(ValueError, match=(r"remat_policy='offload_linear' offloads .* only has "
                                          r"memory kinds \['device'\]; use remat_policy='save_linear'")):
        st.check_remat_backend(cfg, fake_mesh)
    st.check_remat_backend(gqa_config.replace(remat_policy="save_linear"), fake_mesh)
