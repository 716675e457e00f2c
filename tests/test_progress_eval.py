"""Progress bars of scoring and generation: on when asked, off by default when
stderr is not a terminal (as under pytest), and they never change the results."""

import re

import jax
import pytest
from eval_fixtures import TOK, FakeScorer, _choices, _jsonl, prefers

from llama_jax.eval.runner import evaluate
from llama_jax.eval.scoring import Scorer
from llama_jax.eval.tasks import EvalContext, get_task
from llama_jax.infer.engine import Generator
from llama_jax.model import LlamaConfig, init_params


@pytest.fixture(scope="module")
def tiny():
    cfg = LlamaConfig(dim=32, n_layers=1, n_heads=4, n_kv_heads=2, vocab_size=64,
                      multiple_of=32, max_seq_len=64)
    return cfg, init_params(cfg, jax.random.key(0))


def _bar_total(err: str, desc: str) -> str:
    """The last 'done/total' count tqdm drew for the bar named `desc`."""
    counts = re.findall(re.escape(desc) + r":.*?(\d+/\d+)", err.replace("\r", "\n"))
    assert counts, err
    return counts[-1]


def test_scorer_bar_counts_requests(tiny, capsys):
    cfg, params = tiny
    scorer = Scorer(cfg, params, batch_size=8, buckets=(16,))
    requests = [([1, 5 + i], [7, 8]) for i in range(10)]
    quiet = scorer.loglikelihood(requests)  # default: auto, and stderr is not a terminal
    assert capsys.readouterr().err == ""
    assert scorer.loglikelihood(requests, progress=False) == quiet
    assert capsys.readouterr().err == ""
    shown = scorer.loglikelihood(requests, progress=True, desc="boolq")
    assert shown == quiet
    err = capsys.readouterr().err
    assert _bar_total(err, "boolq") == "10/10" and "req" in err


def test_generator_bar_counts_sequences_per_batch(tiny, capsys):
    cfg, params = tiny
    gen = Generator(cfg, params, batch_size=8, prompt_buckets=(8,), chunk_size=4)
    prompts = [[1, 2, 3], [1, 4], [1, 9, 9, 9], [1]]
    quiet = gen.generate_tokens(prompts, max_new_tokens=3, num_samples=3)
    assert capsys.readouterr().err == ""
    assert gen.generate_tokens(prompts, max_new_tokens=3, num_samples=3, progress=False) == quiet
    assert capsys.readouterr().err == ""
    shown = gen.generate_tokens(prompts, max_new_tokens=3, num_samples=3, progress=True,
                                desc="gsm8k")
    assert shown == quiet
    err = capsys.readouterr().err
    assert _bar_total(err, "gsm8k") == "12/12" and "seq" in err


def test_evaluate_names_each_task_bar(tmp_path):
    """The runner names the bar after the task; the context's `progress` reaches the scorer."""
    seen = []

    class Recording(FakeScorer):
        def loglikelihood(self, requests, *, progress=None, desc=""):
            seen.append((progress, desc))
            return super().loglikelihood(requests)

    _jsonl(tmp_path / "arc_easy" / "ARC-Easy-Test.jsonl",
           [{"id": "1", "question": {"stem": "Which is a mammal?",
                                     "choices": _choices(["shark", "whale"], "AB")},
             "answerKey": "B"}])
    ctx = EvalContext(tokenizer=TOK, make_scorer=lambda: Recording(prefers("whale")))
    evaluate(ctx, [(get_task("arc_easy"), 0)], str(tmp_path))
    assert seen == [(None, "arc_easy")]
    ctx.progress = False
    evaluate(ctx, [(get_task("arc_easy"), 0)] * 2, str(tmp_path))
    assert seen[1:] == [(False, "arc_easy:0")] * 2
