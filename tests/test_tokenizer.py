"""SentencePiece tokenizer: LLaMA's recipe, exact round trips, digits, byte fallback, CLI."""

import inspect
import json
import os
import pathlib
import pickle
import textwrap

import pytest

from llama_jax.data.tokenizer import Tokenizer, train_tokenizer
from llama_jax.data.tokenizer import __main__ as tokenizer_cli

PROSE = ("It was the best of times, it was the worst of times, it was the age of wisdom, "
         "it was the age of foolishness.  Two spaces,   three spaces.\n")
CODE = "def f(x):\n\tif x:\n\t\treturn [1, 2]\n\n\n    # four-space indent\n    return {'a': x}\r\n"


@pytest.fixture(scope="module")
def tok(tmp_path_factory) -> Tokenizer:
    """A tiny BPE model (vocab 400) trained on some stdlib source and prose."""
    texts = [inspect.getsource(textwrap), inspect.getsource(json), PROSE * 20]
    return train_tokenizer(texts, tmp_path_factory.mktemp("tok") / "tiny", 400)


ROUND_TRIP = {
    "prose": PROSE,
    "code": CODE,
    "digits": "In 1999 there were 1,234,567.89 people; call 555-0100 at 07:30.",
    "emoji": "ok 👍🏽 done 🎉\n",
    "cjk": "日本語のテキストと中文文本",
    "cyrillic_arabic_greek": "Привет мир — مرحبا بالعالم — Καλημέρα",
    "edge_whitespace": "  leading and trailing  \n\n\t",
    "empty": "",
    "single_space": " ",
}


@pytest.mark.parametrize("name", sorted(ROUND_TRIP))
def test_round_trip_is_exact(tok, name):
    text = ROUND_TRIP[name]
    ids = tok.encode(text)
    assert tok.decode(ids) == text
    assert tok.unk_id not in ids  # byte fallback: nothing is unknown
    assert tok.decode(tok.encode(text, bos=True, eos=True)) == text


def test_every_digit_is_its_own_token(tok):
    text = "Year 2023, pi 3.14159, id 0042 and 9876543210"
    pieces = [tok.id_to_piece(i) for i in tok.encode(text) if not tok.is_byte(i)]  # '<0x59>' is not a digit
    digit_counts = [sum(ch.isdigit() for ch in p) for p in pieces]
    assert max(digit_counts) == 1
    assert sum(digit_counts) == sum(ch.isdigit() for ch in text)


def test_unseen_characters_fall_back_to_utf8_bytes(tok):
    for char in ["𝔘", "🦙", "ꙮ"]:
        ids = tok.encode(char)
        byte_ids = [i for i in ids if tok.is_byte(i)]
        assert [tok.id_to_piece(i) for i in byte_ids] == [f"<0x{b:02X}>" for b in char.encode("utf-8")]
        assert tok.decode(ids) == char


def test_llama_special_ids_and_framing(tok):
    assert (tok.unk_id, tok.bos_id, tok.eos_id) == (0, 1, 2)
    assert tok.pad_id == 0  # no pad piece (as LLaMA); padding is masked anyway
    assert tok.vocab_size == 400
    ids = tok.encode("hello", bos=True, eos=True)
    assert ids[0] == 1 and ids[-1] == 2 and ids[1:-1] == tok.encode("hello")
    assert tok.decode([1, *tok.encode("hi"), 2, 2]) == "hi"  # control ids are dropped
    with pytest.raises(ValueError, match="outside the vocabulary"):
        tok.decode([5, 400])
    batch = tok.encode_batch(["a b", CODE], bos=True)
    assert batch == [tok.encode("a b", bos=True), tok.encode(CODE, bos=True)]


def test_load_pickle_and_errors(tok, tmp_path):
    loaded = Tokenizer.load(tok.path)
    assert loaded.encode(CODE) == tok.encode(CODE)
    clone = pickle.loads(pickle.dumps(tok))
    assert clone.encode(PROSE) == tok.encode(PROSE) and clone.vocab_size == tok.vocab_size
    with pytest.raises(FileNotFoundError, match="llama_jax.data.tokenizer"):
        Tokenizer.load(tmp_path / "missing.model")
    junk = tmp_path / "junk.model"
    junk.write_bytes(b"not a sentencepiece model")
    with pytest.raises(ValueError, match="not a valid model"):
        Tokenizer.load(junk)


def test_training_errors_are_clear(tmp_path):
    with pytest.raises(ValueError, match="vocab_size"):
        train_tokenizer(["some text"], tmp_path / "t", 100)
    with pytest.raises(ValueError, match="no text"):
        train_tokenizer(["", "\n\n"], tmp_path / "t", 300)
    with pytest.raises(ValueError, match="too small for this vocabulary"):
        train_tokenizer(["tiny text only"], tmp_path / "t", 5000)
    with pytest.raises(ValueError, match="raise vocab_size or lower character_coverage"):
        train_tokenizer(["".join(chr(0x4E00 + i) for i in range(200))], tmp_path / "t", 300)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        train_tokenizer([pathlib.Path(tmp_path / "nope.txt")], tmp_path / "t", 300)


def test_training_is_reproducible(tmp_path):
    texts = [inspect.getsource(textwrap)]
    a = train_tokenizer(texts, tmp_path / "a", 400)
    b = train_tokenizer(texts, tmp_path / "b", 400)
    assert a.model_proto == b.model_proto


def test_cli_trains_from_folder_and_jsonl(tmp_path, capsys):
    folder = tmp_path / "docs"
    folder.mkdir()
    (folder / "a.py").write_text(inspect.getsource(textwrap))
    (folder / "b.txt").write_text(PROSE * 10)
    jsonl = tmp_path / "more.jsonl"
    jsonl.write_text("\n".join(json.dumps({"body": PROSE + str(i)}) for i in range(20)) + "\n")
    out = tmp_path / "model" / "tok"
    rc = tokenizer_cli.main([f"--sources={folder},{jsonl}", "--vocab_size=400", f"--out={out}", "--field=body"])
    assert rc == 0
    assert os.path.isfile(f"{out}.model") and os.path.isfile(f"{out}.vocab")
    assert "vocab_size=400" in capsys.readouterr().out
    cli_tok = Tokenizer.load(f"{out}.model")
    assert cli_tok.decode(cli_tok.encode(CODE)) == CODE
    assert tokenizer_cli.main([f"--sources={tmp_path / 'nowhere'}", "--vocab_size=400", f"--out={out}"]) == 2
    assert "does not exist" in capsys.readouterr().err


def test_model_file_has_llamas_trainer_and_normalizer_spec(tok, tmp_path):
    """The fields Meta's tokenizer.model carries: BPE, split digits, byte fallback, identity, ids 0/1/2, no pad."""
    sp_pb = pytest.importorskip("sentencepiece.sentencepiece_model_pb2")
    proto = sp_pb.ModelProto()
    proto.ParseFromString(tok.model_proto)
    t, n = proto.trainer_spec, proto.normalizer_spec
    assert t.model_type == sp_pb.TrainerSpec.BPE
    assert t.split_digits and t.byte_fallback and t.allow_whitespace_only_pieces
    assert (t.unk_id, t.bos_id, t.eos_id, t.pad_id) == (0, 1, 2, -1)
    assert n.name == "identity" and n.add_dummy_prefix and not n.remove_extra_whitespaces
    assert [p.piece for p in proto.pieces[:3]] == ["<unk>", "<s>", "</s>"]
    assert [p.piece for p in proto.pieces[3:259]] == [f"<0x{b:02X}>" for b in range(256)]  # as in LLaMA
    (tmp_path / "ckpt").mkdir()
    (tmp_path / "ckpt" / "tokenizer.model").write_bytes(tok.model_proto)  # Meta's checkpoint layout
    assert Tokenizer.load(tmp_path / "ckpt").encode(CODE) == tok.encode(CODE)
