"""The LLaMA paper's benchmark numbers (Touvron et al., 2023, Tables 3-9) as data.

Values are percentages as printed in the paper. Keys:

* multiple choice, 0-shot (Table 3, RACE Table 6): the task name;
* closed-book QA (Tables 4-5): ``"naturalqs@<shots>"``, ``"triviaqa@<shots>"``;
* MMLU 5-shot (Table 9): ``"mmlu"`` (average) and ``"mmlu/<category>"``;
* GSM8K / MATH (Table 7): ``"gsm8k/maj1@1"`` (no voting), ``"gsm8k/maj1@k"``
  (k = 100; MATH k = 256);
* code (Table 8): ``"humaneval/pass@1"``, ``"humaneval/pass@100"``,
  ``"mbpp/pass@1"``, ``"mbpp/pass@80"``;
* RealToxicityPrompts (Table 11): ``"realtoxicityprompts/basic"``,
  ``"realtoxicityprompts/respectful"``, mean toxicity in [0, 1] (not a percentage).
* Section 5 (Tables 12-14, `SECTION5`): ``"crows_pairs"`` (average) and
  ``"crows_pairs/<bias_type>"``; ``"winogender/<pronoun group>"`` and
  ``"winogender/gotcha/<pronoun group>"``; ``"truthfulqa/truthful"``,
  ``"truthfulqa/truthful*informative"`` (Table 14's fractions, as percentages).
"""

from __future__ import annotations

import math

# Parameter counts of Table 2.
MODEL_SIZES: dict[str, float] = {"7B": 6.7e9, "13B": 13.0e9, "33B": 32.5e9, "65B": 65.2e9}

_COLUMNS = (
    # Table 3 (0-shot common sense reasoning).
    "boolq", "piqa", "siqa", "hellaswag", "winogrande", "arc_easy", "arc_challenge",
    "openbookqa",
    # Table 4 (Natural Questions) and Table 5 (TriviaQA, filtered dev).
    "naturalqs@0", "naturalqs@1", "naturalqs@5", "naturalqs@64",
    "triviaqa@0", "triviaqa@1", "triviaqa@5", "triviaqa@64",
    # Table 6 (RACE, 0-shot).
    "race_middle", "race_high",
    # Table 7 (quantitative reasoning).
    "math/maj1@1", "math/maj1@k", "gsm8k/maj1@1", "gsm8k/maj1@k",
    # Table 8 (code).
    "humaneval/pass@1", "humaneval/pass@100", "mbpp/pass@1", "mbpp/pass@80",
    # Table 9 (MMLU, 5-shot).
    "mmlu/Humanities", "mmlu/STEM", "mmlu/Social Sciences", "mmlu/Other", "mmlu",
)

_ROWS = {
    "7B": (76.5, 79.8, 48.9, 76.1, 70.1, 72.8, 47.6, 57.2,
           16.8, 18.7, 22.0, 26.1, 50.0, 53.4, 56.3, 57.6,
           61.1, 46.9,
           2.9, 6.9, 11.0, 18.1,
           10.5, 36.5, 17.7, 56.2,
           34.0, 30.5, 38.3, 38.1, 35.1),
    "13B": (78.1, 80.1, 50.4, 79.2, 73.0, 74.8, 52.7, 56.4,
            20.1, 23.4, 28.1, 31.9, 56.6, 60.5, 63.1, 64.0,
            61.6, 47.2,
            3.9, 8.8, 17.8, 29.3,
            15.8, 52.5, 22.0, 64.0,
            45.0, 35.8, 53.8, 53.3, 46.9),
    "33B": (83.1, 82.3, 50.4, 82.8, 76.0, 80.0, 57.8, 58.6,
            24.9, 28.3, 32.9, 36.0, 65.1, 67.9, 69.9, 70.4,
            64.1, 48.3,
            7.1, 15.2, 35.6, 53.1,
            21.7, 70.7, 30.2, 73.4,
            55.8, 46.0, 66.7, 63.4, 57.8),
    "65B": (85.3, 82.8, 52.3, 84.2, 77.0, 78.9, 56.0, 60.2,
            23.8, 31.0, 35.0, 39.9, 68.2, 71.6, 72.6, 73.0,
            67.9, 51.6,
            10.6, 20.5, 50.9, 69.7,
            23.7, 79.3, 37.7, 76.8,
            61.8, 51.7, 72.9, 67.4, 63.4),
}

LLAMA: dict[str, dict[str, float]] = {
    size: dict(zip(_COLUMNS, row, strict=True)) for size, row in _ROWS.items()}

# Table 11 (RealToxicityPrompts, mean Perspective toxicity, basic / respectful prompts),
# as scores in [0, 1]. Only the sizes in the project's paper notes; 13B and 33B are not
# there, so the report leaves their cells empty.
TABLE_11 = {"7B": (0.106, 0.081), "65B": (0.128, 0.141)}
for _size, (_basic, _respectful) in TABLE_11.items():
    LLAMA[_size]["realtoxicityprompts/basic"] = _basic
    LLAMA[_size]["realtoxicityprompts/respectful"] = _respectful
# Tables 12-14 (Section 5). Only the values the project's paper notes
# (reference/llama-paper-notes.md) quote, all for 65B; the other sizes and CrowS-Pairs
# categories are left out rather than guessed.
SECTION5: dict[str, dict[str, float]] = {"65B": {
    # Table 12 (CrowS-Pairs, % of pairs where the stereotype is preferred; lower is better).
    "crows_pairs": 66.6, "crows_pairs/religion": 79.0, "crows_pairs/age": 70.1,
    "crows_pairs/gender": 70.6,
    # Table 13 (WinoGender accuracy).
    "winogender/their/them/someone": 81.7, "winogender/her/her/she": 78.8,
    "winogender/his/him/he": 72.1, "winogender/gotcha/her/her/she": 75.0,
    "winogender/gotcha/his/him/he": 63.3,
    # Table 14 (TruthfulQA, 0.57 and 0.53 in the paper).
    "truthfulqa/truthful": 57.0, "truthfulqa/truthful*informative": 53.0,
}}
for _size, _values in SECTION5.items():
    LLAMA[_size].update(_values)

# The paper's evaluation settings, for the report's notes.
SETTINGS = {
    "multiple_choice": "0-shot; acc normalised by characters (BoolQ, OpenBookQA: by P(choice | 'Answer:'))",
    "mmlu": "5-shot from the dev split",
    "naturalqs": "NQ-open test (3,610 questions), greedy, exact match",
    "triviaqa": "filtered dev set, greedy, exact match",
    "gsm8k": "maj1@k with k = 100 (Minerva's setup)",
    "humaneval": "0-shot; pass@1 at temperature 0.1, pass@100 at 0.8",
    "mbpp": "3-shot; pass@1 at temperature 0.1, pass@80 at 0.8",
    "math": "Minerva's 4-shot prompt; maj1@k with k = 256",
    "realtoxicityprompts": "greedy, basic and respectful prompts, Perspective API toxicity",
}


def nearest_size(num_params: float) -> str:
    """The LLaMA size nearest to `num_params` (in log scale)."""
    if num_params <= 0:
        raise ValueError(f"num_params={num_params} must be positive")
    return min(MODEL_SIZES, key=lambda s: abs(math.log(MODEL_SIZES[s] / num_params)))


def paper_value(size: str, key: str) -> float | None:
    """The paper's number for `key` at model `size`, or None if it has none."""
    return LLAMA.get(size, {}).get(key)
