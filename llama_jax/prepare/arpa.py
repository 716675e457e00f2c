"""N-gram language models in ARPA format: text normalisation, tokenisation, scoring.

cc_net scores each line of a page with a 5-gram KenLM model trained on
SentencePiece-tokenised Wikipedia, after `normalize` (lower case, accents
stripped, digits to 0, unicode punctuation mapped to ASCII, non-printing
characters removed). This module is the scoring half without KenLM:

* `normalize` is cc_net's ``text_normalizer.normalize`` (its defaults);
* `LineTokenizer` turns a line into the space-joined tokens the LM was
  trained on (SentencePiece pieces, or whitespace words);
* `ArpaModel` reads an ARPA file (``.arpa`` or ``.arpa.gz``: ours, from
  `llama_jax.prepare.ngram_lm`, or a user's KenLM one) and scores a sentence
  as ``kenlm.Model.score`` does (log10, ``<s>`` / ``</s>`` added, backoff);
* `load_language_model` uses ``kenlm.Model`` when the binding is installed
  (it is needed for KenLM's binary ``.bin`` files) and `ArpaModel` otherwise.
"""

from __future__ import annotations

import gzip
import importlib.util
import os
import re
import unicodedata
from typing import Protocol

from llama_jax.errors import ConfigError, DataError

BOS, EOS, UNK = "<s>", "</s>", "<unk>"
# KenLM's log10 probability for a word the model does not know (no <unk> entry).
UNKNOWN_LOG10 = -100.0

# cc_net text_normalizer.UNICODE_PUNCT: unicode punctuation -> ASCII.
UNICODE_PUNCT = {
    "，": ",", "。": ".", "、": ",", "„": '"', "”": '"', "“": '"', "«": '"', "»": '"', "１": '"',
    "」": '"', "「": '"', "《": '"', "》": '"', "´": "'", "∶": ":", "：": ":", "？": "?", "！": "!",
    "（": "(", "）": ")", "；": ";", "–": "-", "—": " - ", "．": ". ", "～": "~", "’": "'", "…": "...",
    "━": "-", "〈": "<", "〉": ">", "【": "[", "】": "]", "％": "%", "►": "-",
}
_NON_PRINTING_RE = re.compile(f"[{''.join(map(chr, list(range(0, 32)) + list(range(127, 160))))}]")
_DIGIT_RE = re.compile(r"\d")


def normalize(line: str) -> str:
    """cc_net's ``normalize(line)``: strip, lower, strip accents, digits to 0, ASCII punctuation."""
    line = line.strip()
    if not line:
        return line
    line = line.lower()
    nfd = unicodedata.normalize("NFD", line)
    line = "".join(c for c in nfd if unicodedata.category(c) != "Mn")
    line = _DIGIT_RE.sub("0", line)
    line = "".join(UNICODE_PUNCT.get(c, c) for c in line)
    return _NON_PRINTING_RE.sub("", line)


class LineTokenizer:
    """A line -> the space-joined tokens an n-gram LM scores (cc_net: normalise, then SentencePiece).

    Args:
      sp_model: a SentencePiece model file (cc_net ships ``<lang>.sp.model`` beside
        each ``<lang>.arpa.bin``); "" splits on whitespace instead.
      do_normalize: apply `normalize` first (cc_net does).
    """

    def __init__(self, sp_model: str = "", do_normalize: bool = True):
        self.sp_model = sp_model
        self.do_normalize = do_normalize
        self._sp = None

    def __getstate__(self):  # the SentencePiece processor is re-loaded where the step runs
        return {**self.__dict__, "_sp": None}

    def __call__(self, line: str) -> str:
        """The tokens of `line` joined by single spaces ("" for a line with none)."""
        if self.do_normalize:
            line = normalize(line)
        if not self.sp_model:
            return " ".join(line.split())
        if self._sp is None:
            import sentencepiece  # the core dependency; imported where it is used

            if not os.path.isfile(self.sp_model):
                raise ConfigError(f"SentencePiece model {self.sp_model!r} not found; pass the .sp.model the "
                                  "n-gram LM was trained with, or '' for whitespace tokens")
            self._sp = sentencepiece.SentencePieceProcessor(model_file=self.sp_model)
        return " ".join(self._sp.encode(line, out_type=str))


class LanguageModel(Protocol):
    """What the perplexity filter needs: ``kenlm.Model``'s `score`."""

    def score(self, sentence: str, bos: bool = True, eos: bool = True) -> float:
        """log10 P(sentence), words separated by spaces."""


class ArpaModel:
    """A back-off n-gram model read from an ARPA file, scored as KenLM scores it.

    ``log10 p(w | h) = prob(h w)`` if ``h w`` is listed, else
    ``backoff(h) + log10 p(w | h[1:])`` (a context that is not listed backs off
    with 0); a word the model does not know is ``<unk>``.
    """

    def __init__(self, path: str):
        self.path = path
        self.probs: list[dict[tuple[str, ...], float]] = []  # [order-1]: n-gram -> log10 prob
        self.backoffs: dict[tuple[str, ...], float] = {}
        self._read(path)
        self.order = len(self.probs)
        self.vocab = {g[0] for g in self.probs[0]}
        self.unk_log10 = self.probs[0].get((UNK,), UNKNOWN_LOG10)
        self._all_probs = {g: p for level in self.probs for g, p in level.items()}  # n-grams of every order

    def _read(self, path: str) -> None:
        opener = gzip.open if path.endswith(".gz") else open
        section = 0  # 0: before \data\, -1: the \data\ counts, n: in \n-grams:
        counts: dict[int, int] = {}
        try:
            with opener(path, "rt", encoding="utf-8") as f:
                for line_no, raw in enumerate(f, 1):
                    line = raw.strip()
                    if not line:
                        continue
                    if line == "\\data\\":
                        section = -1
                    elif line == "\\end\\":
                        break
                    elif line.startswith("\\") and line.endswith("-grams:"):
                        section = int(line[1:-len("-grams:")])
                        while len(self.probs) < section:
                            self.probs.append({})
                    elif section == -1 and line.startswith("ngram "):
                        n, count = line[len("ngram "):].split("=")
                        counts[int(n)] = int(count)
                    elif section > 0:
                        self._add(section, line, path, line_no)
        except (UnicodeDecodeError, EOFError, gzip.BadGzipFile, ValueError) as e:
            if isinstance(e, DataError):
                raise
            raise DataError(f"{path}: not a readable ARPA file ({type(e).__name__}: {e}); pass an .arpa "
                            "text file (KenLM's build_binary output .bin needs `pip install kenlm`)") from e
        if not self.probs or not self.probs[0]:
            raise DataError(f"{path}: no \\1-grams: section; not an ARPA language model")
        for n, count in counts.items():
            if n > len(self.probs) or len(self.probs[n - 1]) != count:
                got = len(self.probs[n - 1]) if n <= len(self.probs) else 0
                raise DataError(f"{path}: the header says ngram {n}={count} but {got} are listed "
                                "(a truncated file?); re-write the model")

    def _add(self, order: int, line: str, path: str, line_no: int) -> None:
        """One n-gram line: ``log10prob<TAB>w1 .. wn[<TAB>backoff]`` (or all space-separated)."""
        if "\t" in line:
            parts = line.split("\t")
            words, rest = tuple(parts[1].split()) if len(parts) > 1 else (), parts[2:]
        else:
            parts = line.split()
            words, rest = tuple(parts[1:order + 1]), parts[order + 1:]
        if len(words) != order or len(rest) > 1:
            raise DataError(f"{path}:{line_no}: a {order}-gram line needs 'log10prob words [backoff]', "
                            f"got {line[:80]!r}; re-write the model")
        self.probs[order - 1][words] = float(parts[0])
        if rest:
            self.backoffs[words] = float(rest[0])

    def log10_prob(self, context: tuple[str, ...], word: str) -> float:
        """log10 p(word | context), context oldest word first (already mapped to the vocabulary)."""
        if word not in self.vocab:
            word = UNK
        backoff = 0.0
        for start in range(len(context) + 1):
            ngram = context[start:] + (word,)
            prob = self.probs[len(ngram) - 1].get(ngram) if len(ngram) <= self.order else None
            if prob is not None:
                return prob + backoff
            backoff += self.backoffs.get(context[start:], 0.0)
        return self.unk_log10 + backoff

    def score(self, sentence: str, bos: bool = True, eos: bool = True) -> float:
        """log10 P(sentence) (``kenlm.Model.score``): the words and ``</s>`` given ``<s>``.

        As KenLM does, the next context is the n-gram just matched (cut to
        order - 1 words): a longer one is not listed, so it has no backoff weight.
        """
        words = sentence.split()
        if eos:
            words.append(EOS)
        probs, backoffs, vocab, keep = self._all_probs, self.backoffs, self.vocab, self.order - 1
        context: tuple[str, ...] = (BOS,) if bos else ()
        total = 0.0
        for word in words:
            if word not in vocab:
                word = UNK
            backoff, start = 0.0, 0
            while True:
                ngram = context[start:] + (word,)
                prob = probs.get(ngram)
                if prob is not None:
                    break
                if start == len(context):  # an unknown word and no <unk> entry
                    prob, ngram = self.unk_log10, ()
                    break
                backoff += backoffs.get(context[start:], 0.0)
                start += 1
            total += prob + backoff
            context = ngram[-keep:] if keep else ()
        return total


def kenlm_available() -> bool:
    """Whether the ``kenlm`` binding is importable."""
    return importlib.util.find_spec("kenlm") is not None


def check_model_file(path: str, flag: str, use_kenlm: bool = True) -> None:
    """A `ConfigError` naming `flag` for a missing file, or a KenLM binary without the kenlm binding."""
    if not path or not os.path.isfile(path):
        raise ConfigError(f"{flag}={path!r}: no such n-gram model file; train one with "
                          "`python -m llama_jax.prepare.ngram_lm --input=GLOB --out=MODEL.arpa` "
                          "or pass a cc_net KenLM model (.arpa, or .bin with kenlm installed)")
    if not (use_kenlm and kenlm_available()) and (path.endswith(".bin") or _is_kenlm_binary(path)):
        raise ConfigError(f"{flag}={path!r} is a KenLM binary model, which needs the kenlm binding: "
                          "`pip install kenlm` (builds with a C++ toolchain), or pass the model as .arpa")


def load_language_model(path: str, flag: str, use_kenlm: bool = True) -> LanguageModel:
    """The n-gram LM at `path`: ``kenlm.Model`` if installed (and `use_kenlm`), else `ArpaModel`.

    A missing file, or a binary ``.bin`` without kenlm, is a `ConfigError` naming `flag`.
    """
    check_model_file(path, flag, use_kenlm)
    if use_kenlm and kenlm_available():
        import kenlm  # optional: only when the user installed it

        return kenlm.Model(path)
    return ArpaModel(path)


def _is_kenlm_binary(path: str) -> bool:
    with open(path, "rb") as f:
        head = f.read(64)
    return head.startswith(b"mmap lm")  # KenLM's binary header; ARPA (even gzipped) is not
