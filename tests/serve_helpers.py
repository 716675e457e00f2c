"""Shared set-up of the serving tests: a tiny model, a SentencePiece tokenizer,
and a real uvicorn server on 127.0.0.1 (a free port) in a background thread."""

from __future__ import annotations

import contextlib
import json
import pathlib
import socket
import threading
import time

import jax
import uvicorn

from llama_jax.data.tokenizer import train_tokenizer
from llama_jax.model import LlamaConfig, init_params
from llama_jax.serve.app import create_app
from llama_jax.serve.scheduler import Scheduler
from llama_jax.serve.slots import SlotEngine

MODEL = "tiny"
KEY = "test-key"


def tiny_model(max_seq_len: int = 128):
    """A 2-layer GQA model whose peaked logits leave no argmax near-ties."""
    cfg = LlamaConfig(dim=64, n_layers=2, n_heads=8, n_kv_heads=2, vocab_size=384,
                      multiple_of=32, max_seq_len=max_seq_len)
    params = init_params(cfg, jax.random.key(3))
    params["output"]["kernel"] = params["output"]["kernel"] * 20.0
    return cfg, params


def tiny_tokenizer(folder: pathlib.Path):
    """A 384-piece SentencePiece BPE trained on the stdlib's json module."""
    return train_tokenizer([pathlib.Path(json.__file__)], str(folder / "tok"), vocab_size=384)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def running_server(cfg, params, tokenizer, *, slots=8, buckets=(8, 32), max_queue=64,
                   request_timeout=None, api_key=KEY, chat=None, mesh=None):
    """Yield (base_url, scheduler) of a started uvicorn server; stop it after."""
    engine = SlotEngine(cfg, params, slots=slots, prefill_buckets=buckets, mesh=mesh)
    engine.warmup()  # as the CLI does, so no request waits for a compile
    scheduler = Scheduler(engine, tokenizer, max_queue=max_queue, request_timeout=request_timeout)
    scheduler.start()
    app = create_app(scheduler, tokenizer, model_name=MODEL, api_key=api_key, chat=chat)
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 60
    while not server.started:
        if time.monotonic() > deadline or not thread.is_alive():
            raise RuntimeError("uvicorn did not start")
        time.sleep(0.02)
    try:
        yield f"http://127.0.0.1:{port}", scheduler
    finally:
        server.should_exit = True
        thread.join(timeout=30)
        scheduler.close()
