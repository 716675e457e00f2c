"""MMLU (Hendrycks et al., 2021), 5-shot from the dev split, as the paper ran it.

Data: the published CSVs (no header; question, A, B, C, D, answer letter) in
``data_dir/mmlu/dev/<subject>_dev.csv`` and ``data_dir/mmlu/test/<subject>_test.csv``
(``data/dev`` and ``data/test`` of the release tarball also work). The prompt
is the original / harness one: "The following are multiple choice questions
(with answers) about <subject>.", five dev examples, then the question; the
choices scored are " A" .. " D". Category averages use the standard
subject -> category map (hendrycks/test ``categories.py``) and are averages
over questions, as is the overall accuracy.
"""

from __future__ import annotations

import glob
import os
from typing import Any

from llama_jax.eval.tasks import readers
from llama_jax.eval.tasks.base import EvalContext, Task
from llama_jax.eval.tasks.multiple_choice import MCDoc, evaluate_multiple_choice
from llama_jax.eval.tasks.readers import DataError

MMLU_FORMAT = ("the MMLU release CSVs: dev/<subject>_dev.csv and test/<subject>_test.csv, "
               "no header, 6 columns: question, A, B, C, D, answer letter; or the HF cais/mmlu "
               "export: test and dev splits (test.jsonl / test-*.parquet, at the top, under "
               "all/ or under <subject>/) with fields 'question', 'subject', 'choices' "
               "(4 strings), 'answer' (0-3)")

# hendrycks/test categories.py: subject -> subcategory, subcategory -> category.
SUBCATEGORY = {
    "abstract_algebra": "math", "anatomy": "health", "astronomy": "physics",
    "business_ethics": "business", "clinical_knowledge": "health",
    "college_biology": "biology", "college_chemistry": "chemistry",
    "college_computer_science": "computer science", "college_mathematics": "math",
    "college_medicine": "health", "college_physics": "physics",
    "computer_security": "computer science", "conceptual_physics": "physics",
    "econometrics": "economics", "electrical_engineering": "engineering",
    "elementary_mathematics": "math", "formal_logic": "philosophy", "global_facts": "other",
    "high_school_biology": "biology", "high_school_chemistry": "chemistry",
    "high_school_computer_science": "computer science",
    "high_school_european_history": "history", "high_school_geography": "geography",
    "high_school_government_and_politics": "politics",
    "high_school_macroeconomics": "economics", "high_school_mathematics": "math",
    "high_school_microeconomics": "economics", "high_school_physics": "physics",
    "high_school_psychology": "psychology", "high_school_statistics": "math",
    "high_school_us_history": "history", "high_school_world_history": "history",
    "human_aging": "health", "human_sexuality": "culture", "international_law": "law",
    "jurisprudence": "law", "logical_fallacies": "philosophy",
    "machine_learning": "computer science", "management": "business",
    "marketing": "business", "medical_genetics": "health", "miscellaneous": "other",
    "moral_disputes": "philosophy", "moral_scenarios": "philosophy", "nutrition": "health",
    "philosophy": "philosophy", "prehistory": "history",
    "professional_accounting": "other", "professional_law": "law",
    "professional_medicine": "health", "professional_psychology": "psychology",
    "public_relations": "politics", "security_studies": "politics", "sociology": "culture",
    "us_foreign_policy": "politics", "virology": "health", "world_religions": "philosophy",
}
CATEGORIES = {
    "STEM": ("physics", "chemistry", "biology", "computer science", "math", "engineering"),
    "Humanities": ("history", "philosophy", "law"),
    "Social Sciences": ("politics", "culture", "economics", "geography", "psychology"),
    "Other": ("other", "business", "health"),
}


def category_of(subject: str) -> str:
    """The paper's category (Humanities / STEM / Social Sciences / Other)."""
    sub = SUBCATEGORY.get(subject)
    for cat, subs in CATEGORIES.items():
        if sub in subs:
            return cat
    return "Other"


def subject_description(subject: str) -> str:
    """The header line of a subject's prompt."""
    return ("The following are multiple choice questions (with answers) about "
            f"{subject.replace('_', ' ')}.\n\n")


def mmlu_doc(row: list[str], subject: str, src: str, i: int) -> MCDoc:
    """One CSV row as an MCDoc with the letter choices."""
    question, *options, answer = row
    letter = answer.strip()
    readers.require(letter in "ABCD" and len(letter) == 1, src, i,
                    f"answer {answer!r} is not A, B, C or D", MMLU_FORMAT)
    text = question.strip() + "".join(f"\n{k}. {o}" for k, o in zip("ABCD", options, strict=True))
    return MCDoc(text + "\nAnswer:", ["A", "B", "C", "D"], "ABCD".index(letter), group=subject)


def _split_dir(data_dir: str, split: str) -> str | None:
    for cand in (os.path.join(data_dir, "mmlu", split),
                 os.path.join(data_dir, "mmlu", "data", split)):
        if os.path.isdir(cand):
            return cand
    return None


def _hf_split_files(root: str, split: str) -> list[str]:
    """The files of split `split` of the cais/mmlu export under `root`: one file at
    the top or under all/ (the 'all' config), else one per <subject>/ folder."""
    for folder in ("", "all"):
        for pattern in readers.hf_split(split):
            hits = sorted(glob.glob(os.path.join(root, folder, pattern)))
            if hits:
                return hits[:1] if pattern.endswith(".jsonl") else hits
    return sorted(p for pattern in readers.hf_split(split)
                  for p in glob.glob(os.path.join(root, "*", pattern)))


def _hf_docs(files: list[str]) -> dict[str, list[MCDoc]]:
    """cais/mmlu records by subject, as the release CSV's rows."""
    out: dict[str, list[MCDoc]] = {}
    for path in files:
        for i, r in enumerate(readers.read_records(path, MMLU_FORMAT)):
            subject = r.get("subject") or os.path.basename(os.path.dirname(path))
            choices = readers.get_field(r, "choices", i, path, MMLU_FORMAT)
            answer = readers.get_field(r, "answer", i, path, MMLU_FORMAT)
            readers.require(isinstance(choices, list) and len(choices) == 4, path, i,
                            "'choices' must be a list of 4 strings", MMLU_FORMAT)
            readers.require(answer in (0, 1, 2, 3) and not isinstance(answer, bool), path, i,
                            f"'answer' {answer!r} is not 0, 1, 2 or 3", MMLU_FORMAT)
            row = [readers.get_field(r, "question", i, path, MMLU_FORMAT), *choices,
                   "ABCD"[answer]]
            out.setdefault(subject, []).append(mmlu_doc(row, subject, path, i))
    return out


def _load_mmlu_hf(root: str):
    """(test docs, dev docs) by subject from the HF export, or None if absent."""
    test_files, dev_files = _hf_split_files(root, "test"), _hf_split_files(root, "dev")
    if not test_files:
        return None
    if not dev_files:
        raise DataError(f"mmlu: {test_files[0]} holds the HF test split but no dev split "
                        f"(dev.jsonl / dev-*.parquet, the 5-shot examples) is beside it; "
                        f"expected {MMLU_FORMAT}")
    tests, devs = _hf_docs(test_files), _hf_docs(dev_files)
    for subject in tests:
        if subject not in devs:
            raise DataError(f"mmlu: the HF dev split ({dev_files[0]}) has no examples of "
                            f"{subject!r}; expected {MMLU_FORMAT}")
    return dict(sorted(tests.items())), devs


def load_mmlu(data_dir: str) -> tuple[dict[str, list[MCDoc]], dict[str, list[MCDoc]]]:
    """(test docs, dev docs) by subject, from the release CSVs or the HF export."""
    test_dir, dev_dir = _split_dir(data_dir, "test"), _split_dir(data_dir, "dev")
    root = os.path.join(data_dir, "mmlu")
    if test_dir is None or dev_dir is None:
        hf = _load_mmlu_hf(root)
        if hf is not None:
            return hf
        raise DataError(f"mmlu: expected directories {root}/test and {root}/dev holding "
                        f"{MMLU_FORMAT}")
    test_files = sorted(glob.glob(os.path.join(test_dir, "*_test.csv")))
    if not test_files:
        raise DataError(f"mmlu: no *_test.csv files in {test_dir}; expected {MMLU_FORMAT}")
    tests, devs = {}, {}
    for path in test_files:
        subject = os.path.basename(path)[: -len("_test.csv")]
        dev_path = os.path.join(dev_dir, f"{subject}_dev.csv")
        if not os.path.exists(dev_path):
            raise DataError(f"mmlu: {dev_path} is missing (the 5-shot examples of "
                            f"{subject!r}); expected {MMLU_FORMAT}")
        tests[subject] = [mmlu_doc(r, subject, path, i)
                          for i, r in enumerate(readers.read_csv(path, MMLU_FORMAT, columns=6))]
        devs[subject] = [mmlu_doc(r, subject, dev_path, i)
                         for i, r in enumerate(readers.read_csv(dev_path, MMLU_FORMAT, columns=6))]
    return tests, devs


def run_mmlu(ctx: EvalContext, data_dir: str, num_fewshot: int, limit: int | None) -> dict[str, Any]:
    """Accuracy per subject, per category and overall (limit: docs per subject)."""
    tests, devs = load_mmlu(data_dir)
    docs = [d for subject_docs in tests.values()
            for d in (subject_docs[:limit] if limit and limit > 0 else subject_docs)]
    res = evaluate_multiple_choice(
        ctx, docs, fewshot_pool=lambda d: devs[d.group], num_fewshot=num_fewshot,
        description=lambda d: subject_description(d.group), first_n=True,
        primary_metric="acc")
    hits: dict[str, list[float]] = {c: [] for c in CATEGORIES}
    for doc, pred in zip(docs, res["predictions"], strict=True):
        hits[category_of(doc.group)].append(float(pred["acc"] == pred["gold"]))
    subjects = {s: {"acc": g["acc"], "num_examples": g["num_examples"],
                    "category": category_of(s)} for s, g in res["groups"].items()}
    categories = {c: (sum(v) / len(v) if v else None) for c, v in hits.items()}
    return {"acc": res["acc"], "categories": categories, "subjects": subjects,
            "primary_metric": "acc", "num_examples": len(docs),
            "predictions": res["predictions"]}


TASKS = {"mmlu": Task("mmlu", "multiple_choice", run_mmlu, 5, MMLU_FORMAT)}
