"""A Hugging Face tokenizer.json (Llama 3's byte-level BPE) behind our Tokenizer interface.

The reference is transformers' AutoTokenizer on the same folder: ids, special
ids and decoded text must agree; the CLIs run on a folder with only tokenizer.json.
"""

import json
import os
import pathlib
import pickle
import shutil
import subprocess
import sys

import pytest

from llama_jax.convert.hf_tokenizer import checkpoint_tokenizer, find_tokenizer, load_tokenizer
from llama_jax.data.tokenizer import (
    HFTokenizer,
    Tokenizer,
    check_tokenizer_fits,
    train_tokenizer,
)
from llama_jax.errors import ConversionError, DataError

tokenizers = pytest.importorskip("tokenizers")
transformers = pytest.importorskip("transformers")

# Llama 3's pre-tokenizer regex (its tokenizer.json's Split pattern).
LLAMA3_PATTERN = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?"
                  r"[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+")
BOT, EOT, EOT_ID_TOKEN = "<|begin_of_text|>", "<|end_of_text|>", "<|eot_id|>"
VOCAB = 512  # 509 BPE tokens + the 3 specials: the tiny models' vocab_size, as in Llama 3

TEXTS = [
    "The quick brown fox jumps over the lazy dog. It's what they'll do!",
    "def f(x):\n\tif x > 10:\n\t\treturn x * 2  # double\n\treturn None\n",
    "Digits: 0 12 345 6789 3.14159 1,000,000 and 2024-01-31",
    "emoji 😀🎉👍🏽 and flags 🇫🇷, math ∑ ∞ ≠",
    "日本語のテキストと中文文本，还有한국어 텍스트.",
    "  leading spaces,\ttabs\t\tand trailing newlines\n\n\n",
    "mixed: café naïve résumé — “quotes” ‘single’ … ",
]


def build_llama3_like(folder: pathlib.Path, *, vocab_size: int = 509, side=None) -> pathlib.Path:
    """A byte-level BPE trained on stdlib text, Llama 3's pipeline and special tokens."""
    from tokenizers import Regex, decoders, models, pre_tokenizers, processors, trainers

    tk = tokenizers.Tokenizer(models.BPE())
    tk.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(LLAMA3_PATTERN), behavior="isolated"),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])
    tk.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tk.train_from_iterator([pathlib.Path(json.__file__).read_text(), *TEXTS[:3]], trainer)
    tk.add_special_tokens([BOT, EOT, EOT_ID_TOKEN])
    bos = tk.token_to_id(BOT)
    tk.post_processor = processors.Sequence([
        processors.ByteLevel(trim_offsets=False),
        processors.TemplateProcessing(single=f"{BOT} $A", pair=f"{BOT} $A {BOT} $B",
                                      special_tokens=[(BOT, bos)])])
    folder.mkdir(parents=True, exist_ok=True)
    tk.save(str(folder / "tokenizer.json"))
    files = {"tokenizer_config.json": {
        "bos_token": BOT, "eos_token": EOT, "tokenizer_class": "PreTrainedTokenizerFast",
        "clean_up_tokenization_spaces": True, "model_max_length": 131072}}
    files.update(side or {})
    for name, obj in files.items():
        (folder / name).write_text(json.dumps(obj))
    return folder


@pytest.fixture(scope="module")
def llama3_dir(tmp_path_factory):
    return build_llama3_like(tmp_path_factory.mktemp("llama3_tok"))


@pytest.fixture(scope="module")
def ours(llama3_dir):
    return HFTokenizer.load(llama3_dir)


@pytest.fixture(scope="module")
def theirs(llama3_dir):
    return transformers.AutoTokenizer.from_pretrained(str(llama3_dir))


@pytest.mark.parametrize("text", TEXTS)
def test_ids_equal_transformers_and_round_trips_are_exact(ours, theirs, text):
    ids = ours.encode(text)
    assert ids == theirs(text, add_special_tokens=False)["input_ids"]
    # Framing: our bos flag == the file's template (BOS first), no second BOS.
    assert ours.encode(text, bos=True) == theirs(text)["input_ids"]
    assert ours.encode(text, bos=True, eos=True)[-1] == ours.eos_id == theirs.eos_token_id
    assert ours.decode(ids) == text
    assert ours.decode(ours.encode(text, bos=True, eos=True)) == text
    assert ours.decode(ids) == theirs.decode(ids, skip_special_tokens=True)
    assert ours.encode_batch([text, text], bos=True) == [theirs(text)["input_ids"]] * 2
    assert all(ours.unk_id is None or i != ours.unk_id for i in ids)  # byte-level: nothing unknown


def test_special_ids_and_special_strings(ours, theirs):
    assert (ours.bos_id, ours.eos_id) == (theirs.bos_token_id, theirs.eos_token_id)
    assert ours.unk_id is None and theirs.unk_token_id is None  # a BPE with no unk
    assert ours.pad_id == ours.eos_id  # no pad, no unk: padded slots carry eos (masked)
    assert ours.vocab_size == len(theirs) == VOCAB
    text = f"{BOT}Hello{EOT_ID_TOKEN} world{EOT}"
    ids = ours.encode(text)
    assert ids == theirs(text, add_special_tokens=False)["input_ids"]
    for tok in (BOT, EOT, EOT_ID_TOKEN):  # each special string is one id, never split
        assert ids.count(ours._tk.token_to_id(tok)) == 1
    assert ours.decode(ids) == "Hello world"  # specials dropped, as SentencePiece drops control ids
    assert ours.id_to_piece(ours.encode(" the")[0]) == "Ġthe" and not ours.is_byte(ids[1])
    assert ours.is_special(ours.bos_id) and not ours.is_special(ids[1])
    back = pickle.loads(pickle.dumps(ours))
    assert back.encode(TEXTS[1], bos=True) == ours.encode(TEXTS[1], bos=True)
    assert (back.bos_id, back.eos_id, back.path) == (ours.bos_id, ours.eos_id, ours.path)


def test_special_ids_resolve_as_transformers_does(tmp_path):
    side = {"special_tokens_map.json": {"eos_token": {"content": EOT_ID_TOKEN, "lstrip": False},
                                        "pad_token": EOT},
            "generation_config.json": {"bos_token_id": 0, "eos_token_id": [510, 511]}}
    folder = build_llama3_like(tmp_path / "a", side=side)
    ours = HFTokenizer.load(folder / "tokenizer.json")
    theirs = transformers.AutoTokenizer.from_pretrained(str(folder))
    # The legacy special_tokens_map overrides tokenizer_config; the tokenizer's tokens beat
    # generation_config's ids; every eos id of the model's config is a stop id.
    assert (ours.bos_id, ours.eos_id, ours.pad_id) == (
        theirs.bos_token_id, theirs.eos_token_id, theirs.pad_token_id) == (509, 511, 510)
    assert ours.stop_ids == (511, 510)
    # No bos/eos token in the tokenizer files: the ids come from generation_config, then config.
    cfg = tmp_path / "b"
    build_llama3_like(cfg, side={"tokenizer_config.json": {"tokenizer_class": "X"},
                                 "config.json": {"bos_token_id": 509, "eos_token_id": 510}})
    tok = HFTokenizer.load(cfg)
    assert (tok.bos_id, tok.eos_id, tok.stop_ids) == (509, 510, (510,))
    (cfg / "config.json").unlink()
    bare = HFTokenizer.load(cfg)
    assert bare.bos_id is None and bare.encode("hi") == tok.encode("hi")
    with pytest.raises(DataError, match="names no bos token"):
        bare.encode("hi", bos=True)
    bad = build_llama3_like(tmp_path / "c", side={"tokenizer_config.json": {"bos_token": "<s>"}})
    with pytest.raises(DataError, match=r"bos_token '<s>'.*not in its vocabulary"):
        HFTokenizer.load(bad)
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "tokenizer.json").write_text("{not json")
    with pytest.raises(ConversionError, match="d/tokenizer.json is not a Hugging Face tokenizer.json"):
        load_tokenizer(tmp_path / "d")


def test_our_sentencepiece_export_reads_back_as_the_same_tokenizer(tmp_path):
    """tokenizer.json written by save_pretrained from a SentencePiece model, read without
    tokenizer.model: byte fallback, split_special_tokens and ids as SentencePiece's."""
    import jax

    import llama_jax
    from llama_jax.model import LlamaConfig, init_params

    sp = train_tokenizer([pathlib.Path(json.__file__)], str(tmp_path / "sp"), vocab_size=384)
    cfg = LlamaConfig(dim=32, n_layers=1, n_heads=4, vocab_size=384, multiple_of=32,
                      max_seq_len=32)
    out = llama_jax.save_pretrained(cfg, init_params(cfg, jax.random.key(0)), tmp_path / "hf",
                                    format="hf", tokenizer=sp)
    assert isinstance(load_tokenizer(out), Tokenizer)  # tokenizer.model wins when both are there
    (out / "tokenizer.model").unlink()
    hf = load_tokenizer(out)
    assert isinstance(hf, HFTokenizer) and find_tokenizer(out) == out / "tokenizer.json"
    for text in [*TEXTS, "literal <s> and </s> stay text"]:
        assert hf.encode(text, bos=True, eos=True) == sp.encode(text, bos=True, eos=True)
        assert hf.decode(sp.encode(text)) == sp.decode(sp.encode(text))
    assert (hf.bos_id, hf.eos_id, hf.unk_id, hf.pad_id, hf.vocab_size) == (
        sp.bos_id, sp.eos_id, sp.unk_id, sp.pad_id, sp.vocab_size)
    byte = sp.encode("😀")[1]
    assert sp.is_byte(byte) and hf.is_byte(byte) and hf.id_to_piece(byte) == sp.id_to_piece(byte)


def test_finding_and_vocab_mismatch_errors(tmp_path, llama3_dir, ours):
    with pytest.raises(ConversionError, match=r"no tokenizer.model or tokenizer.json .*--tokenizer"):
        checkpoint_tokenizer(tmp_path)
    tok, path = checkpoint_tokenizer(tmp_path, llama3_dir / "tokenizer.json")
    assert isinstance(tok, HFTokenizer) and path == str(llama3_dir / "tokenizer.json")
    check_tokenizer_fits(ours, VOCAB)
    check_tokenizer_fits(ours, 2 * VOCAB)  # padded embeddings are fine
    with pytest.raises(DataError) as e:
        check_tokenizer_fits(ours, 256, "checkpoint /ckpt")
    msg = str(e.value)
    assert str(llama3_dir / "tokenizer.json") in msg and f"{VOCAB} ids" in msg
    assert "vocab_size=256" in msg and "/ckpt" in msg and "--tokenizer" in msg


@pytest.fixture(scope="module")
def hf_folder(tmp_path_factory, llama3_dir):
    """A tiny random HF checkpoint whose only tokenizer file is tokenizer.json."""
    import jax

    import llama_jax
    from llama_jax.model import LlamaConfig, init_params

    cfg = LlamaConfig(dim=64, n_layers=2, n_heads=4, n_kv_heads=2, vocab_size=512,
                      multiple_of=32, max_seq_len=256)
    out = tmp_path_factory.mktemp("ckpt") / "hf"
    llama_jax.save_pretrained(cfg, init_params(cfg, jax.random.key(0)), out, format="hf")
    for name in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copy(llama3_dir / name, out / name)
    gen = json.loads((out / "generation_config.json").read_text())  # LLaMA's 1/2/0 without one
    gen.update(bos_token_id=VOCAB - 3, eos_token_id=VOCAB - 2, pad_token_id=None)
    (out / "generation_config.json").write_text(json.dumps(gen))
    assert not (out / "tokenizer.model").exists()
    return out


def _run(args, timeout=400):
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=2",
               JAX_PLATFORMS="cpu")
    return subprocess.run([sys.executable, "-m", *args], capture_output=True, text=True, env=env,
                          timeout=timeout)


def test_generate_and_eval_cli_on_a_folder_with_only_tokenizer_json(hf_folder, tmp_path, ours):
    out = tmp_path / "gen.jsonl"
    done = _run(["llama_jax.generate", f"--checkpoint={hf_folder}", "--prompt=def f(x):\n\t",
                 "--prompt=日本語 😀", "--max_new_tokens=6", f"--output={out}"])
    assert done.returncode == 0, done.stderr[-3000:]
    records = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r["prompt"] for r in records] == ["def f(x):\n\t", "日本語 😀"]
    assert all(isinstance(r["text"], str) for r in records)

    data = tmp_path / "data" / "perplexity"
    data.mkdir(parents=True)
    (data / "mixed.jsonl").write_text("".join(json.dumps({"text": t}) + "\n" for t in TEXTS))
    long_docs = tmp_path / "data" / "long_perplexity"
    long_docs.mkdir()
    (long_docs / "long.txt").write_text(pathlib.Path(json.__file__).read_text())
    res = tmp_path / "results.json"
    # The long-context tasks score past the checkpoint's max_seq_len=256 (--max_seq_len).
    done = _run(["llama_jax.eval", f"--checkpoint={hf_folder}", f"--output={res}",
                 "--tasks=perplexity,long_perplexity,passkey", f"--data_dir={tmp_path / 'data'}",
                 "--batch_size=2", "--max_seq_len=512", "--position_bucket=128",
                 "--passkey_lengths=200,512", "--passkey_depths=0,1", "--passkey_samples=1"])
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads(res.read_text())
    long = report["results"]["long_perplexity"]
    assert list(long["buckets"]) == ["[0, 128)", "[128, 256)", "[256, 384)", "[384, 512)"]
    assert long["tokens"] == 512 and long["seq_len"] == 512
    assert report["results"]["passkey"]["num_examples"] == 4
    assert set(report["results"]["passkey"]["grid"]) == {"200@0.0", "200@1.0", "512@0.0", "512@1.0"}
    table = res.with_suffix(".md").read_text()
    assert "| long_perplexity [384, 512) | perplexity |" in table
    assert "| passkey 512 tokens, depth 1.0 | accuracy |" in table
    assert report["model"]["tokenizer"] == str(hf_folder / "tokenizer.json")
    src = report["results"]["perplexity"]["sources"]["mixed"]
    assert src["tokens"] == sum(len(ours.encode(t)) for t in TEXTS)  # scored with our BPE ids
    assert 1.0 < src["perplexity"] < 3 * 512


def test_cli_refuses_a_tokenizer_larger_than_the_model(tmp_path, llama3_dir):
    import jax

    import llama_jax
    from llama_jax.model import LlamaConfig, init_params

    cfg = LlamaConfig(dim=32, n_layers=1, n_heads=4, vocab_size=256, multiple_of=32,
                      max_seq_len=32)
    ckpt = llama_jax.save_pretrained(cfg, init_params(cfg, jax.random.key(0)), tmp_path / "m",
                                     format="hf")
    tok = llama3_dir / "tokenizer.json"
    done = _run(["llama_jax.generate", f"--checkpoint={ckpt}", f"--tokenizer={tok}",
                 "--prompt=hi"], timeout=200)
    assert done.returncode == 2, done.stderr[-3000:]
    line = done.stderr.strip().splitlines()[-1]
    assert line.startswith("error:") and str(tok) in line and f"{VOCAB} ids" in line
    assert "vocab_size=256" in line and "--tokenizer" in line


def test_convert_carries_a_tokenizer_json(hf_folder, tmp_path, ours):
    from llama_jax.convert import convert_checkpoint

    for fmt in ("orbax", "hf"):
        dst = tmp_path / fmt
        convert_checkpoint(hf_folder, dst, fmt, progress=False)
        assert not (dst / "tokenizer.model").exists()
        back = load_tokenizer(dst)
        assert isinstance(back, HFTokenizer)
        assert back.tokenizer_json == ours.tokenizer_json
        assert (back.bos_id, back.eos_id) == (ours.bos_id, ours.eos_id)
    gen = json.loads((tmp_path / "hf" / "generation_config.json").read_text())
    assert (gen["bos_token_id"], gen["eos_token_id"]) == (ours.bos_id, ours.eos_id)
