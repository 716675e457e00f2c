"""The model against the paper and independent references.

Table 2 shapes and exact parameter counts, Meta's FFN-width rule, config
validation, scan == unrolled, bf16 compute, KV-cache decoding == full forward,
and RMSNorm / RoPE against plain-numpy references (RoPE as Meta writes it:
complex multiplication of interleaved pairs). Logit parity with Hugging Face
transformers is in test_convert.py.
"""

import dataclasses
import functools
import math

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from llama_jax import PRESETS, Llama, LlamaConfig, count_params, get_preset, init_cache
from llama_jax.convert import unstack_layers
from llama_jax.convert.common import param_shapes, unflatten
from llama_jax.model import abstract_params, ffn_hidden_dim
from llama_jax.model.config import RUN_OPTIONS
from llama_jax.model.layers import RMSNorm, apply_rope, rope_frequencies

PAPER = {
    # name: (dim, heads, layers, ffn, exact parameter count)
    "llama_7b": (4096, 32, 32, 11008, 6_738_415_616),
    "llama_13b": (5120, 40, 40, 13824, 13_015_864_320),
    "llama_33b": (6656, 52, 60, 17920, 32_528_943_616),
    "llama_65b": (8192, 64, 80, 22016, 65_285_660_672),
}


@pytest.mark.parametrize("name", sorted(PAPER))
def test_paper_presets_shapes_and_param_counts(name):
    dim, heads, layers, ffn, count = PAPER[name]
    cfg = PRESETS[name]
    assert (cfg.dim, cfg.n_heads, cfg.n_layers, cfg.ffn_dim) == (dim, heads, layers, ffn)
    assert (cfg.vocab_size, cfg.max_seq_len, cfg.norm_eps, cfg.num_kv_heads) == (32000, 2048, 1e-6, heads)
    # By hand: embeddings + output, then per layer 4 d^2 attention, 3 d*ffn, 2 norms; final norm.
    by_hand = 2 * 32000 * dim + layers * (4 * dim * dim + 3 * dim * ffn + 2 * dim) + dim
    assert by_hand == count
    assert count_params(cfg) == count


def test_ffn_rule():
    def rule(dim, multiple_of=256, multiplier=None):  # Meta's model.py, written out.
        hidden = int(2 * (4 * dim) / 3)
        if multiplier is not None:
            hidden = int(multiplier * hidden)
        return multiple_of * math.ceil(hidden / multiple_of)

    for dim in (4096, 5120, 6656, 8192, 64, 256, 1000, 3200):
        assert ffn_hidden_dim(dim) == rule(dim)
    assert [PRESETS[n].ffn_dim for n in ("llama_7b", "llama_13b", "llama_33b", "llama_65b")] == [
        11008, 13824, 17920, 22016]
    assert ffn_hidden_dim(8192, 4096, 1.3) == 28672  # Llama 2 70B's intermediate_size.
    assert ffn_hidden_dim(4096, 1024, 1.3) == 14336  # Llama 3 8B's.
    assert PRESETS["tiny"].ffn_dim == rule(256, 32)
    assert LlamaConfig(dim=64, n_heads=4, n_layers=1, hidden_dim=100).ffn_dim == 100


@pytest.mark.parametrize("kwargs, match", [
    (dict(dim=100, n_heads=8), "not divisible by n_heads"),
    (dict(dim=24, n_heads=8), "must be even"),
    (dict(dim=64, n_heads=8, n_kv_heads=3), "multiple of n_kv_heads"),
    (dict(n_layers=0), "n_layers=0 must be a positive integer"),
    (dict(vocab_size=-1), "vocab_size=-1"),
    (dict(hidden_dim=0), "hidden_dim=0 must be positive"),
    (dict(norm_eps=0.0), "norm_eps and rope_theta must be positive"),
    (dict(dtype="int8"), "dtype='int8' is not one of"),
    (dict(param_dtype="float64"), "param_dtype='float64'"),
    (dict(attention_impl="magic"), "attention_impl='magic'"),
    (dict(remat_policy="sometimes"), "remat_policy='sometimes'"),
])
def test_config_validation(kwargs, match):
    with pytest.raises(ValueError, match=match):
        LlamaConfig(**kwargs)


def test_config_dict_roundtrip_and_presets():
    cfg = PRESETS["tiny"].replace(n_kv_heads=2, param_dtype="bfloat16")
    assert LlamaConfig.from_dict(cfg.to_dict()) == cfg
    with pytest.raises(ValueError, match=r"unknown keys \['n_expert'\]"):
        LlamaConfig.from_dict({**cfg.to_dict(), "n_expert": 4})
    with pytest.raises(ValueError, match="unknown preset 'llama_1b'"):
        get_preset("llama_1b")
    assert get_preset("llama_7b", max_seq_len=4096).max_seq_len == 4096
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.dim = 3


def test_to_dict_is_the_shape_and_run_options_are_chosen_per_run():
    run = dict(dtype="bfloat16", attention_impl="pallas", remat_policy="full", scan_layers=False,
               matmul="xla")
    cfg = PRESETS["tiny"].replace(n_kv_heads=2, param_dtype="bfloat16", **run)
    d = cfg.to_dict()
    assert set(d).isdisjoint(RUN_OPTIONS) and d["param_dtype"] == "bfloat16"
    assert d == cfg.shape_dict() and d["n_kv_heads"] == 2
    assert cfg.run_options() == run
    # Back from disk: the shape, with the default run options.
    back = LlamaConfig.from_dict(d)
    assert back.attention_impl == "auto" and back.dtype == "float32"
    assert back.remat_policy == "none" and back.scan_layers
    assert back.with_run_options(**run) == cfg
    assert back.with_run_options(attention_impl=None) is back  # None: keep
    # A file written before the split (run options saved) loads with defaults.
    assert LlamaConfig.from_dict({**d, **run}) == back
    with pytest.raises(ValueError, match=r"\['dim'\] are not run options"):
        back.with_run_options(dim=8)


def test_every_param_has_logical_names(gqa_config):
    known = {"vocab", "embed", "heads", "kv_heads", "kv", "mlp", "norm", "layers"}
    boxed = jax.tree_util.tree_leaves_with_path(
        abstract_params(gqa_config), is_leaf=lambda x: isinstance(x, nn.Partitioned))
    assert len(boxed) == 12
    for path, leaf in boxed:
        assert isinstance(leaf, nn.Partitioned), path
        assert len(leaf.names) == leaf.value.ndim and set(leaf.names) <= known, path
        assert (leaf.names[0] == "layers") == (path[0].key == "layers"), path


# ----------------------------------------------------------------------------- forward passes

@pytest.fixture(scope="module")
def model_setup(gqa_config):
    """A GQA config with random params (larger scale so layout errors show) and tokens."""
    cfg = gqa_config.replace(vocab_size=128)
    rng = np.random.RandomState(0)
    # Drawn from the converter's shape table (test_convert checks it equals the
    # model's tree); cheaper on 2 cores than a traced Flax init.
    params = unflatten({
        path: (1 + 0.2 * rng.randn(*shape) if path[-1] == "scale" else 0.2 * rng.randn(*shape)
               ).astype(np.float32)
        for path, shape in param_shapes(cfg).items()})
    tokens = jax.random.randint(jax.random.key(1), (2, 12), 0, cfg.vocab_size)
    full = jax.jit(lambda p, t: Llama(cfg).apply({"params": p}, t))(params, tokens)
    return cfg, params, tokens, np.asarray(full)


def test_scan_equals_unrolled(model_setup):
    cfg, params, tokens, full = model_setup
    flat_cfg = cfg.replace(scan_layers=False)
    unrolled = jax.jit(Llama(flat_cfg).apply)({"params": unstack_layers(params)}, tokens)
    assert full.shape == (2, 12, cfg.vocab_size) and full.dtype == np.float32
    np.testing.assert_allclose(np.asarray(unrolled), full, rtol=1e-5, atol=1e-5)
    # Same parameter count either way.
    assert count_params(flat_cfg) == count_params(cfg)


def test_bf16_compute_close_to_f32(model_setup):
    cfg, params, tokens, full = model_setup
    out = jax.jit(Llama(cfg.replace(dtype="bfloat16")).apply)({"params": params}, tokens)
    assert out.dtype == jnp.float32 and bool(jnp.all(jnp.isfinite(out)))
    err = float(jnp.max(jnp.abs(out - full)) / np.abs(full).max())
    assert 0 < err < 5e-2  # Really computed in bf16, and close.


def test_logit_index_is_the_full_logits_gathered(model_setup):
    cfg, params, tokens, full = model_setup
    rng = np.random.default_rng(0)
    index = rng.integers(0, tokens.shape[1], (tokens.shape[0], 3)).astype(np.int32)
    got = Llama(cfg).apply({"params": params}, tokens, logit_index=jnp.asarray(index))
    want = np.take_along_axis(np.asarray(full), index[..., None], axis=1)
    assert got.shape == (tokens.shape[0], 3, cfg.vocab_size)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5 * np.abs(want).max())


@functools.cache
def _decode_step(cfg):
    model = Llama(cfg, decode=True)
    return jax.jit(lambda p, c, t, pos: model.apply({"params": p, "cache": c}, t,
                                                    positions=pos, mutable=["cache"]))


def _decode(cfg, params, tokens, chunks):
    """Feed `tokens` through the KV cache in pieces of the given lengths; all logits."""
    step = _decode_step(cfg)
    cache = init_cache(cfg, tokens.shape[0], max_len=16)
    outs, start = [], 0
    for n in chunks:
        pos = jnp.broadcast_to(jnp.arange(start, start + n), (tokens.shape[0], n))
        logits, variables = step(params, cache, tokens[:, start:start + n], pos)
        cache = variables["cache"]
        outs.append(logits)
        start += n
    return np.concatenate(outs, axis=1)


def test_kv_cache_step_by_step_equals_full_forward(model_setup):
    cfg, params, tokens, full = model_setup
    decoded = _decode(cfg, params, tokens, [1] * tokens.shape[1])
    np.testing.assert_allclose(decoded, full, rtol=1e-4, atol=1e-4 * np.abs(full).max())


def test_kv_cache_chunked_prefill_equals_full_forward(model_setup):
    cfg, params, tokens, full = model_setup
    decoded = _decode(cfg, params, tokens, [5, 1, 1, 5])
    np.testing.assert_allclose(decoded, full, rtol=1e-4, atol=1e-4 * np.abs(full).max())


# ----------------------------------------------------------------------------- layers vs numpy

def test_rmsnorm_matches_numpy():
    rng = np.random.RandomState(0)
    x = rng.randn(2, 3, 16).astype(np.float32) * 3
    scale = rng.randn(16).astype(np.float32)
    out = RMSNorm(eps=1e-5).apply({"params": {"scale": scale}}, x)
    ref = x / np.sqrt(np.mean(x.astype(np.float64) ** 2, axis=-1, keepdims=True) + 1e-5) * scale
    np.testing.assert_allclose(np.asarray(out), ref, rtol=1e-5, atol=1e-6)


def test_rope_matches_meta_complex_formulation():
    rng = np.random.RandomState(0)
    b, t, h, d, theta = 2, 7, 3, 16, 500000.0
    x = rng.randn(b, t, h, d).astype(np.float32)
    positions = np.stack([np.arange(t), np.arange(t) + 100])  # [batch, len]
    # Meta: freqs = 1 / theta^(arange(0, d, 2)[: d // 2] / d); x as complex pairs * e^{i pos f}.
    freqs = 1.0 / theta ** (np.arange(0, d, 2)[: d // 2].astype(np.float64) / d)
    np.testing.assert_allclose(np.asarray(rope_frequencies(d, theta)), freqs, rtol=1e-6)
    xc = x.astype(np.float64).reshape(b, t, h, d // 2, 2)
    xc = xc[..., 0] + 1j * xc[..., 1]  # [batch, len, heads, d/2]
    rot = np.exp(1j * positions[:, :, None, None] * freqs)  # [batch, len, 1, d/2]
    out_c = xc * rot
    ref = np.stack([out_c.real, out_c.imag], axis=-1).reshape(b, t, h, d)
    out = apply_rope(jnp.asarray(x), jnp.asarray(positions), theta)
    np.testing.assert_allclose(np.asarray(out), ref, rtol=1e-4, atol=1e-4)
    # Rotations keep norms and position 0 is the identity.
    np.testing.assert_allclose(np.asarray(out)[0, 0], x[0, 0], rtol=1e-6)
