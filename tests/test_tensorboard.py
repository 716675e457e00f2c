"""TensorBoard output (tensorboardX), read back with the `tensorboard` package's EventAccumulator."""

import json

import pytest
import train_helpers as th
from tensorboard.backend.event_processing import event_accumulator as ea_lib
from tensorboard.plugins.hparams import plugin_data_pb2
from tensorboard.util import tensor_util

from llama_jax.train import metrics
from llama_jax.train.loop import train_and_evaluate


def accumulator(logdir) -> ea_lib.EventAccumulator:
    acc = ea_lib.EventAccumulator(str(logdir), size_guidance={ea_lib.SCALARS: 0, ea_lib.TENSORS: 0})
    acc.Reload()
    return acc


def scalars(acc, tag) -> dict[int, float]:
    events = acc.Scalars(tag)
    steps = [e.step for e in events]
    assert len(steps) == len(set(steps)), f"{tag}: duplicate steps {steps}"
    return {e.step: e.value for e in events}


def hparams_of(acc) -> dict:
    content = acc.PluginTagToContent("hparams")
    start = plugin_data_pb2.HParamsPluginData.FromString(content["_hparams_/session_start_info"])
    experiment = plugin_data_pb2.HParamsPluginData.FromString(content["_hparams_/experiment"])
    values = {}
    for k, v in start.session_start_info.hparams.items():
        values[k] = getattr(v, v.WhichOneof("kind"))
    return {"hparams": values,
            "metrics": [m.name.tag for m in experiment.experiment.metric_infos]}


def test_metric_writer_scalars_text_hparams(tmp_path):
    w = metrics.MetricWriter(tmp_path)
    config = {"train": {"steps": 300, "lr": 3e-4, "tensorboard": True, "progress": "auto",
                        "sources": [{"name": "a"}], "resume": None}, "seed": 7}
    w.write_run_config(config, metric_tags=("loss", "eval_loss/code"))
    w.write(1, {"loss": 8.25, "lr": 1e-3, "note": "x", "bad": float("nan"), "flag": True})
    w.write(2, {"loss": 7.5, "tokens/code": 3 * 4096})
    w.write(300, {"loss": 3.0, "eval_loss/code": 3.5})
    w.close()
    acc = accumulator(tmp_path / "tensorboard")
    tags = set(acc.Tags()["scalars"])
    assert tags == {"loss", "lr", "tokens/code", "eval_loss/code"}  # numbers only, no bool/str/NaN string
    assert scalars(acc, "loss") == {1: 8.25, 2: 7.5, 300: 3.0}
    assert scalars(acc, "lr")[1] == pytest.approx(1e-3)
    assert scalars(acc, "tokens/code") == {2: 12288.0}
    (text,) = acc.Tensors("config/text_summary")
    shown = tensor_util.make_ndarray(text.tensor_proto).item().decode()
    assert json.loads("\n".join(line[4:] for line in shown.splitlines())) == config
    hp = hparams_of(acc)
    assert hp["hparams"] == {"train.steps": 300.0, "train.lr": 3e-4, "train.tensorboard": True,
                             "train.progress": "auto", "seed": 7.0}
    assert hp["metrics"] == ["loss", "eval_loss/code"]


def test_resumed_writer_purges_the_steps_it_recomputes(tmp_path):
    """A restart at step 4 (in the same second, the same process) replaces steps 5-6."""
    first = metrics.MetricWriter(tmp_path)
    for s in range(1, 7):
        first.write(s, {"loss": float(s)})
    first.close()
    again = metrics.MetricWriter(tmp_path, purge_step=5)
    assert again.truncate_after(4) == 2
    for s in (5, 6, 7):
        again.write(s, {"loss": 10.0 * s})
    again.close()
    assert len(list((tmp_path / "tensorboard").glob("events.out.tfevents.*"))) == 2
    assert scalars(accumulator(tmp_path / "tensorboard"), "loss") == {
        1: 1.0, 2: 2.0, 3: 3.0, 4: 4.0, 5: 50.0, 6: 60.0, 7: 70.0}
    assert [r["loss"] for r in metrics.read_metrics(tmp_path)] == [1, 2, 3, 4, 50, 60, 70]


def test_training_run_tensorboard_matches_metrics_jsonl(tmp_path):
    """A few real steps with held-out eval: TensorBoard holds every logged number of metrics.jsonl."""
    root = th.make_data(tmp_path / "data")
    wd = tmp_path / "run"
    cfg = th.micro_config(root, **{"train.steps": 6, "train.log_every": 2, "train.eval_every": 3,
                                   "train.eval_batches": 1, "train.tensorboard": True,
                                   "checkpoint.every": 100})
    result = train_and_evaluate(cfg, str(wd))
    assert result.status == "completed"
    records = metrics.read_metrics(wd)
    acc = accumulator(wd / "tensorboard")
    logged = {r["step"] for r in records if "lr" in r}
    assert logged == {1, 2, 4, 6}
    assert set(scalars(acc, "loss")) == {r["step"] for r in records}
    assert set(scalars(acc, "lr")) == logged
    for src in ("code", "prose"):
        assert set(scalars(acc, f"eval_loss/{src}")) == {3, 6}
    compared = 0
    for rec in records:
        for key, value in rec.items():
            if key == "step" or not isinstance(value, int | float):
                continue
            assert scalars(acc, key)[rec["step"]] == pytest.approx(value, rel=1e-6), (key, rec["step"])
            compared += 1
    assert compared > 40
    for key in ("grad_norm", "tokens_per_s", "tokens/code", "epoch/prose", "loss_mean"):
        assert key in acc.Tags()["scalars"]
    hp = hparams_of(acc)
    assert hp["hparams"]["train.steps"] == 6 and hp["hparams"]["optimizer.lr"] == pytest.approx(3e-3)
    assert hp["metrics"] == ["loss", "loss_mean", "eval_loss/code", "eval_loss/prose"]
    assert acc.Tensors("config/text_summary")
