"""tqdm progress bars on the long data jobs: the corpus build (per source) and tokenizer training."""

import inspect
import json
import pathlib
import textwrap

from llama_jax.data import corpus as corpus_lib
from llama_jax.data.tokenizer import sentencepiece_bpe as tok_lib


def _texts(tmp_path):
    path = tmp_path / "wrap.py"
    path.write_text(inspect.getsource(textwrap), encoding="utf-8")
    return [path, inspect.getsource(json), "def f(x):\n\treturn 12345\n"]


def test_tokenizer_training_bar_counts_inputs_then_trains(tmp_path, capsys):
    texts = _texts(tmp_path)
    assert tok_lib._count_inputs(texts) == 3
    tok = tok_lib.train_tokenizer(texts, tmp_path / "tok", 400, num_threads=1, progress=True)
    err = capsys.readouterr().err
    assert "tokenizer: 100%" in err and "3/3" in err and "read; training BPE" in err
    assert tok.vocab_size == 400
    again = tok_lib.train_tokenizer(texts, tmp_path / "tok2", 400, num_threads=1, progress=False)
    assert capsys.readouterr().err == ""
    assert again.model_proto == tok.model_proto  # the bar does not change what is trained


def test_tokenizer_bar_is_closed_on_a_bad_input(tmp_path, capsys):
    missing = pathlib.Path(tmp_path / "nope.txt")
    try:
        tok_lib.train_tokenizer([missing, "some text here"], tmp_path / "t", 300, progress=True)
    except FileNotFoundError as e:
        assert "nope.txt" in str(e)
    else:
        raise AssertionError("a missing input file must raise")
    err = capsys.readouterr().err
    assert "tokenizer:" in err and "0/2" in err and err.endswith("\n")  # closed: the line ends


def test_corpus_source_bar_and_jsonl(tmp_path, capsys):
    docs = [(f"doc{i}", f"text {i} ✓") for i in range(5)]
    n_docs, n_bytes = corpus_lib._write_jsonl(str(tmp_path / "code.jsonl"), iter(docs), desc="corpus: code",
                                              progress=True)
    err = capsys.readouterr().err
    assert "corpus: code: 5doc" in err
    assert (n_docs, n_bytes) == (5, sum(len(t.encode()) for _, t in docs))
    rows = [json.loads(line) for line in (tmp_path / "code.jsonl").read_text(encoding="utf-8").splitlines()]
    assert rows == [{"id": i, "text": t} for i, t in docs]
    corpus_lib._write_jsonl(str(tmp_path / "quiet.jsonl"), iter(docs), progress=False)
    assert capsys.readouterr().err == ""
