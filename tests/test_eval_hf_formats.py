"""Every task also reads the Hugging Face ``datasets`` export of its data set
(``<split>.jsonl`` / ``<split>-00000-of-00001.parquet`` with the Hub's field
names) and builds the same docs from it as from the original release files
(the fixtures of `eval_fixtures.data_dir`)."""

import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from eval_fixtures import (
    FakeGenerator,
    FakeScorer,
    _ctx,
    _jsonl,
    data_dir,  # noqa: F401  (pytest fixture)
    prefers,
)

from llama_jax.errors import DataError
from llama_jax.eval.tasks import get_task


def _parquet(path, records):
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.Table.from_pylist(records), str(path))


def _hf_choices(texts, labels="ABCD"):
    return {"text": list(texts), "label": list(labels[:len(texts)])}


PQ = "-00000-of-00001.parquet"


@pytest.fixture(scope="module")
def hf_dir(tmp_path_factory):
    """The fixtures' records as the HF Hub exports them (field names of each data set card)."""
    root = tmp_path_factory.mktemp("hf_data")
    _parquet(root / f"boolq/validation{PQ}", [  # super_glue/boolq: 'label' 0/1
        {"question": "is the sky blue", "passage": "The sky is blue on a clear day.", "idx": 0,
         "label": 1},
        {"question": "is fire cold", "passage": "Fire is hot.", "idx": 1, "label": 0}])
    _jsonl(root / "piqa/validation.jsonl", [  # ybisk/piqa
        {"goal": "Dry wet hair", "sol1": "use a towel, correct", "sol2": "use water", "label": 0},
        {"goal": "Open a jar", "sol1": "freeze it", "sol2": "twist the lid, correct", "label": 1}])
    _jsonl(root / "siqa/validation.jsonl", [  # allenai/social_i_qa: label "1".."3"
        {"context": "Tracy gave Bob a gift.", "question": "How would Bob feel?",
         "answerA": "angry", "answerB": "happy, correct", "answerC": "bored", "label": "2"}])
    _parquet(root / f"hellaswag/validation{PQ}", [  # Rowan/hellaswag: label a string
        {"ind": 24, "activity_label": "Roof shingle removal", "ctx_a": "A man is sitting on a roof.",
         "ctx_b": "he", "ctx": "A man is sitting on a roof. he",
         "endings": ["is using wrap to wrap a pair of skis.", "is ripping level tiles off.",
                     "is holding a rubik's cube.", "starts pulling up roofing [title] correct."],
         "source_id": "activitynet~v_-JhWjGDPHMY", "split": "val", "split_type": "indomain",
         "label": "3"}])
    _jsonl(root / "winogrande/validation.jsonl", [  # allenai/winogrande
        {"sentence": "Sarah was a better surgeon than Maria so _ got the harder cases.",
         "option1": "Sarah", "option2": "Maria", "answer": "1"}])
    _jsonl(root / "arc_easy/test.jsonl", [  # allenai/ai2_arc: flat question, dict of lists
        {"id": "Mercury_7", "question": "Which is a mammal?",
         "choices": _hf_choices(["shark", "whale, correct", "trout", "eel"]), "answerKey": "B"}])
    _jsonl(root / "arc_easy/train.jsonl", [
        {"id": "t", "question": "Is ice cold?", "choices": _hf_choices(["yes", "no"]),
         "answerKey": "A"}])
    _parquet(root / f"arc_challenge/test{PQ}", [
        {"id": "NYSED_1", "question": "What melts ice?",
         "choices": _hf_choices(["heat, correct", "cold", "dark"], "123"), "answerKey": "1"}])
    _jsonl(root / "openbookqa/test.jsonl", [  # allenai/openbookqa main
        {"id": "7-980", "question_stem": "The sun is responsible for", "choices": _hf_choices(
            ["puppies learning new tricks", "children growing up", "flowers wilting, correct",
             "plants sprouting"]), "answerKey": "C"}])
    for level, name in (("middle", "race_middle"), ("high", "race_high")):  # ehovy/race rows
        article = "Tom likes apples. He eats one every day."
        rows = [{"example_id": f"{level}1.txt", "article": article, "answer": "B",
                 "question": "What does Tom like?", "options": ["pears", "apples", "plums", "figs"]},
                {"example_id": f"{level}1.txt", "article": article, "answer": "A",
                 "question": "Tom eats an apple every  _  .",
                 "options": ["day, correct", "week", "month", "year"]}]
        _jsonl(root / name / "test.jsonl", rows)
        _jsonl(root / name / "train.jsonl", rows[:1])  # must not be read as test data
    for split, n in (("dev", 5), ("test", 2)):  # cais/mmlu 'all' config
        _parquet(root / "mmlu" / "all" / f"{split}{PQ}", [
            {"question": f"{subject} q{i}, with a comma?", "subject": subject,
             "choices": [f"w{i}", f"correct{i}", f"y{i}", f"z{i}"], "answer": 1}
            for subject in ("astronomy", "philosophy") for i in range(n)])
    _jsonl(root / "naturalqs/validation.jsonl", [  # google-research-datasets/nq_open
        {"question": "who wrote the origin of species", "answer": ["Charles Darwin"]},
        {"question": "what is the capital of france", "answer": ["Paris"]}])
    _jsonl(root / "naturalqs/train.jsonl", [
        {"question": "who sang who wants to be a millionaire in high society",
         "answer": ["Frank Sinatra"]}])
    tqa = {"question": "The ancient city of Troy is located in what modern country?",
           "question_id": "tc_1", "question_source": "http://www.triviacountry.com/",
           "answer": {"aliases": ["Republic of Turkey"], "normalized_aliases": ["turkey"],
                      "value": "Turkey", "normalized_value": "turkey", "type": "WikipediaEntity"}}
    _parquet(root / f"triviaqa/validation{PQ}", [tqa])  # mandarjoshi/trivia_qa rc.nocontext
    _parquet(root / f"triviaqa/train{PQ}", [tqa])
    _parquet(root / f"gsm8k/test{PQ}", [  # openai/gsm8k main
        {"question": "Ann has 3 apples and buys 4. How many?", "answer": "3 + 4 = 7\n#### 7"},
        {"question": "What is 10 times 2?", "answer": "10 * 2 = 20\n#### 20"}])
    _jsonl(root / "gsm8k/train.jsonl", [
        {"question": "What is 1 + 1?", "answer": "1 + 1 = 2\n#### 2"}])
    _parquet(root / f"humaneval/test{PQ}", [  # openai/openai_humaneval
        {"task_id": "HumanEval/0", "prompt": 'def add(a, b):\n    """Add two numbers."""\n',
         "canonical_solution": "    return a + b\n",
         "test": "def check(candidate):\n    assert candidate(2, 3) == 5\n", "entry_point": "add"},
        {"task_id": "HumanEval/1", "prompt": 'def neg(a):\n    """Negate."""\n',
         "canonical_solution": "    return -a\n",
         "test": "def check(candidate):\n    assert candidate(2) == -2\n", "entry_point": "neg"}])
    mbpp = {t: {"task_id": t, "text": f"Write a function f{t} returning {t}.",
                "code": f"def f{t}():\r\n    return {t}", "test_setup_code": "",
                "test_list": [f"assert f{t}() == {t}"] * 3, "challenge_test_list": []}
            for t in (1, 2, 3, 4, 11, 12, 600)}
    _jsonl(root / "mbpp/prompt.jsonl", [mbpp[t] for t in (1, 2, 3, 4)])  # mbpp 'full' splits
    _jsonl(root / "mbpp/test.jsonl", [mbpp[11], mbpp[12]])
    _jsonl(root / "mbpp/train.jsonl", [mbpp[600]])
    return str(root)


MC_TASKS = ["boolq", "piqa", "siqa", "hellaswag", "winogrande", "arc_easy", "arc_challenge",
            "openbookqa", "race_middle", "race_high", "mmlu"]


@pytest.mark.parametrize("name", MC_TASKS)
def test_multiple_choice_hf_export_gives_the_original_docs(name, data_dir, hf_dir):
    shots = 5 if name == "mmlu" else 0
    results = []
    for root in (data_dir, hf_dir):
        scorer = FakeScorer(prefers("correct"))
        res = get_task(name).run(_ctx(scorer), root, shots, None)
        results.append((scorer.requests, res))
    (orig_requests, orig), (hf_requests, hf) = results
    assert hf_requests == orig_requests and len(hf_requests) > 0
    assert hf == orig


def test_arc_fewshot_from_the_hf_train_split(hf_dir):
    scorer = FakeScorer(prefers("correct"))
    get_task("arc_easy").run(_ctx(scorer), hf_dir, 1, None)
    assert scorer.requests[0][0] == ("Question: Is ice cold?\nAnswer: yes\n\n"
                                     "Question: Which is a mammal?\nAnswer:")


@pytest.mark.parametrize("name,shots,options", [
    ("naturalqs", 1, {}), ("triviaqa", 1, {}), ("gsm8k", 1, {"gsm8k_samples": 2})])
def test_generative_hf_export_gives_the_original_prompts(name, shots, options, data_dir, hf_dir):
    results = []
    for root in (data_dir, hf_dir):
        gen = FakeGenerator(lambda p, s: f" Turkey #### {7 + s}")
        res = get_task(name).run(_ctx(generator=gen, **options), root, shots, None)
        results.append((gen.prompts, res))
    assert results[1] == results[0] and results[0][0]


@pytest.mark.parametrize("name,shots", [("humaneval", 0), ("mbpp", 3)])
def test_code_hf_export_gives_the_original_prompts(name, shots, data_dir, hf_dir):
    results = []
    for root in (data_dir, hf_dir):
        gen = FakeGenerator(lambda p, s: "    return 0\n")
        res = get_task(name).run(_ctx(generator=gen, sandbox_workers=2), root, shots, None)
        results.append((gen.prompts, res))
    assert results[1] == results[0] and results[0][0]
    if name == "mbpp":  # the few-shot tasks 2-4 come from the HF 'prompt' split
        assert results[1][0][0].count("[DONE]") == 3
        assert [p["task_id"] for p in results[1][1]["predictions"]] == [11, 12]


def test_hf_file_with_wrong_fields_names_the_file_and_fields(tmp_path):
    _jsonl(tmp_path / "arc_easy/test.jsonl", [{"id": "x", "question": "Which?", "answerKey": "A"}])
    with pytest.raises(DataError) as err:
        get_task("arc_easy").run(_ctx(FakeScorer(prefers("x"))), str(tmp_path), 0, None)
    msg = str(err.value)
    assert str(tmp_path / "arc_easy/test.jsonl") in msg
    assert "record 0 has no field 'choices.text'" in msg
    assert "'choices'" in msg and "answerKey" in msg  # the expected layout is spelled out
    _parquet(tmp_path / f"mmlu/all/test{PQ}", [{"question": "q", "subject": "s", "answer": 1}])
    _parquet(tmp_path / f"mmlu/all/dev{PQ}", [{"question": "q", "subject": "s", "answer": 1}])
    with pytest.raises(DataError, match=r"test-00000-of-00001.parquet: record 0 has no field "
                                        r"'choices'.*'question', 'subject', 'choices'"):
        get_task("mmlu").run(_ctx(FakeScorer(prefers("x"))), str(tmp_path), 5, None)


def test_hf_jsonl_is_preferred_to_other_splits(tmp_path):
    """A folder holding the whole HF export (train/validation/test) reads the eval split."""
    row = {"question": "q?", "answer": "1 = 1\n#### 1"}
    for split in ("train", "validation"):
        _jsonl(tmp_path / f"gsm8k/{split}.jsonl", [row, row])
    _jsonl(tmp_path / "gsm8k/test.jsonl", [row])
    res = get_task("gsm8k").run(_ctx(generator=FakeGenerator(lambda p, s: " 1")),
                                str(tmp_path), 0, None)
    assert res["num_examples"] == 1 and json.dumps(res)
