"""The server through the official `openai` client, against `Generator`.

A real uvicorn server on 127.0.0.1 (a free port) with a tiny random model and
a SentencePiece tokenizer: greedy completions equal `generate_text` /
`Generator.generate_tokens`; seeded sampling equals `Generator` with the same
seed; streaming yields the non-streamed text; 32 concurrent requests of mixed
lengths give the one-by-one results without recompiling the decode step.
"""

import concurrent.futures
import inspect
import json
import urllib.request

import openai
import pytest
from serve_helpers import KEY, MODEL, running_server, tiny_model, tiny_tokenizer

from llama_jax.chat.templates import encode_rendered, get_template
from llama_jax.infer.engine import ContinuationDecoder, Generator, SamplingConfig, generate_text, truncate_at_stop
from llama_jax.serve.chat import ChatEncoder

# Prompts of mixed lengths: the longest need several prefill chunks (buckets 8, 32).
SOURCE = inspect.getsource(json)
PROMPTS = ["def", "import json", "class JSONDecoder(object):", SOURCE[200:260],
           SOURCE[1000:1100], "x = 1\n", SOURCE[3000:3050], "    return"]


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    cfg, params = tiny_model()
    tok = tiny_tokenizer(tmp_path_factory.mktemp("tok"))
    gen = Generator(cfg, params, batch_size=8, prompt_buckets=(16, 64, 128), chunk_size=8)
    with running_server(cfg, params, tok, slots=8, chat=ChatEncoder(tok, "llama2")) as (url, scheduler):
        client = openai.OpenAI(base_url=url + "/v1", api_key=KEY, max_retries=0)
        yield cfg, tok, gen, url, scheduler, client


def test_models_and_health(setup):
    *_, url, scheduler, client = setup
    assert [m.id for m in client.models.list().data] == [MODEL]
    with urllib.request.urlopen(url + "/health") as r:  # no key needed
        health = json.loads(r.read())
    assert health["status"] == "ok" and health["slots"] == 8


def test_greedy_completions_equal_generate(setup):
    cfg, tok, gen, *_, client = setup
    want_text = generate_text(gen, tok, PROMPTS, max_new_tokens=12)
    want_ids = gen.generate_tokens([tok.encode(p, bos=True) for p in PROMPTS],
                                   max_new_tokens=12, eos_id=tok.eos_id)
    for p, text, ids in zip(PROMPTS, want_text, want_ids, strict=True):
        r = client.completions.create(model=MODEL, prompt=p, max_tokens=12, temperature=0)
        assert r.choices[0].text == text[0]
        assert r.usage.completion_tokens == len(ids[0])
        assert r.usage.prompt_tokens == len(tok.encode(p, bos=True))
        assert r.usage.total_tokens == r.usage.prompt_tokens + r.usage.completion_tokens
        assert r.choices[0].finish_reason == ("length" if len(ids[0]) == 12 else "stop")
    # Token-id prompts, several prompts in one request, with n.
    ids = [tok.encode(p, bos=True) for p in PROMPTS[:3]]
    r = client.completions.create(model=MODEL, prompt=ids, max_tokens=12, temperature=0, n=2)
    assert [c.index for c in r.choices] == list(range(6))
    assert [c.text for c in r.choices] == [t[0] for t in want_text[:3] for _ in range(2)]


def test_seeded_sampling_equals_generator_and_repeats(setup):
    cfg, tok, gen, *_, client = setup
    sampling = SamplingConfig(temperature=0.9, top_p=0.9)
    want = generate_text(gen, tok, PROMPTS[:3], max_new_tokens=10, sampling=sampling,
                         num_samples=3, seed=11)
    r = client.completions.create(model=MODEL, prompt=PROMPTS[:3], max_tokens=10,
                                  temperature=0.9, top_p=0.9, n=3, seed=11)
    assert [c.text for c in r.choices] == [t for per in want for t in per]
    assert len({c.text for c in r.choices}) > 3  # samples differ
    again = client.completions.create(model=MODEL, prompt=PROMPTS[:3], max_tokens=10,
                                      temperature=0.9, top_p=0.9, n=3, seed=11)
    assert [c.text for c in again.choices] == [c.text for c in r.choices]


def test_stop_strings(setup):
    cfg, tok, gen, *_, client = setup
    full = client.completions.create(model=MODEL, prompt=PROMPTS[4], max_tokens=24,
                                     temperature=0).choices[0].text
    stop = full[5:7]
    want = generate_text(gen, tok, [PROMPTS[4]], max_new_tokens=24, stop=[stop])[0][0]
    r = client.completions.create(model=MODEL, prompt=PROMPTS[4], max_tokens=24,
                                  temperature=0, stop=[stop, "never-there"])
    assert r.choices[0].text == want == full[:full.index(stop)]
    assert r.choices[0].finish_reason == "stop"
    streamed = client.completions.create(model=MODEL, prompt=PROMPTS[4], max_tokens=24,
                                         temperature=0, stop=stop, stream=True)
    assert "".join(c.choices[0].text for c in streamed if c.choices) == want


def test_streaming_equals_non_streaming(setup):
    *_, client = setup
    for p in PROMPTS[:5]:
        whole = client.completions.create(model=MODEL, prompt=p, max_tokens=16, temperature=0,
                                          n=2, seed=3)
        chunks = list(client.completions.create(model=MODEL, prompt=p, max_tokens=16,
                                                temperature=0, n=2, seed=3, stream=True))
        for c in whole.choices:
            parts = [ch.choices[0] for ch in chunks if ch.choices and ch.choices[0].index == c.index]
            assert "".join(x.text for x in parts) == c.text
            assert parts[-1].finish_reason == c.finish_reason
        assert chunks[-1].usage.model_dump() == whole.usage.model_dump()
        with_usage = list(client.completions.create(
            model=MODEL, prompt=p, max_tokens=16, temperature=0, stream=True,
            stream_options={"include_usage": True}))
        assert with_usage[-1].choices == []
        assert with_usage[-1].usage.completion_tokens == whole.usage.completion_tokens // 2


def test_32_concurrent_requests_equal_one_by_one_without_recompiles(setup):
    *_, scheduler, client = setup
    jobs = [(PROMPTS[i % len(PROMPTS)], 4 + (5 * i) % 21, i % 3 == 0) for i in range(32)]

    def ask(job):
        prompt, max_tokens, stream = job
        kw = dict(model=MODEL, prompt=prompt, max_tokens=max_tokens, temperature=0)
        if stream:
            return "".join(c.choices[0].text for c in
                           client.completions.create(stream=True, **kw) if c.choices)
        return client.completions.create(**kw).choices[0].text

    alone = [ask(j) for j in jobs]
    traces = dict(scheduler.engine.trace_count)
    with concurrent.futures.ThreadPoolExecutor(32) as pool:
        together = list(pool.map(ask, jobs))
    assert together == alone
    assert scheduler.engine.trace_count == traces  # nothing recompiled under load
    assert traces["decode"] == 1
    assert traces["prefill"] <= 2  # one per bucket
    assert scheduler.busy_slots == 0


CHATS = [[{"role": "user", "content": "Write a JSON decoder."}],
         [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "def f(x):"},
          {"role": "assistant", "content": "return x"}, {"role": "user", "content": "again"}]]


def test_chat_completions_equal_generate_with_the_template(setup):
    cfg, tok, gen, *_, client = setup
    template = get_template("llama2", tokenizer=tok)
    for messages in CHATS:
        ids = encode_rendered(tok, template.render(messages, add_generation_prompt=True))
        # "<s>" became its id, once per user turn.
        assert ids[0] == tok.bos_id
        assert ids.count(tok.bos_id) == sum(m["role"] == "user" for m in messages)
        out = gen.generate_tokens([ids], max_new_tokens=12, eos_id=tok.eos_id)[0][0]
        want = truncate_at_stop(ContinuationDecoder(tok, [ids])(0, out), template.stop_strings)
        r = client.chat.completions.create(model=MODEL, messages=messages, max_tokens=12,
                                           temperature=0)
        assert r.choices[0].message.role == "assistant"
        assert r.choices[0].message.content == want
        assert r.usage.prompt_tokens == len(ids)
        assert r.usage.completion_tokens == len(out)
        chunks = list(client.chat.completions.create(model=MODEL, messages=messages,
                                                     max_tokens=12, temperature=0, stream=True))
        assert chunks[0].choices[0].delta.role == "assistant"
        assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == want
        assert chunks[-1].choices[0].finish_reason == r.choices[0].finish_reason
        assert chunks[-1].usage.total_tokens == r.usage.total_tokens
    # Without max_tokens a chat may use the rest of the context.
    r = client.chat.completions.create(model=MODEL, messages=CHATS[0], temperature=0)
    assert r.usage.total_tokens <= cfg.max_seq_len


def test_chat_rejects_an_unknown_role(setup):
    *_, client = setup
    with pytest.raises(openai.UnprocessableEntityError, match="role"):
        client.chat.completions.create(model=MODEL, temperature=0,
                                       messages=[{"role": "wizard", "content": "hi"}])
