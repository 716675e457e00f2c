"""``python -m llama_jax.serve`` as a user runs it: a saved checkpoint, a real port on
127.0.0.1, the API key, the chat template flag; bad flags exit 2 with one line."""

import os
import signal
import subprocess
import sys
import time
import urllib.request

import openai
import pytest
from serve_helpers import free_port, tiny_model, tiny_tokenizer

import llama_jax
from llama_jax.infer.engine import Generator, generate_text

ENV = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=2", JAX_PLATFORMS="cpu")


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    folder = tmp_path_factory.mktemp("serve_cli")
    cfg, params = tiny_model()
    tok = tiny_tokenizer(folder)
    llama_jax.save_pretrained(cfg, params, folder / "my-model")
    return folder / "my-model", tok, cfg, params


def test_serve_cli_answers_on_localhost(checkpoint):
    ckpt, tok, cfg, params = checkpoint
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "llama_jax.serve", f"--checkpoint={ckpt}", f"--tokenizer={tok.path}",
         f"--port={port}", "--slots=4", "--api_key=s3cret", "--chat_template=chatml",
         "--prefill_buckets=8,32"], env=ENV, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.monotonic() + 240
        while True:
            assert proc.poll() is None, proc.stdout.read()[-3000:]
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=1)
                break
            except OSError:
                assert time.monotonic() < deadline, "the server did not come up"
                time.sleep(0.3)
        client = openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="s3cret", max_retries=0)
        assert [m.id for m in client.models.list().data] == ["my-model"]
        r = client.completions.create(model="my-model", prompt="import json", max_tokens=8, temperature=0)
        gen = Generator(cfg, params, batch_size=2, prompt_buckets=(16,))
        assert r.choices[0].text == generate_text(gen, tok, ["import json"], max_new_tokens=8)[0][0]
        chat = client.chat.completions.create(model="my-model", max_tokens=4, temperature=0,
                                              messages=[{"role": "user", "content": "hi"}])
        assert chat.usage.prompt_tokens > len(tok.encode("hi"))  # the chatml frame is there
        with pytest.raises(openai.AuthenticationError):
            openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="wrong",
                          max_retries=0).models.list()
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            out, _ = proc.communicate(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()
            raise
    assert proc.returncode == 0, out[-3000:]
    assert f"serving llama_jax on http://127.0.0.1:{port}/v1" in out


@pytest.mark.parametrize("flag, message", [
    ("--chat_template=nope", "unknown chat template 'nope'"),
    ("--slots=0", "--slots=0 must be an integer >= 1"),
    ("--prefill_buckets=8,x", "--prefill_buckets=8,x: give comma-separated integers"),
])
def test_bad_flags_exit_2_with_one_line(checkpoint, flag, message):
    ckpt, tok, *_ = checkpoint
    done = subprocess.run([sys.executable, "-m", "llama_jax.serve", f"--checkpoint={ckpt}",
                           f"--tokenizer={tok.path}", flag], env=ENV, capture_output=True, text=True,
                          timeout=240)
    assert done.returncode == 2, done.stderr[-3000:]
    assert "Traceback" not in done.stderr
    assert done.stderr.strip().splitlines()[-1].startswith(f"error: {message}")
