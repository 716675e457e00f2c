"""Run options are chosen per run, not read from checkpoints; attention_impl='cudnn'.

A model saved with attention_impl='pallas' (orbax format, a training workdir,
and an old-style workdir whose meta still carries the run options) evaluates
(Scorer) and generates (Generator) on CPU through the XLA path: the Pallas
entry point is replaced by one that raises. cuDNN routing is checked with the
backend reported as GPU and the cuDNN call replaced by the reference that
records each time it runs.
"""

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from llama_jax import from_pretrained, save_pretrained
from llama_jax.convert.layout import checkpoint_dir
from llama_jax.convert.orbax_format import CONFIG_FILE
from llama_jax.errors import ConfigError
from llama_jax.eval.scoring import Scorer
from llama_jax.infer.engine import Generator
from llama_jax.kernels.reference import attention_reference
from llama_jax.model import attention as attention_lib
from llama_jax.model.config import RUN_OPTIONS
from llama_jax.model.llama import Llama, init_cache, init_params
from llama_jax.train.checkpoint import Checkpointer, check_model_matches

PALLAS_RUN = dict(attention_impl="pallas", remat_policy="full", dtype="float32")


@pytest.fixture()
def no_pallas(monkeypatch):
    """Any call of the flash kernel from the model fails the test."""
    def boom(*a, **k):
        raise AssertionError("the Pallas kernel ran; expected the XLA path")
    monkeypatch.setattr(attention_lib, "flash_attention", boom)


def _check_runs_on_xla(path, config, params, expect_scan=True):
    got_config, got_params = from_pretrained(path)
    assert got_config.attention_impl == "auto" and got_config.remat_policy == "none"
    assert got_config.scan_layers == expect_scan
    assert attention_lib.resolve_impl(got_config.attention_impl) == "xla"
    assert got_config.to_dict() == config.to_dict()
    # Scorer: the log-likelihood of a continuation equals the model's own.
    scorer = Scorer(got_config, got_params, batch_size=8, max_len=16)
    ctx, cont = [3, 17, 42, 5], [9, 11, 2]
    (res,) = scorer.loglikelihood([(ctx, cont)])
    tokens = jnp.array([ctx + cont])
    logits = Llama(config.replace(attention_impl="xla")).apply({"params": params}, tokens)
    logp = jax.nn.log_softmax(logits[0, :-1], axis=-1)  # [len - 1, vocab]
    want = sum(float(logp[len(ctx) - 1 + i, t]) for i, t in enumerate(cont))
    assert abs(res.logprob - want) < 1e-4, (res.logprob, want)
    # Generator: greedy continuation equals argmax decoding of the full model.
    gen = Generator(got_config, got_params, batch_size=8)
    (out,) = gen.generate_tokens([ctx], max_new_tokens=3)
    seq = list(ctx)
    for _ in range(3):
        nxt = Llama(config.replace(attention_impl="xla")).apply(
            {"params": params}, jnp.array([seq]))[0, -1]
        seq.append(int(jnp.argmax(nxt)))
    assert out[0] == seq[len(ctx):]


def test_pallas_checkpoints_evaluate_and_generate_through_xla(tmp_path, tiny_config, no_pallas):
    config = tiny_config.replace(**PALLAS_RUN)
    params = init_params(tiny_config, jax.random.key(0))
    # 1. orbax model directory: llama_config.json holds the shape only.
    save_pretrained(config, params, tmp_path / "orbax")
    saved = json.loads((tmp_path / "orbax" / CONFIG_FILE).read_text())
    assert set(saved).isdisjoint(RUN_OPTIONS) and saved["dim"] == config.dim
    _check_runs_on_xla(tmp_path / "orbax", config, params)
    # 2. A training workdir as the trainer writes it (shape + layout) and 3. one
    # written before the split, whose model_config carries attention_impl='pallas'.
    old_meta = {**config.to_dict(), **config.run_options()}
    for name, meta in (("workdir", {"model_config": config.to_dict(), "scan_layers": True}),
                       ("old_workdir", {"model_config": old_meta})):
        ckpt = Checkpointer(checkpoint_dir(tmp_path / name), async_save=False, with_data=False)
        ckpt.save(3, {"params": params}, rng=jax.random.key(0), meta=meta, force=True)
        ckpt.wait()
        ckpt.close()
        _check_runs_on_xla(tmp_path / name, config, params)


def test_config_overrides_choose_the_run_options(tmp_path, tiny_config):
    params = init_params(tiny_config, jax.random.key(0))
    save_pretrained(tiny_config.replace(attention_impl="pallas"), params, tmp_path)
    cfg, _ = from_pretrained(tmp_path, config_overrides={"attention_impl": "xla",
                                                         "scan_layers": False})
    assert cfg.attention_impl == "xla" and not cfg.scan_layers


# ----------------------------------------------------------------------------
# attention_impl='cudnn'


def test_cudnn_off_gpu_names_the_alternatives(tiny_config):
    assert jax.default_backend() != "gpu"
    with pytest.raises(ValueError, match=r"'cudnn' needs a GPU .*use 'auto' or 'xla'"):
        attention_lib.resolve_impl("cudnn")
    params = init_params(tiny_config, jax.random.key(0))
    with pytest.raises(ValueError, match="'cudnn' needs a GPU"):
        Llama(tiny_config.replace(attention_impl="cudnn")).apply(
            {"params": params}, jnp.zeros((1, 8), jnp.int32))


@pytest.fixture()
def fake_cudnn(monkeypatch):
    """Report a GPU backend and replace the cuDNN call by the (unmasked causal)
    reference, recording at run time every call that actually executes."""
    calls = []
    monkeypatch.setattr(jax, "default_backend", lambda: "gpu")

    def fake(q, k, v, *, causal):
        jax.debug.callback(lambda: calls.append(q.shape))
        return attention_reference(q, k, v, causal=causal)

    monkeypatch.setattr(attention_lib, "cudnn_attention", fake)
    return calls


def _qkv(seq=16):
    ks = jax.random.split(jax.random.key(3), 3)
    return (jax.random.normal(ks[0], (2, seq, 4, 16)), jax.random.normal(ks[1], (2, seq, 2, 16)),
            jax.random.normal(ks[2], (2, seq, 2, 16)))


def test_cudnn_runs_where_no_segment_mask_is_needed(fake_cudnn):
    q, k, v = _qkv()
    run = jax.jit(lambda q, k, v, s: attention_lib.dot_product_attention(
        q, k, v, s, s, impl="cudnn"))
    ref = attention_reference
    # No segment ids: cuDNN, no run-time check.
    out = attention_lib.dot_product_attention(q, k, v, None, None, impl="cudnn")
    jax.effects_barrier()
    assert len(fake_cudnn) == 1
    np.testing.assert_allclose(out, ref(q, k, v), atol=1e-6)
    # One segment per row (any id): cuDNN at run time.
    uniform = jnp.array([[1] * 16, [4] * 16], jnp.int32)
    out = run(q, k, v, uniform)
    jax.effects_barrier()
    assert len(fake_cudnn) == 2
    np.testing.assert_allclose(out, ref(q, k, v, segment_ids=uniform), atol=1e-6)
    # Packed documents: the same compiled function falls back to the reference.
    packed = jnp.array([[1] * 6 + [2] * 10, [1] * 16], jnp.int32)
    out = run(q, k, v, packed)
    jax.effects_barrier()
    assert len(fake_cudnn) == 2
    np.testing.assert_allclose(out, ref(q, k, v, segment_ids=packed), atol=1e-6)


def test_cudnn_prefill_into_an_empty_cache(fake_cudnn, gqa_config):
    """Prefill (cache index 0, no padding) runs cuDNN; decode steps do not."""
    params = init_params(gqa_config, jax.random.key(0))
    tokens = jax.random.randint(jax.random.key(1), (1, 6), 0, gqa_config.vocab_size)
    cfg = gqa_config.replace(attention_impl="cudnn")
    decoder = Llama(cfg, decode=True)

    @jax.jit
    def prefill_then_step(params, cache):
        logits, state = decoder.apply({"params": params, "cache": cache}, tokens[:, :5],
                                      positions=jnp.arange(5)[None], mutable=["cache"])
        step, _ = decoder.apply({"params": params, "cache": state["cache"]}, tokens[:, 5:],
                                positions=jnp.array([[5]]), mutable=["cache"])
        return logits, step

    logits, step = prefill_then_step(params, init_cache(cfg, 1, 8))
    jax.effects_barrier()
    assert fake_cudnn == [(1, 5, 8, 8)] * gqa_config.n_layers  # prefill only, per layer
    full = Llama(gqa_config.replace(attention_impl="xla")).apply({"params": params}, tokens)
    np.testing.assert_allclose(logits, full[:, :5], atol=1e-5)
    np.testing.assert_allclose(step[:, 0], full[:, 5], atol=1e-5)


def test_cudnn_model_lowers_for_cuda(monkeypatch, tiny_config):
    """Cross-lower the model's cuDNN path for CUDA, where this jax can."""
    monkeypatch.setattr(jax, "default_backend", lambda: "gpu")
    cfg = tiny_config.replace(attention_impl="cudnn", dtype="bfloat16")
    params = jax.eval_shape(lambda: init_params(tiny_config, jax.random.key(0)))
    tokens = jax.ShapeDtypeStruct((2, 64), jnp.int32)
    fn = jax.jit(lambda p, t: Llama(cfg).apply({"params": p}, t))
    try:
        lowered = fn.trace(params, tokens).lower(lowering_platforms=("cuda",))
    except RuntimeError as e:
        if "cuDNN is not detected" in str(e):
            pytest.skip("jax checks the installed cuDNN while lowering "
                        "jax.nn.dot_product_attention(implementation='cudnn'); none on this machine")
        raise
    assert "cudnn" in lowered.as_text().lower()


def test_resume_compares_shape_and_layout_not_run_options(tiny_config):
    saved = tiny_config.to_dict()
    check_model_matches(saved, tiny_config.replace(**PALLAS_RUN), "/w", saved_scan_layers=True)
    with pytest.raises(ConfigError, match=r"scan_layers: checkpoint has True, config asks for False"):
        check_model_matches(saved, tiny_config.replace(scan_layers=False), "/w",
                            saved_scan_layers=True)
    with pytest.raises(ConfigError, match=r"dim: checkpoint has 64, config asks for 128"):
        check_model_matches(saved, tiny_config.replace(dim=128), "/w")
    # A meta from before the split keeps the layout inside model_config.
    with pytest.raises(ConfigError, match="scan_layers"):
        check_model_matches({**saved, "scan_layers": False}, tiny_config, "/w")
