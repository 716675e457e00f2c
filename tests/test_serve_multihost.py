"""``python -m llama_jax.serve`` as 2 localhost processes answers like 1 process.

Two processes with 2 fake CPU devices each join through the serve CLI's
``--coordinator_address/--num_processes/--process_id`` flags; the weights are
read straight onto the 4-device mesh (hosts on `fsdp`) and the decode slots
are split over both processes. Process 0 serves HTTP; process 1 follows its
device calls (`llama_jax.serve.lockstep`). The reference is `generate_text`
on the same weights in this process. Ctrl-C on process 0 stops both.
"""

from __future__ import annotations

import concurrent.futures
import os
import signal
import sys
import time
import urllib.request
from pathlib import Path

import jax
import numpy as np
import openai
import pytest
from process_helpers import LoggedProcesses, free_port
from serve_helpers import tiny_model, tiny_tokenizer

import llama_jax
from llama_jax.infer.engine import Generator, generate_text
from llama_jax.serve.lockstep import COPY, DECODE, PREFILL, Command
from llama_jax.serve.slots import SlotEngine

REPO = Path(__file__).resolve().parents[1]
PROMPTS = ["import json", "def main(", "class A:", "x = [1, 2"]


def _env() -> dict:
    env = {k: v for k, v in os.environ.items() if k not in ("XLA_FLAGS", "JAX_PLATFORMS")}
    env.update(XLA_FLAGS="--xla_force_host_platform_device_count=2", JAX_PLATFORMS="cpu")
    env["PYTHONPATH"] = os.pathsep.join([str(REPO)] + env.get("PYTHONPATH", "").split(os.pathsep))
    return env


def test_command_round_trips_every_field():
    cfg, params = tiny_model()
    engine = SlotEngine(cfg, params, slots=4, prefill_buckets=(8, 32))
    command = Command(engine)
    key = jax.random.fold_in(jax.random.key(7), 3)
    buf = command.encode(PREFILL, slot=3, start=40, bucket=32, tokens=[5, 6, 7], key=key,
                         temperature=0.7, top_p=0.9)
    call = command.decode(buf)
    assert (call["op"], call["slot"], call["start"], call["bucket"], call["tokens"]) == (
        PREFILL, 3, 40, 32, [5, 6, 7])
    assert call["temperature"] == pytest.approx(0.7) and call["top_p"] == pytest.approx(0.9)
    assert (jax.random.key_data(call["key"]) == jax.random.key_data(key)).all()
    active = np.arange(engine.slots) % 3 != 1
    assert (command.decode(command.encode(DECODE, active=active))["active"] == active).all()
    assert command.decode(command.encode(COPY, src=1, dst=2))["src"] == 1
    with pytest.raises(ValueError):  # a chunk longer than the largest bucket does not fit
        command.encode(PREFILL, tokens=list(range(33)))


@pytest.mark.multiprocess
def test_two_process_server_answers_like_one(tmp_path):
    cfg, params = tiny_model()
    tok = tiny_tokenizer(tmp_path)
    ckpt = llama_jax.save_pretrained(cfg, params, tmp_path / "hf", format="hf", shards=2,
                                     tokenizer=tok, progress=False)
    port, coord = free_port(), free_port()
    base = [sys.executable, "-m", "llama_jax.serve", f"--checkpoint={ckpt}",
            f"--tokenizer={tok.path}", "--slots=4", "--prefill_buckets=8,32",
            f"--coordinator_address=localhost:{coord}", "--num_processes=2"]
    runs = [(f"p{pid}", base + [f"--process_id={pid}", f"--port={port}"], _env())
            for pid in range(2)]
    gen = Generator(cfg, params, batch_size=4, prompt_buckets=(16,))
    want = [t[0] for t in generate_text(gen, tok, PROMPTS, max_new_tokens=8)]
    with LoggedProcesses(runs, tmp_path, cwd=REPO, timeout_s=60) as procs:
        deadline = time.monotonic() + 300
        while True:
            assert all(p.poll() is None for p in procs._procs), procs.logs()
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=1)
                break
            except OSError:
                assert time.monotonic() < deadline, procs.logs()
                time.sleep(0.5)
        client = openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="-",
                               max_retries=0, timeout=120)

        def complete(prompt):
            r = client.completions.create(model="hf", prompt=prompt, max_tokens=8,
                                          temperature=0)
            return r.choices[0].text

        assert complete(PROMPTS[0]) == want[0]
        time.sleep(3)  # idle past a heartbeat: the follower is still in step after it
        with concurrent.futures.ThreadPoolExecutor(4) as pool:  # concurrent: slots batched
            assert list(pool.map(complete, PROMPTS)) == want
        procs._procs[0].send_signal(signal.SIGINT)
        codes = procs.wait()
        logs = procs.logs()
    assert codes == [0, 0], logs
    assert "(2 processes)" in logs["p0"] and "process 1 of 2: following process 0" in logs["p1"]
