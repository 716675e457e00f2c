"""Long-context evaluation: perplexity by position bucket and passkey retrieval.

References: a plain numpy log-softmax over the model's logits (bucketed by
hand), LongLoRA's passkey prompt, and scorers whose answers are known (an
oracle, a sliding-window "model" that forgets the start, one that never
retrieves).
"""

import json
import re

import jax
import numpy as np
import pytest
from eval_fixtures import TOK, _jsonl

from llama_jax.data.sources import SourceSpec, build_source, split_heldout
from llama_jax.errors import ConfigError
from llama_jax.eval.scoring import LoglikelihoodResult, Scorer
from llama_jax.eval.tasks import EvalContext, EvalOptions, get_task
from llama_jax.eval.tasks import passkey as pk
from llama_jax.eval.tasks.position_perplexity import bucket_nll, concatenated_rows
from llama_jax.model import Llama, LlamaConfig, init_params

CFG = LlamaConfig(dim=64, n_layers=2, n_heads=4, n_kv_heads=2, vocab_size=320, multiple_of=32,
                  max_seq_len=128)
DOCS = ["The cat sat on the mat and then it sat again. " * 5,  # > 129 bytes: cut
        "def f(x):\n\treturn x + 1\n" * 3, "Short."]


@pytest.fixture(scope="module")
def params():
    return init_params(CFG, jax.random.key(3))


@pytest.fixture(scope="module")
def scorer(params):
    return Scorer(CFG, params, batch_size=2)


def _reference_logprobs(params, row):
    """log p(row[i+1] | row[:i+1]) from one plain forward pass, numpy log-softmax in float64."""
    logits = np.asarray(Llama(CFG).apply({"params": params}, np.asarray([row[:-1]], np.int32)),
                        np.float64)[0]  # [len, vocab]
    logp = logits - logits.max(-1, keepdims=True)
    logp = logp - np.log(np.exp(logp).sum(-1, keepdims=True))
    return logp[np.arange(len(row) - 1), row[1:]]


def test_bucketed_nll_equals_numpy_on_the_model_logits(tmp_path, params, scorer):
    _jsonl(tmp_path / "long_perplexity" / "docs.jsonl", [{"text": d} for d in DOCS])
    ctx = EvalContext(tokenizer=TOK, make_scorer=lambda: scorer,
                      options=EvalOptions(position_bucket=32))
    res = get_task("long_perplexity").run(ctx, str(tmp_path), 0, None)
    rows = [[TOK.bos_id, *TOK.encode(d)][:CFG.max_seq_len + 1] for d in DOCS]
    assert [len(r) for r in rows] == [129, 73, 7]
    ref = [_reference_logprobs(params, r) for r in rows]
    expect: dict[int, list[float]] = {}
    for lp in ref:
        for pos, x in enumerate(lp):
            expect.setdefault(pos // 32, []).append(-x)
    assert list(res["buckets"]) == ["[0, 32)", "[32, 64)", "[64, 96)", "[96, 128)"]
    for b, (key, got) in enumerate(res["buckets"].items()):
        assert (got["start"], got["end"]) == (32 * b, 32 * (b + 1)), key
        assert got["tokens"] == len(expect[b])
        assert got["nll_per_token"] == pytest.approx(np.mean(expect[b]), rel=1e-5)
        assert got["perplexity"] == pytest.approx(np.exp(np.mean(expect[b])), rel=1e-5)
    assert res["buckets"]["[96, 128)"]["tokens"] == 32  # only the long document reaches it
    assert res["tokens"] == 128 + 72 + 6 and res["num_examples"] == 3
    all_nll = -np.concatenate(ref)
    assert res["nll_per_token"] == pytest.approx(all_nll.mean(), rel=1e-5)
    assert res["sources"]["docs"]["rows"] == 3 and res["seq_len"] == 128
    # The same numbers straight from token_logprobs, and a small limit keeps the first rows.
    for got, want in zip(scorer.token_logprobs(rows), ref, strict=True):
        np.testing.assert_allclose(got, want, rtol=2e-5, atol=2e-5)
    assert get_task("long_perplexity").run(ctx, str(tmp_path), 0, 1)["tokens"] == 128


def test_bucket_nll_by_hand():
    lps = [np.log([0.5, 0.25, 0.5]), np.log([0.125])]
    got = bucket_nll(lps, 2)
    assert list(got) == ["[0, 2)", "[2, 4)"]
    assert got["[0, 2)"]["tokens"] == 3
    # [0, 2): row 0 positions 0, 1 and row 1 position 0; [2, 4): row 0 position 2.
    assert got["[0, 2)"]["nll_per_token"] == pytest.approx((np.log(2) + np.log(4) + np.log(8)) / 3)
    assert got["[2, 4)"]["perplexity"] == pytest.approx(2.0)


def test_corpus_held_out_documents_are_concatenated_into_full_rows(tmp_path, scorer):
    docs = [f"Document {i}: " + "words and more words. " * (3 + i % 4) for i in range(40)]
    _jsonl(tmp_path / "src.jsonl", [{"text": d} for d in docs])
    spec = SourceSpec(name="src", kind="jsonl", path=str(tmp_path / "src.jsonl"),
                      heldout_fraction=0.4)
    ctx = EvalContext(tokenizer=TOK, make_scorer=lambda: scorer,
                      options=EvalOptions(perplexity_sources=[spec], position_bucket=64))
    res = get_task("long_perplexity").run(ctx, "", 0, 3)
    _, heldout = split_heldout(build_source(spec))
    stream = [t for i in range(len(heldout)) for t in TOK.encode(heldout[i], bos=True, eos=True)]
    want = [stream[k * 129:(k + 1) * 129] for k in range(3)]
    assert concatenated_rows(TOK, heldout, 128, 3) == want
    assert (res["sources"]["src"]["rows"], res["sources"]["src"]["tokens"]) == (3, 3 * 128)
    assert [b["tokens"] for b in res["buckets"].values()] == [3 * 64, 3 * 64]
    with pytest.raises(ValueError, match="fewer than 129 held-out tokens"):
        tiny = SourceSpec(name="t", kind="jsonl", path=str(tmp_path / "t.jsonl"),
                          heldout_fraction=0.4)
        _jsonl(tmp_path / "t.jsonl", [{"text": "a"}, {"text": "b"}])
        get_task("long_perplexity").run(
            EvalContext(tokenizer=TOK, make_scorer=lambda: scorer,
                        options=EvalOptions(perplexity_sources=[tiny])), "", 0, None)


# ----- passkey ---------------------------------------------------------------------------
def test_passkey_prompt_is_longloras_and_fills_the_length():
    text = pk.passkey_prompt("12345", 2, 1)
    assert text == ("There is an important info hidden inside a lot of irrelevant text. Find it "
                    "and memorize them. I will quiz you about the important information there.\n"
                    "The grass is green. The sky is blue.\n"
                    "The pass key is 12345. Remember it. 12345 is the pass key.\n"
                    "The grass is green.\nWhat is the pass key? The pass key is")
    for depth in (0.0, 0.3, 1.0):
        ex = pk.build_example(TOK, 1000, depth, "54321")
        n = ex["filler_sentences"]
        size = len(ex["context"]) + len(ex["answer"])
        assert size <= 1000 < size + len(" There and back again.")  # no room for one more
        prompt = TOK.decode(ex["context"])
        assert ex["context"][0] == TOK.bos_id and TOK.decode(ex["answer"]) == " 54321"
        before = prompt.split("The pass key is 54321")[0].split("\n", 1)[1]
        assert before.count(".") == round(depth * n)
        assert prompt.endswith(pk.QUESTION)
    with pytest.raises(ConfigError, match="cannot hold even the prompt"):
        pk.build_example(TOK, 100, 0.5, "54321")
    keys = [pk.make_key(0, 512, 0.5, i) for i in range(5)]
    assert keys == [pk.make_key(0, 512, 0.5, i) for i in range(5)]
    assert all(re.fullmatch(r"\d{5}", k) for k in keys) and len(set(keys)) == 5
    assert keys != [pk.make_key(1, 512, 0.5, i) for i in range(5)]


class RuleScorer:
    """Answers 'greedy' by a rule on (context text, answer text, context ids)."""

    max_len = 2048

    def __init__(self, rule):
        self.rule = rule

    def loglikelihood(self, requests, *, progress=None, desc=""):
        return [LoglikelihoodResult(-1.0, bool(self.rule(TOK.decode(c), TOK.decode(a), c)),
                                    len(a)) for c, a in requests]


def oracle(context, answer, ids):
    """Reads the key from the context: right whenever the task asks for the hidden key."""
    return re.search(r"The pass key is (\d{5})\. Remember it", context).group(1) == answer.strip()


def sliding_window(context, answer, ids, window=400):
    """A model that sees only the last `window` tokens of its context."""
    return f"The pass key is {answer.strip()}" in TOK.decode(ids[-window:])


@pytest.mark.parametrize("rule, overall", [(oracle, 1.0), (lambda *a: False, 0.0)])
def test_passkey_accuracy_of_known_scorers(rule, overall):
    ctx = EvalContext(tokenizer=TOK, make_scorer=lambda: RuleScorer(rule), options=EvalOptions(
        passkey_lengths=[600, 1200], passkey_samples=3))
    res = get_task("passkey").run(ctx, "", 0, None)
    assert res["accuracy"] == overall and res["num_examples"] == 2 * 5 * 3
    assert set(res["grid"]) == {f"{n}@{d}" for n in (600, 1200)
                                for d in (0.0, 0.25, 0.5, 0.75, 1.0)}
    assert all(v == overall for v in res["grid"].values())
    assert len({p["key"] for p in res["predictions"]}) == 30  # a fresh key per prompt
    assert all(p["length"] - 25 < p["tokens"] <= p["length"] for p in res["predictions"])


def test_passkey_accuracy_per_depth_of_a_forgetful_model():
    ctx = EvalContext(tokenizer=TOK, make_scorer=lambda: RuleScorer(sliding_window),
                      options=EvalOptions(passkey_lengths=[1200], passkey_samples=2))
    res = get_task("passkey").run(ctx, "", 0, None)
    assert res["by_depth"] == {"0.0": 0.0, "0.25": 0.0, "0.5": 0.0, "0.75": 1.0, "1.0": 1.0}
    assert res["accuracy"] == pytest.approx(0.4)
    ctx = EvalContext(tokenizer=TOK, make_scorer=lambda: RuleScorer(sliding_window),
                      options=EvalOptions(passkey_lengths=[4096]))
    with pytest.raises(ConfigError, match=r"lengths \[4096\] exceed the scorer's max_len=2048"):
        get_task("passkey").run(ctx, "", 0, None)


def test_passkey_on_a_real_model_is_deterministic(params):
    scorer = Scorer(CFG.replace(max_seq_len=1200), params, batch_size=2)  # bytes: long prompts
    ctx = EvalContext(tokenizer=TOK, make_scorer=lambda: scorer,
                      options=EvalOptions(passkey_depths=[0.0, 1.0], passkey_samples=2))
    first = get_task("passkey").run(ctx, "", 0, None)
    assert set(first["by_length"]) == {"300", "600", "1200"}  # a quarter, a half, all
    assert 0.0 <= first["accuracy"] <= 1.0 and first["key_logprob"] < 0
    again = get_task("passkey").run(ctx, "", 0, None)
    assert json.dumps(first, sort_keys=True) == json.dumps(again, sort_keys=True)


def test_long_context_options_are_validated():
    for bad, match in ((dict(position_bucket=0), "position_bucket"),
                       (dict(passkey_depths=[1.5]), "passkey_depths"),
                       (dict(passkey_lengths=["x"]), "passkey_lengths"),
                       (dict(passkey_lengths=[8]), ">= 16"),
                       (dict(passkey_samples=0), "passkey_samples")):
        with pytest.raises(ConfigError, match=match):
            EvalOptions(**bad)
    assert EvalOptions(passkey_lengths=["256", "512"]).passkey_lengths == (256, 512)
