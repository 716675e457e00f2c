"""The loss-vs-tokens figure (`llama_jax.plot`): a decodable PNG with the curves, clear errors."""

import subprocess
import sys

import numpy as np
import pytest
from matplotlib import colors as mcolors
from matplotlib import image as mimage

from llama_jax import plot
from llama_jax.errors import DataError
from llama_jax.train import metrics

TOKENS_PER_STEP = 4096


def fake_run(workdir, scale=1.0, steps=200, eval_every=50):
    """metrics.jsonl as the loop writes it: training records, held-out losses on eval steps."""
    w = metrics.MetricWriter(workdir, tensorboard=False)
    for s in [1, *range(10, steps + 1, 10)]:
        rec = {"tokens": s * TOKENS_PER_STEP, "loss": 8.3 * np.exp(-s / 100 * scale) + 2.0,
               "loss_mean": 8.3 * np.exp(-s / 100 * scale) + 2.1, "lr": 1e-3}
        if s % eval_every == 0:
            rec.update({"eval_loss/code": 8.0 * np.exp(-s / 100 * scale) + 2.5,
                        "eval_loss/prose": 8.0 * np.exp(-s / 100 * scale) + 2.8})
        w.write(s, rec)
    w.close()
    return workdir


def pixels_of(img, color, tol=0.02):
    """How many pixels of an RGB(A) float image have `color` (a matplotlib colour name)."""
    rgb = np.array(mcolors.to_rgb(color))
    return int((np.abs(img[..., :3] - rgb) < tol).all(axis=-1).sum())


def test_plot_run_draws_training_and_heldout_curves(tmp_path):
    out = plot.plot_run(fake_run(tmp_path / "tiny"), tmp_path / "figs" / "loss.png")
    assert out == tmp_path / "figs" / "loss.png" and out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    img = mimage.imread(out)
    assert img.shape[:2] == (600, 900)
    # Training loss in C0, held-out code in C1 and prose in C2 (one run: a colour per curve).
    assert pixels_of(img, "C0") > 500
    assert pixels_of(img, "C1") > 100 and pixels_of(img, "C2") > 100
    assert pixels_of(img, "C3") == 0  # no fourth curve
    small = plot.plot_run(tmp_path / "tiny", tmp_path / "small.png", size=(640, 400))
    assert mimage.imread(small).shape[:2] == (400, 640)


def test_load_run_reads_the_curves(tmp_path):
    run = plot.load_run(fake_run(tmp_path / "r", steps=100))
    assert run.name == "r"
    assert run.train[0][:2] == [TOKENS_PER_STEP, 10 * TOKENS_PER_STEP]
    assert run.train[1][0] == pytest.approx(8.3 * np.exp(-0.01) + 2.1)  # loss_mean, not loss
    assert sorted(run.heldout) == ["code", "prose"]
    assert run.heldout["code"][0] == [50 * TOKENS_PER_STEP, 100 * TOKENS_PER_STEP]
    assert plot.ema([1.0, 3.0, 3.0], 0.5) == [1.0, 2.0, 2.5]


@pytest.mark.parametrize("x, text", [(512, "512"), (10_240, "10.2K"), (2.5e6, "2.5M"),
                                     (1.4e12, "1.4T"), (1e9, "1B")])
def test_format_tokens(x, text):
    assert plot.format_tokens(x) == text


def test_plot_run_fails_clearly_without_metrics(tmp_path):
    with pytest.raises(DataError, match=r"no metrics at .*empty.*python -m llama_jax.train"):
        plot.plot_run(tmp_path / "empty", tmp_path / "x.png")
    (tmp_path / "nan").mkdir()
    (tmp_path / "nan" / "metrics.jsonl").write_text('{"step": 1, "tokens": 8, "loss": "nan", "lr": 0.1}\n')
    with pytest.raises(DataError, match="holds no finite loss"):
        plot.plot_run(tmp_path / "nan", tmp_path / "x.png")
    assert not (tmp_path / "x.png").exists()


def test_plot_cli_overlays_runs_and_exits_2_on_a_missing_workdir(tmp_path):
    fake_run(tmp_path / "a")
    fake_run(tmp_path / "b", scale=0.5)
    out = tmp_path / "loss.png"
    proc = subprocess.run([sys.executable, "-m", "llama_jax.plot", str(tmp_path / "a"), str(tmp_path / "b"),
                           f"--out={out}", "--labels=tiny a,tiny b"], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    img = mimage.imread(out)
    assert img.shape[:2] == (600, 900)
    assert pixels_of(img, "C0") > 500 and pixels_of(img, "C1") > 500  # a colour per run
    assert pixels_of(img, "C2") == 0
    bad = subprocess.run([sys.executable, "-m", "llama_jax.plot", str(tmp_path / "missing")],
                         capture_output=True, text=True, timeout=120)
    assert bad.returncode == 2 and "error: no metrics at" in bad.stderr
