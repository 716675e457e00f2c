"""The terminal chat: replies equal the generator's, streams add up, history fits the context."""

import json
import os
import pathlib
import subprocess
import sys

import jax
import pytest

import llama_jax
from llama_jax.chat.session import ChatSession, _held_back
from llama_jax.chat.templates import encode_rendered, get_template
from llama_jax.data.tokenizer import train_tokenizer
from llama_jax.errors import DataError
from llama_jax.infer.engine import ContinuationDecoder, Generator
from llama_jax.model import LlamaConfig, init_params

NEW = 8


@pytest.fixture(scope="module")
def tok(tmp_path_factory):
    return train_tokenizer([pathlib.Path(json.__file__)], str(tmp_path_factory.mktemp("spm") / "t"),
                           vocab_size=384)


@pytest.fixture(scope="module")
def model():
    cfg = LlamaConfig(dim=64, n_layers=2, n_heads=8, n_kv_heads=2, vocab_size=384,
                      multiple_of=32, max_seq_len=128)
    params = init_params(cfg, jax.random.key(7))
    params["output"]["kernel"] = params["output"]["kernel"] * 20.0  # peaked: no argmax ties
    return cfg, params


@pytest.fixture(scope="module")
def generator(model):
    cfg, params = model
    return Generator(cfg, params, batch_size=1, chunk_size=2)


def expected_reply(generator, tok, template, messages):
    """The reply by hand: render, encode, greedy-generate, decode as a continuation."""
    ids = encode_rendered(tok, template.render(messages, add_generation_prompt=True))
    out = generator.generate_tokens([ids], max_new_tokens=NEW, eos_id=tok.eos_id)[0][0]
    return ContinuationDecoder(tok, [ids])(0, out)


def test_replies_equal_the_generator_and_streams_add_up(generator, tok):
    template = get_template("llama2", tokenizer=tok)
    session = ChatSession(generator, tok, template, system="Be brief.", max_new_tokens=NEW)
    pieces = []
    first = session.reply("Hello there", on_text=pieces.append)
    want = expected_reply(generator, tok, template, [{"role": "system", "content": "Be brief."},
                                                     {"role": "user", "content": "Hello there"}])
    assert first == want and "".join(pieces) == first and first
    assert len(pieces) > 1  # streamed in chunks, not at the end
    second = session.reply("And then?")
    assert second == expected_reply(generator, tok, template, session.messages()[:-1])
    assert [m["role"] for m in session.messages()] == ["system", "user", "assistant", "user",
                                                       "assistant"]
    session.reset()
    assert session.messages() == [{"role": "system", "content": "Be brief."}]


def test_history_is_trimmed_to_the_context(generator, tok):
    template = get_template("llama2", tokenizer=tok)
    session = ChatSession(generator, tok, template, system="S", max_new_tokens=NEW)
    long = "word " * 8  # about 40 tokens: three exchanges outgrow 120
    for _ in range(4):
        session.reply(long)
        ids = session.prompt_ids("next")
        assert len(ids) <= generator.config.max_seq_len - NEW
    assert session.dropped >= 1 and session.messages()[0]["role"] == "system"
    with pytest.raises(DataError, match="shorten it"):
        session.prompt_ids("word " * 200)


def test_stop_string_prefixes_are_held_back():
    assert _held_back("abc <|im", ("<|im_end|>",)) == 4
    assert _held_back("abc", ("<|im_end|>",)) == 0
    assert _held_back("x<", ("</s>", "<|im_end|>")) == 1


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory, model, tok):
    cfg, params = model
    path = tmp_path_factory.mktemp("chat") / "hf"
    llama_jax.save_pretrained(cfg, params, path, format="hf", tokenizer=tok.path, progress=False)
    return path


def _chat(args, stdin=None):
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=1",
               JAX_PLATFORMS="cpu")
    return subprocess.run([sys.executable, "-m", "llama_jax.chat", *args], input=stdin,
                          capture_output=True, text=True, env=env, timeout=300)


def test_chat_cli_one_turn_and_interactive(ckpt, generator, tok):
    template = get_template("llama2", tokenizer=tok)
    hello = expected_reply(generator, tok, template, [{"role": "user", "content": "hello"}])
    flags = [f"--checkpoint={ckpt}", f"--max_new_tokens={NEW}"]
    done = _chat([*flags, "--prompt=hello"])
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout == hello + "\n"
    # Interactive: two turns, /reset, the same first message again, then EOF.
    done = _chat(flags, stdin="hello\nhow are you\n/reset\nhello\n")
    assert done.returncode == 0, done.stderr[-2000:]
    replies = [line.split("assistant> ", 1)[1] for line in done.stdout.split("you> ")
               if "assistant> " in line]
    assert [r.rstrip("\n") for r in replies][0::2] == [hello, hello]  # after /reset: as new
    assert "(conversation cleared)" in done.stderr
    bad = _chat([*flags, "--template=nope", "--prompt=x"])
    assert bad.returncode == 2 and "unknown chat template 'nope'" in bad.stderr
