"""Eval metrics against hand-computed values: normalisation, EM, numbers, maj@k, pass@k.

(Training metrics are tested in test_train_metrics.py.)
"""

import math

import pytest

from llama_jax.eval import metrics


@pytest.mark.parametrize("text, expected", [
    ("The Beatles", "beatles"),
    ("  Charles   Darwin. ", "charles darwin"),
    ("an Apple, a day!", "apple day"),
    ("Theatre", "theatre"),  # "the" only as a whole word
    ("U.S.A.", "usa"),
    ("", ""),
    ("A", ""),
])
def test_normalize_answer(text, expected):
    assert metrics.normalize_answer(text) == expected


def test_exact_match_any_reference():
    assert metrics.exact_match("the Frank Sinatra.", ["Bing Crosby", "Frank Sinatra"])
    assert not metrics.exact_match("Sinatra", ["Frank Sinatra"])
    assert metrics.exact_match("TURKEY", ["Turkey"])
    assert not metrics.exact_match("", ["x"])


@pytest.mark.parametrize("text, expected", [
    ("so she has 5 + 3 = 8 apples.\n#### 8", "8"),
    ("#### 1,234", "1234"),
    ("#### -7", "-7"),
    ("The answer is $12.50.", "12.5"),
    ("He pays 3 then 4, so 7", "7"),
    ("#### 18.0", "18"),
    ("no number here", None),
])
def test_extract_number(text, expected):
    assert metrics.extract_number(text) == expected


def test_majority_vote_and_maj_at_k():
    assert metrics.majority_vote(["3", "5", "3", None, "5", "3"]) == "3"
    assert metrics.majority_vote(["5", "3"]) == "5"  # tie: first seen wins
    assert metrics.majority_vote([None, None]) is None
    samples = ["4", "9", "9", "4", "9"]
    assert metrics.maj_at_k(samples, "9")
    assert not metrics.maj_at_k(samples, "4")
    assert metrics.maj_at_k(samples, "4", k=1)  # only the first sample votes
    assert not metrics.maj_at_k([None], None)


@pytest.mark.parametrize("n, c, k, expected", [
    (5, 2, 1, 0.4),                  # c / n
    (5, 2, 2, 1 - 3 / 10),           # 1 - C(3,2)/C(5,2)
    (10, 3, 5, 1 - 21 / 252),        # 1 - C(7,5)/C(10,5)
    (10, 0, 3, 0.0),
    (3, 2, 2, 1.0),                  # n - c < k
    (200, 1, 100, 0.5),              # 1 - C(199,100)/C(200,100) = 100/200
])
def test_pass_at_k_hand_values(n, c, k, expected):
    assert metrics.pass_at_k(n, c, k) == pytest.approx(expected, abs=1e-12)


def test_pass_at_k_matches_binomial_formula():
    for n in (1, 7, 20):
        for c in range(n + 1):
            for k in range(1, n + 1):
                exact = 1 - math.comb(n - c, k) / math.comb(n, k)
                assert metrics.pass_at_k(n, c, k) == pytest.approx(exact, abs=1e-9)


def test_pass_at_k_rejects_bad_arguments():
    with pytest.raises(ValueError, match="k <= n"):
        metrics.pass_at_k(5, 1, 6)
    with pytest.raises(ValueError, match="c <= n"):
        metrics.pass_at_k(5, 6, 1)
