"""Tied input / output embeddings (`LlamaConfig.tie_embeddings`): no `output`
matrix, logits = h @ embedding^T; against transformers' tied `LlamaForCausalLM`
(GQA), through HF and Meta files, sharded on 8 fake devices."""

import json

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from convert_helpers import hf_logits, make_hf_model, rel_err, trees_equal

from llama_jax import sharding
from llama_jax.convert import from_pretrained, save_pretrained
from llama_jax.model import Llama, abstract_params, count_params, init_params

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")
safetensors = pytest.importorskip("safetensors")

TOKENS = np.random.RandomState(2).randint(0, 128, size=(2, 12))


@pytest.fixture(scope="module")
def tied(tmp_path_factory):
    """(HF model, its folder, our (config, params) read from it)."""
    model = make_hf_model("gqa", tie=True, seed=4)
    path = tmp_path_factory.mktemp("tied")
    model.save_pretrained(path)
    return model, path, from_pretrained(path)


def logits(config, params, tokens=TOKENS):
    return np.asarray(jax.jit(lambda p, t: Llama(config).apply({"params": p}, t))(
        params, jnp.asarray(tokens)))


def test_tree_and_logits_match_hf(tied):
    model, _, (config, params) = tied
    assert config.tie_embeddings and config.num_kv_heads < config.n_heads
    assert sorted(params) == ["layers", "norm", "tok_embeddings"]
    untied = config.replace(tie_embeddings=False)
    assert count_params(untied) - count_params(config) == config.vocab_size * config.dim
    assert rel_err(logits(config, params), hf_logits(model, TOKENS)) <= 1e-4
    # The head is the embedding itself: h @ E^T, by hand.
    h = Llama(config).apply({"params": params}, jnp.asarray(TOKENS),
                            capture_intermediates=lambda m, _: m.name == "norm")
    hidden = h[1]["intermediates"]["norm"]["__call__"][0]  # [batch, len, embed]
    manual = np.einsum("ble,ve->blv", np.asarray(hidden),
                       np.asarray(params["tok_embeddings"]["embedding"]))
    np.testing.assert_allclose(logits(config, params), manual, rtol=1e-5, atol=1e-5)


def test_hf_export_has_no_lm_head(tied, tmp_path):
    model, _, (config, params) = tied
    save_pretrained(config, params, tmp_path / "out", format="hf")
    hf = json.loads((tmp_path / "out" / "config.json").read_text())
    assert hf["tie_word_embeddings"] is True
    with safetensors.safe_open(tmp_path / "out" / "model.safetensors", "np") as f:
        assert "lm_head.weight" not in f.keys()
    reloaded = transformers.LlamaForCausalLM.from_pretrained(tmp_path / "out")
    np.testing.assert_array_equal(hf_logits(reloaded, TOKENS), hf_logits(model, TOKENS))
    config2, params2 = from_pretrained(tmp_path / "out")
    assert config2 == config and trees_equal(params2, params)


def test_hf_file_with_lm_head_copy_reads_tied(tied, tmp_path):
    """Some tied checkpoints also store lm_head: it is not read (the head is the embedding)."""
    model, _, (config, params) = tied
    untied = config.replace(tie_embeddings=False)
    both = dict(params, output={"kernel": params["tok_embeddings"]["embedding"].T.copy()})
    save_pretrained(untied, both, tmp_path / "both", format="hf")
    cfg = json.loads((tmp_path / "both" / "config.json").read_text())
    (tmp_path / "both" / "config.json").write_text(json.dumps({**cfg,
                                                               "tie_word_embeddings": True}))
    config2, params2 = from_pretrained(tmp_path / "both")
    assert config2 == config and trees_equal(params2, params)


def test_meta_export_writes_an_output_copy(tied, tmp_path):
    """Meta's layout has no tie flag: the output matrix is written as a copy of the
    embedding (Meta's code loads one); a Meta checkpoint without it reads as tied."""
    model, _, (config, params) = tied
    save_pretrained(config, params, tmp_path / "meta", format="meta", shards=2)
    back, back_params = from_pretrained(tmp_path / "meta")
    assert not back.tie_embeddings
    np.testing.assert_array_equal(back_params["output"]["kernel"],
                                  params["tok_embeddings"]["embedding"].T)
    assert rel_err(logits(back, back_params), hf_logits(model, TOKENS)) <= 1e-4
    save_pretrained(config, params, tmp_path / "single", format="meta")
    state = torch.load(tmp_path / "single" / "consolidated.00.pth", weights_only=True)
    del state["output.weight"]
    torch.save(state, tmp_path / "single" / "consolidated.00.pth")
    tied_back, tied_params = from_pretrained(tmp_path / "single")
    assert tied_back.tie_embeddings and trees_equal(tied_params, params)


def test_sharded_tied_model_runs_on_the_mesh(gqa_config):
    """Strict logical shardings exist for the tied tree and the sharded forward
    equals the single-device one."""
    cfg = gqa_config.replace(tie_embeddings=True)
    params = init_params(cfg, jax.random.key(0))
    mesh = sharding.make_mesh((2, 2, 2, 1))
    shardings = sharding.logical_shardings(abstract_params(cfg), mesh, sharding.DEFAULT_RULES)
    assert "output" not in shardings
    placed = jax.device_put(params, nn.meta.unbox(shardings))
    tokens = jax.random.randint(jax.random.key(1), (4, 16), 0, cfg.vocab_size)
    apply = jax.jit(lambda p, t: Llama(cfg).apply({"params": p}, t))
    ref = apply(params, tokens)
    with sharding.activate(mesh):
        out = apply(placed, tokens)
    assert rel_err(np.asarray(out), np.asarray(ref)) < 1e-5
