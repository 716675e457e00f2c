"""Language filter (stage ``language``): English kept, French / German dropped, with
the model's labels read from the file and every bad option a clear error."""

import prepare_helpers as ph
import pytest
from datatrove.data import Document

from llama_jax.errors import ConfigError, DataError
from llama_jax.prepare import language, pipeline
from llama_jax.prepare.stage import StageEnv

ENV = StageEnv(name="language", work_dir="/nonexistent", tasks=1)


def _filter(**options):
    cfg = language.default_config()
    for key, value in options.items():
        cfg[key] = value
    (step,) = language.build(cfg, ENV).steps
    return step


def test_default_model_is_the_wheels_lid176_with_its_176_labels():
    labels = language.model_labels(language.default_model_path())
    assert len(labels) == 176 and len(set(labels)) == 176
    assert {"en", "fr", "de", "ru", "zh"} <= set(labels)


def test_english_kept_french_and_german_dropped_with_reasons():
    step = _filter()
    docs = [Document(text=t, id=str(i)) for i, t in enumerate(ph.ENGLISH[:2] + [ph.FRENCH, ph.GERMAN])]
    results = [step.filter(d) for d in docs]
    assert results[:2] == [True, True]
    assert results[2:] == [(False, language.NOT_KEPT)] * 2
    assert [d.metadata["language"] for d in docs] == ["en", "en", "fr", "de"]
    assert all(0.5 <= d.metadata["language_score"] <= 1 for d in docs)


def test_languages_and_threshold_options():
    keep_fr = _filter(languages=("fr", "de"))
    assert keep_fr.filter(Document(text=ph.FRENCH, id="f")) is True
    assert keep_fr.filter(Document(text=ph.ENGLISH[0], id="e")) == (False, language.NOT_KEPT)
    strict = _filter(threshold=1.0)
    assert strict.filter(Document(text="ok then", id="s")) == (False, language.BELOW_THRESHOLD)


def test_unknown_language_code_is_a_config_error():
    with pytest.raises(ConfigError, match=r"'eng' is not a language of the model .*did you mean en"):
        _filter(languages=("eng",))
    with pytest.raises(ConfigError, match="languages is empty"):
        _filter(languages=())
    with pytest.raises(ConfigError, match="threshold=1.5"):
        _filter(threshold=1.5)


def test_missing_or_bad_model_file(tmp_path):
    with pytest.raises(ConfigError, match=r"language.model=.*nope.ftz: no such file"):
        _filter(model=str(tmp_path / "nope.ftz"))
    bad = tmp_path / "bad.bin"
    bad.write_bytes(b"not a fasttext model at all")
    with pytest.raises(DataError, match="is not a fastText model"):
        _filter(model=str(bad))


def test_language_stage_in_the_pipeline(tmp_path):
    texts = ph.ENGLISH[:3] + [ph.FRENCH, ph.GERMAN]
    ph.write_jsonl(str(tmp_path / "in/a.jsonl"), [{"text": t} for t in texts])
    cfg = ph.config(str(tmp_path / "in/a.jsonl"), str(tmp_path / "out"), stages=("language",))
    summary = pipeline.run(cfg, print_table=False)
    out = ph.read_output(str(tmp_path / "out"))
    assert [r["text"] for r in out] == ph.ENGLISH[:3]
    assert all(r["metadata"]["language"] == "en" for r in out)
    assert ph.stage_row(summary, "language")["dropped"] == {language.NOT_KEPT: 2}
