"""Metrics: FLOPs/MFU, the JSONL writer, the tqdm progress bar, per-source stats.

(TensorBoard output is tested in test_tensorboard.py, the plot in test_plot.py.)
"""

import io
import json

import numpy as np
import pytest

from llama_jax.data.stats import SourceStats
from llama_jax.model import count_params, get_preset
from llama_jax.train import metrics


@pytest.mark.parametrize("preset", ["tiny", "llama_7b", "llama_65b"])
def test_matmul_params_is_all_but_the_embedding(preset):
    cfg = get_preset(preset)
    assert metrics.matmul_params(cfg) == count_params(cfg) - cfg.vocab_size * cfg.dim


def test_flops_per_token_formula_7b():
    cfg = get_preset("llama_7b")
    n = 6_738_415_616 - 32000 * 4096  # all parameters but the embedding table
    assert metrics.flops_per_token(cfg, 2048) == 6 * n + 6 * 32 * 2048 * 4096


def test_mfu_of_the_papers_65b_run():
    # Section 2.4: ~380 tokens/s/GPU on A100-80GB for LLaMA-65B at sequence 2048;
    # by this count that is ~48% MFU (the figure commonly quoted for it).
    cfg = get_preset("llama_65b")
    per_gpu = metrics.mfu(380.0, metrics.flops_per_token(cfg, 2048), 1,
                          metrics.peak_flops("NVIDIA A100-SXM4-80GB"))
    assert per_gpu == pytest.approx(0.484, abs=0.005)
    assert metrics.mfu(380.0 * 2048, metrics.flops_per_token(cfg, 2048), 2048, 312e12) \
        == pytest.approx(per_gpu)


@pytest.mark.parametrize("kind,peak", [
    ("NVIDIA H100 80GB HBM3", 989e12), ("NVIDIA H100 PCIe", 756e12), ("NVIDIA H200", 989e12),
    ("NVIDIA A100-SXM4-40GB", 312e12), ("TPU v4", 275e12), ("TPU v5 lite", 197e12),
    ("TPU v5", 459e12), ("TPU v5p", 459e12), ("cpu", None), ("Some New Chip", None)])
def test_peak_flops_table(kind, peak):
    assert metrics.peak_flops(kind) == peak
    if peak is None:
        assert metrics.mfu(1e6, 1e9, 8, metrics.peak_flops(kind)) is None


def test_metric_writer_jsonl(tmp_path):
    w = metrics.MetricWriter(tmp_path, tensorboard=False)
    w.write(1, {"loss": 8.25, "lr": np.float32(1e-3), "note": "x", "bad": float("nan")})
    w.write(2, {"loss": 7.5})
    w.write(300, {"loss": 3.0, "eval_loss/code": 3.5})
    w.close()
    assert not (tmp_path / "tensorboard").exists()
    records = metrics.read_metrics(tmp_path)
    assert [r["step"] for r in records] == [1, 2, 300]
    assert records[0]["loss"] == 8.25 and records[0]["bad"] == "nan" and records[0]["note"] == "x"
    assert records[0]["lr"] == pytest.approx(1e-3)
    assert records[2]["eval_loss/code"] == 3.5
    with pytest.raises(FileNotFoundError, match="no metrics at"):
        metrics.read_metrics(tmp_path / "missing")


def test_truncate_after_drops_later_and_cut_records(tmp_path):
    w = metrics.MetricWriter(tmp_path, tensorboard=False)
    for s in range(1, 7):
        w.write(s, {"loss": float(s)})
    with open(tmp_path / "metrics.jsonl", "a") as f:
        f.write('{"step": 7, "lo')  # a line cut by a kill
    assert w.truncate_after(4) == 3
    assert [r["step"] for r in metrics.read_metrics(tmp_path)] == [1, 2, 3, 4]


def test_progress_bar_is_tqdm_with_the_logged_text():
    out = io.StringIO()
    bar = metrics.ProgressBar(100, 0, mode="bar", stream=out)
    bar.update(10, "loss 5.0")
    bar.update(20, "loss 4.0")
    assert bar._bar.n == 20 and bar._bar.total == 100
    bar.update(100, "loss 3.0")
    bar.close()
    text = out.getvalue()
    assert "\r" in text and "20/100" in text and "loss 4.0" in text
    assert "100%" in text and "100/100 [" in text and "step/s" in text and text.endswith("\n")
    # The rate starts at the first update (after compilation), not at 0.
    resumed = io.StringIO()
    late = metrics.ProgressBar(100, 50, mode="bar", stream=resumed)
    late.update(60, "x")
    assert late._bar.initial == 60 and late._bar.n == 60
    late.close()
    for mode in ("auto", "log"):  # not a TTY / never: nothing drawn
        silent = io.StringIO()
        quiet = metrics.ProgressBar(10, 0, mode=mode, stream=silent)
        quiet.update(1, "x")
        quiet.close()
        assert silent.getvalue() == "" and not quiet.enabled


def test_source_stats_counts_tokens_and_epochs():
    stats = SourceStats(["a", "b"])
    batch = {"source_id": np.array([0, 1, 0]), "loss_mask": np.array([[1, 1, 0], [1, 1, 1], [1, 0, 0]]),
             "epoch_progress": np.array([0.5, 1.25, 0.75], np.float32)}
    stats.update(batch)
    assert stats.tokens == {"a": 0, "b": 0}  # pending until synced
    stats.sync()
    assert stats.tokens == {"a": 3, "b": 3}
    assert stats.epochs == {"a": 0.75, "b": 1.25}
    assert stats.scalars() == {"tokens/a": 3, "tokens/b": 3, "epoch/a": 0.75, "epoch/b": 1.25}
    again = SourceStats(["a", "b"], json.loads(json.dumps(stats.state())))
    assert again.state() == stats.state()


def test_source_stats_sum_over_processes():
    """`sync` with a gather adds every process's pending tokens (beyond int32, as
    two int32 words) and takes the furthest epoch; a restored total is the base."""
    base = {"tokens": {"a": 10, "b": 20}, "epochs": {"a": 2.0, "b": 0.1}}
    mine = SourceStats(["a", "b"], base)
    mine.update({"source_id": np.array([0, 0]), "loss_mask": np.ones((2, 4)),
                 "epoch_progress": np.array([1.5, 2.5])})
    big = 5 * 2**31 + 7  # another process's count since the last sync
    others = {np.dtype(np.int32): np.array([[big >> 31, 0], [big & (2**31 - 1), 3]], np.int32),
              np.dtype(np.float32): np.array([0.5, 0.25], np.float32)}
    calls = []

    def gather(x):  # what process_allgather returns: [processes, *x.shape]
        calls.append(x.dtype)
        return np.stack([x, others[x.dtype]])

    mine.sync(gather)
    assert calls == [np.int32, np.float32]  # JAX's default dtypes travel unchanged
    assert mine.tokens == {"a": 10 + 8 + big, "b": 20 + 3}
    assert mine.epochs == {"a": 2.5, "b": 0.25}
    mine.sync(gather=lambda x: np.stack([x, np.zeros_like(x)]))  # nothing new anywhere
    assert mine.tokens == {"a": 10 + 8 + big, "b": 23}
