"""The benchmark tasks: published-format fixtures, harness prompts, selection rules, options."""

import dataclasses
import json
import os

import pytest
from eval_fixtures import (
    FakeGenerator,
    FakeScorer,
    _choices,
    _ctx,
    _jsonl,
    data_dir,  # noqa: F401  (pytest fixture)
    prefers,
)

from llama_jax.errors import ConfigError
from llama_jax.eval.tasks import EvalContext, EvalOptions, get_task
from llama_jax.eval.tasks.mmlu import category_of
from llama_jax.eval.tasks.multiple_choice import MCDoc, evaluate_multiple_choice

# ----- multiple choice ---------------------------------------------------------------
EXPECTED_PROMPTS = {
    "boolq": ("The sky is blue on a clear day.\nQuestion: is the sky blue?\nAnswer:", " no"),
    "piqa": ("Question: Dry wet hair\nAnswer:", " use a towel, correct"),
    "siqa": ("Q: Tracy gave Bob a gift. How would Bob feel?\nA:", " angry"),
    "hellaswag": ("Roof shingle removal: A man is sitting on a roof. He",
                  " is using wrap to wrap a pair of skis."),
    "winogrande": ("Sarah was a better surgeon than Maria so Sarah", " got the harder cases."),
    "arc_easy": ("Question: Which is a mammal?\nAnswer:", " shark"),
    "arc_challenge": ("Question: What melts ice?\nAnswer:", " heat, correct"),
    "openbookqa": ("The sun is responsible for", " puppies learning new tricks"),
    "race_middle": ("Article: Tom likes apples. He eats one every day.\n\n"
                    "Question: What does Tom like?\nAnswer: apples\nTom eats an apple every  _  .",
                    " day, correct"),
}
GOLD = {"boolq": [1, 0], "piqa": [0, 1], "siqa": [1], "hellaswag": [3], "winogrande": [0],
        "arc_easy": [1], "arc_challenge": [0], "openbookqa": [2], "race_middle": [0]}


@pytest.mark.parametrize("name", sorted(EXPECTED_PROMPTS))
def test_multiple_choice_prompts_and_gold(name, data_dir):
    scorer = FakeScorer(prefers("correct"))
    res = get_task(name).run(_ctx(scorer), data_dir, 0, None)
    assert scorer.requests[0] == EXPECTED_PROMPTS[name]
    assert [p["gold"] for p in res["predictions"]] == GOLD[name]
    if name not in ("boolq", "winogrande"):  # the marked choice is the gold one
        assert res["acc"] == 1.0
    if name in ("boolq", "openbookqa"):  # Brown et al.'s normalisation
        assert res["primary_metric"] == "acc_uncond"
        assert ("Answer:", " no") in scorer.requests or ("Answer:", " puppies learning new tricks") \
            in scorer.requests


def test_hellaswag_cleans_wikihow_brackets(data_dir):
    scorer = FakeScorer(prefers("correct"))
    get_task("hellaswag").run(_ctx(scorer), data_dir, 0, None)
    assert scorer.requests[3][1] == " starts pulling up roofing. correct."


def test_race_blank_question_format():
    from llama_jax.eval.tasks.commonsense import race_doc

    doc = race_doc("A.", [{"question": "I like  _  .", "options": ["x", "tea", "z", "w"],
                           "answer": "B"},
                          {"question": "Why?", "options": ["a", "b", "c", "d"], "answer": "D"}])
    assert doc.query == "Article: A.\n\n _  .tea\nWhy?"  # the harness's [-5:] slice
    assert doc.gold == 3


def test_selection_rules_hand_computed():
    """acc picks the top log-likelihood, acc_norm divides by characters,
    acc_uncond subtracts log P(choice | 'Answer:')."""
    cond = {" aa": -4.0, " bbbbbb": -6.0, " c": -3.0}
    uncond = {" aa": -3.9, " bbbbbb": -5.0, " c": -1.0}

    def rule(ctx, cont):
        return uncond[cont] if ctx == "Answer:" else cond[cont]

    docs = [MCDoc("Q1", ["aa", "bbbbbb", "c"], 0), MCDoc("Q2", ["aa", "bbbbbb", "c"], 1)]
    res = evaluate_multiple_choice(_ctx(FakeScorer(rule)), docs, unconditional=True)
    # acc: argmax(-4, -6, -3) = 2; acc_norm: argmax(-2, -1, -3) = 1;
    # acc_uncond: argmax(-0.1, -1, -2) = 0.
    assert [(p["acc"], p["acc_norm"], p["acc_uncond"]) for p in res["predictions"]] == [(2, 1, 0)] * 2
    assert (res["acc"], res["acc_norm"], res["acc_uncond"]) == (0.0, 0.5, 0.5)


def test_fewshot_prompt_uses_train_examples_and_blank_lines(data_dir, tmp_path):
    _jsonl(tmp_path / "arc_easy/ARC-Easy-Test.jsonl",
           [json.loads(open(os.path.join(data_dir, "arc_easy/ARC-Easy-Test.jsonl")).readline())])
    _jsonl(tmp_path / "arc_easy/ARC-Easy-Train.jsonl", [
        {"id": "t", "question": {"stem": "Is ice cold?", "choices": _choices(["yes", "no"])},
         "answerKey": "A"}])
    scorer = FakeScorer(prefers("correct"))
    get_task("arc_easy").run(_ctx(scorer), str(tmp_path), 1, None)
    assert scorer.requests[0][0] == ("Question: Is ice cold?\nAnswer: yes\n\n"
                                     "Question: Which is a mammal?\nAnswer:")


def test_mmlu_five_shot_prompt_and_categories(data_dir):
    scorer = FakeScorer(lambda ctx, cont: 0.0 if cont == " B" else -1.0)
    res = get_task("mmlu").run(_ctx(scorer), data_dir, 5, None)
    ctx, cont = scorer.requests[0]
    assert ctx.startswith("The following are multiple choice questions (with answers) about "
                          "astronomy.\n\nastronomy q0, with a comma?\nA. w0\nB. correct0\nC. y0\n"
                          "D. z0\nAnswer: B\n\nastronomy q1")
    assert ctx.count("Answer: B\n\n") == 5 and ctx.endswith("\nD. z0\nAnswer:") and cont == " A"
    assert res["acc"] == 1.0 and res["num_examples"] == 4
    assert res["categories"]["STEM"] == 1.0 and res["categories"]["Humanities"] == 1.0
    assert res["categories"]["Other"] is None
    assert set(res["subjects"]) == {"astronomy", "philosophy"}
    assert category_of("high_school_government_and_politics") == "Social Sciences"
    assert category_of("professional_medicine") == "Other"


# ----- generative ----------------------------------------------------------------------
def test_naturalqs_prompt_stops_and_exact_match(data_dir):
    answers = {"who wrote the origin of species?": " the Charles Darwin.\nQ: next",
               "what is the capital of france?": " Lyon, France"}

    def respond(prompt, s):
        return answers[prompt.rsplit("Q: ", 1)[1].split("\n")[0]]

    gen = FakeGenerator(respond)
    res = get_task("naturalqs").run(_ctx(generator=gen), data_dir, 1, None)
    assert gen.prompts[0] == ("Answer these questions:\nQ: who sang who wants to be a millionaire "
                              "in high society?\nA: Frank Sinatra\nQ: who wrote the origin of "
                              "species?\nA:")
    assert [p["prediction"] for p in res["predictions"]] == ["the Charles Darwin", "Lyon"]
    assert res["exact_match"] == 0.5


def test_triviaqa_release_json_and_aliases(data_dir):
    gen = FakeGenerator(lambda p, s: " Republic of Turkey, in Asia")
    res = get_task("triviaqa").run(_ctx(generator=gen), data_dir, 0, None)
    assert gen.prompts[0] == ("Answer these questions:\nQ: The ancient city of Troy is located "
                              "in what modern country?\nA:")
    assert res["exact_match"] == 1.0


def test_gsm8k_majority_vote(data_dir):
    votes = {"Ann": [" 3 + 4 = 8\n#### 8", " so 7", " #### 7.00", " 3+4=7"],
             "What is 10": [" #### 20", " 21", " 22", " #### 22"]}

    def respond(prompt, s):
        key = "Ann" if "Ann has" in prompt.rsplit("Question:", 1)[1] else "What is 10"
        return votes[key][s] + "\n\nQuestion: more"

    gen = FakeGenerator(respond)
    res = get_task("gsm8k").run(_ctx(generator=gen, gsm8k_samples=4), data_dir, 1, None)
    assert gen.prompts[0] == ("Question: What is 1 + 1?\nAnswer: 1 + 1 = 2\n#### 2\n\n"
                              "Question: Ann has 3 apples and buys 4. How many?\nAnswer:")
    # Problem 1: first sample 8 (wrong), vote 7 (right); problem 2: first 20 (right), vote 22.
    assert res["maj1@1"] == 0.5 and res["maj1@k"] == 0.5 and res["k"] == 4
    assert [p["vote"] for p in res["predictions"]] == ["7", "22"]


def test_humaneval_pass_at_k_in_the_sandbox(data_dir):
    body = {"add": ["    return a + b\n", "    return a - b\n", "    return b + a\n"],
            "neg": ["    while True:\n        pass\n", "    return a\n", "    return -a\n"]}

    def respond(prompt, s):
        return body["add" if "def add" in prompt else "neg"][s] + "\ndef unrelated():\n    pass\n"

    res = get_task("humaneval").run(
        _ctx(generator=FakeGenerator(respond), code_samples=3, sandbox_timeout_s=2.0), data_dir,
        0, None)
    assert [p["num_passed"] for p in res["predictions"]] == [2, 1]
    assert res["pass@1"] == pytest.approx((2 / 3 + 1 / 3) / 2)
    assert "pass@10" not in res


def test_mbpp_three_shot_prompt(data_dir):
    gen = FakeGenerator(lambda p, s: "def f11():\n    return 11\n[DONE]\n\nYou are" if "f11" in
                        p.rsplit("task:", 1)[1] else "def f12():\n    return 0\n[DONE]")
    res = get_task("mbpp").run(_ctx(generator=gen), data_dir, 3, None)
    prompt = gen.prompts[0]
    assert prompt.startswith("You are an expert Python programmer, and here is your task: "
                             "Write a function f2 returning 2. Your code should pass these tests:"
                             "\n\nassert f2() == 2\nassert f2() == 2\nassert f2() == 2\n[BEGIN]\n"
                             "def f2():\n    return 2\n[DONE]\n\n")
    assert prompt.count("[DONE]") == 3 and prompt.endswith("[BEGIN]\n")
    assert [p["task_id"] for p in res["predictions"]] == [11, 12]
    assert res["pass@1"] == 0.5


# ----- options -----------------------------------------------------------------------
@pytest.mark.parametrize("name,value,match", [
    ("gsm8k_samples", 0, r"gsm8k_samples=0 must be an integer >= 1 \(--gsm8k_samples\)"),
    ("code_samples", -2, r"code_samples=-2 must be an integer >= 1"),
    ("code_samples", 1.5, r"code_samples=1.5 must be an integer"),
    ("sandbox_workers", 0, r"sandbox_workers=0 must be an integer >= 1"),
    ("sandbox_timeout_s", 0.0, r"sandbox_timeout_s=0.0 must be > 0 seconds"),
    ("sandbox_timeout_s", float("nan"), r"sandbox_timeout_s=nan must be > 0"),
    ("gsm8k_temperature", -0.1, r"gsm8k_temperature=-0.1 must be >= 0"),
    ("code_temperature", -1.0, r"code_temperature=-1.0 must be >= 0"),
    ("max_gen_tokens", 0, r"max_gen_tokens=0 must be an integer >= 1"),
    ("perplexity_seq_len", 1, r"perplexity_seq_len=1 must be >= 2"),
])
def test_eval_options_reject_bad_values(name, value, match):
    with pytest.raises(ConfigError, match=match):
        EvalOptions(**{name: value})


def test_eval_options_are_typed_not_a_dict():
    with pytest.raises(TypeError, match="gsm8k_sample"):  # a typo fails, not a silent default
        EvalOptions(gsm8k_sample=4)
    with pytest.raises(TypeError, match="must be an EvalOptions, got dict"):
        EvalContext(tokenizer=None, options={"gsm8k_samples": 4})
    opts = EvalOptions(max_gen_tokens=None, code_temperature=None, perplexity_sources=[{"a": 1}])
    assert opts.perplexity_sources == ({"a": 1},)
    with pytest.raises(dataclasses.FrozenInstanceError):
        opts.gsm8k_samples = 2


def test_max_gen_tokens_and_qa_tokens_reach_the_generator(data_dir):
    seen = []

    class Recording(FakeGenerator):
        def generate_tokens(self, prompts, *, max_new_tokens, **kw):
            seen.append(max_new_tokens)
            return super().generate_tokens(prompts, max_new_tokens=max_new_tokens, **kw)

    gen = Recording(lambda p, s: " Paris")
    get_task("naturalqs").run(_ctx(generator=gen), data_dir, 0, None)
    get_task("naturalqs").run(_ctx(generator=gen, qa_max_new_tokens=7), data_dir, 0, None)
    get_task("naturalqs").run(_ctx(generator=gen, max_gen_tokens=3), data_dir, 0, None)
    assert seen == [32, 7, 3]
