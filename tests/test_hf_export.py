"""Hugging Face export, checked with transformers itself.

- safetensors written by `transformers` (f32 and bf16) load bit for bit:
  every tensor of the torch state dict equals our tree put back into HF's
  layout with HF's own `permute` (torch ops, convert_helpers.hf_permute);
- `save_pretrained(..., format="hf", tokenizer=...)` writes a folder that
  `AutoTokenizer` and `pipeline("text-generation")` load: ids equal our
  SentencePiece `Tokenizer`'s on prose, code, digits, CJK, Cyrillic, emoji and
  leading spaces; greedy generation equals our `Generator`'s;
- `convert_checkpoint` finds the source's tokenizer.model; progress bars draw
  on a TTY only and never with progress=False.
"""

import inspect
import io
import json
import sys
import textwrap

import ml_dtypes
import numpy as np
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")
from convert_helpers import hf_permute, make_hf_model  # noqa: E402

from llama_jax.convert import (  # noqa: E402
    ConversionError,
    convert_checkpoint,
    find_tokenizer,
    from_pretrained,
    save_pretrained,
)
from llama_jax.convert.hf import read_safetensors  # noqa: E402
from llama_jax.data.tokenizer import Tokenizer, train_tokenizer  # noqa: E402
from llama_jax.infer.engine import Generator  # noqa: E402

MULTILINGUAL = ("Привет, мир! Как дела? Всё хорошо, спасибо. 日本語のテキストと中文文本，"
                "机器学习和自然语言处理。 ")
SAMPLES = {
    "prose": "It was the best of times, it was the worst of times.  Two spaces,   three.\n",
    "code": "def f(x):\n\tif x:\n\t\treturn [1, 2]\n\n\n    # four-space indent\n    return {'a': x}\r\n",
    "digits": "In 1999 there were 1,234,567.89 people; call 555-0100 at 07:30.",
    "cjk": "日本語のテキストと中文文本",
    "cyrillic": "Привет мир — как дела",
    "emoji": "ok 👍🏽 done 🎉\n",
    "leading_spaces": "  two leading spaces\n\n\t",
    "space": " ",
    "empty": "",
    "special_text": "a<s>b</s>",
}


def hf_state(path):
    """The HF checkpoint's tensors as torch tensors (transformers' own reader)."""
    model = transformers.LlamaForCausalLM.from_pretrained(path, dtype="auto")
    return {k: v.detach() for k, v in model.state_dict().items()}, model.config


def as_torch(array):
    array = np.ascontiguousarray(array)
    if array.dtype == ml_dtypes.bfloat16:
        return torch.from_numpy(array.view(np.int16)).view(torch.bfloat16)
    return torch.from_numpy(array)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_transformers_checkpoint_loads_bit_exactly(tmp_path, dtype):
    model = make_hf_model("gqa").to(dtype)
    model.save_pretrained(tmp_path / "src")
    state, cfg = hf_state(tmp_path / "src")
    config, params = from_pretrained(tmp_path / "src", progress=False)
    want = "bfloat16" if dtype == torch.bfloat16 else "float32"
    assert config.param_dtype == want
    d, h, kvh = cfg.hidden_size, cfg.num_attention_heads, cfg.num_key_value_heads
    hd = d // h

    def same(ours, theirs):  # Same dtype and bits.
        t = as_torch(ours)
        return t.dtype == theirs.dtype and torch.equal(t, theirs)

    assert same(params["tok_embeddings"]["embedding"], state["model.embed_tokens.weight"])
    assert same(params["norm"]["scale"], state["model.norm.weight"])
    assert same(params["output"]["kernel"].T, state["lm_head.weight"])
    layers = params["layers"]
    for i in range(cfg.num_hidden_layers):
        p = f"model.layers.{i}."
        wq = as_torch(layers["attention"]["wq"]["kernel"][i].reshape(d, h * hd).T)
        wk = as_torch(layers["attention"]["wk"]["kernel"][i].reshape(d, kvh * hd).T)
        assert torch.equal(hf_permute(wq, h, h * hd, d), state[p + "self_attn.q_proj.weight"])
        assert torch.equal(hf_permute(wk, kvh, kvh * hd, d), state[p + "self_attn.k_proj.weight"])
        assert same(layers["attention"]["wv"]["kernel"][i].reshape(d, kvh * hd).T,
                    state[p + "self_attn.v_proj.weight"])
        assert same(layers["attention"]["wo"]["kernel"][i].reshape(h * hd, d).T,
                    state[p + "self_attn.o_proj.weight"])
        for ours, theirs in [("w1", "gate_proj"), ("w2", "down_proj"), ("w3", "up_proj")]:
            assert same(layers["feed_forward"][ours]["kernel"][i].T, state[p + f"mlp.{theirs}.weight"])
        assert same(layers["attention_norm"]["scale"][i], state[p + "input_layernorm.weight"])
        assert same(layers["ffn_norm"]["scale"][i], state[p + "post_attention_layernorm.weight"])
    # The safe_open reader hands bf16 out as ml_dtypes.bfloat16, not a widened copy.
    raw = read_safetensors(tmp_path / "src" / "model.safetensors")
    assert {a.dtype for a in raw.values()} == {np.dtype(ml_dtypes.bfloat16 if want == "bfloat16"
                                                        else np.float32)}


@pytest.fixture(scope="module")
def tok(tmp_path_factory):
    texts = [inspect.getsource(textwrap), inspect.getsource(json), MULTILINGUAL * 10]
    return train_tokenizer(texts, tmp_path_factory.mktemp("tok") / "tiny", 600)


@pytest.fixture(scope="module")
def exported(tok, tmp_path_factory):
    """A random transformers Llama with our tokenizer's vocab, loaded and exported by us."""
    torch.manual_seed(0)
    cfg = transformers.LlamaConfig(hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
                                   num_key_value_heads=2, intermediate_size=96,
                                   vocab_size=tok.vocab_size, max_position_embeddings=64,
                                   initializer_range=0.2)  # spread logits: no argmax near-ties
    root = tmp_path_factory.mktemp("export")
    transformers.LlamaForCausalLM(cfg).save_pretrained(root / "src")
    config, params = from_pretrained(root / "src", progress=False)
    save_pretrained(config, params, root / "hf", format="hf", tokenizer=tok.path, progress=False)
    return config, params, root / "hf"


def test_exported_folder_files(exported, tok):
    config, _, path = exported
    assert sorted(p.name for p in path.iterdir()) == [
        "config.json", "generation_config.json", "model.safetensors", "special_tokens_map.json",
        "tokenizer.json", "tokenizer.model", "tokenizer_config.json"]
    assert (path / "tokenizer.model").read_bytes() == tok.model_proto
    gen = transformers.GenerationConfig.from_pretrained(path)
    assert (gen.bos_token_id, gen.eos_token_id, gen.max_length) == (1, 2, config.max_seq_len)
    tok_cfg = json.loads((path / "tokenizer_config.json").read_text())
    assert tok_cfg["add_bos_token"] is True and tok_cfg["add_eos_token"] is False


@pytest.mark.parametrize("name", sorted(SAMPLES))
def test_auto_tokenizer_matches_ours(exported, tok, name):
    hf = transformers.AutoTokenizer.from_pretrained(exported[2])
    text = SAMPLES[name]
    ids = hf(text)["input_ids"]
    assert ids == tok.encode(text, bos=True)
    assert hf.decode(ids, skip_special_tokens=True) == tok.decode(ids) == text
    assert (hf.bos_token_id, hf.eos_token_id, hf.unk_token_id) == (1, 2, 0)


def test_auto_tokenizer_matches_ours_on_a_long_file(exported, tok):
    hf = transformers.AutoTokenizer.from_pretrained(exported[2])
    text = inspect.getsource(inspect)[:20000] + MULTILINGUAL
    assert hf(text)["input_ids"] == tok.encode(text, bos=True)


def test_pipeline_greedy_equals_our_generator(exported, tok):
    config, params, path = exported
    pipe = transformers.pipeline("text-generation", model=str(path))
    prompts = ["def f(x):\n\treturn", "Привет мир", "It was the best"]
    ours = Generator(config, params, batch_size=len(prompts)).generate_tokens(
        [tok.encode(p, bos=True) for p in prompts], max_new_tokens=6, eos_id=tok.eos_id)
    for prompt, (got,) in zip(prompts, ours, strict=True):
        out = pipe(prompt, max_new_tokens=6, do_sample=False, return_tensors=True)
        prompt_ids = tok.encode(prompt, bos=True)
        ids = out[0]["generated_token_ids"]
        assert ids[:len(prompt_ids)] == prompt_ids
        new = ids[len(prompt_ids):]
        if tok.eos_id in new:
            new = new[:new.index(tok.eos_id)]
        assert new == got and len(got) > 0, prompt


def test_convert_checkpoint_ships_the_sources_tokenizer(exported, tok, tmp_path):
    config, params, _ = exported
    src = save_pretrained(config, params, tmp_path / "orbax", tokenizer=tok)
    assert (src / "tokenizer.model").read_bytes() == tok.model_proto
    convert_checkpoint(src, tmp_path / "hf", "hf", progress=False)
    hf = transformers.AutoTokenizer.from_pretrained(tmp_path / "hf")
    assert hf(SAMPLES["code"])["input_ids"] == tok.encode(SAMPLES["code"], bos=True)
    # Without a tokenizer beside the source, only the generation config is added.
    (src / "tokenizer.model").unlink()
    convert_checkpoint(src, tmp_path / "none", "hf", progress=False)
    assert not (tmp_path / "none" / "tokenizer.model").exists()
    assert (tmp_path / "none" / "generation_config.json").is_file()


def test_find_tokenizer_layouts(tmp_path):
    meta = tmp_path / "llama" / "7B"
    meta.mkdir(parents=True)
    (meta / "params.json").write_text("{}")
    (tmp_path / "llama" / "tokenizer.model").write_bytes(b"x")
    assert find_tokenizer(meta) == tmp_path / "llama" / "tokenizer.model"
    step = tmp_path / "run" / "checkpoints" / "100"
    step.mkdir(parents=True)
    (tmp_path / "run" / "tokenizer.model").write_bytes(b"x")
    for src in (tmp_path / "run", tmp_path / "run" / "checkpoints", step):
        assert find_tokenizer(src) == tmp_path / "run" / "tokenizer.model", src
    (tmp_path / "llama" / "other").mkdir()  # No params.json: the parent's is not its own.
    assert find_tokenizer(tmp_path / "llama" / "other") is None


def test_export_refuses_tokenizers_it_cannot_reproduce(exported, tmp_path):
    config, params, _ = exported
    unigram = train_tokenizer([inspect.getsource(json)], tmp_path / "uni", 400,
                              model_type="unigram")
    with pytest.raises(ConversionError, match="SentencePiece BPE.*UNIGRAM"):
        save_pretrained(config, params, tmp_path / "uni_hf", format="hf", tokenizer=unigram)
    with pytest.raises(ConversionError, match="tokenizer=.*nope.*no SentencePiece model"):
        save_pretrained(config, params, tmp_path / "x", format="hf", tokenizer=tmp_path / "nope")
    assert not (tmp_path / "uni_hf").exists() and not (tmp_path / "x").exists()
    assert isinstance(Tokenizer.load(unigram.path), Tokenizer)


class _Terminal(io.StringIO):
    def isatty(self):
        return True


def test_progress_bars_only_on_a_tty(exported, tmp_path, monkeypatch):
    _, _, path = exported
    terminal = _Terminal()
    monkeypatch.setattr(sys, "stderr", terminal)
    from_pretrained(path, progress=False)
    assert terminal.getvalue() == ""
    config, params = from_pretrained(path)
    save_pretrained(config, params, tmp_path / "meta", format="meta")
    shown = terminal.getvalue()
    assert "reading hf" in shown and "writing consolidated.00.pth" in shown
    assert f"0/{3 + 9 * config.n_layers} " in shown and "tensor/s" in shown
    pipe = io.StringIO()  # Not a TTY: quiet even with progress=True.
    monkeypatch.setattr(sys, "stderr", pipe)
    save_pretrained(config, params, tmp_path / "hf", format="hf")
    assert pipe.getvalue() == ""
