"""The paper's zero-shot multiple-choice tasks and their published data formats.

BoolQ, PIQA, SIQA, HellaSwag, WinoGrande, ARC-easy/challenge, OpenBookQA and
RACE-middle/high, with prompts as lm-evaluation-harness builds them. Each
loader reads the files the data set is distributed as (or the Hugging Face
Parquet export of the same records) from ``data_dir/<task>/``.
"""

from __future__ import annotations

import ast
import os
import re
from typing import Any

from llama_jax.eval.tasks import readers
from llama_jax.eval.tasks.base import EvalContext, Task, apply_limit
from llama_jax.eval.tasks.multiple_choice import MCDoc, evaluate_multiple_choice
from llama_jax.eval.tasks.readers import DataError, get_field, require

_LETTERS = "ABCDEFGHIJ"


def _load(data_dir, task, eval_patterns, train_patterns, fmt, parse, labels_for=None):
    """Parse the eval file (and the optional train file) of `task` into MCDocs."""
    out = []
    for patterns, required in ((eval_patterns, True), (train_patterns, False)):
        path = readers.find_file(data_dir, task, patterns, fmt, required=required)
        if path is None:
            out.append([])
            continue
        records = readers.read_records(path, fmt)
        if labels_for is not None:
            records = labels_for(path, records, fmt)
        out.append([parse(r, i, path, fmt) for i, r in enumerate(records)])
    return out[0], out[1]


def _lst_labels(field: str):
    """Attach labels from the ``<split>-labels.lst`` file published beside the data."""

    def attach(path, records, fmt):
        if all(field in r for r in records):
            return records
        base = re.sub(r"\.jsonl(\.gz)?$", "", path)
        labels_path = base + "-labels.lst"
        if not os.path.exists(labels_path):
            raise DataError(f"{path}: records have no {field!r} field and {labels_path} "
                            f"does not exist; expected {fmt}")
        labels = readers.read_labels(labels_path, len(records), fmt)
        return [dict(r, **{field: lab}) for r, lab in zip(records, labels, strict=True)]

    return attach


def _int_label(value, i, src, fmt, valid) -> int:
    try:
        label = int(value)
    except (TypeError, ValueError):
        label = None
    require(label in valid, src, i, f"label {value!r} is not one of {sorted(valid)}", fmt)
    return label  # type: ignore[return-value]


# ----- BoolQ -----------------------------------------------------------------
BOOLQ_FORMAT = ("BoolQ JSON Lines as published (dev.jsonl; SuperGLUE val.jsonl; or the HF "
                "validation Parquet), one object per line with fields 'question', 'passage' "
                "and 'answer' (true/false) or 'label' (0/1)")


def _parse_boolq(r, i, src, fmt):
    question = get_field(r, "question", i, src, fmt)
    passage = get_field(r, "passage", i, src, fmt)
    answer = r.get("answer", r.get("label"))
    require(answer is not None, src, i, "no 'answer' or 'label' field", fmt)
    gold = _int_label(answer, i, src, fmt, {0, 1})
    return MCDoc(f"{passage}\nQuestion: {question}?\nAnswer:", ["no", "yes"], gold)


# ----- PIQA ------------------------------------------------------------------
PIQA_FORMAT = ("PIQA JSON Lines as published (valid.jsonl with fields 'goal', 'sol1', "
               "'sol2', labels 0/1 in valid-labels.lst beside it, or a 'label' field)")


def _parse_piqa(r, i, src, fmt):
    goal = get_field(r, "goal", i, src, fmt)
    sols = [get_field(r, "sol1", i, src, fmt), get_field(r, "sol2", i, src, fmt)]
    gold = _int_label(r.get("label"), i, src, fmt, {0, 1})
    return MCDoc(f"Question: {goal}\nAnswer:", sols, gold)


# ----- SIQA ------------------------------------------------------------------
SIQA_FORMAT = ("Social IQa JSON Lines as published (dev.jsonl with fields 'context', "
               "'question', 'answerA', 'answerB', 'answerC', labels 1/2/3 in "
               "dev-labels.lst beside it, or a 'label' field)")


def _parse_siqa(r, i, src, fmt):
    context = get_field(r, "context", i, src, fmt)
    question = get_field(r, "question", i, src, fmt)
    answers = [get_field(r, k, i, src, fmt) for k in ("answerA", "answerB", "answerC")]
    gold = _int_label(r.get("label"), i, src, fmt, {1, 2, 3}) - 1
    return MCDoc(f"Q: {context} {question}\nA:", answers, gold)


# ----- HellaSwag -------------------------------------------------------------
HELLASWAG_FORMAT = ("HellaSwag JSON Lines as published (hellaswag_val.jsonl) with fields "
                    "'activity_label', 'ctx_a', 'ctx_b', 'endings' (4 strings), 'label'")


def hellaswag_preprocess(text: str) -> str:
    """The harness's cleaning of WikiHow artefacts in HellaSwag text."""
    text = text.strip()
    text = text.replace(" [title]", ". ")
    text = re.sub("\\[.*?\\]", "", text)
    return text.replace("  ", " ")


def _parse_hellaswag(r, i, src, fmt):
    ctx = get_field(r, "ctx_a", i, src, fmt) + " " + get_field(r, "ctx_b", i, src, fmt).capitalize()
    query = hellaswag_preprocess(get_field(r, "activity_label", i, src, fmt) + ": " + ctx)
    endings = get_field(r, "endings", i, src, fmt)
    require(isinstance(endings, list) and len(endings) == 4, src, i,
            "'endings' must be a list of 4 strings", fmt)
    gold = _int_label(r.get("label"), i, src, fmt, {0, 1, 2, 3})
    return MCDoc(query, [hellaswag_preprocess(e) for e in endings], gold)


# ----- WinoGrande ------------------------------------------------------------
WINOGRANDE_FORMAT = ("WinoGrande JSON Lines as published (dev.jsonl of winogrande_1.1) with "
                     "fields 'sentence' (containing one '_'), 'option1', 'option2', "
                     "'answer' ('1' or '2')")


def _parse_winogrande(r, i, src, fmt):
    sentence = get_field(r, "sentence", i, src, fmt)
    require("_" in sentence, src, i, "'sentence' has no '_' blank", fmt)
    cut = sentence.index("_")
    options = [get_field(r, "option1", i, src, fmt), get_field(r, "option2", i, src, fmt)]
    gold = _int_label(r.get("answer"), i, src, fmt, {1, 2}) - 1
    return MCDoc("", [sentence[:cut] + o for o in options], gold,
                 partial_target=sentence[cut + 1:].strip())


# ----- ARC and OpenBookQA (same published schema) ----------------------------
ARC_FORMAT = ("ARC JSON Lines as published (ARC-Easy-Test.jsonl / ARC-Challenge-Test.jsonl) "
              "with 'question': {'stem', 'choices': [{'text', 'label'}]} and 'answerKey', "
              "or the HF flat form 'question', 'choices': {'text', 'label'}, 'answerKey'")
OBQA_FORMAT = ("OpenBookQA JSON Lines as published (Main/test.jsonl) with 'question': "
               "{'stem', 'choices': [{'text', 'label'}]} and 'answerKey', or the HF form "
               "'question_stem', 'choices': {'text', 'label'}, 'answerKey'")


def _stem_and_choices(r, i, src, fmt) -> tuple[str, list[str], list[str]]:
    q = r.get("question")
    if isinstance(q, dict):  # the published AI2 schema
        stem = get_field(r, "question.stem", i, src, fmt)
        choices = get_field(r, "question.choices", i, src, fmt)
        require(isinstance(choices, list) and all(isinstance(c, dict) for c in choices),
                src, i, "'question.choices' must be a list of {'text', 'label'}", fmt)
        texts = [get_field(c, "text", i, src, fmt) for c in choices]
        labels = [get_field(c, "label", i, src, fmt) for c in choices]
    else:  # the Hugging Face flattening
        stem = r.get("question_stem", q)
        require(isinstance(stem, str), src, i, "no question text", fmt)
        texts = get_field(r, "choices.text", i, src, fmt)
        labels = get_field(r, "choices.label", i, src, fmt)
    return stem, list(texts), [str(x) for x in labels]


def _gold_from_key(r, labels, i, src, fmt) -> int:
    key = str(get_field(r, "answerKey", i, src, fmt)).strip()
    require(key in labels, src, i, f"answerKey {key!r} is not among the labels {labels}", fmt)
    return labels.index(key)


def _parse_arc(r, i, src, fmt):
    stem, texts, labels = _stem_and_choices(r, i, src, fmt)
    return MCDoc(f"Question: {stem}\nAnswer:", texts, _gold_from_key(r, labels, i, src, fmt))


def _parse_obqa(r, i, src, fmt):
    stem, texts, labels = _stem_and_choices(r, i, src, fmt)
    return MCDoc(stem, texts, _gold_from_key(r, labels, i, src, fmt))


# ----- RACE --------------------------------------------------------------------
RACE_FORMAT = ("RACE as published: one JSON object per article (RACE/test/<level>/*.txt) with "
               "'article', 'questions', 'options' (4 per question) and 'answers' (letters); "
               "or JSON Lines of such objects; or the EleutherAI/race Parquet "
               "('article', 'problems'); or the HF ehovy/race export (test.jsonl / "
               "test-*.parquet, one row per question: 'article', 'question', 'options', "
               "'answer')")


def _race_problems(r, i, src, fmt) -> list[dict[str, Any]]:
    if "problems" in r:  # EleutherAI/race: a Python-literal list of problems
        probs = r["problems"]
        if isinstance(probs, str):
            try:
                probs = ast.literal_eval(probs)
            except (ValueError, SyntaxError):
                raise DataError(f"{src}: record {i}: 'problems' is not a list literal; "
                                f"expected {fmt}") from None
        return list(probs)
    qs = get_field(r, "questions", i, src, fmt)
    opts = get_field(r, "options", i, src, fmt)
    ans = get_field(r, "answers", i, src, fmt)
    require(len(qs) == len(opts) == len(ans) and qs, src, i,
            "'questions', 'options' and 'answers' must be non-empty and of equal length", fmt)
    return [{"question": q, "options": o, "answer": a} for q, o, a in zip(qs, opts, ans, strict=True)]


def race_doc(article: str, problems: list[dict[str, Any]], i=0, src="", fmt=RACE_FORMAT) -> MCDoc:
    """The harness's RACE prompt: earlier questions answered, the last one asked."""

    def answer_text(p):
        letter = str(p["answer"]).strip()
        require(letter in _LETTERS[:len(p["options"])], src, i,
                f"answer {letter!r} is not a valid option letter", fmt)
        return p["options"][_LETTERS.index(letter)]

    text = "Article: " + article + "\n\n"
    for p in problems[:-1]:
        if p["question"][-6:] == "  _  .":
            text += p["question"][-5:] + answer_text(p) + "\n"
        else:
            text += "Question: " + p["question"] + "\n" + "Answer: " + answer_text(p) + "\n"
    last = problems[-1]
    text += last["question"]
    letter = str(last["answer"]).strip()
    require(letter in _LETTERS[:len(last["options"])], src, i,
            f"answer {letter!r} is not a valid option letter", fmt)
    return MCDoc(text, list(last["options"]), _LETTERS.index(letter))


def _load_race(data_dir: str, task: str, level: str) -> list[MCDoc]:
    patterns = ["*.txt", *readers.hf_split("test"), "*.jsonl", "*.parquet",
                f"../race/test/{level}/*.txt",
                f"../RACE/test/{level}/*.txt"]
    files = readers.find_files(data_dir, task, patterns, RACE_FORMAT)
    docs = []
    for path in files:
        if path.endswith(".txt"):
            obj = readers.read_json(path, RACE_FORMAT)
            records = obj if isinstance(obj, list) else [obj]
        else:
            records = readers.read_records(path, RACE_FORMAT)
        if records and all(isinstance(r, dict) and "question" in r for r in records):
            records = _race_group_rows(records, path)
        for i, r in enumerate(records):
            require(isinstance(r, dict), path, i, "not a JSON object", RACE_FORMAT)
            article = get_field(r, "article", i, path, RACE_FORMAT)
            docs.append(race_doc(article, _race_problems(r, i, path, RACE_FORMAT), i, path))
    return docs


def _race_group_rows(rows: list[dict[str, Any]], path: str) -> list[dict[str, Any]]:
    """The HF ``ehovy/race`` layout (one row per question: 'article', 'question',
    'options', 'answer') regrouped into one record per article, the questions in
    file order: the EleutherAI/race record lm-eval builds its RACE prompt from."""
    by_article: dict[str, dict[str, Any]] = {}
    for i, r in enumerate(rows):
        article = get_field(r, "article", i, path, RACE_FORMAT)
        problem = {k: get_field(r, k, i, path, RACE_FORMAT) for k in ("question", "options",
                                                                       "answer")}
        by_article.setdefault(article, {"article": article, "problems": []})["problems"].append(
            problem)
    return list(by_article.values())


# ----- task table ----------------------------------------------------------------
def _simple_task(name, fmt, eval_patterns, train_patterns, parse, primary,
                 unconditional=False, labels_for=None) -> Task:
    def run(ctx: EvalContext, data_dir: str, num_fewshot: int, limit: int | None):
        docs, train = _load(data_dir, name, eval_patterns, train_patterns, fmt, parse, labels_for)
        docs = apply_limit(docs, limit)
        return evaluate_multiple_choice(ctx, docs, fewshot_pool=train, num_fewshot=num_fewshot,
                                        unconditional=unconditional, primary_metric=primary)

    return Task(name, "multiple_choice", run, 0, fmt)


def _race_task(name: str, level: str) -> Task:
    def run(ctx: EvalContext, data_dir: str, num_fewshot: int, limit: int | None):
        docs = apply_limit(_load_race(data_dir, name, level), limit)
        return evaluate_multiple_choice(ctx, docs, num_fewshot=num_fewshot,
                                        primary_metric="acc_norm")

    return Task(name, "multiple_choice", run, 0, RACE_FORMAT)


TASKS: dict[str, Task] = {t.name: t for t in (
    _simple_task("boolq", BOOLQ_FORMAT,
                 ["dev.jsonl", "val.jsonl", *readers.hf_split("validation")],
                 ["train.jsonl", *readers.hf_split("train")], _parse_boolq, "acc_uncond",
                 unconditional=True),
    _simple_task("piqa", PIQA_FORMAT, ["valid.jsonl", *readers.hf_split("validation")],
                 ["train.jsonl", *readers.hf_split("train")], _parse_piqa, "acc_norm",
                 labels_for=_lst_labels("label")),
    _simple_task("siqa", SIQA_FORMAT, ["dev.jsonl", *readers.hf_split("validation")],
                 ["train.jsonl", *readers.hf_split("train")], _parse_siqa, "acc_norm",
                 labels_for=_lst_labels("label")),
    _simple_task("hellaswag", HELLASWAG_FORMAT,
                 ["hellaswag_val.jsonl", *readers.hf_split("validation")],
                 ["hellaswag_train.jsonl", *readers.hf_split("train")], _parse_hellaswag, "acc_norm"),
    _simple_task("winogrande", WINOGRANDE_FORMAT,
                 ["dev.jsonl", *readers.hf_split("validation")],
                 ["train_xl.jsonl", *readers.hf_split("train")], _parse_winogrande, "acc",
                 labels_for=_lst_labels("answer")),
    _simple_task("arc_easy", ARC_FORMAT,
                 ["ARC-Easy-Test.jsonl", "*Test.jsonl", *readers.hf_split("test")],
                 ["ARC-Easy-Train.jsonl", "*Train.jsonl", *readers.hf_split("train")], _parse_arc,
                 "acc_norm"),
    _simple_task("arc_challenge", ARC_FORMAT,
                 ["ARC-Challenge-Test.jsonl", "*Test.jsonl", *readers.hf_split("test")],
                 ["ARC-Challenge-Train.jsonl", "*Train.jsonl", *readers.hf_split("train")], _parse_arc,
                 "acc_norm"),
    _simple_task("openbookqa", OBQA_FORMAT, [*readers.hf_split("test"), "Main/test.jsonl"],
                 [*readers.hf_split("train"), "Main/train.jsonl"], _parse_obqa,
                 "acc_uncond", unconditional=True),
    _race_task("race_middle", "middle"),
    _race_task("race_high", "high"),
)}
