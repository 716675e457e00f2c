"""A datatrove word/sentence tokenizer that needs no download.

datatrove's English tokenizer is spaCy (not installed) and NLTK's trained
Punkt model is a separate download (``nltk.download("punkt")``); the
pipeline must run offline, so the C4 sentence count and the MinHash
shingles use NLTK's Punkt algorithm with default parameters plus a list of
common abbreviations, and NLTK's Treebank-style word tokenizer, both of which
ship inside the ``nltk`` wheel.
"""

from __future__ import annotations

from datatrove.utils.word_tokenizers import WordTokenizer
from nltk.tokenize import NLTKWordTokenizer
from nltk.tokenize.punkt import PunktParameters, PunktSentenceTokenizer

# Abbreviations whose full stop does not end a sentence (lower case, no final dot).
ABBREVIATIONS = (
    "mr", "mrs", "ms", "dr", "prof", "sr", "jr", "st", "vs", "etc", "e.g", "i.e",
    "fig", "no", "vol", "inc", "ltd", "co", "jan", "feb", "mar", "apr", "jun",
    "jul", "aug", "sep", "sept", "oct", "nov", "dec", "u.s", "u.k",
)


class OfflineTokenizer(WordTokenizer):
    """Punkt sentences (untrained, with `ABBREVIATIONS`) and Treebank words.

    ``whitespace_words=True`` splits words on whitespace instead: the MinHash
    shingles are taken after datatrove's normalisation has already removed
    punctuation, where that is the same split at a tenth of the cost.
    """

    def __init__(self, language: str = "en", whitespace_words: bool = False):
        super().__init__(language)
        self.whitespace_words = whitespace_words
        params = PunktParameters()
        params.abbrev_types = set(ABBREVIATIONS)
        self._sentences = PunktSentenceTokenizer(params)
        self._words = NLTKWordTokenizer()

    def word_tokenize(self, text: str) -> list[str]:
        """The words (and punctuation tokens) of `text`."""
        return text.split() if self.whitespace_words else self._words.tokenize(text)

    def sent_tokenize(self, text: str) -> list[str]:
        """The sentences of `text`."""
        return self._sentences.tokenize(text)

    def span_tokenize(self, text: str) -> list[tuple[int, int]]:
        """The (start, end) character span of each sentence of `text`."""
        return list(self._sentences.span_tokenize(text))

    def __reduce__(self):  # picklable for datatrove's executors
        return (OfflineTokenizer, (self.language, self.whitespace_words))
