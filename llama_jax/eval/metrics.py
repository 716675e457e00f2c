"""Metrics: answer normalisation, exact match, number extraction, maj@k, pass@k.

* `normalize_answer` is the SQuAD normalisation the paper describes for
  Natural Questions and TriviaQA: lowercase, drop punctuation, drop the
  articles a/an/the, collapse whitespace.
* `extract_number` reads GSM8K answers: the number after ``####`` if present,
  else the last number in the text.
* `majority_vote` / `maj_at_k`: Wang et al.'s self-consistency (maj1@k).
* `pass_at_k`: the unbiased estimator of Chen et al. (2021),
  ``1 - C(n - c, k) / C(n, k)``, computed as a stable product.
"""

from __future__ import annotations

import collections
import re
import string
from collections.abc import Iterable, Sequence

import numpy as np

_ARTICLES = re.compile(r"\b(a|an|the)\b", re.UNICODE)
_PUNCT = set(string.punctuation)


def normalize_answer(text: str) -> str:
    """Lowercase, remove punctuation, articles and extra whitespace (SQuAD)."""
    text = text.lower()
    text = "".join(ch for ch in text if ch not in _PUNCT)
    text = _ARTICLES.sub(" ", text)
    return " ".join(text.split())


def exact_match(prediction: str, answers: Iterable[str]) -> bool:
    """True if the normalised prediction equals any normalised answer."""
    pred = normalize_answer(prediction)
    return any(pred == normalize_answer(a) for a in answers)


_HASH_NUMBER = re.compile(r"####\s*(-?[0-9.,]+)")
_ANY_NUMBER = re.compile(r"-?[0-9][0-9,]*(?:\.[0-9]+)?|-?\.[0-9]+")


def canonical_number(text: str) -> str | None:
    """A number string in canonical form ("1,000.50" -> "1000.5"), or None."""
    cleaned = text.replace(",", "").replace("$", "").strip().rstrip(".")
    if not cleaned:
        return None
    try:
        value = float(cleaned)
    except ValueError:
        return None
    if value == int(value) and abs(value) < 1e15:
        return str(int(value))
    return repr(value)


def extract_number(text: str) -> str | None:
    """The final answer of a GSM8K-style solution, canonicalised, or None.

    Prefers the number after ``####`` (the data set's own answer marker);
    otherwise takes the last number in the text.
    """
    m = _HASH_NUMBER.search(text)
    if m:
        num = canonical_number(m.group(1))
        if num is not None:
            return num
    for candidate in reversed(_ANY_NUMBER.findall(text)):
        num = canonical_number(candidate)
        if num is not None:
            return num
    return None


def majority_vote(answers: Sequence[str | None]) -> str | None:
    """The most common non-None answer; ties go to the one seen first."""
    valid = [a for a in answers if a is not None]
    if not valid:
        return None
    counts = collections.Counter(valid)
    best = max(counts.values())
    for a in valid:
        if counts[a] == best:
            return a
    return None  # unreachable


def maj_at_k(samples: Sequence[str | None], reference: str | None, k: int | None = None) -> bool:
    """maj1@k: does the majority answer of the first k samples equal `reference`?"""
    chosen = majority_vote(samples[:k] if k else samples)
    return chosen is not None and chosen == reference


def pass_at_k(n: int, c: int, k: int) -> float:
    """Unbiased pass@k from n samples of which c pass (Chen et al., 2021).

    ``1 - C(n-c, k) / C(n, k)`` evaluated as ``1 - prod_{i=n-c+1}^{n} (1 - k/i)``.
    """
    if not 0 <= c <= n:
        raise ValueError(f"need 0 <= c <= n, got n={n}, c={c}")
    if not 1 <= k <= n:
        raise ValueError(f"need 1 <= k <= n, got n={n}, k={k}")
    if n - c < k:
        return 1.0
    return float(1.0 - np.prod(1.0 - k / np.arange(n - c + 1, n + 1)))


def mean(values: Iterable[float]) -> float:
    """Arithmetic mean (0.0 for an empty input)."""
    vals = list(values)
    return float(sum(vals) / len(vals)) if vals else 0.0
