"""benchmarks/gpu_suite.sh cannot rot: its --smoke run on CPU, and its imports on the GPU image.

The GPU image has jax, flax, optax, orbax, numpy, tqdm and torch, but not grain,
ml_collections, tensorflow-datasets, array_record or tensorboardX
(../shared/GPU.md): the suite's import chain must load with those made
unimportable.
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from llama_jax.model import count_params, get_preset

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "benchmarks"))

import gpu_suite  # noqa: E402  (benchmarks/gpu_suite.py)

# Not on the GPU image (shared/GPU.md lists what is): the suite must import without them.
NOT_ON_GPU_IMAGE = ("grain", "ml_collections", "tensorflow_datasets", "array_record",
                    "tensorboardX", "tqdm", "safetensors", "transformers")


def _env(**extra) -> dict:
    env = {**os.environ, "PYTHONPATH": str(REPO), "JAX_PLATFORMS": "cpu", **extra}
    env["XLA_FLAGS"] = ""  # one CPU device is all the suite uses
    return env


@pytest.fixture(scope="module")
def smoke(tmp_path_factory):
    out = tmp_path_factory.mktemp("gpu_suite")
    proc = subprocess.run(["bash", str(REPO / "benchmarks" / "gpu_suite.sh"), "--smoke"],
                          env=_env(OUT=str(out), PYTHON=sys.executable), cwd=REPO,
                          capture_output=True, text=True, timeout=900)
    return proc, out


def test_smoke_run_succeeds_and_prints_the_table_last(smoke):
    proc, out = smoke
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    lines = [x for x in proc.stdout.splitlines() if x.strip()]
    table = "\n".join(lines[-14:])
    assert "(iii) train step" in table and "(iv) greedy decode" in table, table
    assert (out / "attention.json").exists() and (out / "gpu_suite.log").exists()


def test_smoke_json_has_every_section(smoke):
    _, out = smoke
    rep = json.loads((out / "gpu_suite.json").read_text())
    assert set(gpu_suite.SECTIONS) <= set(rep)
    env = rep["environment"]
    assert env["smoke"] and env["platform"] == "cpu" and "6*N + 6*L*T*d" in env["flop_formula"]

    # (i) the kernel vs the reference: f32 and bf16, segments or none, GQA, values and grads.
    cases = rep["kernel_checks"]["cases"]
    assert rep["kernel_checks"]["ok"] and all(c["ok"] for c in cases)
    kinds = {(c["dtype"], c["segments"] > 0) for c in cases}
    assert kinds == {(d, s) for d in ("float32", "bfloat16") for s in (False, True)}
    assert any(c["kv_heads"] < c["heads"] for c in cases)

    # (ii) ours and XLA timed, cuDNN skipped with a note on CPU.
    rows = {r["impl"]: r for r in rep["attention"]["rows"]}
    assert rows["pallas"]["fwd_bwd_tflops"] > 0 and rows["xla"]["fwd_tflops"] > 0
    assert rows["cudnn"]["error"].startswith("skipped")

    # (iii) every attention implementation and remat policy appears; the FLOPs
    # per token are the 6N + 6LTd count, by hand for the smoke model (dim 64,
    # 2 layers, FFN 192, vocab 256, seq 32): N = 2 * (4*64*64 + 3*64*192 + 2*64)
    # + 64 + 64*256 = 123,200 matmul parameters (the embedding table excluded).
    train = rep["train"]
    assert {r["impl"] for r in train} == set(gpu_suite.IMPLS)
    assert {r["remat"] for r in train} == set(gpu_suite.REMATS)
    ran = [r for r in train if "error" not in r]
    assert {r["impl"] for r in ran} == {"xla", "pallas"}
    for r in ran:
        assert r["check"]["ok"] and r["tokens_per_s"] > 0 and r["mfu"] is None  # CPU: no peak
        assert r["flops_per_token"] == 6 * 123_200 + 6 * 2 * 32 * 64

    # (iv) batch 1 and a larger batch, each token checked against a full forward pass.
    decode = rep["decode"]
    assert {r["batch"] for r in decode} == {1, 4} and len({r["model"] for r in decode}) == 2
    for r in decode:
        assert "error" not in r, r
        assert r["check"]["ok"] and r["check"]["argmax_match"] == 1.0 and r["tokens_per_s"] > 0
        assert "bound_tokens_per_s" not in r  # no HBM figure for a CPU


def test_suite_imports_without_packages_the_gpu_image_lacks(tmp_path):
    (tmp_path / "sitecustomize.py").write_text(
        "import sys\n" + "".join(f"sys.modules[{n!r}] = None\n" for n in NOT_ON_GPU_IMAGE))
    code = (
        "import sys\n"
        f"sys.path.insert(0, {str(REPO / 'benchmarks')!r})\n"
        "import gpu_suite, attention\n"  # the whole chain of both scripts
        "from llama_jax.train import carbon, metrics, optim, step\n"
        f"blocked = {NOT_ON_GPU_IMAGE!r}\n"
        "assert all(sys.modules.get(n) is None for n in blocked)\n"
        "try:\n"
        "    import llama_jax.train.loop\n"  # control: the shim really blocks them
        "except ImportError as e:\n"
        "    print('control blocked:', e)\n"
        "print('ok')\n")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          env=_env(PYTHONPATH=f"{tmp_path}{os.pathsep}{REPO}"), timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "control blocked: import of" in proc.stdout and proc.stdout.strip().endswith("ok")


def test_hbm_bound_matches_the_7b_anchor():
    # GPU.md: one 7B stream in bf16 on an H100 is bound at about 249 tokens/s.
    weight_bytes = 2 * count_params(get_preset("llama_7b"))
    bw = gpu_suite.hbm_bandwidth("NVIDIA H100 80GB HBM3")
    assert bw == 3.35e12 and 245 < bw / weight_bytes < 250
    assert gpu_suite.hbm_bandwidth("NVIDIA H200") == 4.8e12
    assert gpu_suite.hbm_bandwidth("NVIDIA A100-SXM4-80GB") == 2.0e12
    assert gpu_suite.hbm_bandwidth("cpu") is None


def test_train_grids():
    assert len(gpu_suite.train_grid("full")) == 9
    cross = gpu_suite.train_grid("cross")
    assert len(cross) == 5 and cross[0][0] == "xla"
    cover = gpu_suite.train_grid("cover")
    assert {i for i, _ in cover} == set(gpu_suite.IMPLS)
    assert {r for _, r in cover} == set(gpu_suite.REMATS)
