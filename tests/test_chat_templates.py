"""Chat templates against `transformers.apply_chat_template` and Meta's Llama-2 layout.

The tokenizer is ours, exported to a Hugging Face folder (`save_hf_tokenizer`)
whose ``tokenizer_config.json`` carries a Jinja ``chat_template`` and lets
special tokens match (``split_special_tokens: false``, as in Meta's Llama-2
chat checkpoints); `AutoTokenizer` then renders and tokenises the same
conversations our templates do.
"""

from __future__ import annotations

import inspect
import json
import textwrap

import pytest

from llama_jax.chat import templates as T
from llama_jax.convert.hf_tokenizer import save_hf_tokenizer
from llama_jax.data.tokenizer import train_tokenizer
from llama_jax.errors import ConfigError, DataError
from llama_jax.model.config import LlamaConfig

transformers = pytest.importorskip("transformers")

CONVERSATIONS = {
    "one_turn": [{"role": "user", "content": "What is 2 + 2?"},
                 {"role": "assistant", "content": "It is 4."}],
    "system_multi_turn": [
        {"role": "system", "content": "You are terse.\nAnswer in one line."},
        {"role": "user", "content": "Name a prime."},
        {"role": "assistant", "content": "Seven."},
        {"role": "user", "content": "  Another, in code:\tdef f(): pass "},
        {"role": "assistant", "content": "def p():\n\treturn 11"}],
    "multi_turn": [
        {"role": "user", "content": "Hello there"},
        {"role": "assistant", "content": "Hi! Ça va? 日本語"},
        {"role": "user", "content": "Count: 1 2 3"},
        {"role": "assistant", "content": "4 5 6"}],
}


@pytest.fixture(scope="module")
def tok(tmp_path_factory):
    texts = [inspect.getsource(textwrap), inspect.getsource(json),
             "Hello there. Ça va? 日本語 [INST] <<SYS>> ### Instruction: ### Response:" * 20]
    return train_tokenizer(texts, tmp_path_factory.mktemp("tok") / "chat", 700)


def hf_folder(tmp_path, tok, source):
    """An HF tokenizer folder of `tok` whose tokenizer_config.json holds `source`."""
    save_hf_tokenizer(tmp_path, LlamaConfig(dim=64, n_layers=1, n_heads=4, vocab_size=tok.vocab_size),
                      tok)
    path = tmp_path / "tokenizer_config.json"
    cfg = json.loads(path.read_text())
    cfg.update(chat_template=source, split_special_tokens=False)
    path.write_text(json.dumps(cfg))
    return tmp_path


def hf_ids(hf, messages, **kw):
    out = hf.apply_chat_template(messages, tokenize=True, **kw)
    return list(out["input_ids"] if hasattr(out, "keys") else out)


@pytest.mark.parametrize("builtin", ["llama2", "alpaca", "chatml"])
@pytest.mark.parametrize("conv", sorted(CONVERSATIONS))
def test_rendering_and_tokens_equal_apply_chat_template(tmp_path, tok, builtin, conv):
    folder = hf_folder(tmp_path, tok, T.BUILTIN[builtin])
    hf = transformers.AutoTokenizer.from_pretrained(folder)
    ours = T.get_template(checkpoint=folder)  # read back from tokenizer_config.json
    assert ours.source == T.BUILTIN[builtin]
    messages = CONVERSATIONS[conv]
    for prompt in (messages, messages[:-1]):  # whole conversation; prompt for the last reply
        for gen in (False, True):
            text = ours.render(prompt, add_generation_prompt=gen)
            assert text == hf.apply_chat_template(prompt, tokenize=False,
                                                  add_generation_prompt=gen)
            assert T.encode_rendered(tok, text) == hf_ids(hf, prompt, add_generation_prompt=gen)


def test_llama2_tokens_equal_metas_reference_layout(tok):
    """Meta's llama/generation.py chat_completion, written out for a dialog."""
    dialog = CONVERSATIONS["system_multi_turn"]
    system, turns = dialog[0]["content"], dialog[1:]
    turns = [dict(turns[0], content=f"<<SYS>>\n{system}\n<</SYS>>\n\n{turns[0]['content']}"),
             *turns[1:]]
    want = []
    for prompt, answer in zip(turns[::2], turns[1::2], strict=True):
        want += tok.encode(f"[INST] {prompt['content'].strip()} [/INST] "
                           f"{answer['content'].strip()} ", bos=True, eos=True)
    llama2 = T.get_template("llama2", tokenizer=tok)
    assert T.encode_rendered(tok, llama2.render(dialog, add_generation_prompt=False)) == want
    # The prompt for the last reply: the finished pairs, then Meta's last
    # [INST] block with bos and without eos (chat_completion's final encode).
    prompt_ids = []
    for prompt, answer in zip(turns[:-2:2], turns[1:-1:2], strict=True):
        prompt_ids += tok.encode(f"[INST] {prompt['content'].strip()} [/INST] "
                                 f"{answer['content'].strip()} ", bos=True, eos=True)
    prompt_ids += tok.encode(f"[INST] {turns[-2]['content'].strip()} [/INST]", bos=True)
    assert T.encode_rendered(tok, llama2.render(dialog[:-1])) == prompt_ids


@pytest.mark.parametrize("builtin", ["llama2", "alpaca", "chatml"])
@pytest.mark.parametrize("conv", sorted(CONVERSATIONS))
def test_segments_mark_exactly_the_replies(tok, builtin, conv):
    template = T.get_template(builtin, tokenizer=tok)
    messages = CONVERSATIONS[conv]
    pieces = T.ChatTemplate.segments(template, messages)
    assert "".join(t for t, _ in pieces) == template.render(messages, add_generation_prompt=False)
    replies = [m["content"].strip() for m in messages if m["role"] == "assistant"]
    responses = [t for t, r in pieces if r]
    assert len(responses) == len(replies)
    for text, reply in zip(responses, replies, strict=True):
        assert reply in text and text.strip().startswith(reply[:3])
        assert any(stop in text for stop in template.stop_strings)  # the end of turn is trained
    ids, mask = T.encode_segments(tok, pieces)
    assert ids == T.encode_rendered(tok, template.render(messages, add_generation_prompt=False))
    # The masked tokens decode to the replies (and their end-of-turn tokens).
    kept = tok.decode([i for i, m in zip(ids, mask, strict=True) if m])
    for reply in replies:
        assert reply.replace(" ", "") in kept.replace(" ", "")
    assert sum(mask) < len(ids)
    assert tok.eos_id in [i for i, m in zip(ids, mask, strict=True) if m] or builtin == "chatml"


def test_alpaca_messages_render_alpacas_prompt(tok):
    template = T.get_template("alpaca")
    text = template.render(T.alpaca_messages("Add the numbers.", "2 and 3", "5"),
                           add_generation_prompt=False)
    # tatsu-lab/stanford_alpaca PROMPT_DICT["prompt_input"] + output, framed by bos/eos.
    assert text == ("<s>" + T.ALPACA_INPUT_PREAMBLE + "\n\n### Instruction:\nAdd the numbers."
                    "\n\n### Input:\n2 and 3\n\n### Response:\n5</s>")
    text = template.render(T.alpaca_messages("Say hi."))
    assert text == "<s>" + T.ALPACA_PREAMBLE + "\n\n### Instruction:\nSay hi.\n\n### Response:\n"


def test_bad_input_names_the_problem(tmp_path, tok):
    with pytest.raises(ConfigError, match="unknown chat template 'nope'.*alpaca, chatml, llama2"):
        T.get_template("nope")
    llama2 = T.get_template("llama2")
    with pytest.raises(DataError, match="role 'robot'.*system, user, assistant"):
        llama2.render([{"role": "robot", "content": "x"}])
    with pytest.raises(DataError, match="no assistant turn"):
        llama2.segments([{"role": "user", "content": "x"}])
    with pytest.raises(DataError, match="must alternate"):
        llama2.render([{"role": "user", "content": "a"}, {"role": "user", "content": "b"}])
    (tmp_path / "tokenizer_config.json").write_text(json.dumps({"eos_token": "</s>"}))
    with pytest.raises(ConfigError, match="has no chat_template"):
        T.get_template(str(tmp_path))
    assert T.get_template(checkpoint=tmp_path).name == "llama2"  # none in the folder: default
    (tmp_path / "tokenizer_config.json").write_text(json.dumps({"chat_template": "{% if %}"}))
    with pytest.raises(ConfigError, match="Jinja syntax error"):
        T.get_template(str(tmp_path))
