"""Serving throughput: 1, 8 and 32 concurrent clients against `python -m llama_jax.serve`.

Saves a small random model and a SentencePiece tokenizer to a temporary
folder, starts the server on 127.0.0.1 (a free port, its own process), and
sends the same fixed prompt set at each concurrency level with the official
`openai` client (streamed, greedy, fixed ``max_tokens``). Per level:
requests/s, output tokens/s, time to first token and per-request latency
(p50 / p99), and the throughput relative to the same requests sent one at a
time (concurrency 1). Prints a table and writes JSON. Bounded: each level
sends at most ``--requests`` requests and stops starting new ones after
``--time_limit`` seconds.

    python benchmarks/serve.py                          # 1, 8, 32 clients, 64 requests
    python benchmarks/serve.py --concurrency=1,32 --requests=32 --max_tokens=16
"""

from __future__ import annotations

import argparse
import concurrent.futures
import inspect
import json
import os
import platform
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request

import jax
import numpy as np
import openai

import llama_jax
from llama_jax.data.tokenizer import train_tokenizer
from llama_jax.model import LlamaConfig, count_params, init_params

MODEL = "bench"


def make_checkpoint(folder: str, args) -> tuple[str, str, LlamaConfig]:
    """A random model and a tokenizer trained on the stdlib's json module."""
    tok = train_tokenizer([json.__file__], os.path.join(folder, "tok"), vocab_size=320)
    cfg = LlamaConfig(dim=args.dim, n_layers=args.layers, n_heads=args.heads, n_kv_heads=args.heads,
                      vocab_size=320, multiple_of=32, max_seq_len=args.max_seq_len)
    ckpt = os.path.join(folder, "ckpt")
    llama_jax.save_pretrained(cfg, init_params(cfg, jax.random.key(0)), ckpt)
    return ckpt, tok.path, cfg


def prompts(n: int) -> list[str]:
    """A fixed set of code prompts of mixed lengths (8 to ~200 characters)."""
    source = inspect.getsource(json)
    out, rng = [], np.random.default_rng(0)
    for _ in range(n):
        start, length = int(rng.integers(0, len(source) - 300)), int(rng.integers(8, 200))
        out.append(source[start:start + length])
    return out


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(ckpt: str, tok: str, port: int, args) -> subprocess.Popen:
    """The server in its own process; returns once /health answers."""
    cmd = [sys.executable, "-m", "llama_jax.serve", f"--checkpoint={ckpt}", f"--tokenizer={tok}",
           f"--port={port}", f"--slots={args.slots}", f"--model_name={MODEL}", "--api_key=bench",
           f"--prefill_buckets={args.buckets}", f"--max_queue={args.requests}"]
    env = dict(os.environ, JAX_PLATFORMS="cpu")
    env.pop("XLA_FLAGS", None)  # one CPU device, as a user would run it
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"the server exited:\n{proc.stdout.read()[-3000:]}")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=1):
                return proc
        except OSError:
            time.sleep(0.5)
    proc.kill()
    raise RuntimeError("the server did not answer /health within 300 s")


def one_request(client: openai.OpenAI, prompt: str, max_tokens: int) -> dict:
    """Latency, time to first token and output tokens of one streamed request."""
    t0 = time.perf_counter()
    ttft, tokens = None, 0
    for chunk in client.completions.create(model=MODEL, prompt=prompt, max_tokens=max_tokens,
                                           temperature=0, stream=True):
        if ttft is None:
            ttft = time.perf_counter() - t0
        if chunk.usage is not None:
            tokens = chunk.usage.completion_tokens
    return {"latency": time.perf_counter() - t0, "ttft": ttft or 0.0, "tokens": tokens}


def run_level(client, prompt_set, concurrency: int, args) -> dict:
    """Send `prompt_set` with `concurrency` client threads; summary statistics."""
    deadline = time.perf_counter() + args.time_limit
    lock, queue, results = threading.Lock(), list(prompt_set), []

    def worker():
        while time.perf_counter() < deadline:
            with lock:
                if not queue:
                    return
                p = queue.pop(0)
            r = one_request(client, p, args.max_tokens)
            with lock:
                results.append(r)

    t0 = time.perf_counter()
    with concurrent.futures.ThreadPoolExecutor(concurrency) as pool:
        for f in [pool.submit(worker) for _ in range(concurrency)]:
            f.result()
    wall = time.perf_counter() - t0
    lat = np.array([r["latency"] for r in results])
    ttft = np.array([r["ttft"] for r in results])
    tokens = sum(r["tokens"] for r in results)
    return {"concurrency": concurrency, "requests": len(results), "seconds": wall,
            "requests_per_s": len(results) / wall, "output_tokens_per_s": tokens / wall,
            "output_tokens": tokens, "ttft_p50_s": float(np.percentile(ttft, 50)),
            "ttft_p99_s": float(np.percentile(ttft, 99)),
            "latency_p50_s": float(np.percentile(lat, 50)), "latency_p99_s": float(np.percentile(lat, 99))}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--concurrency", default="1,8,32", help="client counts (the first is the baseline)")
    p.add_argument("--requests", type=int, default=64, help="requests per level (same prompts)")
    p.add_argument("--max_tokens", type=int, default=32)
    p.add_argument("--slots", type=int, default=32)
    p.add_argument("--buckets", default="16,64")
    p.add_argument("--dim", type=int, default=256)
    p.add_argument("--layers", type=int, default=4)
    p.add_argument("--heads", type=int, default=8)
    p.add_argument("--max_seq_len", type=int, default=256)
    p.add_argument("--time_limit", type=float, default=120.0, help="seconds per level")
    p.add_argument("--output", default=os.path.join(os.path.dirname(__file__), "results", "serve.json"))
    args = p.parse_args(argv)
    levels = [int(c) for c in args.concurrency.split(",")]
    with tempfile.TemporaryDirectory() as folder:
        ckpt, tok, cfg = make_checkpoint(folder, args)
        port = free_port()
        proc = start_server(ckpt, tok, port, args)
        try:
            client = openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="bench", max_retries=0,
                                   timeout=300)
            prompt_set = prompts(args.requests)
            run_level(client, prompt_set[:4], 4, args)  # warm the HTTP path
            rows = [run_level(client, prompt_set, c, args) for c in levels]
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/health") as r:
                health = json.loads(r.read())
        finally:
            proc.terminate()
            proc.wait(timeout=60)
    base = rows[0]["output_tokens_per_s"]
    for r in rows:
        r["speedup_vs_first"] = r["output_tokens_per_s"] / base
    print(f"model: dim={cfg.dim} layers={cfg.n_layers} ({count_params(cfg) / 1e6:.1f}M params), "
          f"{args.slots} slots, max_tokens={args.max_tokens}, {os.cpu_count()} CPUs")
    head = f"{'clients':>7} {'reqs':>5} {'req/s':>7} {'tok/s':>8} {'ttft p50':>9} {'ttft p99':>9} " \
           f"{'lat p50':>8} {'lat p99':>8} {'x one-at-a-time':>15}"
    print(head)
    for r in rows:
        print(f"{r['concurrency']:>7} {r['requests']:>5} {r['requests_per_s']:>7.2f} "
              f"{r['output_tokens_per_s']:>8.1f} {r['ttft_p50_s']:>9.3f} {r['ttft_p99_s']:>9.3f} "
              f"{r['latency_p50_s']:>8.3f} {r['latency_p99_s']:>8.3f} {r['speedup_vs_first']:>15.2f}")
    print(f"decode step traces: {health['trace_count']}")
    os.makedirs(os.path.dirname(os.path.abspath(args.output)), exist_ok=True)
    with open(args.output, "w") as f:
        json.dump({"machine": {"platform": platform.platform(), "cpus": os.cpu_count(),
                               "jax": jax.__version__, "backend": "cpu"},
                   "config": vars(args), "params": count_params(cfg), "trace_count": health["trace_count"],
                   "levels": rows}, f, indent=2)
    print(f"wrote {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
