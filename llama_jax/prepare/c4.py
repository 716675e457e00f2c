"""The C4 quality heuristics (Raffel et al. 2020, Section 2.2), stage ``c4_quality``.

The rules are TFDS's ``c4_utils.clean_page`` as datatrove's `C4QualityFilter`
implements them: per line, drop a line with a word over 1000 characters, strip
Wikipedia-style citations, keep only lines that end in terminal punctuation
(not an ellipsis) and have at least 3 words, drop lines mentioning
"javascript" and the cookie / privacy-policy lines; per page, drop a page
containing "lorem ipsum" or a curly bracket, and a page left with fewer than
5 sentences. Then the bad-words rule: a page with any word of the "List of
Dirty, Naughty, Obscene or Otherwise Bad Words" is dropped; the list is read
from a local file (datatrove's own `C4BadWordsFilter` downloads it, and runs
here are offline). With no file the rule is off and every page it would
have checked is counted as ``badwords_rule_off``.

Divergences from TFDS, both datatrove's: a closing single quote also counts
as terminal punctuation, and sentences are counted with Punkt's default
parameters (`OfflineTokenizer`) instead of the trained English Punkt model.
"""

from __future__ import annotations

import os
import re

import ml_collections
from datatrove.data import Document
from datatrove.pipeline.filters import C4QualityFilter
from datatrove.pipeline.filters.base_filter import BaseFilter

from llama_jax.errors import ConfigError
from llama_jax.prepare.offline_tokenizer import OfflineTokenizer
from llama_jax.prepare.stage import Stage, StageEnv


def default_config() -> ml_collections.ConfigDict:
    """C4's published thresholds (TFDS ``c4_utils``); ``badwords_file`` empty = rule off."""
    c = ml_collections.ConfigDict()
    c.enabled = True
    c.min_words_per_line = 3
    c.min_sentences = 5
    c.max_word_length = 1000
    c.terminal_punctuation = True
    c.remove_citations = True
    c.javascript = True
    c.lorem_ipsum = True
    c.curly_bracket = True
    c.policy = True
    c.badwords_file = ""
    return c


def read_badwords(path: str) -> list[str]:
    """The words of a bad-words file (one word or phrase a line, ``#`` comments skipped)."""
    if not os.path.isfile(path):
        raise ConfigError(f"bad-words file {path!r} does not exist; set --config.c4_quality.badwords_file "
                          "to a local list (one word a line, e.g. LDNOOBW's 'en') or to '' to switch the rule off")
    with open(path, encoding="utf-8") as f:
        words = [w.strip().lower() for w in f if w.strip() and not w.lstrip().startswith("#")]
    if not words:
        raise ConfigError(f"bad-words file {path!r} has no words; fill it or set "
                          "--config.c4_quality.badwords_file=''")
    return words


class C4BadWordsFilter(BaseFilter):
    """Drops a page containing any word of a local bad-words list (TFDS's rule).

    As in TFDS ``get_badwords_filter_fn``: the lower-cased page is searched for
    any listed word with a non-word character (or the text's edge) on both sides.
    """

    name = "C4 bad words (local list)"

    def __init__(self, words: list[str] | None):
        super().__init__()
        self.words = words
        self._regex = None
        if words:
            alternatives = "|".join(re.escape(w) for w in sorted(words, key=len, reverse=True))
            self._regex = re.compile(r"(?:\W|^)(" + alternatives + r")(?:\W|$)")

    def filter(self, doc: Document) -> bool | tuple[bool, str]:
        """False (``badwords``) when the page contains a listed word."""
        if self._regex is None:
            self.stat_update("badwords_rule_off")
            return True
        if self._regex.search(doc.text.lower()):
            return False, "badwords"
        return True


def build(cfg: ml_collections.ConfigDict, env: StageEnv) -> Stage:
    """The C4 line/page heuristics, then the bad-words rule."""
    for key in ("min_words_per_line", "min_sentences", "max_word_length"):
        if cfg[key] < -1:
            raise ConfigError(f"--config.{env.name}.{key}={cfg[key]}; use a count >= 0, or -1 to switch the rule off")
    quality = C4QualityFilter(
        split_paragraph=True,
        remove_citations=cfg.remove_citations,
        filter_no_terminal_punct=cfg.terminal_punctuation,
        min_num_sentences=cfg.min_sentences,
        min_words_per_line=cfg.min_words_per_line,
        max_word_length=cfg.max_word_length,
        filter_lorem_ipsum=cfg.lorem_ipsum,
        filter_javascript=cfg.javascript,
        filter_curly_bracket=cfg.curly_bracket,
        filter_policy=cfg.policy,
        language=OfflineTokenizer("en"),
    )
    words = read_badwords(cfg.badwords_file) if cfg.badwords_file else None
    return Stage(name=env.name, steps=[quality, C4BadWordsFilter(words)])
