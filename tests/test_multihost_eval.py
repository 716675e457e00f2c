"""`python -m llama_jax.eval` as 2 localhost processes scores like 1 process.

Two processes with 4 fake CPU devices each join through the eval CLI's
``--coordinator_address/--num_processes/--process_id`` flags (the same
`jax.distributed` start-up as training, gloo CPU collectives); the mesh puts
the hosts on the `fsdp` axis, so each process holds and reads half of every
sharded weight. The reference is the same command as one process on 8
devices. Scores (multiple choice, generation, perplexity) must match, and
each process must have read about half of the checkpoint's bytes.
"""

from __future__ import annotations

import json
import os
import pathlib
import re
import sys
from pathlib import Path

import jax
import pytest
from eval_fixtures import data_dir  # noqa: F401 - a fixture
from process_helpers import LoggedProcesses, free_port

import llama_jax
from llama_jax.data.tokenizer import train_tokenizer
from llama_jax.model import LlamaConfig, init_params

REPO = Path(__file__).resolve().parents[1]
TIMEOUT_S = 420
TASKS = ["--tasks=hellaswag,naturalqs:1,perplexity", "--limit=2", "--max_gen_tokens=4",
         "--batch_size=4"]


def _env(devices: int) -> dict:
    env = {k: v for k, v in os.environ.items() if k not in ("XLA_FLAGS", "JAX_PLATFORMS")}
    env.update(XLA_FLAGS=f"--xla_force_host_platform_device_count={devices}",
               JAX_PLATFORMS="cpu")
    env["PYTHONPATH"] = os.pathsep.join([str(REPO)] + env.get("PYTHONPATH", "").split(os.pathsep))
    return env


def _scores(results: dict) -> dict:
    """Every number in the results, by its key path (timings left out)."""
    out = {}

    def walk(prefix, x):
        if isinstance(x, dict):
            for k, v in x.items():
                if "seconds" not in k and "time" not in k:
                    walk(f"{prefix}/{k}", v)
        elif isinstance(x, (int, float)) and not isinstance(x, bool):
            out[prefix] = x
    walk("", results)
    return out


def _run_all(runs, tmp_path: Path) -> dict[str, str]:
    """Start every (name, command, fake devices) at once; their logs, or fail."""
    with LoggedProcesses([(name, cmd, _env(devices)) for name, cmd, devices in runs], tmp_path,
                         cwd=REPO, timeout_s=TIMEOUT_S) as procs:
        codes = procs.wait()
    text = procs.logs()
    if codes != [0] * len(runs):
        pytest.fail(f"processes failed: {codes}\n" + "\n".join(
            f"--- {name} ---\n{t[-4000:]}" for name, t in text.items()))
    return text


def _model(tmp_path: Path):
    tok = train_tokenizer([pathlib.Path(json.__file__)], str(tmp_path / "tok"), vocab_size=384)
    cfg = LlamaConfig(dim=64, n_layers=2, n_heads=4, n_kv_heads=2, vocab_size=384,
                      multiple_of=32, max_seq_len=128)
    ckpt = llama_jax.save_pretrained(cfg, init_params(cfg, jax.random.key(0)), tmp_path / "hf",
                                     format="hf", shards=2, tokenizer=tok, progress=False)
    return ckpt, tok


@pytest.mark.multiprocess
def test_two_process_eval_scores_like_one(data_dir, tmp_path):  # noqa: F811
    ckpt, tok = _model(tmp_path)
    stored = sum(f.stat().st_size for f in ckpt.glob("*.safetensors"))
    base = [sys.executable, "-m", "llama_jax.eval", f"--checkpoint={ckpt}",
            f"--tokenizer={tok.path}", f"--data_dir={data_dir}", *TASKS]
    port = free_port()
    runs = [("one", base + [f"--output={tmp_path / 'one.json'}"], 8)]
    for pid in range(2):
        runs.append((f"p{pid}", base + [
            f"--output={tmp_path / 'two.json'}", f"--coordinator_address=localhost:{port}",
            "--num_processes=2", f"--process_id={pid}"], 4))
    text = _run_all(runs, tmp_path)

    one = json.loads((tmp_path / "one.json").read_text())["results"]
    two = json.loads((tmp_path / "two.json").read_text())["results"]
    assert set(one) == set(two) == {"hellaswag", "naturalqs", "perplexity"}
    got, want = _scores(two), _scores(one)
    assert set(got) == set(want) and want
    for key, value in want.items():
        assert got[key] == pytest.approx(value, rel=1e-5, abs=1e-6), key

    # Each process read only its half of the sharded weights (+ the small replicated norms).
    read = {}
    for pid in range(2):
        m = re.search(rf"process {pid} of 2: read (\d+) checkpoint bytes in \d+ blocks for 4 of "
                      r"8 devices", text[f"p{pid}"])
        assert m, text[f"p{pid}"][-3000:]
        read[pid] = int(m.group(1))
    assert all(0.45 * stored < b < 0.55 * stored for b in read.values()), (read, stored)
    assert sum(read.values()) >= stored - 4096  # together they read it all (headers aside)


@pytest.mark.multiprocess
def test_two_process_generate_samples_like_one(tmp_path):
    ckpt, _ = _model(tmp_path)
    base = [sys.executable, "-m", "llama_jax.generate", f"--checkpoint={ckpt}", "--prompt=def f",
            "--prompt=import os", "--max_new_tokens=6", "--temperature=0.8", "--num_samples=2"]
    port = free_port()
    runs = [("one", base + [f"--output={tmp_path / 'one.jsonl'}"], 8)]
    for pid in range(2):
        runs.append((f"p{pid}", base + [
            f"--output={tmp_path / 'two.jsonl'}", f"--coordinator_address=localhost:{port}",
            "--num_processes=2", f"--process_id={pid}"], 4))
    text = _run_all(runs, tmp_path)
    one = (tmp_path / "one.jsonl").read_text().splitlines()
    assert len(one) == 4 and (tmp_path / "two.jsonl").read_text().splitlines() == one
    assert "=== [0] def f" in text["p0"] and "=== [0] def f" not in text["p1"]  # 0 prints


SAVE_SCRIPT = """
import sys
from llama_jax import distributed
pid, port, src, dst = int(sys.argv[1]), sys.argv[2], sys.argv[3], sys.argv[4]
distributed.initialize(f"localhost:{port}", 2, pid)
import jax
from llama_jax.convert import from_pretrained, save_pretrained
from llama_jax.infer import placement
config, params = from_pretrained(src, mesh=placement.parse_mesh("1,2,4,1"), progress=False)
assert not jax.tree_util.tree_leaves(params)[0].is_fully_addressable  # spans both processes
save_pretrained(config, params, dst, format="hf", shards=3, progress=False)
"""


@pytest.mark.slow
@pytest.mark.multiprocess
def test_two_process_sharded_save_reloads_equal(tmp_path):
    import numpy as np

    from llama_jax.convert import from_pretrained

    ckpt, _ = _model(tmp_path)
    port, dst = free_port(), tmp_path / "saved"
    _run_all([(f"p{pid}", [sys.executable, "-c", SAVE_SCRIPT, str(pid), str(port), str(ckpt),
                           str(dst)], 4) for pid in range(2)], tmp_path)
    assert (dst / "model.safetensors.index.json").is_file()
    want, got = (jax.tree_util.tree_leaves(from_pretrained(p, progress=False)[1])
                 for p in (ckpt, dst))
    assert all(a.dtype == b.dtype and np.array_equal(a, b) for a, b in zip(want, got, strict=True))
