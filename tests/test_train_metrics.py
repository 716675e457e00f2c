"""Metrics: FLOPs/MFU, JSONL + TensorBoard event files, progress bar, the loss plot."""

import io
import json
import struct
import subprocess
import sys

import numpy as np
import pytest

from llama_jax import event_file, plot, png
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


def test_crc32c_known_vector():
    assert event_file.crc32c(b"123456789") == 0xE3069283
    assert event_file.crc32c(b"") == 0


def _event_classes():
    """Event / Summary messages built from descriptors: an independent protobuf decoder."""
    from google.protobuf import descriptor_pb2, descriptor_pool, message_factory

    fdp = descriptor_pb2.FileDescriptorProto(name="ev_test.proto", package="tftest")
    F = descriptor_pb2.FieldDescriptorProto
    value = fdp.message_type.add(name="Value")
    value.field.add(name="tag", number=1, type=F.TYPE_STRING, label=F.LABEL_OPTIONAL)
    value.field.add(name="simple_value", number=2, type=F.TYPE_FLOAT, label=F.LABEL_OPTIONAL)
    summary = fdp.message_type.add(name="Summary")
    summary.field.add(name="value", number=1, type=F.TYPE_MESSAGE, label=F.LABEL_REPEATED,
                      type_name=".tftest.Value")
    event = fdp.message_type.add(name="Event")
    event.field.add(name="wall_time", number=1, type=F.TYPE_DOUBLE, label=F.LABEL_OPTIONAL)
    event.field.add(name="step", number=2, type=F.TYPE_INT64, label=F.LABEL_OPTIONAL)
    event.field.add(name="file_version", number=3, type=F.TYPE_STRING, label=F.LABEL_OPTIONAL)
    event.field.add(name="summary", number=5, type=F.TYPE_MESSAGE, label=F.LABEL_OPTIONAL,
                    type_name=".tftest.Summary")
    pool = descriptor_pool.DescriptorPool()
    pool.Add(fdp)
    return message_factory.GetMessageClass(pool.FindMessageTypeByName("tftest.Event"))


def test_metric_writer_jsonl_and_tensorboard(tmp_path):
    w = metrics.MetricWriter(tmp_path, tensorboard=True)
    w.write(1, {"loss": 8.25, "lr": np.float32(1e-3), "note": "x", "bad": float("nan")})
    w.write(2, {"loss": 7.5})
    w.write(300, {"loss": 3.0, "eval_loss/code": 3.5})
    w.close()
    records = metrics.read_metrics(tmp_path)
    assert [r["step"] for r in records] == [1, 2, 300]
    assert records[0]["loss"] == 8.25 and records[0]["bad"] == "nan"
    assert records[0]["lr"] == pytest.approx(1e-3)
    # TensorBoard: a TFRecord file of Event protos, CRCs checked by read_records.
    (path,) = list((tmp_path / "tensorboard").glob("events.out.tfevents.*"))
    Event = _event_classes()
    events = [Event.FromString(r) for r in event_file.read_records(path)]
    assert events[0].file_version == "brain.Event:2"
    scalars = {(e.step, v.tag): v.simple_value for e in events[1:] for v in e.summary.value}
    assert scalars[(1, "loss")] == 8.25 and scalars[(2, "loss")] == 7.5
    assert scalars[(300, "eval_loss/code")] == 3.5
    assert (1, "note") not in scalars
    # Corruption is detected.
    data = bytearray(path.read_bytes())
    data[-6] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises(ValueError, match="CRC"):
        event_file.read_records(path)


def test_truncate_after_drops_later_and_cut_records(tmp_path):
    w = metrics.MetricWriter(tmp_path, tensorboard=False)
    for s in range(1, 7):
        w.write(s, {"loss": float(s)})
    with open(tmp_path / "metrics.jsonl", "a") as f:
        f.write('{"step": 7, "lo')  # a line cut by a kill
    assert w.truncate_after(4) == 3
    assert [r["step"] for r in metrics.read_metrics(tmp_path)] == [1, 2, 3, 4]


def test_progress_bar_draws_eta_on_a_terminal():
    out = io.StringIO()
    bar = metrics.ProgressBar(100, 0, mode="bar", stream=out)
    bar.update(10, "loss 5.0")
    assert bar.eta(10) is None  # no rate before a second update
    bar.update(20, "loss 4.0")
    bar.close()
    text = out.getvalue()
    assert "\r[" in text and "20/100" in text and "loss 4.0" in text and "ETA" in text
    assert bar.eta(20, now=bar._t0 + 10.0) == pytest.approx(80.0)  # 10 steps in 10 s, 80 left
    silent = io.StringIO()  # not a TTY: auto mode draws nothing
    quiet = metrics.ProgressBar(10, 0, mode="auto", stream=silent)
    quiet.update(1, "x")
    quiet.close()
    assert silent.getvalue() == ""
    assert metrics.format_duration(3725) == "1:02:05" and metrics.format_duration(65) == "1:05"


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


def test_png_round_trip_and_text():
    c = png.Canvas(40, 20)
    c.rect(0, 0, 5, 5, (255, 0, 0))
    c.text(10, 5, "Hi", scale=1)
    img = png.decode_png(png.encode_png(c.pixels))
    np.testing.assert_array_equal(img, c.pixels)
    assert tuple(img[0, 0]) == (255, 0, 0)
    # 'H' has a full-height left column: 7 black pixels at x=10, y=5..11.
    assert (img[5:12, 10] == 0).all()
    assert struct.unpack(">II", png.encode_png(c.pixels)[16:24]) == (40, 20)


def test_nice_ticks_cover_the_range():
    ticks = plot.nice_ticks(2.05, 10.3)
    assert ticks[0] <= 2.05 and ticks[-1] >= 10.3
    steps = np.diff(ticks)
    assert np.allclose(steps, steps[0]) and steps[0] in (1, 2, 2.5, 5)


def test_plot_cli_writes_a_png_with_one_line_per_run(tmp_path):
    for name, scale in (("a", 1.0), ("b", 0.5)):
        w = metrics.MetricWriter(tmp_path / name, tensorboard=False)
        for s in range(0, 200, 10):
            w.write(s, {"tokens": s * 4096, "loss": 8.3 * np.exp(-s / 100 * scale) + 2.0})
    out = tmp_path / "loss.png"
    proc = subprocess.run([sys.executable, "-m", "llama_jax.plot", str(tmp_path / "a"),
                           str(tmp_path / "b"), f"--out={out}", "--labels=tiny a,tiny b"],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    img = png.decode_png(out.read_bytes())
    assert img.shape == (600, 900, 3)
    for color in plot.COLORS[:2]:  # both runs' colors are drawn
        assert (img == np.array(color, np.uint8)).all(axis=-1).sum() > 200
    assert not (img == np.array(plot.COLORS[2], np.uint8)).all(axis=-1).any()
    bad = subprocess.run([sys.executable, "-m", "llama_jax.plot", str(tmp_path / "missing")],
                         capture_output=True, text=True, timeout=120)
    assert bad.returncode != 0 and "no metrics" in bad.stderr
