"""The demo input (built from installed packages) through the CCNet stages, with the
optional token shards and per-source token count checked against re-tokenising."""

import gzip
import json
import os

import numpy as np
import prepare_helpers as ph
import pytest

from llama_jax.data.tokenizer import load_tokenizer, train_tokenizer
from llama_jax.errors import ConfigError
from llama_jax.prepare import demo, pipeline


@pytest.fixture(scope="module")
def demo_input(tmp_path_factory):
    folder = str(tmp_path_factory.mktemp("demo") / "input")
    paths = demo.write_demo(folder, shards=2)
    assert [os.path.basename(p) for p in paths] == ["part-00000.jsonl.gz", "part-00001.jsonl.gz"]
    again = demo.write_demo(folder + "_again", shards=2)
    assert [open(p, "rb").read() for p in paths] == [open(p, "rb").read() for p in again]
    return folder


def _records(folder):
    out = []
    for name in sorted(os.listdir(folder)):
        with gzip.open(os.path.join(folder, name), "rt", encoding="utf-8") as f:
            out += [json.loads(line) for line in f]
    return out


def test_demo_has_foreign_pages_boilerplate_and_duplicates(demo_input):
    records = _records(demo_input)
    urls = [r["url"] for r in records]
    assert len(urls) > 300 and len(set(urls)) < len(urls)  # exact duplicate pages
    for lang in demo.MMLU_LANGUAGES:
        assert any(u.startswith(f"https://{lang}.example/") for u in urls)
    assert sum(demo.FOOTER in r["text"] for r in records) > len(records) / 2


def test_ccnet_stages_on_the_demo_with_token_counts(demo_input, tmp_path):
    train_tokenizer([*ph.ENGLISH, ph.FRENCH, ph.GERMAN] * 20, str(tmp_path / "tok"), 300,
                    progress=False)
    cfg = ph.config(os.path.join(demo_input, "*.jsonl.gz"), str(tmp_path / "out"),
                    tokenizer=str(tmp_path / "tok.model"), source="commoncrawl")
    summary = pipeline.run(cfg, print_table=False)
    rows = {r["stage"]: r for r in summary["stages"]}
    assert rows["line_dedup"]["dropped"]["all_lines_duplicate"] > 0
    assert rows["language"]["dropped"]["language_not_kept"] > 0
    out = ph.read_output(str(tmp_path / "out"))
    urls = [r["metadata"]["url"] for r in out]
    assert len(set(urls)) == len(urls)            # both copies of a duplicated page are gone
    assert not any(".example/" in u and u.split("//")[1][:2] in demo.MMLU_LANGUAGES for u in urls)
    assert not any(demo.FOOTER in r["text"] or demo.NAVIGATION in r["text"] for r in out)
    assert {r["metadata"]["language"] for r in out} == {"en"}

    tokenizer = load_tokenizer(str(tmp_path / "tok.model"))
    expected = [np.asarray([*tokenizer.encode(r["text"]), tokenizer.eos_id], np.uint32) for r in out]
    shards = [np.load(tmp_path / "out/tokens" / n) for n in sorted(os.listdir(tmp_path / "out/tokens"))
              if n.endswith(".npy")]
    np.testing.assert_array_equal(np.concatenate(shards), np.concatenate(expected))
    counts = json.load(open(tmp_path / "out/token_counts.json"))
    assert counts["commoncrawl"]["tokens"] == sum(e.size for e in expected)
    assert counts["commoncrawl"]["documents"] == len(out) == summary["tokens"]["documents"]
    assert counts["commoncrawl"]["vocab_size"] == 300


def test_missing_tokenizer_is_an_error_before_any_work(demo_input, tmp_path):
    cfg = ph.config(os.path.join(demo_input, "*.jsonl.gz"), str(tmp_path / "out"),
                    tokenizer=str(tmp_path / "missing.model"))
    with pytest.raises(ConfigError, match="missing.model: no such file"):
        pipeline.run(cfg, print_table=False)
    assert not os.path.exists(tmp_path / "out")


def test_all_four_ccnet_stages_on_the_demo(demo_input, tmp_path):
    """The README's demo: both quality models trained from the installed-text sets, then
    line dedup, language, perplexity and reference; spam pages end in the tail."""
    from llama_jax.prepare import ngram_lm, reference_train

    sets = demo.write_quality_sets(str(tmp_path / "quality"))
    assert ngram_lm.main([f"--input={sets['lm_train']}", f"--out={tmp_path / 'lm.arpa'}",
                          "--order=3"]) == 0
    assert reference_train.main([f"--positive={sets['reference_positive']}",
                                 f"--negative={sets['reference_negative']}",
                                 f"--out={tmp_path / 'ref.joblib'}"]) == 0
    cfg = ph.config(os.path.join(demo_input, "*.jsonl.gz"), str(tmp_path / "out"),
                    stages=("line_dedup", "language", "perplexity", "reference"))
    cfg.perplexity.model = str(tmp_path / "lm.arpa")
    cfg.reference.model = str(tmp_path / "ref.joblib")
    summary = pipeline.run(cfg, print_table=False)
    rows = {r["stage"]: r for r in summary["stages"]}
    assert list(rows) == ["input", "line_dedup", "language", "perplexity", "reference"]
    assert rows["perplexity"]["dropped"]["perplexity_tail"] > 0
    out = ph.read_output(str(tmp_path / "out"))
    assert len(out) == rows["reference"]["documents_out"] > 0
    assert not any("shop" in r["metadata"]["url"] for r in out)  # no generated spam page is left
    assert all(r["metadata"]["bucket"] in ("head", "middle") for r in out)
    assert all(r["metadata"]["reference_score"] > 0.5 for r in out)
