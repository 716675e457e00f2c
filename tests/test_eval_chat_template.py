"""`eval --chat_template`: prompts rendered as one user turn, as lm-eval's --apply_chat_template."""

import inspect
import json
import textwrap

import pytest
from eval_fixtures import data_dir  # noqa: F401 - the fixture

from llama_jax.chat.templates import BUILTIN, encode_rendered, get_template
from llama_jax.convert.hf_tokenizer import save_hf_tokenizer
from llama_jax.data.tokenizer import train_tokenizer
from llama_jax.errors import ConfigError
from llama_jax.eval.scoring import LoglikelihoodResult
from llama_jax.eval.tasks import EvalContext, EvalOptions, get_task
from llama_jax.eval.tasks.base import chat_prompt, encode_pair
from llama_jax.eval.tasks.generative import run_generation
from llama_jax.model.config import LlamaConfig

transformers = pytest.importorskip("transformers")


@pytest.fixture(scope="module")
def tok(tmp_path_factory):
    texts = [inspect.getsource(textwrap), inspect.getsource(json),
             "Question: Answer: [INST] [/INST] use a towel twist the lid" * 20]
    return train_tokenizer(texts, tmp_path_factory.mktemp("tok") / "t", 600)


@pytest.fixture(scope="module")
def hf(tok, tmp_path_factory):
    """AutoTokenizer of our exported tokenizer with the llama2 template."""
    folder = tmp_path_factory.mktemp("hf")
    save_hf_tokenizer(folder, LlamaConfig(dim=64, n_layers=1, n_heads=4,
                                          vocab_size=tok.vocab_size), tok)
    path = folder / "tokenizer_config.json"
    cfg = json.loads(path.read_text())
    cfg.update(chat_template=BUILTIN["llama2"], split_special_tokens=False)
    path.write_text(json.dumps(cfg))
    return transformers.AutoTokenizer.from_pretrained(folder)


@pytest.mark.parametrize("context, continuation", [
    ("Question: Dry wet hair\nAnswer:", " use a towel"),
    ("Question: Open a jar\nAnswer: ", "twist the lid"),  # trailing space moves to the answer
])
def test_pairs_equal_apply_chat_template(tok, hf, context, continuation):
    chat = get_template("llama2", tokenizer=tok)
    ctx, cont = encode_pair(tok, context, continuation, chat)
    turn = [{"role": "user", "content": context.rstrip()}]
    want_ctx = hf.apply_chat_template(turn, add_generation_prompt=True, tokenize=True)
    want_ctx = list(want_ctx["input_ids"] if hasattr(want_ctx, "keys") else want_ctx)
    text = hf.apply_chat_template(turn, add_generation_prompt=True, tokenize=False)
    whole = hf(text + continuation, add_special_tokens=False)["input_ids"]
    assert ctx == want_ctx and ctx[0] == tok.bos_id
    assert cont == whole[len(want_ctx):] and cont


class RecordingScorer:
    def __init__(self):
        self.requests = []

    def loglikelihood(self, requests, *, progress=None, desc=""):
        self.requests += list(requests)
        return [LoglikelihoodResult(-float(len(c)), False, len(c)) for _, c in requests]


class RecordingGenerator:
    class config:  # noqa: N801 - mimics Generator.config
        max_seq_len = 4096

    def __init__(self):
        self.prompts = []

    def generate_tokens(self, prompts, *, max_new_tokens, num_samples, **kw):
        self.prompts += [list(p) for p in prompts]
        return [[[] for _ in range(num_samples)] for _ in prompts]


def test_tasks_score_and_generate_through_the_template(tok, data_dir):  # noqa: F811
    scorer, generator = RecordingScorer(), RecordingGenerator()
    ctx = EvalContext(tokenizer=tok, make_scorer=lambda: scorer, make_generator=lambda: generator,
                      options=EvalOptions(chat_template="llama2"))
    get_task("piqa").run(ctx, data_dir, 0, None)
    first_ctx, first_cont = scorer.requests[0]
    chat = ctx.chat
    assert first_ctx == encode_rendered(tok, chat_prompt(chat, "Question: Dry wet hair\nAnswer:"))
    assert tok.decode(first_cont).strip() == "use a towel, correct"
    run_generation(ctx, ["Q: What is 2 + 2?\nA:"], max_new_tokens=4, stop=("\n",))
    assert generator.prompts == [encode_rendered(tok, chat_prompt(chat, "Q: What is 2 + 2?\nA:"))]
    # Without the option: plain prompts with BOS, as before.
    plain = RecordingScorer()
    get_task("piqa").run(EvalContext(tokenizer=tok, make_scorer=lambda: plain), data_dir, 0, None)
    assert plain.requests[0][0] == tok.encode("Question: Dry wet hair\nAnswer:", bos=True)


def test_an_unknown_template_is_named():
    with pytest.raises(ConfigError, match="unknown chat template 'nope'"):
        EvalOptions(chat_template="nope")
