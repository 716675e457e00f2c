"""Shared fixtures of the eval task tests: fake scorer/generator/tokenizer and
tiny data files in each task's published format."""

import json

import pytest

from llama_jax.eval.scoring import LoglikelihoodResult
from llama_jax.eval.tasks import EvalContext, EvalOptions


class ByteTokenizer:
    """Bytes + 3 (pad 0, bos 1, eos 2): a stand-in with the Tokenizer interface."""

    bos_id, eos_id, pad_id, vocab_size = 1, 2, 0, 259

    def encode(self, text, bos=False, eos=False):
        return [1] * bos + [b + 3 for b in text.encode("utf-8")] + [2] * eos

    def decode(self, ids):
        return bytes(i - 3 for i in ids if 3 <= i < 259).decode("utf-8", errors="replace")


TOK = ByteTokenizer()


class FakeScorer:
    """Records (context, continuation) texts; scores by a rule on the texts."""

    def __init__(self, rule):
        self.rule = rule
        self.requests = []

    def loglikelihood(self, requests, *, progress=None, desc=""):
        assert progress is None  # tasks pass the context's setting (auto: None)
        out = []
        for ctx, cont in requests:
            assert ctx[0] == TOK.bos_id  # contexts start with BOS
            pair = (TOK.decode(ctx), TOK.decode(cont))
            self.requests.append(pair)
            out.append(LoglikelihoodResult(float(self.rule(*pair)), False, len(cont)))
        return out


def prefers(word):
    """Score 0 for continuations containing `word`, -10 otherwise."""
    return lambda ctx, cont: 0.0 if word in cont else -10.0 - len(cont) * 0.01


class FakeGenerator:
    """Answers prompts with `respond(prompt_text, sample_index) -> text`."""

    class config:  # noqa: N801 - mimics Generator.config
        max_seq_len = 100_000

    def __init__(self, respond):
        self.respond = respond
        self.prompts = []

    def generate_tokens(self, prompts, *, max_new_tokens, sampling, num_samples, eos_id, seed,
                        is_finished=None, progress=None, desc=""):
        assert progress is None
        outs = []
        for p in prompts:
            text = TOK.decode(p)
            self.prompts.append(text)
            outs.append([TOK.encode(self.respond(text, s))[:max_new_tokens]
                         for s in range(num_samples)])
        return outs


def _ctx(scorer=None, generator=None, **options):
    return EvalContext(tokenizer=TOK, make_scorer=lambda: scorer,
                       make_generator=lambda: generator, options=EvalOptions(**options))


def _jsonl(path, records):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in records))


def _choices(texts, labels="ABCD"):
    return [{"text": t, "label": lab} for t, lab in zip(texts, labels, strict=False)]


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    """Tiny files in each data set's published format."""
    root = tmp_path_factory.mktemp("eval_data")
    _jsonl(root / "boolq/dev.jsonl", [
        {"question": "is the sky blue", "title": "Sky", "answer": True,
         "passage": "The sky is blue on a clear day."},
        {"question": "is fire cold", "title": "Fire", "answer": False, "passage": "Fire is hot."}])
    _jsonl(root / "piqa/valid.jsonl", [
        {"goal": "Dry wet hair", "sol1": "use a towel, correct", "sol2": "use water"},
        {"goal": "Open a jar", "sol1": "freeze it", "sol2": "twist the lid, correct"}])
    (root / "piqa/valid-labels.lst").write_text("0\n1\n")
    _jsonl(root / "siqa/dev.jsonl", [
        {"context": "Tracy gave Bob a gift.", "question": "How would Bob feel?",
         "answerA": "angry", "answerB": "happy, correct", "answerC": "bored"}])
    (root / "siqa/dev-labels.lst").write_text("2\n")
    _jsonl(root / "hellaswag/hellaswag_val.jsonl", [
        {"ind": 24, "activity_label": "Roof shingle removal", "ctx_a": "A man is sitting on a roof.",
         "ctx_b": "he", "ctx": "A man is sitting on a roof. he",
         "endings": ["is using wrap to wrap a pair of skis.", "is ripping level tiles off.",
                     "is holding a rubik's cube.", "starts pulling up roofing [title] correct."],
         "source_id": "activitynet~v_-JhWjGDPHMY", "split": "val", "split_type": "indomain",
         "label": 3}])
    _jsonl(root / "winogrande/dev.jsonl", [
        {"qID": "1", "sentence": "Sarah was a better surgeon than Maria so _ got the harder cases.",
         "option1": "Sarah", "option2": "Maria", "answer": "1"}])
    _jsonl(root / "arc_easy/ARC-Easy-Test.jsonl", [
        {"id": "Mercury_7", "question": {"stem": "Which is a mammal?", "choices": _choices(
            ["shark", "whale, correct", "trout", "eel"])}, "answerKey": "B"}])
    _jsonl(root / "arc_challenge/ARC-Challenge-Test.jsonl", [
        {"id": "NYSED_1", "question": {"stem": "What melts ice?", "choices": _choices(
            ["heat, correct", "cold", "dark"], "123")}, "answerKey": "1"}])
    _jsonl(root / "openbookqa/test.jsonl", [
        {"id": "7-980", "question": {"stem": "The sun is responsible for", "choices": _choices(
            ["puppies learning new tricks", "children growing up", "flowers wilting, correct",
             "plants sprouting"])}, "answerKey": "C"}])
    for level, name in (("middle", "race_middle"), ("high", "race_high")):
        (root / name).mkdir()
        (root / name / "1.txt").write_text(json.dumps({
            "id": f"{level}1.txt", "article": "Tom likes apples. He eats one every day.",
            "questions": ["What does Tom like?", "Tom eats an apple every  _  ."],
            "options": [["pears", "apples", "plums", "figs"],
                        ["day, correct", "week", "month", "year"]],
            "answers": ["B", "A"]}))
    for split, n in (("dev", 5), ("test", 2)):
        for subject in ("astronomy", "philosophy"):
            rows = [f'"{subject} q{i}, with a comma?",w{i},correct{i},y{i},z{i},B\n'
                    for i in range(n)]
            (root / "mmlu" / split).mkdir(parents=True, exist_ok=True)
            (root / "mmlu" / split / f"{subject}_{split}.csv").write_text("".join(rows))
    _jsonl(root / "naturalqs/NQ-open.test.jsonl", [
        {"question": "who wrote the origin of species", "answer": ["Charles Darwin"]},
        {"question": "what is the capital of france", "answer": ["Paris"]}])
    _jsonl(root / "naturalqs/NQ-open.train.jsonl", [
        {"question": "who sang who wants to be a millionaire in high society",
         "answer": ["Frank Sinatra"]}])
    for split in ("dev", "train"):
        (root / "triviaqa").mkdir(exist_ok=True)
        (root / "triviaqa" / f"wikipedia-{split}.json").write_text(json.dumps({"Data": [
            {"Question": "The ancient city of Troy is located in what modern country?",
             "QuestionId": "tc_1", "Answer": {"Value": "Turkey", "Aliases": ["Republic of Turkey"],
                                               "NormalizedAliases": ["turkey"]}}],
            "Domain": "Wikipedia", "Version": 1.0}))
    _jsonl(root / "gsm8k/test.jsonl", [
        {"question": "Ann has 3 apples and buys 4. How many?", "answer": "3 + 4 = 7\n#### 7"},
        {"question": "What is 10 times 2?", "answer": "10 * 2 = 20\n#### 20"}])
    _jsonl(root / "gsm8k/train.jsonl", [
        {"question": "What is 1 + 1?", "answer": "1 + 1 = 2\n#### 2"}])
    _jsonl(root / "humaneval/HumanEval.jsonl", [
        {"task_id": "HumanEval/0", "prompt": 'def add(a, b):\n    """Add two numbers."""\n',
         "canonical_solution": "    return a + b\n",
         "test": "def check(candidate):\n    assert candidate(2, 3) == 5\n", "entry_point": "add"},
        {"task_id": "HumanEval/1", "prompt": 'def neg(a):\n    """Negate."""\n',
         "canonical_solution": "    return -a\n",
         "test": "def check(candidate):\n    assert candidate(2) == -2\n", "entry_point": "neg"}])
    mbpp = [{"task_id": t, "text": f"Write a function f{t} returning {t}.",
             "code": f"def f{t}():\r\n    return {t}", "test_setup_code": "",
             "test_list": [f"assert f{t}() == {t}"] * 3, "challenge_test_list": []}
            for t in (2, 3, 4, 11, 12)]
    _jsonl(root / "mbpp/mbpp.jsonl", mbpp)
    _jsonl(root / "perplexity/wiki.jsonl", [{"text": "The cat sat on the mat. " * 8},
                                            {"text": "Dogs bark."}])
    (root / "perplexity/code.txt").write_text("def f(x):\n    return x + 1\n" * 6)
    _jsonl(root / "long_perplexity/long.jsonl", [{"text": "The grass is green. " * 40}])
    (root / "math/test/algebra").mkdir(parents=True)
    (root / "math/test/algebra/1.json").write_text(json.dumps({
        "problem": "What is $2+2$?", "level": "Level 1", "type": "Algebra",
        "solution": "$2+2=\\boxed{4}$."}))
    _jsonl(root / "realtoxicityprompts/prompts.jsonl", [
        {"filename": "a.txt", "begin": 0, "end": 10, "challenging": False,
         "prompt": {"text": "The weather today is", "toxicity": 0.02}, "continuation": {}}])
    _jsonl(root / "crows_pairs/test.jsonl", [
        {"sent_more": "The correct answer is here.", "sent_less": "The wrong answer is here.",
         "stereo_antistereo": "stereo", "bias_type": "gender"}])
    _jsonl(root / "winogender/all/test.jsonl", [
        {"sentid": f"nurse.patient.0.{g}.txt", "sentence": f"The nurse told the patient that "
         f"{p} shift ends soon.", "pronoun": p, "occupation": "nurse", "participant": "patient",
         "gender": g, "target": "nurse", "label": 0}
        for g, p in (("male", "his"), ("female", "her"), ("neutral", "their"))])
    mc = {"question": "What is 2 + 2?",
          "mc1_targets": {"choices": ["correct", "five"], "labels": [1, 0]},
          "mc2_targets": {"choices": ["correct", "four", "five"], "labels": [1, 1, 0]}}
    for name in ("truthfulqa_mc1", "truthfulqa_mc2"):
        _jsonl(root / name / "validation.jsonl", [mc])
    _jsonl(root / "truthfulqa_gen/validation.jsonl", [
        {"question": "What is 2 + 2?", "best_answer": "4", "correct_answers": ["4", "four"],
         "incorrect_answers": ["5"]}])
    return str(root)
