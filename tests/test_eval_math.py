"""MATH: Minerva's prompt and normalisation against lm-eval's minerva_math source,
\\boxed{} extraction, maj1@k against hand-computed votes, the release and HF layouts."""

import ast
import json
import os
import re

import lm_eval
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from eval_fixtures import FakeGenerator, _ctx, _jsonl

from llama_jax.errors import ConfigError, DataError
from llama_jax.eval import report
from llama_jax.eval.tasks import get_task
from llama_jax.eval.tasks import math_normalize as mn
from llama_jax.eval.tasks.math import load_math, minerva_prompt

MINERVA_DIR = os.path.join(os.path.dirname(lm_eval.__file__), "tasks", "minerva_math")
_WANTED = {"doc_to_text", "list_fewshot_samples", "last_boxed_only_string", "remove_boxed",
           "get_unnormalized_answer", "normalize_final_answer", "SUBSTITUTIONS",
           "REMOVED_EXPRESSIONS"}


@pytest.fixture(scope="module")
def lm_eval_minerva():
    """lm-eval's own minerva_math functions, taken from its utils.py source (importing
    the module needs math_verify and antlr4, which are not installed)."""
    with open(os.path.join(MINERVA_DIR, "utils.py"), encoding="utf-8") as f:
        tree = ast.parse(f.read())
    keep = [n for n in tree.body if getattr(n, "name", None) in _WANTED or (
        isinstance(n, ast.Assign) and {t.id for t in n.targets} & _WANTED)]
    assert len(keep) == len(_WANTED)
    namespace = {"re": re}
    exec(compile(ast.Module(body=keep, type_ignores=[]), "minerva_utils", "exec"), namespace)
    return namespace


# (raw final answer, normalised), traced by hand through Minerva's Appendix D rules.
MINERVA_EXAMPLES = [
    ("10\\text{ inches}", "10"),
    ("x = 5", "5"),
    ("\\frac12", "\\frac{1}{2}"),
    ("\\sqrt2", "\\sqrt{2}"),
    ("\\sqrt[3]8", "\\sqrt[3]{8}"),
    ("100,000", "100000"),
    ("0,1", "0,1"),
    ("\\$5.00", "5.00"),
    ("90^\\circ", "90"),
    ("30 degrees", "30"),
    ("\\textbf{(C)}", "(C)"),
    ("\\left( 3, \\frac{\\pi}{2} \\right)", "\\left(3,\\frac{\\pi}{2}\\right)"),
    ("$\\boxed{24}$", "24"),
    ("5\\text{ cm}^2", "5"),  # "\\text{}^2" is a removed expression
    ("2\\pi cm", "2\\pi"),
    ("\\text{Evelyn}", "Evelyn"),
    ("\\dfrac{3}{4}", "\\dfrac{3}{4}"),
    ("a 5", "5"),
]


@pytest.mark.parametrize("raw,expected", MINERVA_EXAMPLES)
def test_normaliser_hand_traced_and_equal_to_lm_eval(raw, expected, lm_eval_minerva):
    assert mn.normalize_final_answer(raw) == expected
    assert lm_eval_minerva["normalize_final_answer"](raw) == expected
    assert mn.SUBSTITUTIONS == lm_eval_minerva["SUBSTITUTIONS"]
    assert mn.REMOVED_EXPRESSIONS == lm_eval_minerva["REMOVED_EXPRESSIONS"]


@pytest.mark.parametrize("text", [
    "so the answer is $\\boxed{\\frac{1}{2}}$.",
    "first $\\boxed{1}$ then $\\boxed{\\sqrt{\\frac{a}{b}}+{c}}$ done",
    "\\boxed 5$ and more",
    "\\fbox{7} only",
    "no box at all",
    "unbalanced \\boxed{\\frac{1}{2}",
])
def test_boxed_extraction_nested_braces_as_lm_eval(text, lm_eval_minerva):
    ours = mn.last_boxed_only_string(text)
    assert ours == lm_eval_minerva["last_boxed_only_string"](text)
    if ours is not None and ours.startswith("\\boxed"):
        assert mn.remove_boxed(ours) == lm_eval_minerva["remove_boxed"](ours)
    assert mn.last_boxed_only_string("$\\boxed{\\frac{1}{2}}$") == "\\boxed{\\frac{1}{2}}"
    assert mn.boxed_answer("is $\\boxed{\\sqrt{\\frac{a}{b}}+{c}}$") == "\\sqrt{\\frac{a}{b}}+{c}"
    assert mn.remove_boxed("\\fbox{7}") is None  # lm-eval asserts here


@pytest.mark.parametrize("gen", [
    " We get 4.\nFinal Answer: The final answer is $\\frac{1}{2}$. I hope it is correct.",
    " x=2.\nFinal Answer: The final answer is $2$. I hope it",  # cut by the token limit
    " Final Answer: The final answer is 3 inches. I hope it is correct.\n\nProblem: more",
    " no final answer line",
])
def test_final_answer_extraction_as_lm_eval(gen, lm_eval_minerva):
    assert mn.get_unnormalized_answer(gen) == lm_eval_minerva["get_unnormalized_answer"](gen)


def test_prompt_is_lm_eval_minerva_doc_to_text_with_its_fewshot_samples(lm_eval_minerva):
    from lm_eval.config.task import TaskConfig

    with open(os.path.join(MINERVA_DIR, "minerva_math_algebra.yaml"), encoding="utf-8") as f:
        yaml_text = f.read()
    assert "num_fewshot: 4" in yaml_text and "sampler: first_n" in yaml_text
    assert re.search(r"until:\s*\n\s*- \"Problem:\"", yaml_text)
    assert "{{answer if few_shot is undefined else solution}}" in yaml_text  # shots: solution
    tgt, few = TaskConfig.target_delimiter, TaskConfig.fewshot_delimiter
    samples, doc_to_text = lm_eval_minerva["list_fewshot_samples"](), lm_eval_minerva["doc_to_text"]
    problem = {"problem": "What is $1+1$?"}
    expected = "".join(doc_to_text(s) + tgt + s["solution"] + few for s in samples)
    assert minerva_prompt(problem["problem"]) == expected + doc_to_text(problem)
    assert minerva_prompt("Q", 0) == "Problem:\nQ\n\nSolution:"
    with pytest.raises(ConfigError, match="math:<0-4>"):
        minerva_prompt("Q", 5)


def test_equivalence_without_sympy_is_string_equality():
    assert mn.is_equiv("\\frac{1}{2}", "\\frac{1}{2}")
    assert not mn.is_equiv(mn.INVALID_ANSWER, "5") and not mn.is_equiv(None, "5")
    if not mn.SYMPY_EQUIVALENCE:  # antlr4 is not installed here: no symbolic matches
        assert not mn.is_equiv("0.5", "\\frac{1}{2}")


# ----- the task --------------------------------------------------------------------------
PROBLEMS = [  # (subject folder, type, level, problem, solution)
    ("algebra", "Algebra", "Level 1", "What is $2+3$?", "$2+3=\\boxed{5}$."),
    ("algebra", "Algebra", "Level 2", "Solve $2x=1$.", "So $x=\\boxed{\\frac{1}{2}}$."),
    ("number_theory", "Number Theory", "Level 1", "What is $10 \\bmod 3$?", "It is $\\boxed{1}$."),
]


def _final(answer):
    return f" Work.\nFinal Answer: The final answer is ${answer}$. I hope it is correct."


# Samples per problem (by its text) and the hand-computed outcome:
# P1 samples 5, 6, 6, 5 -> first right; votes 5:2, 6:2, tie -> 5 (seen first): right.
# P2 samples 1/3, \frac12, \frac{1}{2}, none -> first wrong; \frac12 normalises to
#   \frac{1}{2}: 2 votes -> right.
# P3 samples 2, [invalid], [invalid], 1 -> first wrong; votes 2:1, 1:1 -> 2: wrong.
SAMPLES = {"What is $2+3$?": [_final("5"), _final("6"), _final("6"), _final("5")],
           "Solve $2x=1$.": [_final("1/3"), _final("\\frac12"), _final("\\frac{1}{2}"), " no"],
           "What is $10 \\bmod 3$?": [_final("2"), " x", " y", _final("1")]}


def _respond(prompt, s):
    return SAMPLES[prompt.rsplit("Problem:\n", 1)[1].split("\n\nSolution:")[0]][s]


def _release(root):
    for i, (folder, kind, level, problem, solution) in enumerate(PROBLEMS):
        path = root / "math" / "test" / folder / f"{i + 10}.json"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps({"problem": problem, "level": level, "type": kind,
                                    "solution": solution}))
    return str(root)


def _records():
    return [{"problem": p, "level": lv, "type": t, "solution": s} for _, t, lv, p, s in PROBLEMS]


def test_maj1_at_k_hand_computed_per_subject_and_level(tmp_path):
    gen = FakeGenerator(_respond)
    res = get_task("math").run(_ctx(generator=gen, math_samples=4), _release(tmp_path), 4, None)
    assert gen.prompts[0] == minerva_prompt("What is $2+3$?")
    assert res["maj1@1"] == pytest.approx(1 / 3) and res["maj1@k"] == pytest.approx(2 / 3)
    assert [p["vote"] for p in res["predictions"]] == ["5", "\\frac{1}{2}", "2"]
    assert res["subjects"] == {"algebra": {"acc": 1.0, "num_examples": 2},
                               "number_theory": {"acc": 0.0, "num_examples": 1}}
    assert res["levels"] == {"Level 1": {"acc": 0.5, "num_examples": 2},
                             "Level 2": {"acc": 1.0, "num_examples": 1}}
    assert res["primary_metric"] == "maj1@k" and res["k"] == 4
    rows = report.table_rows("math", dict(res, task="math"), "65B")
    assert ("math", "maj1@4", "66.7", "20.5", "n=3 (paper: k=256)") in rows
    greedy = get_task("math").run(_ctx(generator=FakeGenerator(_respond)), str(tmp_path), 4, 1)
    assert greedy["primary_metric"] == "maj1@1" and greedy["num_examples"] == 2  # 1 per subject


@pytest.mark.parametrize("layout", ["competition_math_jsonl", "hendrycks_math_parquet"])
def test_hf_exports_give_the_release_docs(layout, tmp_path):
    hf = tmp_path / "hf"
    if layout == "competition_math_jsonl":
        _jsonl(hf / "math" / "test.jsonl", _records())
        _jsonl(hf / "math" / "train.jsonl", _records()[:1])
    else:
        for sub in ("algebra", "number_theory"):
            (hf / "math" / sub).mkdir(parents=True)
            rows = [r for r, p in zip(_records(), PROBLEMS, strict=True) if p[0] == sub]
            pq.write_table(pa.Table.from_pylist(rows),
                           str(hf / "math" / sub / "test-00000-of-00001.parquet"))
    outs = []
    for root in (_release(tmp_path / "release"), str(hf)):
        gen = FakeGenerator(_respond)
        outs.append((gen.prompts, get_task("math").run(_ctx(generator=gen, math_samples=4),
                                                       root, 4, None)))
    assert outs[0] == outs[1]


def test_bad_math_files_name_the_file_and_fields(tmp_path):
    path = tmp_path / "math" / "test" / "algebra" / "1.json"
    path.parent.mkdir(parents=True)
    path.write_text(json.dumps({"question": "What?", "level": "Level 1", "type": "Algebra"}))
    ctx = _ctx(generator=FakeGenerator(_respond))
    with pytest.raises(DataError, match=r"1\.json: record 0 has no field 'problem'; expected "
                                        r"Hendrycks MATH.*'problem', 'level', 'type', 'solution'"):
        get_task("math").run(ctx, str(tmp_path), 4, None)
    path.write_text(json.dumps({"problem": "What?", "level": "Level 1", "type": "Algebra",
                                "solution": "It is 5."}))
    with pytest.raises(DataError, match=r"1\.json: record 0: 'solution' has no \\boxed"):
        get_task("math").run(ctx, str(tmp_path), 4, None)
    with pytest.raises(DataError, match="math: .* does not exist"):
        get_task("math").run(ctx, str(tmp_path / "nowhere"), 4, None)
    with pytest.raises(ConfigError, match="math_samples"):
        _ctx(math_samples=0)


def test_prompt_and_reference_equal_lm_eval_task_rendering(tmp_path, monkeypatch):
    """lm-eval's own ConfigurableTask (its minerva_math_algebra.yaml and utils.py, the
    math_verify/antlr4 import guard removed, the data pointed at a local file) renders
    the same 4-shot prompt and reference answer as ours."""
    from lm_eval.tasks import TaskManager

    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_CACHE", str(tmp_path / "cache"))
    tree = ast.parse(open(os.path.join(MINERVA_DIR, "utils.py"), encoding="utf-8").read())
    tree.body = [n for n in tree.body if not isinstance(n, ast.Try)]
    (tmp_path / "tasks").mkdir()
    (tmp_path / "tasks" / "utils.py").write_text(ast.unparse(tree))
    data = tmp_path / "test.jsonl"
    _jsonl(data, _records())
    with open(os.path.join(MINERVA_DIR, "minerva_math_algebra.yaml"), encoding="utf-8") as f:
        yaml_text = f.read()
    yaml_text = yaml_text.replace("task: minerva_math_algebra", "task: local_minerva").replace(
        "dataset_path: EleutherAI/hendrycks_math", "dataset_path: json\ndataset_kwargs:\n"
        f"  data_files:\n    test: {data}\n    train: {data}").replace("dataset_name: algebra\n", "")
    (tmp_path / "tasks" / "local_minerva.yaml").write_text(yaml_text)
    manager = TaskManager(include_path=str(tmp_path / "tasks"), include_defaults=False)
    task = manager.load(["local_minerva"])["tasks"]["local_minerva"]
    docs = list(task.test_docs())
    ours = load_math(_release(tmp_path / "release"))
    assert len(docs) == len(ours) == 3
    for doc, mine in zip(docs, ours, strict=True):
        assert task.fewshot_context(doc, 4) == minerva_prompt(mine["problem"])
        assert doc["answer"] == mine["answer"]
