"""Figure 2 (`llama_jax.plot_tasks`): panels per task, the right points, clear errors."""

import math
import subprocess
import sys

import pytest
from matplotlib import image as mimage

from llama_jax import plot_tasks
from llama_jax.errors import DataError
from llama_jax.train import metrics

TOKENS_PER_STEP = 4096


def fake_run(workdir, *, steps=40, every=10, gain=1.0):
    """metrics.jsonl as the loop writes it: training records; task metrics (and held-out
    losses on every other eval) joined to the records of the eval steps."""
    w = metrics.MetricWriter(workdir, tensorboard=False)
    for s in range(5, steps + 1, 5):
        rec = {"tokens": s * TOKENS_PER_STEP, "loss": 6.0 - s / 20, "loss_mean": 6.1 - s / 20,
               "lr": 1e-3}
        if s % every == 0:
            rec.update({"task/hellaswag/acc": 0.25 + gain * s / 1000,
                        "task/hellaswag/acc_norm": 0.26 + gain * s / 500,
                        "task/hellaswag/num_examples": 50.0,
                        "task/hellaswag/primary_metric": "acc_norm",
                        "task/winogrande/acc": 0.5 + gain * s / 2000,
                        "task/winogrande/num_examples": 50.0,
                        "task/winogrande/primary_metric": "acc",
                        "task/boolq/acc": 0.6, "task/boolq/acc_uncond": 0.55,
                        "task/boolq/primary_metric": "acc_uncond"})
            if s % (2 * every) == 0:
                rec.update({"eval_loss/code": 5.0 - s / 40, "eval_loss/prose": 5.2 - s / 40})
        w.write(s, rec)
    w.close()
    return workdir


def test_load_task_run_picks_each_tasks_headline_metric(tmp_path):
    run = plot_tasks.load_task_run(fake_run(tmp_path / "r"))
    assert run.name == "r"
    assert list(run.tasks) == ["hellaswag", "winogrande", "boolq"]
    hs = run.tasks["hellaswag"]
    assert hs.metric == "acc_norm" and run.tasks["winogrande"].metric == "acc"
    assert run.tasks["boolq"].metric == "acc_uncond"
    assert hs.tokens == [s * TOKENS_PER_STEP for s in (10, 20, 30, 40)]
    assert hs.value == pytest.approx([0.26 + s / 500 for s in (10, 20, 30, 40)])
    assert hs.perplexity == pytest.approx([math.exp(6.1 - s / 20) for s in (10, 20, 30, 40)])
    held = plot_tasks.load_task_run(tmp_path / "r", metric="acc", perplexity="heldout")
    assert held.tasks["hellaswag"].value == pytest.approx([0.25 + s / 1000 for s in (10, 20, 30, 40)])
    ppl = held.tasks["hellaswag"].perplexity  # the mean held-out loss, where there is one
    assert math.isnan(ppl[0]) and ppl[1] == pytest.approx(math.exp((5.0 + 5.2) / 2 - 20 / 40))


def test_figure_has_a_tokens_and_a_perplexity_panel_per_task(tmp_path):
    runs = [plot_tasks.load_task_run(fake_run(tmp_path / "7B"), "7B"),
            plot_tasks.load_task_run(fake_run(tmp_path / "13B", gain=2.0), "13B")]
    fig = plot_tasks.build_figure(runs)
    axes = fig.get_axes()
    assert len(axes) == 6
    assert [a.get_title() for a in axes] == ["hellaswag", "winogrande", "boolq"] * 2
    assert [a.get_xlabel() for a in axes] == ["Training tokens"] * 3 + ["Training perplexity"] * 3
    assert axes[0].get_ylabel() == "acc_norm" and axes[1].get_ylabel() == "acc"
    lines = axes[0].get_lines()
    assert [ln.get_label() for ln in lines] == ["7B", "13B"]
    assert list(lines[1].get_xdata()) == [s * TOKENS_PER_STEP for s in (10, 20, 30, 40)]
    assert list(lines[1].get_ydata()) == pytest.approx([0.26 + 2 * s / 500 for s in (10, 20, 30, 40)])
    # Against perplexity: sorted by perplexity (the last step has the lowest).
    px = list(axes[3].get_lines()[0].get_xdata())
    assert px == sorted(px) and px[0] == pytest.approx(math.exp(6.1 - 40 / 20))
    out = plot_tasks.draw_tasks(runs, tmp_path / "figs" / "figure2.png")
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert mimage.imread(out).shape[:2] == (2 * 300 + 60, 3 * 400)


def test_errors_name_the_file_and_the_fix(tmp_path):
    with pytest.raises(DataError, match=r"no metrics at .*empty.*python -m llama_jax.train"):
        plot_tasks.load_task_run(tmp_path / "empty")
    w = metrics.MetricWriter(tmp_path / "plain", tensorboard=False)
    w.write(1, {"tokens": 8, "loss": 3.0, "lr": 0.1})
    w.close()
    with pytest.raises(DataError, match=r"plain/metrics.jsonl holds no task metrics.*eval_tasks"):
        plot_tasks.load_task_run(tmp_path / "plain")
    with pytest.raises(DataError, match="no task metric 'f1'"):
        plot_tasks.load_task_run(fake_run(tmp_path / "r"), metric="f1")


def test_cli_writes_the_png_and_exits_2_on_a_missing_workdir(tmp_path):
    fake_run(tmp_path / "a")
    out = tmp_path / "fig.png"
    proc = subprocess.run([sys.executable, "-m", "llama_jax.plot", str(tmp_path / "a"), "--figure=tasks",
                           f"--out={out}", "--perplexity=heldout"],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    proc = subprocess.run([sys.executable, "-m", "llama_jax.plot", "--figure=tasks", str(tmp_path / "nope")],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and "error: no metrics at" in proc.stderr
