"""Limits and faults of the server (issue 15, item 3), each followed by a check that
it still answers: context overflow, malformed and unknown input, a full queue,
a client gone mid-stream, a request past its timeout, an exception inside one
request, and the API key.

Faults are injected from the test side: a tokenizer whose ``decode`` raises
for text holding "BOOM" and sleeps for text holding "SLOW" (the scheduler
thread decodes every step of a streamed request), so a SLOW stream lasts
seconds and holds its slot.
"""

import json
import time
import urllib.error
import urllib.request

import jax
import openai
import pytest
from serve_helpers import KEY, MODEL, running_server, tiny_model, tiny_tokenizer

from llama_jax.infer import placement
from llama_jax.serve.__main__ import FLAGS

TIMEOUT_S = 3.0
SLOW_STEP_S = 0.05  # x 100 tokens = 5 s > the timeout


class FaultyTokenizer:
    """The real tokenizer, but ``decode`` fails on "BOOM" and is slow on "SLOW"."""

    def __init__(self, tok):
        self._tok = tok

    def __getattr__(self, name):
        return getattr(self._tok, name)

    def decode(self, ids):
        text = self._tok.decode(ids)
        if "BOOM" in text:
            raise RuntimeError("injected fault")
        if "SLOW" in text:
            time.sleep(SLOW_STEP_S)
        return text


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    cfg, params = tiny_model()
    tok = FaultyTokenizer(tiny_tokenizer(tmp_path_factory.mktemp("tok")))
    with running_server(cfg, params, tok, slots=2, max_queue=1, buckets=(16,),
                        request_timeout=TIMEOUT_S,
                        mesh=placement.parse_mesh("1,2,1,1", jax.devices()[:2])) as (url, scheduler):
        assert scheduler.engine.slots == 2
        client = openai.OpenAI(base_url=url + "/v1", api_key=KEY, max_retries=0)
        yield url, scheduler, client


def _alive(client):
    r = client.completions.create(model=MODEL, prompt="ok", max_tokens=3, temperature=0)
    assert r.usage.completion_tokens >= 1


def _health(url):
    with urllib.request.urlopen(url + "/health") as r:
        return json.loads(r.read())


def _wait_idle(url, within_s):
    deadline = time.monotonic() + within_s
    while time.monotonic() < deadline:
        h = _health(url)
        if h["busy_slots"] == 0 and h["waiting"] == 0:
            return h
        time.sleep(0.05)
    raise AssertionError(f"slots still busy: {_health(url)}")


def _slow_stream(client, max_tokens=100):
    stream = client.completions.create(model=MODEL, prompt="SLOW", max_tokens=max_tokens,
                                       temperature=0, stream=True)
    it = iter(stream)
    next(it)  # admitted and decoding
    return stream, it


def _raw(url, data=None, headers=None):
    """(status, JSON body) of a plain HTTP request (POST when `data` is given)."""
    req = urllib.request.Request(url, data=data, headers=headers or {})
    try:
        with urllib.request.urlopen(req) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


def _error(e):
    body = e.response.json()
    assert set(body["error"]) == {"message", "type", "param", "code"}
    return body["error"]


def test_context_overflow_is_a_400(server):
    url, _, client = server
    with pytest.raises(openai.BadRequestError) as e:
        client.completions.create(model=MODEL, prompt="x " * 60, max_tokens=100)
    err = _error(e.value)
    assert err["code"] == "context_length_exceeded" and "128 tokens" in err["message"]
    with pytest.raises(openai.BadRequestError):
        client.completions.create(model=MODEL, prompt=[1] * 200, max_tokens=1)
    with pytest.raises(openai.BadRequestError, match="n=3"):
        client.completions.create(model=MODEL, prompt="a", n=3)  # more than the 2 slots
    _alive(client)


def test_malformed_and_unknown_input(server):
    url, _, client = server
    auth = {"Authorization": f"Bearer {KEY}", "Content-Type": "application/json"}
    status, body = _raw(url + "/v1/completions", b'{"model": "tiny", "prompt": ', auth)
    assert status == 400 and body["error"]["code"] == "invalid_json"
    with pytest.raises(openai.UnprocessableEntityError) as e:
        client.completions.create(model=MODEL, prompt="a", extra_body={"bogus": 1})
    assert _error(e.value)["param"] == "bogus"
    with pytest.raises(openai.UnprocessableEntityError):
        client.completions.create(model=MODEL, prompt="a", temperature=5)
    with pytest.raises(openai.BadRequestError) as e:
        client.completions.create(model=MODEL, prompt="a", logprobs=2)
    assert _error(e.value)["param"] == "logprobs"
    with pytest.raises(openai.NotFoundError):
        client.completions.create(model="gpt-4", prompt="a")
    _alive(client)


def test_full_queue_is_a_429_with_retry_after(server):
    url, scheduler, client = server
    a = _slow_stream(client)
    b = _slow_stream(client)  # both slots busy
    queued = client.completions.create(model=MODEL, prompt="SLOW", max_tokens=5, stream=True)
    with pytest.raises(openai.RateLimitError) as e:
        client.completions.create(model=MODEL, prompt="a", max_tokens=2)
    assert e.value.response.headers["retry-after"] == "1"
    assert _error(e.value)["code"] == "rate_limit_exceeded"
    for s in (a[0], b[0], queued):
        s.close()
    _wait_idle(url, 2.0)
    _alive(client)


def test_disconnect_mid_stream_frees_the_slot(server):
    url, scheduler, client = server
    before = dict(scheduler.stats)
    stream, it = _slow_stream(client)
    next(it)
    assert _health(url)["busy_slots"] == 1
    stream.close()  # the client goes away ~4 s before the request would end
    _wait_idle(url, 2.0)
    assert scheduler.stats["cancelled"] == before.get("cancelled", 0) + 1
    assert scheduler.stats["timeout"] == before.get("timeout", 0)
    _alive(client)


def test_request_past_the_timeout_is_ended(server):
    url, scheduler, client = server
    started = time.monotonic()
    with pytest.raises(openai.APIError, match="request timeout"):
        for _ in client.completions.create(model=MODEL, prompt="SLOW", max_tokens=100,
                                           temperature=0, stream=True):
            pass
    assert time.monotonic() - started < TIMEOUT_S + 1.5
    with pytest.raises(openai.APIStatusError) as e:  # non-streamed: a 504
        client.completions.create(model=MODEL, prompt="SLOW", max_tokens=100, temperature=0,
                                  stop=["never"])
    assert e.value.status_code == 504 and _error(e.value)["type"] == "timeout_error"
    _wait_idle(url, 1.0)
    _alive(client)


def test_an_exception_in_one_request_fails_only_that_request(server):
    url, scheduler, client = server
    good = client.completions.create(model=MODEL, prompt="fine", max_tokens=30,
                                     temperature=0, stream=True)
    it = iter(good)
    next(it)
    with pytest.raises(openai.InternalServerError) as e:
        client.completions.create(model=MODEL, prompt="BOOM", max_tokens=4)
    assert "injected fault" in _error(e.value)["message"]
    with pytest.raises(openai.APIError, match="injected fault"):
        list(client.completions.create(model=MODEL, prompt="BOOM", max_tokens=4, stream=True))
    rest = [c for c in it]  # the other request, in flight meanwhile, finishes normally
    assert rest[-1].choices[0].finish_reason in ("length", "stop")
    assert scheduler.stats["failed"] >= 2
    _alive(client)


def test_api_key_and_default_host(server):
    url, _, client = server
    wrong = openai.OpenAI(base_url=url + "/v1", api_key="nope", max_retries=0)
    with pytest.raises(openai.AuthenticationError) as e:
        wrong.models.list()
    assert _error(e.value)["code"] == "invalid_api_key"
    no_key = {"Content-Type": "application/json"}
    status, body = _raw(url + "/v1/completions", json.dumps({"model": MODEL, "prompt": "a"}).encode(),
                        no_key)
    assert status == 401 and body["error"]["code"] == "invalid_api_key"
    assert _raw(url + "/health")[0] == 200
    assert FLAGS["host"].default == "127.0.0.1"
    _alive(client)


def test_a_failed_decode_step_fails_its_requests_and_serving_goes_on(server, monkeypatch):
    url, scheduler, client = server
    engine, real, calls = scheduler.engine, scheduler.engine.decode, []

    def broken(active):
        if not calls:  # the first step fails on the device, losing the donated cache
            calls.append(1)
            for x in jax.tree_util.tree_leaves(engine.state):
                x.delete()
            raise RuntimeError("device lost")
        return real(active)

    monkeypatch.setattr(engine, "decode", broken)
    with pytest.raises(openai.InternalServerError, match="device lost"):
        client.completions.create(model=MODEL, prompt="a", max_tokens=4)
    _wait_idle(url, 1.0)
    _alive(client)
