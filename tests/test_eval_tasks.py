"""The benchmark tasks: published-format fixtures, harness prompts, selection
rules, data errors, the report, and the eval CLI end to end."""

import json
import os
import pathlib
import subprocess
import sys

import pytest

from llama_jax.eval import paper_results, report
from llama_jax.eval.scoring import LoglikelihoodResult
from llama_jax.eval.tasks import DataError, EvalContext, get_task, parse_task_list
from llama_jax.eval.tasks.mmlu import category_of
from llama_jax.eval.tasks.multiple_choice import MCDoc, evaluate_multiple_choice


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

    def loglikelihood(self, requests):
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
                        is_finished=None):
        outs = []
        for p in prompts:
            text = TOK.decode(p)
            self.prompts.append(text)
            outs.append([TOK.encode(self.respond(text, s))[:max_new_tokens]
                         for s in range(num_samples)])
        return outs


def _ctx(scorer=None, generator=None, **options):
    return EvalContext(tokenizer=TOK, make_scorer=lambda: scorer,
                       make_generator=lambda: generator, options=options)


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
    return str(root)


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


# ----- data errors ---------------------------------------------------------------------
def test_missing_file_names_path_and_format(tmp_path):
    with pytest.raises(DataError) as e:
        get_task("hellaswag").run(_ctx(FakeScorer(prefers("x"))), str(tmp_path), 0, None)
    msg = str(e.value)
    assert os.path.join(str(tmp_path), "hellaswag", "hellaswag_val.jsonl") in msg
    assert "'ctx_a'" in msg and "'endings'" in msg
    with pytest.raises(DataError, match=r"mmlu.*dev/<subject>_dev.csv"):
        get_task("mmlu").run(_ctx(FakeScorer(prefers("x"))), str(tmp_path), 5, None)


def test_malformed_files_name_file_line_and_fields(tmp_path):
    bad = tmp_path / "boolq" / "dev.jsonl"
    bad.parent.mkdir()
    bad.write_text('{"question": "q", "passage": "p", "answer": true}\n{not json\n')
    with pytest.raises(DataError, match=r"dev.jsonl:2: not valid JSON.*'passage'"):
        get_task("boolq").run(_ctx(FakeScorer(prefers("x"))), str(tmp_path), 0, None)
    bad.write_text('{"question": "q", "answer": true}\n')
    with pytest.raises(DataError, match=r"dev.jsonl: record 0 has no field 'passage'"):
        get_task("boolq").run(_ctx(FakeScorer(prefers("x"))), str(tmp_path), 0, None)
    piqa = tmp_path / "piqa" / "valid.jsonl"
    piqa.parent.mkdir()
    piqa.write_text('{"goal": "g", "sol1": "a", "sol2": "b"}\n')
    with pytest.raises(DataError, match=r"valid-labels.lst does not exist"):
        get_task("piqa").run(_ctx(FakeScorer(prefers("x"))), str(tmp_path), 0, None)
    csv = tmp_path / "mmlu" / "test" / "anatomy_test.csv"
    csv.parent.mkdir(parents=True)
    (tmp_path / "mmlu" / "dev").mkdir()
    (tmp_path / "mmlu" / "dev" / "anatomy_dev.csv").write_text("q,a,b,c,d,A\n")
    csv.write_text("q,a,b,c,d\n")
    with pytest.raises(DataError, match=r"anatomy_test.csv: row 1 has 5 columns, expected 6"):
        get_task("mmlu").run(_ctx(FakeScorer(prefers("x"))), str(tmp_path), 5, None)


def test_task_list_parsing():
    specs = parse_task_list("hellaswag, nq:5,mmlu,triviaqa:64")
    assert [(t.name, k) for t, k in specs] == [("hellaswag", 0), ("naturalqs", 5), ("mmlu", 5),
                                               ("triviaqa", 64)]
    assert [k for _, k in parse_task_list("mmlu,boolq", num_fewshot=1)] == [1, 1]
    with pytest.raises(ValueError, match="unknown task 'helaswag'"):
        parse_task_list("helaswag")


def test_report_uses_nearest_paper_size():
    assert paper_results.nearest_size(6.7e9) == "7B"
    assert paper_results.nearest_size(2e6) == "7B"
    assert paper_results.nearest_size(20e9) == "13B"
    assert paper_results.nearest_size(50e9) == "65B"
    results = {"hellaswag": {"task": "hellaswag", "acc": 0.5, "acc_norm": 0.75, "num_fewshot": 0,
                             "primary_metric": "acc_norm", "num_examples": 4},
               "naturalqs:64": {"task": "naturalqs", "exact_match": 0.25, "num_fewshot": 64,
                                "primary_metric": "exact_match", "num_examples": 4}}
    table = report.markdown_table(results, 13.0e9)
    assert "| hellaswag | acc_norm | 75.0 | 79.2 | n=4 |" in table
    assert "| naturalqs:64 (64-shot) | exact_match | 25.0 | 31.9 | n=4 |" in table
    assert "LLaMA-13B" in table


@pytest.mark.parametrize("flags, message", [
    (["--tasks=unknown_task"], "error: unknown task 'unknown_task'; known tasks: arc_challenge, "),
    (["--tasks=boolq:x"], "error: task 'boolq:x': shots after ':' must be an integer"),
    (["--tasks=boolq", "--mesh=1,2"], "error: mesh shape [1, 2] must give one size per axis"),
])
def test_eval_cli_user_errors_are_one_line_and_exit_2(flags, message, tmp_path):
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=2",
               JAX_PLATFORMS="cpu")
    done = subprocess.run([sys.executable, "-m", "llama_jax.eval", f"--checkpoint={tmp_path}",
                           f"--data_dir={tmp_path}", *flags],
                          capture_output=True, text=True, env=env, timeout=300)
    assert done.returncode == 2, done.stderr[-3000:]
    assert "Traceback" not in done.stderr
    assert done.stderr.strip().splitlines() == [done.stderr.strip().splitlines()[-1]]
    assert done.stderr.strip().startswith(message)
    if "unknown_task" in message:
        assert "hellaswag" in done.stderr and "winogrande" in done.stderr


# ----- the whole path with a real model ------------------------------------------------
def test_eval_cli_end_to_end(data_dir, tmp_path):
    """`python -m llama_jax.eval` on a HF checkpoint with a SentencePiece tokenizer."""
    import jax

    import llama_jax
    from llama_jax.data.tokenizer import train_tokenizer
    from llama_jax.model import LlamaConfig, init_params

    # Real text from the standard library (a pathlib.Path is read as a file).
    tok = train_tokenizer([pathlib.Path(json.__file__)], str(tmp_path / "tok"), vocab_size=384)
    cfg = LlamaConfig(dim=64, n_layers=2, n_heads=4, n_kv_heads=2, vocab_size=384,
                      multiple_of=32, max_seq_len=256)
    ckpt = tmp_path / "hf"
    llama_jax.save_pretrained(cfg, init_params(cfg, jax.random.key(0)), ckpt, format="hf")
    out = tmp_path / "results.json"
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=2",
               JAX_PLATFORMS="cpu")
    base = [sys.executable, "-m", "llama_jax.eval", f"--checkpoint={ckpt}",
            f"--tokenizer={tok.path}", f"--data_dir={data_dir}", f"--output={out}"]
    done = subprocess.run(base + ["--tasks=hellaswag,mmlu,naturalqs:1,humaneval,perplexity",
                                  "--limit=2", "--max_gen_tokens=8", "--batch_size=4"],
                          capture_output=True, text=True, env=env, timeout=600)
    assert done.returncode == 0, done.stderr[-4000:]
    results = json.loads(out.read_text())["results"]
    assert set(results) == {"hellaswag", "mmlu", "naturalqs", "humaneval", "perplexity"}
    assert 0.0 <= results["hellaswag"]["acc_norm"] <= 1.0
    assert results["mmlu"]["num_examples"] == 4 and results["naturalqs"]["num_fewshot"] == 1
    assert results["humaneval"]["n"] == 1 and results["perplexity"]["sources"]["code"]["tokens"] > 0
    # A random model is near-uniform: per-token perplexity is within the vocabulary size.
    assert 1.0 < results["perplexity"]["perplexity"] < 3 * cfg.vocab_size
    table = (tmp_path / "results.md").read_text()
    assert "LLaMA-7B (paper)" in table and "| hellaswag | acc_norm |" in table
    # A missing data set fails with the file and the expected format.
    bad = subprocess.run(base + ["--tasks=winogrande", f"--data_dir={tmp_path / 'none'}"],
                         capture_output=True, text=True, env=env, timeout=300)
    assert bad.returncode == 2
    assert "winogrande/dev.jsonl" in bad.stderr and "'option1'" in bad.stderr


def test_perplexity_on_a_held_out_split_matches_a_direct_computation(tmp_path):
    """The corpus path: make_eval_batches' packed held-out rows, scored on the mesh,
    equal a plain single-device forward pass over the same rows."""
    import jax
    import numpy as np

    from llama_jax.data.mixture import make_eval_batches
    from llama_jax.data.sources import SourceSpec
    from llama_jax.data.tokenizer import train_tokenizer
    from llama_jax.eval.scoring import Scorer
    from llama_jax.model import Llama, LlamaConfig, init_params

    tok = train_tokenizer([pathlib.Path(json.__file__)], str(tmp_path / "tok"), vocab_size=384)
    docs = pathlib.Path(json.__file__).read_text().split("\n\n")
    _jsonl(tmp_path / "src.jsonl", [{"text": d} for d in docs if d.strip()])
    spec = SourceSpec(name="json_src", kind="jsonl", path=str(tmp_path / "src.jsonl"),
                      heldout_fraction=0.2)
    cfg = LlamaConfig(dim=64, n_layers=2, n_heads=4, n_kv_heads=2, vocab_size=384,
                      multiple_of=32, max_seq_len=64)
    params = init_params(cfg, jax.random.key(5))
    scorer = Scorer(cfg, params, batch_size=8, buckets=(64,))
    ctx = EvalContext(tokenizer=tok, make_scorer=lambda: scorer,
                      options={"perplexity_sources": [spec]})
    res = get_task("perplexity").run(ctx, str(tmp_path), 0, 2)
    got = res["sources"]["json_src"]

    total, count = 0.0, 0
    for batch in make_eval_batches(spec, tok, seq_len=64, batch_size=8, max_batches=2):
        logits = Llama(cfg).apply({"params": params}, batch["inputs"],
                                  positions=batch["positions"], segment_ids=batch["segment_ids"])
        logp = jax.nn.log_softmax(logits, axis=-1)
        picked = np.take_along_axis(np.asarray(logp), batch["targets"][..., None], -1)[..., 0]
        total += float((picked * batch["loss_mask"]).sum())
        count += int(batch["loss_mask"].sum())
    assert got["tokens"] == count > 0
    assert got["nll_per_token"] == pytest.approx(-total / count, rel=1e-5)


def test_parquet_exports_are_read_when_pyarrow_is_there(tmp_path, monkeypatch):
    pq = pytest.importorskip("pyarrow.parquet")
    import pyarrow as pa

    rows = [{"id": "x", "question": "Which is a mammal?",
             "choices": {"text": ["shark", "whale, correct"], "label": ["A", "B"]},
             "answerKey": "B"}]
    (tmp_path / "arc_easy").mkdir()
    path = tmp_path / "arc_easy" / "test-00000-of-00001.parquet"
    pq.write_table(pa.Table.from_pylist(rows), path)
    scorer = FakeScorer(prefers("correct"))
    res = get_task("arc_easy").run(_ctx(scorer), str(tmp_path), 0, None)
    assert scorer.requests[0] == ("Question: Which is a mammal?\nAnswer:", " shark")
    assert res["acc"] == 1.0
    monkeypatch.setitem(sys.modules, "pyarrow.parquet", None)  # as if not installed
    with pytest.raises(DataError, match=r"test-00000-of-00001.parquet: reading Parquet needs "
                                        r"pyarrow.*pip install pyarrow"):
        get_task("arc_easy").run(_ctx(scorer), str(tmp_path), 0, None)


def _build_tfds(folder, splits, features):
    """A TFDS array_record data set {split: records} under `folder` (as
    ``tfds.data_source(name, data_dir=folder)`` would find it)."""
    import tensorflow_datasets as tfds

    class Records(tfds.core.GeneratorBasedBuilder, skip_registration=True):
        name = "records"
        VERSION = tfds.core.Version("1.0.0")
        RELEASE_NOTES = {"1.0.0": "Test records."}

        def _info(self):
            # Unshuffled: records keep the published order (--limit, few-shot draws).
            return tfds.core.DatasetInfo(builder=self, disable_shuffling=True,
                                         features=tfds.features.FeaturesDict(features))

        def _split_generators(self, dl_manager):
            return {split: self._generate_examples(split) for split in splits}

        def _generate_examples(self, split):
            yield from enumerate(splits[split])

    builder = Records(data_dir=str(folder), file_format="array_record")
    builder.download_and_prepare()
    return builder.data_dir


def test_tasks_read_a_local_tfds_dataset_without_tensorflow(data_dir, tmp_path):
    tfds = pytest.importorskip("tensorflow_datasets")
    import numpy as np

    text, texts = tfds.features.Text(), tfds.features.Sequence(tfds.features.Text())
    root = tmp_path / "tfds_data"

    def published(task, name):
        return [json.loads(line) for line in (pathlib.Path(data_dir) / task / name).open()]

    # HellaSwag as the HF export has it (string label), split "validation".
    rows = [dict(r, label=str(r["label"])) for r in published("hellaswag", "hellaswag_val.jsonl")]
    folder = _build_tfds(root / "hellaswag", {"validation": rows}, dict(
        {k: text for k in ("activity_label", "ctx_a", "ctx_b", "ctx", "source_id", "split",
                           "split_type", "label")}, ind=np.int32, endings=texts))
    assert folder == str(root / "hellaswag" / "records" / "1.0.0")
    # ARC-Easy in the HF schema: nested choices {text: [...], label: [...]}, split "test".
    arc = [{"id": "Mercury_7", "question": "Which is a mammal?", "answerKey": "B",
            "choices": {"text": ["shark", "whale, correct", "trout", "eel"],
                        "label": ["A", "B", "C", "D"]}}]
    _build_tfds(root / "arc_easy", {"test": arc}, dict(
        id=text, question=text, answerKey=text, choices={"text": texts, "label": texts}))
    # GSM8K: "test" to evaluate, "train" for the few-shot examples.
    _build_tfds(root / "gsm8k", {"test": published("gsm8k", "test.jsonl"),
                                 "train": published("gsm8k", "train.jsonl")},
                dict(question=text, answer=text))

    for name in ("hellaswag", "arc_easy"):
        want_scorer, got_scorer = FakeScorer(prefers("correct")), FakeScorer(prefers("correct"))
        want = get_task(name).run(_ctx(want_scorer), data_dir, 0, None)
        got = get_task(name).run(_ctx(got_scorer), str(root), 0, None)
        assert got_scorer.requests == want_scorer.requests and got == want
        assert got["acc"] == 1.0
    answers = {"Ann": " 7", "What is 10": " 20"}

    def respond(prompt, s):
        return next(v for k, v in answers.items() if k in prompt.rsplit("Question:", 1)[1])

    want_gen, got_gen = FakeGenerator(respond), FakeGenerator(respond)
    want = get_task("gsm8k").run(_ctx(generator=want_gen), data_dir, 1, None)
    got = get_task("gsm8k").run(_ctx(generator=got_gen), str(root), 1, None)
    assert got_gen.prompts == want_gen.prompts and got == want and got["maj1@1"] == 1.0
    assert got_gen.prompts[0].startswith("Question: What is 1 + 1?\nAnswer: 1 + 1 = 2\n#### 2")
    assert "tensorflow" not in sys.modules
    # A data set without the split a task needs: the error names the split.
    with pytest.raises(DataError, match=r"or a TFDS array_record data set with split validation"):
        get_task("hellaswag").run(_ctx(want_scorer), str(root / "arc_easy"), 0, None)
