"""Finetuning end to end: init from a transformers checkpoint, SFT, kill and resume, export.

The reference is one uninterrupted in-process run of `configs/finetune_tiny.py`
(shrunk: 8 steps) from a random tiny model saved by transformers. A second run
is a ``python -m llama_jax.train`` subprocess killed (SIGKILL) after its
step-4 checkpoint and restarted: its losses equal the reference's bitwise.
The finetuned workdir exports to HF and transformers' logits equal ours.
"""

import os
import signal
import subprocess
import sys
import time

import jax.numpy as jnp
import numpy as np
import pytest
import sft_helpers as sh
import train_helpers as th

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from llama_jax.convert import from_pretrained, save_pretrained  # noqa: E402
from llama_jax.model.llama import Llama  # noqa: E402
from llama_jax.train import load_config_file, metrics  # noqa: E402
from llama_jax.train.loop import train_and_evaluate  # noqa: E402

STEPS = 8
SMALL = {"train.steps": STEPS, "train.batch_size": 8, "checkpoint.every": 4,
         "checkpoint.keep": 5, "train.log_every": 1, "train.progress": "log",
         "train.tensorboard": False, "optimizer.lr": 3e-3, "optimizer.warmup_steps": 2}


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("sft")
    root = th.make_data(tmp / "data")
    hf_dir = sh.make_hf_checkpoint(root, tmp / "hf")
    data = sh.write_chat(tmp / "chat.jsonl")
    return root, hf_dir, data, {**sh.init_overrides(hf_dir, data), **SMALL}


def _config(overrides):
    c = load_config_file(str(th.REPO / "configs" / "finetune_tiny.py"))
    for key, value in overrides.items():
        node = c
        *path, last = key.split(".")
        for p in path:
            node = node[p]
        node[last] = value
    return c


def _losses(wd):
    return {r["step"]: r["loss"] for r in metrics.read_metrics(wd) if "loss" in r}


@pytest.fixture(scope="module")
def reference(setup, tmp_path_factory):
    *_, overrides = setup
    wd = tmp_path_factory.mktemp("reference")
    result = train_and_evaluate(_config(overrides), str(wd))
    assert result.status == "completed"
    return wd, _losses(wd)


def test_response_loss_falls(reference):
    _, losses = reference
    assert sorted(losses) == list(range(1, STEPS + 1))
    assert losses[STEPS] < losses[1] - 0.5


def test_sigkill_then_resume_is_bitwise_equal(setup, reference, tmp_path):
    *_, overrides = setup
    _, ref = reference
    wd = tmp_path / "killed"
    flags = [f"--config.{k}={v}" for k, v in overrides.items() if v is not None]
    cmd = [sys.executable, "-m", "llama_jax.train",
           f"--config={th.REPO / 'configs' / 'finetune_tiny.py'}", f"--workdir={wd}", *flags]
    env = dict(os.environ, JAX_COMPILATION_CACHE_DIR=str(tmp_path / "cache"),
               JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0")
    with open(tmp_path / "log", "w") as log:
        proc = subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT, cwd=th.REPO)
        deadline = time.monotonic() + 300
        while not (wd / "checkpoints" / "4").is_dir():
            assert proc.poll() is None, (tmp_path / "log").read_text()[-3000:]
            assert time.monotonic() < deadline, "no checkpoint within 300 s"
            time.sleep(0.01)
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=60)
    resumed = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600,
                             cwd=th.REPO)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "resumed from step" in resumed.stderr
    assert _losses(wd) == ref


def test_export_to_hf_reloads_in_transformers_with_equal_logits(reference, tmp_path):
    wd, _ = reference
    cfg, params = from_pretrained(wd)
    out = save_pretrained(cfg, params, tmp_path / "hf_out", format="hf",
                          tokenizer=wd / "tokenizer.model")
    model = transformers.LlamaForCausalLM.from_pretrained(out, dtype=torch.float32).eval()
    tokens = np.random.RandomState(0).randint(0, th.VOCAB, size=(2, 24))
    with torch.no_grad():
        theirs = model(torch.tensor(tokens)).logits.numpy()
    ours = np.asarray(Llama(cfg.replace(dtype="float32")).apply({"params": params},
                                                                 jnp.asarray(tokens)))
    np.testing.assert_allclose(ours, theirs, rtol=1e-4, atol=1e-4)
