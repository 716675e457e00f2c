"""Train the paper's reference classifier: Wikipedia-cited pages vs random pages, a linear model.

LLaMA (Section 2.1): "we trained a linear model to classify pages used as
references in Wikipedia v.s. randomly sampled pages, and discarded pages not
classified as references". The model here is fastText's kind of linear
classifier trained with scikit-learn (fastText's trainer, ``fasttext-wheel``,
does not work beside ``fasttext-predict`` under numpy 2): word uni- and
bigrams hashed into 2**20 features (``HashingVectorizer``, l2-normalised) and
a logistic regression. From two local document sets::

    python -m llama_jax.prepare.reference_train --positive='refs/*.jsonl.gz' \
        --negative='cc/*.jsonl.gz' --out=reference.joblib [--heldout=0.1] [--max_docs=200000]

A share of each set (``--heldout``, chosen by a seeded shuffle) is kept out
of training and the held-out accuracy is printed and written to
``<out>.json`` with the model's settings. The model file is a joblib
pickle: load only models you trained or trust.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence

import joblib
import numpy as np
import sklearn
from sklearn.feature_extraction.text import HashingVectorizer
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import Pipeline

from llama_jax.cli import handle_errors
from llama_jax.errors import ConfigError
from llama_jax.fileio import atomic_write
from llama_jax.prepare import quality_io

MODEL_FORMAT = "llama_jax.reference/1"
N_FEATURES = 2**20


def make_classifier(c: float = 1.0, seed: int = 0) -> Pipeline:
    """Hashed word uni+bigrams (l2-normalised) -> logistic regression: a linear model like fastText's."""
    features = HashingVectorizer(ngram_range=(1, 2), n_features=N_FEATURES, alternate_sign=False,
                                 norm="l2", lowercase=True, dtype=np.float32)
    return Pipeline([("features", features),
                     ("linear", LogisticRegression(C=c, max_iter=1000, class_weight="balanced",
                                                   random_state=seed))])


def split(texts: list[str], heldout: float, rng: np.random.Generator) -> tuple[list[str], list[str]]:
    """(train, held-out) of `texts`, a seeded shuffle with round(heldout * n) held out (at least 1 if n > 1)."""
    order = rng.permutation(len(texts))
    n_out = int(round(heldout * len(texts)))
    if heldout > 0 and len(texts) > 1:
        n_out = max(1, n_out)
    held = [texts[i] for i in order[:n_out]]
    return [texts[i] for i in order[n_out:]], held


def train(positive: list[str], negative: list[str], out: str, heldout: float = 0.1, c: float = 1.0,
          seed: int = 0) -> dict:
    """Fit on `positive` (references, label 1) vs `negative` (random pages, 0); save to `out`; the summary."""
    if not 0 <= heldout < 1:
        raise ConfigError(f"--heldout={heldout}: need a share in [0, 1)")
    for flag, texts in (("--positive", positive), ("--negative", negative)):
        if len(texts) < 2:
            raise ConfigError(f"{flag}: {len(texts)} document(s); a classifier needs at least 2 per class")
    rng = np.random.default_rng(seed)
    pos_train, pos_held = split(positive, heldout, rng)
    neg_train, neg_held = split(negative, heldout, rng)
    model = make_classifier(c, seed)
    labels = np.array([1] * len(pos_train) + [0] * len(neg_train))  # [n_train]
    model.fit(pos_train + neg_train, labels)
    summary = {"format": MODEL_FORMAT, "model": out, "positive_docs": len(positive), "negative_docs": len(negative),
               "train_docs": len(labels), "heldout_docs": len(pos_held) + len(neg_held),
               "features": "hashed word 1-2 grams, l2", "n_features": N_FEATURES, "C": c, "seed": seed,
               "sklearn_version": sklearn.__version__}
    if pos_held or neg_held:
        held_labels = np.array([1] * len(pos_held) + [0] * len(neg_held))  # [n_held]
        predicted = model.predict(pos_held + neg_held)  # [n_held]
        summary["heldout_accuracy"] = round(float(np.mean(predicted == held_labels)), 4)
    joblib.dump({"format": MODEL_FORMAT, "classifier": model}, out)
    atomic_write(out + ".json", json.dumps(summary, indent=2).encode("utf-8"))
    return summary


@handle_errors
def main(argv: Sequence[str] | None = None) -> int:
    """CLI: train the reference classifier from two local document sets; returns the exit status."""
    parser = argparse.ArgumentParser(prog="python -m llama_jax.prepare.reference_train", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--positive", required=True, help="glob(s) of pages cited as references (Wikipedia)")
    parser.add_argument("--negative", required=True, help="glob(s) of randomly sampled pages (CommonCrawl)")
    parser.add_argument("--out", required=True, help="the model file to write (joblib) and OUT.json")
    parser.add_argument("--heldout", type=float, default=0.1, help="share of each set held out for accuracy")
    parser.add_argument("--C", type=float, default=1.0, dest="c", help="inverse l2 strength of the regression")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--text_key", default="text", help="the JSONL field holding the text")
    parser.add_argument("--max_docs", type=int, default=0, help="read at most this many per set (0 = all)")
    args = parser.parse_args(argv)
    positive = list(quality_io.iter_all_texts(quality_io.expand_globs(args.positive, "--positive"),
                                              args.text_key, args.max_docs))
    negative = list(quality_io.iter_all_texts(quality_io.expand_globs(args.negative, "--negative"),
                                              args.text_key, args.max_docs))
    summary = train(positive, negative, args.out, args.heldout, args.c, args.seed)
    print(json.dumps(summary))
    return 0


if __name__ == "__main__":
    sys.exit(main())
