"""Conversion errors a user can cause: each names the file, the tensor and the fix.

Missing params.json / config.json, unknown layouts, shapes that do not match
the config, unknown or missing tensors, inconsistent Meta shards, unsupported
HF features, and save-side problems (non-empty destination, bad params,
crashes half way through a write).
"""

import json
import os

import jax
import numpy as np
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")
safetensors_numpy = pytest.importorskip("safetensors.numpy")
import convert_helpers  # noqa: E402
from convert_helpers import (  # noqa: E402
    copy_dir,
    edit_json,
    load_pth,
)

import llama_jax.convert as convert  # noqa: E402
from llama_jax.convert import ConversionError, from_pretrained, save_pretrained  # noqa: E402
from llama_jax.convert.hf import read_safetensors  # noqa: E402

# Module-scoped fixtures shared with the other conversion test module.
hf_ckpt, loaded, meta_dirs = convert_helpers.hf_ckpt, convert_helpers.loaded, convert_helpers.meta_dirs


def test_error_missing_config_files(hf_ckpt, meta_dirs, tmp_path):
    meta = copy_dir(meta_dirs[0], tmp_path / "meta")
    (meta / "params.json").unlink()
    with pytest.raises(ConversionError, match=r"meta/params.json is missing"):
        from_pretrained(meta)
    hf = copy_dir(hf_ckpt[1], tmp_path / "hf")
    (hf / "config.json").unlink()
    with pytest.raises(ConversionError, match=r"hf/config.json is missing"):
        from_pretrained(hf)
    (hf / "config.json").write_text((hf_ckpt[1] / "config.json").read_text())
    (hf / "model.safetensors").unlink()
    with pytest.raises(ConversionError, match=r"no model.safetensors or model.safetensors.index.json"):
        from_pretrained(hf)


def test_error_unknown_format(tmp_path):
    (tmp_path / "weights.bin").write_bytes(b"\0")
    with pytest.raises(ConversionError, match=r"unsupported or unknown checkpoint format .*"
                       r"weights.bin.*params.json.*config.json.*llama_config.json"):
        from_pretrained(tmp_path)
    with pytest.raises(ConversionError, match="does not exist"):
        from_pretrained(tmp_path / "nope")
    with pytest.raises(ConversionError, match="is a file; pass the checkpoint directory"):
        from_pretrained(tmp_path / "weights.bin")
    with pytest.raises(ConversionError, match="format='gguf' is not one of"):
        save_pretrained(None, {}, tmp_path / "x", format="gguf")


def test_error_shape_mismatch_names_tensor_and_shapes(hf_ckpt, meta_dirs, tmp_path):
    hf = copy_dir(hf_ckpt[1], tmp_path / "hf")
    edit_json(hf / "config.json", intermediate_size=160)
    with pytest.raises(ConversionError) as e:
        from_pretrained(hf)
    msg = str(e.value)
    assert "'model.layers.0.mlp.gate_proj.weight'" in msg and "model.safetensors" in msg
    assert f"({hf_ckpt[2].config.intermediate_size}, 64)" in msg and "(160, 64)" in msg
    meta = copy_dir(meta_dirs[1], tmp_path / "meta")
    edit_json(meta / "params.json", dim=128)
    with pytest.raises(ConversionError, match=r"'tok_embeddings.weight' in .*consolidated.00.pth"
                       r"..consolidated.01.pth has shape \(128, 64\) but .*params.json implies \(128, 128\)"):
        from_pretrained(meta)
    with pytest.raises(ConversionError, match=r"'layers/attention/wq/kernel' in the checkpoint .*hf_.* has "
                       r"shape \(2, 64, \d, \d+\) but its config with config_overrides=.* implies \(2, 64, 2, 32\)"):
        from_pretrained(hf_ckpt[1], config_overrides={"n_heads": 2, "n_kv_heads": 2})


def test_error_unknown_and_missing_keys(hf_ckpt, tmp_path):
    hf = copy_dir(hf_ckpt[1], tmp_path / "hf")
    tensors = dict(read_safetensors(hf / "model.safetensors"))
    tensors["model.layers.0.self_attn.q_proj.bias"] = np.zeros(64, np.float32)
    del tensors["model.layers.1.mlp.up_proj.weight"]
    tensors = {k: np.array(v) for k, v in tensors.items()}
    safetensors_numpy.save_file(tensors, hf / "model.safetensors", metadata={"format": "pt"})
    with pytest.raises(ConversionError, match=r"unknown tensors \['model.layers.0.self_attn.q_proj.bias'\]"
                       r".*missing tensors \['model.layers.1.mlp.up_proj.weight'\]"):
        from_pretrained(hf)


def test_error_meta_shards_inconsistent(meta_dirs, tmp_path):
    meta = copy_dir(meta_dirs[1], tmp_path / "gap")
    (meta / "consolidated.01.pth").rename(meta / "consolidated.02.pth")
    with pytest.raises(ConversionError, match=r"inconsistent shard set .*consolidated.00.pth "
                       r"\.\.\. consolidated.01.pth"):
        from_pretrained(meta)
    meta = copy_dir(meta_dirs[1], tmp_path / "keys")
    state = load_pth(meta / "consolidated.01.pth")
    del state["layers.1.ffn_norm.weight"]
    torch.save(state, meta / "consolidated.01.pth")
    with pytest.raises(ConversionError, match=r"consolidated.00.pth and consolidated.01.pth hold "
                       r"different tensors .*layers.1.ffn_norm.weight"):
        from_pretrained(meta)
    state["layers.1.ffn_norm.weight"] = torch.zeros(64)
    torch.save(state, meta / "consolidated.01.pth")
    with pytest.raises(ConversionError, match=r"replicated tensor 'layers.1.ffn_norm.weight' differs"):
        from_pretrained(meta)
    edit_json(meta / "params.json", use_xpos=True)
    with pytest.raises(ConversionError, match=r"params.json: missing keys \[\], unknown keys \['use_xpos'\]"):
        from_pretrained(meta)


@pytest.mark.parametrize("change, match", [
    ({"rope_parameters": {"rope_type": "longrope", "factor": 2.0, "rope_theta": 1e4}},
     r"rope_parameters.rope_type='longrope' is not supported; supported RoPE types are"),
    ({"rope_scaling": {"type": "dynamic", "factor": 0.5}},
     r"rope_scaling.factor=0.5 \(rope_type 'dynamic'\) must be >= 1"),
    ({"attention_bias": True}, "attention_bias=true is not supported"),
    ({"model_type": "gpt2"}, "model_type='gpt2'; only 'llama'"),
    ({"head_dim": 32}, "head_dim=32 differs"),
])
def test_error_unsupported_hf_config(hf_ckpt, tmp_path, change, match):
    hf = copy_dir(hf_ckpt[1], tmp_path / "hf")
    edit_json(hf / "config.json", **change)
    with pytest.raises(ConversionError, match=match):
        from_pretrained(hf)


def test_error_hf_index_names_missing_file(hf_ckpt, tmp_path):
    hf_ckpt[2].save_pretrained(tmp_path / "hf", max_shard_size="40KB")
    index = json.loads((tmp_path / "hf" / "model.safetensors.index.json").read_text())
    victim = sorted(set(index["weight_map"].values()))[-1]
    (tmp_path / "hf" / victim).unlink()
    with pytest.raises(ConversionError, match=f"missing: \\['{victim}'\\]"):
        from_pretrained(tmp_path / "hf")


def test_save_errors_and_atomicity(loaded, tmp_path, monkeypatch):
    config, params = loaded
    dst = tmp_path / "dst"
    dst.mkdir()
    (dst / "keep.txt").write_text("old")
    with pytest.raises(ConversionError, match="is not empty; .*overwrite=True"):
        save_pretrained(config, params, dst, format="hf")
    assert os.listdir(dst) == ["keep.txt"]
    save_pretrained(config, params, dst, format="hf", overwrite=True)
    assert sorted(os.listdir(dst)) == ["config.json", "generation_config.json", "model.safetensors"]
    bad = jax.tree_util.tree_map(lambda x: x, params)
    bad["output"]["kernel"] = bad["output"]["kernel"][:, :100]
    with pytest.raises(ConversionError, match=r"'output/kernel' .* shape \(64, 100\) but the "
                       r"LlamaConfig passed in implies \(64, 128\)"):
        save_pretrained(config, bad, tmp_path / "bad")
    del bad["norm"]
    with pytest.raises(ConversionError, match=r"missing tensors \['norm/scale'\]"):
        save_pretrained(config, bad, tmp_path / "bad")
    with pytest.raises(ConversionError, match=r"cannot split into shards=3"):
        save_pretrained(config, params, tmp_path / "bad", format="meta", shards=3)
    assert not (tmp_path / "bad").exists()

    # A crash half way through writing leaves neither dst nor temp files.
    def crash(config, flat, out_dir, shards=1, progress=True):
        (out_dir / "config.json").write_text("{}")
        raise OSError("disk full")

    monkeypatch.setattr(convert, "save_hf", crash)
    with pytest.raises(OSError, match="disk full"):
        save_pretrained(config, params, tmp_path / "crash", format="hf")
    with pytest.raises(OSError, match="disk full"):
        save_pretrained(config, params, dst, format="hf", overwrite=True)
    assert not (tmp_path / "crash").exists()
    assert sorted(os.listdir(dst)) == ["config.json", "generation_config.json", "model.safetensors"]
    assert sorted(os.listdir(tmp_path)) == ["dst"]


def test_error_bad_dtype_and_overrides(hf_ckpt):
    with pytest.raises(ConversionError, match="dtype='int8' is not supported"):
        from_pretrained(hf_ckpt[1], dtype="int8")
    with pytest.raises(ConversionError, match="conflicts with config_overrides"):
        from_pretrained(hf_ckpt[1], dtype="float32", config_overrides={"param_dtype": "bfloat16"})
    with pytest.raises(ConversionError, match="unexpected keyword|got an unexpected"):
        from_pretrained(hf_ckpt[1], config_overrides={"n_experts": 8})
