"""Weight conversion against the references: HF transformers' LlamaForCausalLM and Meta's layout.

Random tiny HF models (see convert_helpers.py) are saved by transformers
itself; we load them, compare logits, write them back in every format and
check the files bit for bit. The Meta layout is checked against HF's own
conversion rule (`permute`, written out with torch ops as HF's
convert_llama_weights_to_hf.py has it) and against Meta's model-parallel split
(column/row-parallel, ParallelEmbedding). Error cases: test_convert_errors.py.
"""

import json
import os
import shutil
import subprocess
import sys

import flax.linen as nn
import jax
import ml_dtypes
import numpy as np
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")
safetensors_numpy = pytest.importorskip("safetensors.numpy")
import convert_helpers  # noqa: E402
from convert_helpers import (  # noqa: E402
    copy_dir,
    hf_logits,
    hf_permute,
    load_pth,
    make_hf_model,
    meta_split_axis,
    our_logits,
    rel_err,
    trees_equal,
)
from safetensors.torch import load_file as load_torch_safetensors  # noqa: E402

from llama_jax.convert import (  # noqa: E402
    convert_checkpoint,
    from_pretrained,
    save_pretrained,
    stack_layers,
    unstack_layers,
)
from llama_jax.convert.common import flatten, meta_shapes, param_shapes, unflatten  # noqa: E402
from llama_jax.convert.hf import hf_name, read_safetensors  # noqa: E402
from llama_jax.model import LlamaConfig, abstract_params  # noqa: E402

# Module-scoped fixtures shared with the other conversion test module.
hf_ckpt, loaded, meta_dirs = convert_helpers.hf_ckpt, convert_helpers.loaded, convert_helpers.meta_dirs


# ----------------------------------------------------------------------------- HF

def test_shape_tables_match_the_model_and_transformers():
    """Our tree's shapes come from the model; Meta's written-out table is HF's state dict."""
    config = LlamaConfig(dim=64, n_layers=3, n_heads=8, n_kv_heads=2, vocab_size=96,
                         hidden_dim=80)
    # The unscanned model (a different module tree: layers_0, layers_1, ...) stacks to it.
    unscanned = config.replace(scan_layers=False)
    model = flatten(jax.tree_util.tree_map(
        lambda x: np.zeros(x.shape, np.int8), nn.meta.unbox(abstract_params(unscanned))))
    assert {p: x.shape for p, x in flatten(stack_layers(unflatten(model))).items()} \
        == param_shapes(config) == param_shapes(unscanned)
    hf = transformers.LlamaForCausalLM(transformers.LlamaConfig(
        hidden_size=64, num_hidden_layers=3, num_attention_heads=8, num_key_value_heads=2,
        intermediate_size=80, vocab_size=96))
    assert {hf_name(n): s for n, s in meta_shapes(config).items()} == {
        n: tuple(t.shape) for n, t in hf.state_dict().items()}


def test_hf_logits_parity(hf_ckpt, loaded):
    kind, _, model, ref = hf_ckpt
    config, params = loaded
    hf = model.config
    assert (config.dim, config.n_layers, config.n_heads, config.num_kv_heads) == (
        hf.hidden_size, hf.num_hidden_layers, hf.num_attention_heads, hf.num_key_value_heads)
    assert config.ffn_dim == hf.intermediate_size and config.vocab_size == hf.vocab_size
    assert config.norm_eps == hf.rms_norm_eps and config.max_seq_len == 64
    assert config.rope_theta == hf.rope_parameters["rope_theta"]
    assert config.scan_layers and "layers" in params
    assert rel_err(our_logits(config, params), ref) <= 1e-4


def test_hf_roundtrip_bit_exact(hf_ckpt, loaded, tmp_path):
    _, path, _, ref = hf_ckpt
    config, params = loaded
    save_pretrained(config, params, tmp_path / "out", format="hf")
    original = safetensors_numpy.load_file(path / "model.safetensors")
    written = safetensors_numpy.load_file(tmp_path / "out" / "model.safetensors")
    assert sorted(original) == sorted(written)
    for name in original:
        assert original[name].dtype == written[name].dtype, name
        assert np.array_equal(original[name], written[name]), name
    reloaded = transformers.LlamaForCausalLM.from_pretrained(tmp_path / "out")
    assert np.array_equal(hf_logits(reloaded), ref)
    for key in ("hidden_size", "intermediate_size", "num_key_value_heads", "rms_norm_eps",
                "vocab_size", "max_position_embeddings"):
        assert getattr(reloaded.config, key) == getattr(hf_ckpt[2].config, key), key


def test_hf_bf16_roundtrip_and_cast(tmp_path):
    model = make_hf_model("gqa").to(torch.bfloat16)
    model.save_pretrained(tmp_path / "src")
    config, params = from_pretrained(tmp_path / "src")
    assert config.param_dtype == "bfloat16"
    assert params["layers"]["attention"]["wq"]["kernel"].dtype == ml_dtypes.bfloat16
    save_pretrained(config, params, tmp_path / "out", format="hf")
    a = load_torch_safetensors(tmp_path / "src" / "model.safetensors")
    b = load_torch_safetensors(tmp_path / "out" / "model.safetensors")
    assert sorted(a) == sorted(b)
    assert all(a[k].dtype == torch.bfloat16 and torch.equal(a[k], b[k]) for k in a)
    # Our reader agrees with safetensors' own on every tensor.
    ours = read_safetensors(tmp_path / "src" / "model.safetensors")
    assert all(np.array_equal(ours[k].astype(np.float32), a[k].float().numpy()) for k in a)
    config32, params32 = from_pretrained(tmp_path / "src", dtype="float32")
    assert config32.param_dtype == "float32"
    assert trees_equal(params32, jax.tree_util.tree_map(lambda x: x.astype(np.float32), params))


def test_hf_sharded_index(hf_ckpt, loaded, tmp_path):
    _, _, model, ref = hf_ckpt
    config, params = loaded
    # Written by transformers itself...
    model.save_pretrained(tmp_path / "hf_sharded", max_shard_size="40KB")
    assert (tmp_path / "hf_sharded" / "model.safetensors.index.json").is_file()
    assert trees_equal(from_pretrained(tmp_path / "hf_sharded")[1], params)
    # ...and by us, then read by transformers.
    save_pretrained(config, params, tmp_path / "ours", format="hf", shards=3)
    files = sorted(p.name for p in (tmp_path / "ours").glob("*.safetensors"))
    assert files == [f"model-0000{i}-of-00003.safetensors" for i in (1, 2, 3)]
    assert np.array_equal(hf_logits(transformers.LlamaForCausalLM.from_pretrained(
        tmp_path / "ours")), ref)
    assert trees_equal(from_pretrained(tmp_path / "ours")[1], params)


def test_hf_tied_embeddings_have_no_output(tmp_path):
    model = make_hf_model("mha", tie=True, seed=1)
    model.save_pretrained(tmp_path / "tied")
    config, params = from_pretrained(tmp_path / "tied")
    assert config.tie_embeddings and "output" not in params
    assert rel_err(our_logits(config, params), hf_logits(model)) <= 1e-4


def test_meta_layout_matches_hf_reference(hf_ckpt, meta_dirs):
    """Meta's tensors, put through HF's own permute, are HF's tensors."""
    _, _, model, _ = hf_ckpt
    hf = dict(model.state_dict())
    meta = load_pth(meta_dirs[0] / "consolidated.00.pth")
    cfg = model.config
    d, hd = cfg.hidden_size, cfg.hidden_size // cfg.num_attention_heads
    assert torch.equal(meta["tok_embeddings.weight"], hf["model.embed_tokens.weight"])
    assert torch.equal(meta["output.weight"], hf["lm_head.weight"])
    assert torch.equal(meta["norm.weight"], hf["model.norm.weight"])
    for i in range(cfg.num_hidden_layers):
        p = f"model.layers.{i}."
        assert torch.equal(hf_permute(meta[f"layers.{i}.attention.wq.weight"],
                                      cfg.num_attention_heads, d, d), hf[p + "self_attn.q_proj.weight"])
        kv_dim = cfg.num_key_value_heads * hd
        assert torch.equal(hf_permute(meta[f"layers.{i}.attention.wk.weight"],
                                      cfg.num_key_value_heads, kv_dim, d), hf[p + "self_attn.k_proj.weight"])
        for ours, theirs in [("attention.wv", "self_attn.v_proj"), ("attention.wo", "self_attn.o_proj"),
                             ("feed_forward.w1", "mlp.gate_proj"), ("feed_forward.w2", "mlp.down_proj"),
                             ("feed_forward.w3", "mlp.up_proj"), ("attention_norm", "input_layernorm"),
                             ("ffn_norm", "post_attention_layernorm")]:
            assert torch.equal(meta[f"layers.{i}.{ours}.weight"], hf[p + theirs + ".weight"]), ours
    params_json = json.loads((meta_dirs[0] / "params.json").read_text())
    assert params_json["dim"] == d and params_json["n_layers"] == cfg.num_hidden_layers


def test_meta_two_shards_split_like_meta_and_load_equal(hf_ckpt, loaded, meta_dirs):
    _, _, _, ref = hf_ckpt
    one = load_pth(meta_dirs[0] / "consolidated.00.pth")
    shards = [load_pth(meta_dirs[1] / f"consolidated.0{s}.pth") for s in (0, 1)]
    for name, full in one.items():
        axis = meta_split_axis(name)
        parts = [s[name] for s in shards]
        if axis is None:
            assert all(torch.equal(p, full) for p in parts), name
        else:
            assert all(p.shape[axis] == full.shape[axis] // 2 for p in parts), name
            assert torch.equal(torch.cat(parts, dim=axis), full), name
    config1, params1 = from_pretrained(meta_dirs[0])
    config2, params2 = from_pretrained(meta_dirs[1])
    assert config1 == config2 and trees_equal(params1, params2)
    assert trees_equal(params2, loaded[1]) and config2.ffn_dim == loaded[0].ffn_dim
    assert (config2.norm_eps, config2.rope_theta) == (loaded[0].norm_eps, loaded[0].rope_theta)
    assert rel_err(our_logits(config2, params2), ref) <= 1e-4


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_meta_roundtrip_bit_exact(meta_dirs, tmp_path, dtype):
    src = meta_dirs[1]
    if dtype == "bfloat16":  # A bf16 Meta checkpoint, as Llama 2 ships.
        config, params = from_pretrained(src, dtype="bfloat16")
        src = save_pretrained(config, params, tmp_path / "bf16", format="meta", shards=2)
    config, params = from_pretrained(src)
    assert config.param_dtype == dtype
    save_pretrained(config, params, tmp_path / "out", format="meta", shards=2)
    assert sorted(os.listdir(tmp_path / "out")) == ["consolidated.00.pth", "consolidated.01.pth",
                                                    "params.json"]
    assert json.loads((src / "params.json").read_text()) == json.loads(
        (tmp_path / "out" / "params.json").read_text())
    for s in ("00", "01"):
        a, b = load_pth(src / f"consolidated.{s}.pth"), load_pth(tmp_path / "out" / f"consolidated.{s}.pth")
        assert list(a) == list(b)
        assert all(a[k].dtype == b[k].dtype and torch.equal(a[k], b[k]) for k in a)


def test_meta_llama1_style_vocab_minus_one_and_rope_freqs(meta_dirs, loaded, tmp_path):
    """LLaMA 1 files: vocab_size=-1 in params.json and a stored `rope.freqs`."""
    dst = tmp_path / "llama1"
    shutil.copytree(meta_dirs[1], dst)
    params_json = json.loads((dst / "params.json").read_text())
    params_json["vocab_size"] = -1
    (dst / "params.json").write_text(json.dumps(params_json))
    for s in ("00", "01"):
        state = load_pth(dst / f"consolidated.{s}.pth")
        state["rope.freqs"] = torch.ones(8)
        torch.save(state, dst / f"consolidated.{s}.pth")
    config, params = from_pretrained(dst)
    assert config.vocab_size == 128 and trees_equal(params, loaded[1])


def test_meta_llama3_vocab_split_embedding(meta_dirs, loaded, tmp_path):
    """Llama 3's VocabParallelEmbedding splits tok_embeddings along the vocab (dim 0)."""
    dst = copy_dir(meta_dirs[1], tmp_path / "llama3")
    full = load_pth(meta_dirs[0] / "consolidated.00.pth")["tok_embeddings.weight"]
    for s, part in enumerate(torch.chunk(full, 2, dim=0)):
        state = load_pth(dst / f"consolidated.0{s}.pth")
        state["tok_embeddings.weight"] = part.clone()
        torch.save(state, dst / f"consolidated.0{s}.pth")
    assert trees_equal(from_pretrained(dst)[1], loaded[1])


def test_torch_is_not_imported_by_the_package():
    code = "import sys, llama_jax.convert; assert 'torch' not in sys.modules, 'torch imported'"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]


# ----------------------------------------------------------------------------- orbax, layouts, CLI

def test_orbax_roundtrip_and_layouts(loaded, tmp_path):
    config, params = loaded
    save_pretrained(config, params, tmp_path / "scan")
    assert sorted(os.listdir(tmp_path / "scan")) == ["llama_config.json", "params"]
    config2, params2 = from_pretrained(tmp_path / "scan")
    assert config2 == config and trees_equal(params2, params)
    # An unscanned model saves; the layout is the loader's choice (a run option):
    # scanned by default, unscanned when asked, bit for bit either way.
    flat_cfg, flat_params = config.replace(scan_layers=False), unstack_layers(params)
    assert sorted(flat_params) == ["layers_0", "layers_1", "norm", "output", "tok_embeddings"]
    save_pretrained(flat_cfg, {"params": flat_params}, tmp_path / "noscan")
    config3, params3 = from_pretrained(tmp_path / "noscan")
    assert config3 == config and trees_equal(params3, params)
    config3, params3 = from_pretrained(tmp_path / "noscan", config_overrides={"scan_layers": False})
    assert config3 == flat_cfg and trees_equal(params3, flat_params)
    assert trees_equal(stack_layers(params3), params)
    # Overrides pick the layout and compute dtype.
    config4, params4 = from_pretrained(tmp_path / "scan", config_overrides={
        "scan_layers": False, "dtype": "bfloat16"})
    assert config4.dtype == "bfloat16" and trees_equal(params4, flat_params)


def test_cli_roundtrip(hf_ckpt, loaded, tmp_path):
    kind, path, _, _ = hf_ckpt
    if kind != "gqa":
        pytest.skip("the CLI subprocesses run once, on the GQA model")
    dst = tmp_path / "cli_meta"
    result = subprocess.run(
        [sys.executable, "-m", "llama_jax.convert", f"--src={path}", f"--dst={dst}",
         "--dst_format=meta", "--shards=2", "--dtype=bfloat16"],
        capture_output=True, text=True, timeout=300, env={**os.environ, "JAX_PLATFORMS": "cpu"})
    assert result.returncode == 0, result.stderr[-3000:]
    config, params = from_pretrained(dst)
    assert config.param_dtype == "bfloat16"
    assert trees_equal(params, jax.tree_util.tree_map(lambda x: x.astype(ml_dtypes.bfloat16),
                                                      loaded[1]))
    again = subprocess.run(
        [sys.executable, "-m", "llama_jax.convert", f"--src={path}", f"--dst={dst}", "--dst_format=hf"],
        capture_output=True, text=True, timeout=300, env={**os.environ, "JAX_PLATFORMS": "cpu"})
    assert again.returncode == 2 and "is not empty" in again.stderr and "Traceback" not in again.stderr
    # The library entry point the CLI calls, back to HF and orbax.
    convert_checkpoint(dst, tmp_path / "cli_hf", "hf", dtype="float32")
    convert_checkpoint(tmp_path / "cli_hf", tmp_path / "cli_orbax", "orbax")
    assert trees_equal(from_pretrained(tmp_path / "cli_orbax")[1], from_pretrained(dst, dtype="float32")[1])


def test_training_checkpoint_is_delegated(tmp_path, loaded):
    """Workdir, checkpoints dir and step dir all go through llama_jax.convert.workdir.load_params."""
    from llama_jax.convert.layout import checkpoint_dir
    from llama_jax.train.checkpoint import Checkpointer

    config, params = loaded
    unscanned = config.replace(scan_layers=False)
    ckpt = Checkpointer(checkpoint_dir(tmp_path), async_save=False, with_data=False)
    ckpt.save(7, {"params": unstack_layers(params)}, rng=jax.random.key(0),
              meta={"model_config": unscanned.to_dict()}, force=True)
    ckpt.wait()
    ckpt.close()
    for path in (tmp_path, tmp_path / "checkpoints", tmp_path / "checkpoints" / "7"):
        got_config, got = from_pretrained(path)
        assert got_config == unscanned and trees_equal(stack_layers(got), params), path
    got_config, got = from_pretrained(tmp_path, dtype="bfloat16", config_overrides={"scan_layers": True})
    assert got_config.param_dtype == "bfloat16" and got_config.scan_layers
    assert trees_equal(got, jax.tree_util.tree_map(lambda x: x.astype(ml_dtypes.bfloat16), params))
