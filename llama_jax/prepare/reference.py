"""Stage ``reference``: keep pages a linear model classifies as Wikipedia references.

The paper's last CommonCrawl filter ("discarded pages not classified as
references"). The model is either ours (`reference_train`: a joblib file,
hashed n-grams + logistic regression) or a user's fastText supervised
``.bin`` / ``.ftz`` with labels ``positive_label`` / ``negative_label``
(cc_net-style ``__label__wiki`` / ``__label__cc``), predicted through the
``fasttext`` module that ``fasttext-predict`` ships. Each page gets
``doc.metadata["reference_score"]`` = P(reference); pages at or below
``threshold`` are dropped with reason ``reference_below_threshold``.
``threshold`` 0.5 is "classified as a reference" for a two-class model.
"""

from __future__ import annotations

import os
import struct

import joblib
import ml_collections
import numpy as np
from datatrove.pipeline.filters.base_filter import BaseFilter

from llama_jax.errors import ConfigError
from llama_jax.prepare.reference_train import MODEL_FORMAT
from llama_jax.prepare.stage import Stage, StageEnv

FLAG = "--config.reference"
FASTTEXT_SUFFIXES = (".bin", ".ftz")
FASTTEXT_MAGIC = 793712314  # the int32 that starts every fastText model file


def default_config() -> ml_collections.ConfigDict:
    """The stage's options (see the module docstring)."""
    c = ml_collections.ConfigDict()
    c.enabled = True
    c.model = ""  # ours (.joblib, from reference_train) or a fastText supervised .bin/.ftz
    c.threshold = 0.5
    c.positive_label = "__label__wiki"  # fastText models only
    c.negative_label = "__label__cc"
    c.batch_size = 256
    return c


class SklearnReference:
    """P(reference) from a `reference_train` model."""

    def __init__(self, path: str):
        payload = joblib.load(path)
        if not isinstance(payload, dict) or payload.get("format") != MODEL_FORMAT:
            raise ConfigError(f"{FLAG}.model={path!r} is not a reference_train model; train one with "
                              "`python -m llama_jax.prepare.reference_train` or pass a fastText .bin")
        self.classifier = payload["classifier"]
        self.positive_column = list(self.classifier.classes_).index(1)

    def __call__(self, texts: list[str]) -> np.ndarray:
        """P(reference) of each text."""
        return self.classifier.predict_proba(texts)[:, self.positive_column]  # [batch]


class FastTextReference:
    """P(reference) from a fastText supervised model (``fasttext-predict``'s `fasttext` module)."""

    def __init__(self, path: str, positive_label: str, negative_label: str):
        import fasttext  # fasttext-predict: load_model and predict only

        self.model = fasttext.load_model(path)
        labels, _ = self.model.predict("", k=-1)  # every label, for the check below
        for flag, label in (("positive_label", positive_label), ("negative_label", negative_label)):
            if label not in labels:
                raise ConfigError(f"{path}: the fastText model's labels are {list(labels)[:8]}, not "
                                  f"{label!r}; set {FLAG}.{flag} to one of them")
        self.positive_label = positive_label

    def __call__(self, texts: list[str]) -> np.ndarray:
        """P(positive label) of each text (fastText predicts one line: newlines become spaces)."""
        scores = np.zeros(len(texts), dtype=np.float64)  # [batch]
        # One predict per line: fasttext-predict's multilinePredict returns labels without probabilities.
        for i, text in enumerate(texts):
            labels, probs = self.model.predict(" ".join(text.split()), k=-1, threshold=0.0)
            scores[i] = dict(zip(labels, probs, strict=True)).get(self.positive_label, 0.0)
        return scores


def load_reference_model(path: str, positive_label: str = "__label__wiki", negative_label: str = "__label__cc"):
    """A callable texts -> P(reference); a missing file is a `ConfigError` naming the flag."""
    if not path or not os.path.isfile(path):
        raise ConfigError(f"{FLAG}.model={path!r}: no such reference classifier; train one with "
                          "`python -m llama_jax.prepare.reference_train --positive=GLOB --negative=GLOB "
                          "--out=MODEL` or pass a fastText supervised .bin")
    if path.endswith(FASTTEXT_SUFFIXES):
        return FastTextReference(path, positive_label, negative_label)
    return SklearnReference(path)


def check_model_file(path: str) -> None:
    """Fail at start-up, not in a worker: a missing file, or one that is neither model kind."""
    if not path or not os.path.isfile(path):
        load_reference_model(path)  # raises the error naming the flag
    if path.endswith(FASTTEXT_SUFFIXES):
        with open(path, "rb") as f:
            magic = f.read(4)
        if len(magic) < 4 or struct.unpack("<i", magic)[0] != FASTTEXT_MAGIC:
            raise ConfigError(f"{FLAG}.model={path!r} is not a fastText model file (bad header); pass a "
                              "fastText supervised .bin/.ftz or a reference_train model")
    else:
        SklearnReference(path)  # small: load it once here to check its format


class ReferenceFilter(BaseFilter):
    """Keep pages with P(reference) above `threshold`; metadata gets ``reference_score``."""

    name = "reference"

    def __init__(self, model: str, threshold: float, positive_label: str, negative_label: str,
                 batch_size: int = 256):
        super().__init__(batch_size=batch_size)
        self.model_path, self.threshold = model, threshold
        self.positive_label, self.negative_label = positive_label, negative_label
        self._model = None

    def __getstate__(self):  # the model is loaded where the step runs, not pickled with it
        return {**self.__dict__, "_model": None}

    def _scores(self, texts: list[str]) -> np.ndarray:
        if self._model is None:
            self._model = load_reference_model(self.model_path, self.positive_label, self.negative_label)
        return self._model(texts)

    def filter_batch(self, batch) -> list[bool | tuple[bool, str]]:
        """Score a batch of pages at once (one sparse matrix product)."""
        scores = self._scores([doc.text for doc in batch])  # [batch]
        results: list[bool | tuple[bool, str]] = []
        for doc, score in zip(batch, scores, strict=True):
            doc.metadata["reference_score"] = round(float(score), 4)
            self.stat_update("reference_score", value=float(score))  # mean / min / max in stats.json
            results.append(True if score > self.threshold else (False, "reference_below_threshold"))
        return results

    def filter(self, doc) -> bool | tuple[bool, str]:
        """One page (see `filter_batch`)."""
        return self.filter_batch([doc])[0]


def build(cfg: ml_collections.ConfigDict, env: StageEnv) -> Stage:
    """The reference stage: one filter (the model file is checked now, loaded where it runs)."""
    if not 0 <= cfg.threshold < 1:
        raise ConfigError(f"{FLAG}.threshold={cfg.threshold}: need a probability in [0, 1)")
    if cfg.batch_size < 1:
        raise ConfigError(f"{FLAG}.batch_size={cfg.batch_size}: need >= 1")
    check_model_file(cfg.model)
    step = ReferenceFilter(cfg.model, cfg.threshold, cfg.positive_label, cfg.negative_label, cfg.batch_size)
    return Stage(env.name, [step])
