"""Loss-vs-tokens PNG of training runs, in the style of the paper's Figure 1 (matplotlib).

    python -m llama_jax.plot WORKDIR [OTHER_WORKDIR ...] [--out=loss.png]
    python -m llama_jax.plot WORKDIR [...] --figure=tasks [--out=figure2.png]

``--figure=tasks`` draws the paper's Figure 2 instead: the benchmark accuracies
that ``train.eval_tasks`` logged, against tokens and against training
perplexity (`llama_jax.plot_tasks`; ``--metric``, ``--perplexity``).

Reads each ``WORKDIR/metrics.jsonl`` and draws the training loss (``loss_mean``,
the mean since the previous record) against the tokens seen as a line, with
the held-out loss of each source (``eval_loss/<source>``) overlaid as markers
joined by dashed lines. The axes are fitted to the data; the tokens axis is
log-scaled when the logged range spans more than `LOG_X_SPAN` (a short run
logged from step 1), linear otherwise, labelled in K / M / B tokens. With one
run each curve has its own colour; with several, each run has one colour and
the sources are told apart by marker. Drawn on matplotlib's Agg canvas (no
display, no pyplot state).
"""

from __future__ import annotations

import dataclasses
import math
import sys
from collections.abc import Sequence
from pathlib import Path

from absl import app, flags
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import FuncFormatter

from llama_jax import plot_tasks
from llama_jax.cli import run_cli
from llama_jax.errors import DataError
from llama_jax.plot_tasks import MARKERS, format_tokens  # shared with Figure 2
from llama_jax.train.metrics import read_metrics

LOG_X_SPAN = 30.0  # max / min logged tokens above which the tokens axis is log-scaled


@dataclasses.dataclass
class RunCurves:
    """One run's curves, x in tokens: training loss and held-out loss per source."""

    name: str
    train: tuple[list[float], list[float]]
    heldout: dict[str, tuple[list[float], list[float]]]


def _finite(v) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v)


def ema(values: Sequence[float], smooth: float) -> list[float]:
    """Exponential moving average with weight `smooth` on the past (0 = none)."""
    out, avg = [], None
    for v in values:
        avg = v if avg is None else smooth * avg + (1 - smooth) * v
        out.append(avg)
    return out


def load_run(workdir: str | Path, name: str | None = None, smooth: float = 0.0) -> RunCurves:
    """The curves of a training workdir's metrics.jsonl.

    Raises `DataError` when the workdir has no metrics or no finite loss.
    """
    workdir = Path(workdir)
    try:
        records = read_metrics(workdir)
    except FileNotFoundError as e:
        raise DataError(f"{e} (a workdir that `python -m llama_jax.train --workdir=...` has logged "
                        "to holds one)") from None
    train_x, train_y, heldout = [], [], {}
    for rec in records:
        tokens = rec.get("tokens")
        if not _finite(tokens):
            continue
        if "lr" in rec:  # A training record (a held-out-only record repeats the loss).
            loss = rec.get("loss_mean", rec.get("loss"))
            if _finite(loss):
                train_x.append(float(tokens))
                train_y.append(float(loss))
        for key, value in rec.items():
            if key.startswith("eval_loss/") and _finite(value):
                xs, ys = heldout.setdefault(key.split("/", 1)[1], ([], []))
                xs.append(float(tokens))
                ys.append(float(value))
    if not train_x and not heldout:
        raise DataError(f"{workdir / 'metrics.jsonl'} holds no finite loss to plot "
                        "(did the run log any step?)")
    return RunCurves(name or workdir.resolve().name, (train_x, ema(train_y, smooth)), heldout)


def _padded(lo: float, hi: float, frac: float = 0.05) -> tuple[float, float]:
    pad = (hi - lo) * frac or abs(hi) * frac or 1.0
    return lo - pad, hi + pad


def draw_runs(runs: Sequence[RunCurves], out: str | Path, *, title: str | None = None,
              size: tuple[int, int] = (900, 600), dpi: int = 100) -> Path:
    """Draw `runs` into a PNG of `size` pixels (width, height) at `out`; returns its path."""
    if not runs:
        raise DataError("nothing to plot: no runs given")
    fig = Figure(figsize=(size[0] / dpi, size[1] / dpi), dpi=dpi)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    xs_all, ys_all = [], []
    sources = list(dict.fromkeys(s for r in runs for s in r.heldout))  # first-seen order
    one = len(runs) == 1
    for i, run in enumerate(runs):
        color = f"C{i % 10}"
        prefix = "" if one else f"{run.name}: "
        tx, ty = run.train
        if tx:
            ax.plot(tx, ty, color=color, linewidth=2.0, label=f"{prefix}training loss")
        for j, src in enumerate(sources):
            if src not in run.heldout:
                continue
            hx, hy = run.heldout[src]
            ax.plot(hx, hy, color=f"C{(j + 1) % 10}" if one else color, linestyle="--", linewidth=1.2,
                    marker=MARKERS[j % len(MARKERS)], markersize=6, label=f"{prefix}held-out {src}")
            xs_all += hx
            ys_all += hy
        xs_all += tx
        ys_all += ty
    lo, hi = min(xs_all), max(xs_all)
    if lo > 0 and hi / lo > LOG_X_SPAN:
        ax.set_xscale("log")
        ax.set_xlim(lo / 1.15, hi * 1.15)
    else:
        ax.set_xlim(*_padded(lo, hi, 0.02))
    ax.set_ylim(*_padded(min(ys_all), max(ys_all)))
    ax.xaxis.set_major_formatter(FuncFormatter(format_tokens))
    ax.xaxis.set_minor_formatter(FuncFormatter(lambda x, pos: ""))
    ax.set_xlabel("Tokens seen")
    ax.set_ylabel("Loss (nats per token)")
    ax.set_title(title if title is not None else ", ".join(r.name for r in runs) + ": loss against tokens seen")
    ax.grid(True, which="major", alpha=0.35)
    ax.grid(True, which="minor", alpha=0.12)
    ax.legend(loc="best", frameon=True, fontsize=9)
    fig.tight_layout()
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, format="png", dpi=dpi)
    return out


def plot_run(workdir: str | Path, out: str | Path, *, title: str | None = None,
             size: tuple[int, int] = (900, 600)) -> Path:
    """The loss-vs-tokens PNG of one training workdir at `out`; returns its path.

    The title defaults to the run's name (the workdir's folder name) and what
    is drawn. Raises
    `DataError` on a workdir without metrics.
    """
    return draw_runs([load_run(workdir)], out, title=title, size=size)


FLAGS = flags.FLAGS
flags.DEFINE_enum("figure", "loss", ("loss", "tasks"), "'loss': loss against tokens (Figure 1); "
                  "'tasks': task accuracy against tokens and perplexity (Figure 2).")
flags.DEFINE_string("out", None, "Output PNG path (default: loss.png, or figure2.png with "
                    "--figure=tasks).")
flags.DEFINE_list("labels", [], "Run names, one per workdir (default: the folder names).")
flags.DEFINE_float("smooth", 0.0, "EMA weight on the past for the training loss, in [0, 1) (0 = raw).")
flags.DEFINE_string("title", None, "Title above the plot (default: '<run names>: loss against "
                    "tokens seen', or '...: task accuracy during training').")
flags.DEFINE_string("metric", "auto", "--figure=tasks: the metric per task, 'auto' (each task's "
                    "headline metric) or a name such as acc, acc_norm.")
flags.DEFINE_enum("perplexity", "train", plot_tasks.PERPLEXITY, "--figure=tasks: x of the lower "
                  "panels, exp of the training loss ('train') or of the mean held-out loss "
                  "('heldout').")


def main(argv: Sequence[str]) -> None:
    """Plot each WORKDIR's metrics into --out (errors: `llama_jax.cli`, exit 2)."""
    workdirs = argv[1:]
    if not workdirs:
        raise app.UsageError("usage: python -m llama_jax.plot WORKDIR [WORKDIR ...] [--out=loss.png] "
                             "[--figure=tasks]")
    labels = FLAGS.labels or [None] * len(workdirs)
    if len(labels) != len(workdirs):
        raise app.UsageError(f"--labels has {len(labels)} names for {len(workdirs)} workdirs")
    if not 0.0 <= FLAGS.smooth < 1.0:
        raise app.UsageError(f"--smooth={FLAGS.smooth} must be in [0, 1)")
    if FLAGS.figure == "tasks":
        task_runs = [plot_tasks.load_task_run(w, label, metric=FLAGS.metric,
                                              perplexity=FLAGS.perplexity)
                     for w, label in zip(workdirs, labels, strict=True)]
        path = plot_tasks.draw_tasks(task_runs, FLAGS.out or "figure2.png", title=FLAGS.title)
        print(f"wrote {path}", file=sys.stderr)
        return
    runs = [load_run(w, label, FLAGS.smooth) for w, label in zip(workdirs, labels, strict=True)]
    path = draw_runs(runs, FLAGS.out or "loss.png", title=FLAGS.title)
    print(f"wrote {path}", file=sys.stderr)


if __name__ == "__main__":
    run_cli(main)
