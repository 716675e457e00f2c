"""Benchmark accuracy during training, the paper's Figure 2 (matplotlib).

    python -m llama_jax.plot WORKDIR [OTHER_WORKDIR ...] --figure=tasks [--out=figure2.png] \
        [--metric=auto] [--perplexity=train] [--labels=7B,13B]

Reads the ``task/<name>/<metric>`` records that ``train.eval_tasks`` writes to
each ``WORKDIR/metrics.jsonl`` (`llama_jax.train.task_eval`) and draws one
panel per task twice: in the top block the accuracy against the training
tokens seen (as Figure 2 does), in the bottom block the same accuracies
against the perplexity at that step: ``exp`` of the training loss
(``loss_mean`` of the step's record; ``--perplexity=heldout``: of the mean
held-out loss over sources, at the steps that have one). ``--metric=auto``
plots each task's headline metric (``task/<name>/primary_metric``: acc_norm
for HellaSwag, acc for WinoGrande, ...); a name (``acc``) plots that metric
wherever it was logged. Several runs are overlaid, a colour each (the
paper's model sizes). Drawn on matplotlib's Agg canvas, like `llama_jax.plot`.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from pathlib import Path

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import FuncFormatter

from llama_jax.errors import DataError
from llama_jax.train.metrics import read_metrics

PERPLEXITY = ("train", "heldout")
MARKERS = ("o", "s", "^", "D", "v", "P", "X", "*")
LOG_X_SPAN = 4.0  # max / min perplexity above which that axis is log-scaled
MAX_COLUMNS = 3  # panels per row (Figure 2: 2 x 3)
# --metric=auto where a record names no headline metric (runs of older trainers).
FALLBACK_METRICS = ("acc_norm", "acc", "exact_match")


@dataclasses.dataclass
class TaskCurve:
    """One task of one run: the plotted metric at each evaluated step."""

    metric: str
    tokens: list[float] = dataclasses.field(default_factory=list)
    perplexity: list[float] = dataclasses.field(default_factory=list)  # nan where unknown
    value: list[float] = dataclasses.field(default_factory=list)


@dataclasses.dataclass
class TaskRun:
    """A run's task curves by task name (in first-logged order)."""

    name: str
    tasks: dict[str, TaskCurve]


def format_tokens(x: float, _pos=None) -> str:
    """'512', '10K', '2.5M', '1.4B', '1T' for a token count."""
    for div, unit in ((1e12, "T"), (1e9, "B"), (1e6, "M"), (1e3, "K")):
        if abs(x) >= div:
            return f"{x / div:.3g}{unit}"
    return f"{x:.3g}"


def _number(v) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v)


def _perplexity(rec: dict, source: str) -> float:
    if source == "train":
        loss = rec.get("loss_mean", rec.get("loss"))
    else:
        losses = [v for k, v in rec.items() if k.startswith("eval_loss/") and _number(v)]
        loss = sum(losses) / len(losses) if losses else None
    return math.exp(loss) if _number(loss) and loss < 700 else math.nan


def _chosen_metric(rec: dict, task: str, metric: str) -> str | None:
    if metric != "auto":
        return metric if _number(rec.get(f"task/{task}/{metric}")) else None
    primary = rec.get(f"task/{task}/primary_metric")
    for m in ([primary] if isinstance(primary, str) else []) + list(FALLBACK_METRICS):
        if _number(rec.get(f"task/{task}/{m}")):
            return m
    return None


def load_task_run(workdir: str | Path, name: str | None = None, *, metric: str = "auto",
                  perplexity: str = "train") -> TaskRun:
    """The task curves of a training workdir's metrics.jsonl.

    Raises `DataError` when the workdir has no metrics or no task metrics.
    """
    if perplexity not in PERPLEXITY:
        raise ValueError(f"--perplexity={perplexity!r} is not one of {PERPLEXITY}")
    workdir = Path(workdir)
    try:
        records = read_metrics(workdir)
    except FileNotFoundError as e:
        raise DataError(f"{e} (a workdir that `python -m llama_jax.train --workdir=...` has "
                        "logged to holds one)") from None
    tasks: dict[str, TaskCurve] = {}
    for rec in records:
        if not _number(rec.get("tokens")):
            continue
        names = dict.fromkeys(k.split("/")[1] for k in rec
                              if k.startswith("task/") and k.count("/") >= 2)
        for task in names:
            m = _chosen_metric(rec, task, metric)
            if m is None:
                continue
            curve = tasks.setdefault(task, TaskCurve(m))
            if curve.metric != m:  # the headline changed (another metric asked): keep the first
                continue
            curve.tokens.append(float(rec["tokens"]))
            curve.perplexity.append(_perplexity(rec, perplexity))
            curve.value.append(float(rec[f"task/{task}/{m}"]))
    if not tasks:
        what = "task metrics" if metric == "auto" else f"task metric {metric!r}"
        raise DataError(f"{workdir / 'metrics.jsonl'} holds no {what} to plot; train with "
                        "--config.train.eval_tasks=... and --config.train.eval_tasks_every=N")
    return TaskRun(name or workdir.resolve().name, tasks)


def build_figure(runs: Sequence[TaskRun], *, title: str | None = None,
                 panel_size: tuple[float, float] = (4.0, 3.0), dpi: int = 100) -> Figure:
    """The Figure 2 `Figure`: per task, a panel of accuracy against tokens (top
    block) and one against perplexity (bottom block); axes titled by task."""
    if not runs:
        raise DataError("nothing to plot: no runs given")
    names = list(dict.fromkeys(t for r in runs for t in r.tasks))  # first-seen order
    cols = min(len(names), MAX_COLUMNS)
    rows = -(-len(names) // cols)
    fig = Figure(figsize=(panel_size[0] * cols, panel_size[1] * 2 * rows + 0.6), dpi=dpi)
    FigureCanvasAgg(fig)
    grid = fig.add_gridspec(2 * rows, cols)
    for block, xkey in enumerate(("tokens", "perplexity")):
        for i, task in enumerate(names):
            ax = fig.add_subplot(grid[block * rows + i // cols, i % cols])
            metrics = []
            for j, run in enumerate(runs):
                curve = run.tasks.get(task)
                if curve is None:
                    continue
                pts = [(x, y) for x, y in zip(getattr(curve, xkey), curve.value, strict=True)
                       if math.isfinite(x)]
                if not pts:
                    continue
                xs, ys = zip(*sorted(pts), strict=True)
                ax.plot(xs, ys, color=f"C{j % 10}", marker=MARKERS[j % len(MARKERS)],
                        markersize=4, linewidth=1.5, label=run.name)
                metrics.append(curve.metric)
            ax.set_title(task)
            ax.set_ylabel(", ".join(dict.fromkeys(metrics)) or "accuracy")
            if xkey == "tokens":
                ax.set_xlabel("Training tokens")
                ax.xaxis.set_major_formatter(FuncFormatter(format_tokens))
            else:
                ax.set_xlabel("Training perplexity")
                lo, hi = ax.dataLim.intervalx
                if lo > 0 and hi / lo > LOG_X_SPAN:  # early steps: perplexity falls by decades
                    ax.set_xscale("log")
            ax.grid(True, alpha=0.35)
            if len(runs) > 1 and i == 0:
                ax.legend(loc="best", fontsize=8)
    fig.suptitle(title if title is not None else
                 ", ".join(r.name for r in runs) + ": task accuracy during training")
    fig.tight_layout()
    return fig


def draw_tasks(runs: Sequence[TaskRun], out: str | Path, *, title: str | None = None,
         dpi: int = 100) -> Path:
    """`build_figure(runs)` written as a PNG at `out`; returns its path."""
    fig = build_figure(runs, title=title, dpi=dpi)
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, format="png", dpi=dpi)
    return out
