"""RoPE scaling against transformers' `LlamaForCausalLM`: linear, dynamic NTK,
YaRN and llama3 (and a tied-embedding llama3), on random GQA models saved by
transformers and read with `from_pretrained`: full-sequence logits past the
original context, KV-cache greedy decoding with our `Generator` against HF
`generate` (to 64 tokens from an original context of 32), export back to HF,
every attention path (xla, pallas interpret, ring), and Meta's
``use_scaled_rope``."""

import functools
import json
import pathlib
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from convert_helpers import edit_json, rel_err, trees_equal

from llama_jax import sharding
from llama_jax.convert import ConversionError, from_pretrained, save_pretrained
from llama_jax.errors import ConfigError
from llama_jax.infer.engine import Generator
from llama_jax.model import Llama, LlamaConfig, init_params
from llama_jax.model.rope import inverse_frequencies
from llama_jax.train import config as train_config
from llama_jax.train import load_config_file

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

ORIGINAL = 32  # the "pre-extension" context; every test runs past it
LONG = np.random.RandomState(0).randint(0, 128, size=(2, 48))  # 48 > ORIGINAL
PROMPT = [5, 17, 99, 3, 64, 21, 7, 120]
NEW = 56  # 8 + 56 = 64 = twice the original context
FAST = dict(compiler_options={"xla_backend_optimization_level": 0})

# kind -> (HF rope_parameters without rope_theta, max_position_embeddings, tied)
KINDS = {
    "linear": ({"rope_type": "linear", "factor": 2.0}, 128, False),
    # HF's dynamic NTK scales from max_position_embeddings itself.
    "dynamic": ({"rope_type": "dynamic", "factor": 2.0}, ORIGINAL, False),
    "yarn": ({"rope_type": "yarn", "factor": 4.0, "beta_fast": 16.0, "beta_slow": 1.0,
              "original_max_position_embeddings": ORIGINAL}, 128, False),
    "llama3": ({"rope_type": "llama3", "factor": 4.0, "low_freq_factor": 1.0,
                "high_freq_factor": 4.0, "original_max_position_embeddings": ORIGINAL},
               128, False),
    "llama3_tied": ({"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
                     "high_freq_factor": 2.0, "original_max_position_embeddings": ORIGINAL},
                    128, True),
}


def hf_config(kind, **changes):
    rope, max_pos, tied = KINDS[kind]
    kw = dict(hidden_size=128, num_hidden_layers=2, num_attention_heads=8,
              num_key_value_heads=2, intermediate_size=96, vocab_size=128,
              max_position_embeddings=max_pos, rms_norm_eps=1e-5,
              rope_parameters={**rope, "rope_theta": 10000.0}, tie_word_embeddings=tied,
              initializer_range=0.2, bos_token_id=None, eos_token_id=None, pad_token_id=None)
    return transformers.LlamaConfig(**{**kw, **changes})


def make_model(cfg, seed=0):
    torch.manual_seed(seed)
    model = transformers.LlamaForCausalLM(cfg).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" in name:
                p.copy_(1.0 + 0.3 * torch.randn_like(p))
    return model


def hf_logits(model, tokens):
    with torch.no_grad():
        return model(torch.tensor(tokens)).logits.float().numpy()


@functools.cache
def _apply(config):
    return jax.jit(lambda p, t: Llama(config).apply({"params": p}, t), **FAST)


def our_logits(config, params, tokens):
    return np.asarray(_apply(config)(params, jnp.asarray(tokens)))


@pytest.fixture(scope="module", params=list(KINDS))
def ckpt(request, tmp_path_factory):
    """(kind, HF folder saved by transformers, our (config, params) read from it)."""
    path = tmp_path_factory.mktemp(request.param)
    make_model(hf_config(request.param)).save_pretrained(path)
    return request.param, path, from_pretrained(path)


@pytest.fixture(scope="module")
def linear_dir(tmp_path_factory):
    path = tmp_path_factory.mktemp("linear_hf")
    make_model(hf_config("linear")).save_pretrained(path)
    return path


def fresh_hf(path):
    """A newly loaded HF model (dynamic NTK keeps state across calls)."""
    return transformers.LlamaForCausalLM.from_pretrained(path).eval()


def test_config_read(ckpt):
    kind, _, (config, params) = ckpt
    rope, _, tied = KINDS[kind]
    assert config.rope_scaling_type == rope["rope_type"]
    assert config.rope_scaling_factor == rope["factor"]
    if kind != "linear":  # linear interpolation needs no original length
        assert config.rope_original_max_seq_len == ORIGINAL
    assert config.tie_embeddings == tied and ("output" in params) == (not tied)
    if kind == "dynamic":
        assert config.max_seq_len == 2 * ORIGINAL  # factor x the original length


def test_logits_match_hf_past_original_context(ckpt):
    kind, path, (config, params) = ckpt
    ref = hf_logits(fresh_hf(path), LONG)
    assert rel_err(our_logits(config, params, LONG), ref) <= 1e-4
    # The scaling matters: the unscaled model differs.
    plain = config.replace(rope_scaling_type=None, rope_scaling_factor=1.0)
    assert rel_err(our_logits(plain, params, LONG), ref) > 1e-2


def test_kv_cache_greedy_matches_hf_generate(ckpt):
    kind, path, (config, params) = ckpt
    with torch.no_grad():
        out = fresh_hf(path).generate(torch.tensor([PROMPT]), max_new_tokens=NEW,
                                      min_new_tokens=NEW, do_sample=False)
    want = out[0, len(PROMPT):].tolist()
    gen = Generator(config, params, batch_size=1, prompt_buckets=(8,), chunk_size=NEW)
    got = gen.generate_tokens([PROMPT], max_new_tokens=NEW, progress=False)[0][0]
    assert len(want) == NEW and got == want
    if kind == "dynamic":
        # Unscaled RoPE agrees while every position is inside the original
        # context and departs once decoding passes it: the update is per step.
        plain = config.replace(rope_scaling_type=None, rope_scaling_factor=1.0)
        got = Generator(plain, params, batch_size=1, prompt_buckets=(8,), chunk_size=NEW
                        ).generate_tokens([PROMPT], max_new_tokens=NEW, progress=False)[0][0]
        inside = ORIGINAL - len(PROMPT) + 1  # tokens predicted from positions < ORIGINAL
        assert got[:inside] == want[:inside] and got != want


def test_export_to_hf_keeps_scaling(ckpt, tmp_path):
    kind, path, (config, params) = ckpt
    save_pretrained(config, params, tmp_path / "out", format="hf")
    original, exported = fresh_hf(path), fresh_hf(tmp_path / "out")
    for key in ("rope_type", "factor", "original_max_position_embeddings", "low_freq_factor",
                "high_freq_factor", "beta_fast", "beta_slow", "rope_theta"):
        assert (exported.config.rope_parameters.get(key)
                == original.config.rope_parameters.get(key)), key
    assert exported.config.max_position_embeddings == original.config.max_position_embeddings
    assert exported.config.tie_word_embeddings == original.config.tie_word_embeddings
    np.testing.assert_array_equal(hf_logits(exported, LONG), hf_logits(original, LONG))
    config2, params2 = from_pretrained(tmp_path / "out")
    assert config2 == config and trees_equal(params2, params)
    # Shape fields: this project's own format keeps them too.
    save_pretrained(config, params, tmp_path / "orbax", format="orbax")
    assert from_pretrained(tmp_path / "orbax")[0] == config


def test_batched_dynamic_decode_matches_hf(ckpt):
    """HF's dynamic NTK takes the longest row's length (max over the batch):
    two left-padded prompts of different lengths, decoded together."""
    kind, path, (config, params) = ckpt
    if kind != "dynamic":
        pytest.skip("dynamic NTK only")
    prompts = [PROMPT, PROMPT[:5]]
    ids = torch.tensor([PROMPT, [0, 0, 0] + PROMPT[:5]])
    mask = torch.tensor([[1] * 8, [0, 0, 0] + [1] * 5])
    with torch.no_grad():
        out = fresh_hf(path).generate(ids, attention_mask=mask, max_new_tokens=NEW,
                                      min_new_tokens=NEW, do_sample=False, pad_token_id=0)
    want = [row[len(PROMPT):].tolist() for row in out]
    gen = Generator(config, params, batch_size=2, prompt_buckets=(8,), chunk_size=NEW)
    got = [r[0] for r in gen.generate_tokens(prompts, max_new_tokens=NEW, progress=False)]
    assert got == want


def test_older_rope_scaling_key_and_train_config(linear_dir, tmp_path):
    """transformers 4.x's `rope_scaling` + top-level `rope_theta` reads the same;
    a bad type in a train config is a ConfigError naming the field."""
    want = from_pretrained(linear_dir)[0]
    shutil.copytree(linear_dir, tmp_path / "old")
    hf = json.loads((tmp_path / "old" / "config.json").read_text())
    hf.pop("rope_parameters")
    hf.update(rope_scaling={"type": "linear", "factor": 2.0}, rope_theta=10000.0)
    (tmp_path / "old" / "config.json").write_text(json.dumps(hf))
    assert from_pretrained(tmp_path / "old")[0] == want
    cfg = train_config.base_config()
    cfg.model.rope_scaling_type = "ntk"
    with pytest.raises(ConfigError, match=r"model: .*rope_scaling_type='ntk' is not one of"):
        train_config.model_config(cfg.model)


@pytest.mark.parametrize("impl", ["pallas", "ring"])
def test_attention_impls_see_scaled_frequencies(impl, tmp_path):
    """Pallas (interpret mode) and ring attention over 8 sequence shards give
    HF's logits for a YaRN model (RoPE is applied before any attention path)."""
    make_model(hf_config("yarn")).save_pretrained(tmp_path)
    config, params = from_pretrained(tmp_path, config_overrides={"attention_impl": impl})
    tokens = LONG[:, :32] if impl == "pallas" else LONG
    ref = hf_logits(fresh_hf(tmp_path), tokens)
    if impl == "ring":
        with sharding.activate(sharding.make_mesh((1, 1, 1, 8))):
            logits = our_logits(config, params, tokens)
    else:
        logits = our_logits(config, params, tokens)
    assert rel_err(logits, ref) <= 1e-4


def test_yarn_attention_factor_and_mscale_match_hf(tmp_path):
    """An explicit attention factor, and DeepSeek-style mscale / mscale_all_dim."""
    for name, extra in {"af": {"attention_factor": 1.3},
                        "mscale": {"mscale": 1.0, "mscale_all_dim": 0.5}}.items():
        rope = {**KINDS["yarn"][0], **extra, "rope_theta": 10000.0}
        make_model(hf_config("yarn", rope_parameters=rope)).save_pretrained(tmp_path / name)
        config, params = from_pretrained(tmp_path / name)
        ref = hf_logits(fresh_hf(tmp_path / name), LONG)
        assert rel_err(our_logits(config, params, LONG), ref) <= 1e-4, name


def test_meta_use_scaled_rope_is_llama3(tmp_path):
    """Meta's params.json `use_scaled_rope: true` is llama3 scaling with Meta's
    constants (factor 8, low 1, high 4, original 8192): HF logits with those."""
    rope = {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
            "high_freq_factor": 4.0, "original_max_position_embeddings": 8192}
    cfg = hf_config("llama3", rope_parameters={**rope, "rope_theta": 10000.0},
                    max_position_embeddings=16384)
    model = make_model(cfg)
    model.save_pretrained(tmp_path / "hf")
    config, params = from_pretrained(tmp_path / "hf")
    plain = config.replace(rope_scaling_type=None, rope_scaling_factor=1.0,
                           rope_original_max_seq_len=None, max_seq_len=2048)
    save_pretrained(plain, params, tmp_path / "meta", format="meta")
    assert "use_scaled_rope" not in json.loads((tmp_path / "meta" / "params.json").read_text())
    edit_json(tmp_path / "meta" / "params.json", use_scaled_rope=True)
    meta_config, meta_params = from_pretrained(tmp_path / "meta")
    assert (meta_config.rope_scaling_type, meta_config.rope_scaling_factor,
            meta_config.rope_low_freq_factor, meta_config.rope_high_freq_factor,
            meta_config.rope_original_len) == ("llama3", 8.0, 1.0, 4.0, 8192)
    tokens = LONG[:1, :16]
    positions = jnp.broadcast_to(jnp.arange(16) * 600, (1, 16))  # reach 9000 > 8192
    ours = np.asarray(Llama(meta_config).apply({"params": meta_params}, jnp.asarray(tokens),
                                               positions=positions))
    with torch.no_grad():
        ref = model(torch.tensor(tokens), position_ids=torch.tensor(np.asarray(positions))
                    ).logits.numpy()
    assert rel_err(ours, ref) <= 1e-4
    # Written back as use_scaled_rope; other scalings cannot be said in params.json.
    save_pretrained(meta_config, meta_params, tmp_path / "meta2", format="meta")
    assert json.loads((tmp_path / "meta2" / "params.json").read_text())["use_scaled_rope"]
    yarn = meta_config.replace(rope_scaling_type="yarn")
    with pytest.raises(ConversionError, match=r"params.json can only express Meta's llama3"):
        save_pretrained(yarn, meta_params, tmp_path / "meta3", format="meta")


def test_dynamic_frequencies_follow_the_current_length():
    cfg = LlamaConfig(dim=64, n_layers=1, n_heads=4, vocab_size=8, max_seq_len=64,
                      rope_scaling_type="dynamic", rope_scaling_factor=2.0,
                      rope_original_max_seq_len=32)
    base = np.asarray(inverse_frequencies(cfg.replace(rope_scaling_type=None,
                                                      rope_scaling_factor=1.0))[0])
    np.testing.assert_array_equal(np.asarray(inverse_frequencies(cfg, 32)[0]), base)
    longer = np.asarray(inverse_frequencies(cfg, 64)[0])
    assert longer[0] == base[0] and np.all(longer[1:] < base[1:])


@pytest.mark.parametrize("change, match", [
    (dict(rope_scaling_type="ntk"), r"rope_scaling_type='ntk' is not one of \(None, 'linear', "
                                    r"'dynamic', 'yarn', 'llama3'\)"),
    (dict(rope_scaling_type="linear", rope_scaling_factor=0.5),
     r"rope_scaling_factor=0.5 must be a number >= 1"),
    (dict(rope_scaling_factor=2.0), r"rope_scaling_factor=2.0 needs a rope_scaling_type"),
    (dict(rope_scaling_type="llama3", rope_scaling_factor=8.0, rope_low_freq_factor=4.0),
     r"rope_low_freq_factor=4.0 and rope_high_freq_factor=4.0 must satisfy"),
])
def test_config_errors(change, match):
    with pytest.raises(ValueError, match=match):
        LlamaConfig(dim=64, n_layers=1, n_heads=4, vocab_size=8, **change)


@pytest.mark.parametrize("rope, match", [
    ({"rope_type": "longrope", "factor": 2.0},
     r"config.json: rope_parameters.rope_type='longrope' is not supported; supported RoPE "
     r"types are \['default', 'dynamic', 'linear', 'llama3', 'yarn'\]"),
    ({"rope_type": "linear", "factor": 0.5},
     r"config.json: rope_parameters.factor=0.5 \(rope_type 'linear'\) must be >= 1"),
    ({"rope_type": "linear"}, r"config.json: rope_parameters of rope_type 'linear' has no "
                              r"'factor'"),
])
def test_bad_hf_rope_config_names_the_file(linear_dir, tmp_path, rope, match):
    hf = tmp_path / "hf"
    shutil.copytree(linear_dir, hf)
    edit_json(hf / "config.json", rope_parameters=rope, rope_scaling=None)
    with pytest.raises(ConversionError, match=match) as info:
        from_pretrained(hf)
    assert str(info.value).startswith(f"{hf / 'config.json'}: rope_parameters")


def test_bad_meta_use_scaled_rope(tmp_path):
    (tmp_path / "params.json").write_text(json.dumps(
        {"dim": 64, "n_layers": 2, "n_heads": 4, "use_scaled_rope": "yes"}))
    with pytest.raises(ConversionError, match=r"params.json: use_scaled_rope='yes' must be "
                                              r"true or false"):
        from_pretrained(tmp_path)


def test_a_longer_run_time_context_keeps_the_original_length(tmp_path):
    """eval --max_seq_len: the override must not move the scaling's original length."""
    cfg = LlamaConfig(dim=64, n_layers=1, n_heads=4, vocab_size=8, max_seq_len=64,
                      rope_scaling_type="yarn", rope_scaling_factor=2.0)
    save_pretrained(cfg, init_params(cfg, jax.random.key(0)), tmp_path / "ckpt")
    longer, _ = from_pretrained(tmp_path / "ckpt", config_overrides={"max_seq_len": 256})
    assert (longer.max_seq_len, longer.rope_original_len) == (256, 64)
    np.testing.assert_array_equal(np.asarray(inverse_frequencies(longer)[0]),
                                  np.asarray(inverse_frequencies(cfg)[0]))


def test_context_extension_keeps_the_checkpoints_length_as_the_original(tmp_path):
    """Scaling added on top of an unscaled checkpoint (configs/context_extend*.py)."""
    cfg = LlamaConfig(dim=64, n_layers=1, n_heads=4, vocab_size=8, max_seq_len=64)
    save_pretrained(cfg, init_params(cfg, jax.random.key(0)), tmp_path / "ckpt")
    extended, _ = from_pretrained(tmp_path / "ckpt", config_overrides=dict(
        max_seq_len=256, rope_scaling_type="yarn", rope_scaling_factor=4.0))
    assert (extended.max_seq_len, extended.rope_original_len) == (256, 64)
    configs = pathlib.Path(__file__).resolve().parents[1] / "configs"
    for name in ("context_extend_tiny.py", "context_extend.py:7b"):
        run = train_config.validate(load_config_file(f"{configs / name}"))
        assert run.rope_scaling_type == "linear" and run.rope_scaling_factor == 4.0
