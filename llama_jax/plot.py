"""Loss-vs-tokens PNG from training workdirs, in the style of the paper's Figure 1.

    python -m llama_jax.plot /tmp/llama_tiny [OTHER_WORKDIR ...] --out loss.png

One line per run (training loss against tokens seen, read from each
``WORKDIR/metrics.jsonl``), a legend with the run names, the x axis in
billions / millions / thousands of tokens as the data need. The y value is
``loss_mean`` (training loss averaged since the previous record); ``--key``
plots another logged value (``loss``, ``eval_loss/code``, ...), ``--smooth``
applies an exponential moving average. Drawn with `llama_jax.png` (no matplotlib).
"""

from __future__ import annotations

import math
import sys
from collections.abc import Sequence
from pathlib import Path

from absl import app, flags

from llama_jax.cli import run_cli
from llama_jax.png import GLYPH_H, Canvas
from llama_jax.train.metrics import read_metrics

# The paper's Figure 1 palette (matplotlib's tab10 order).
COLORS = ((31, 119, 180), (255, 127, 14), (44, 160, 44), (214, 39, 40), (148, 103, 189),
          (140, 86, 75), (227, 119, 194), (127, 127, 127))
GRID = (225, 225, 225)


def nice_ticks(lo: float, hi: float, target: int = 6) -> list[float]:
    """Round tick values (1, 2, 2.5, 5 x 10^k steps) from below `lo` to above `hi`."""
    if not (math.isfinite(lo) and math.isfinite(hi)):
        raise ValueError(f"axis range [{lo}, {hi}] is not finite")
    if hi <= lo:
        hi = lo + (abs(lo) or 1.0)
    raw = (hi - lo) / max(target - 1, 1)
    mag = 10 ** math.floor(math.log10(raw))
    step = next(m * mag for m in (1, 2, 2.5, 5, 10) if m * mag >= raw)
    first = math.floor(lo / step + 1e-9)
    last = math.ceil(hi / step - 1e-9)
    return [round(i * step, 12) for i in range(first, last + 1)]


def _fmt(v: float) -> str:
    return f"{v:g}" if abs(v) < 1e5 else f"{v:.3g}"


def token_unit(max_tokens: float) -> tuple[float, str]:
    """(divisor, axis label) for a token count axis."""
    for div, name in ((1e9, "Billion of tokens"), (1e6, "Million tokens"), (1e3, "Thousand tokens")):
        if max_tokens >= div:
            return div, name
    return 1.0, "Tokens"


def ema(values: Sequence[float], smooth: float) -> list[float]:
    """Exponential moving average with weight `smooth` on the past (0 = none)."""
    out, avg = [], None
    for v in values:
        avg = v if avg is None else smooth * avg + (1 - smooth) * v
        out.append(avg)
    return out


def load_series(workdir: str | Path, key: str = "loss_mean", x_key: str = "tokens"):
    """(xs, ys) of finite `key` values against `x_key` from a workdir's metrics.

    ``loss_mean`` (the mean training loss since the previous record) falls
    back to ``loss`` in records that lack it.
    """
    xs, ys = [], []
    for rec in read_metrics(workdir):
        x, y = rec.get(x_key), rec.get(key, rec.get("loss") if key == "loss_mean" else None)
        if isinstance(x, int | float) and isinstance(y, int | float) and math.isfinite(y):
            xs.append(float(x))
            ys.append(float(y))
    return xs, ys


def plot_runs(series: dict[str, tuple[list[float], list[float]]], out: str | Path, *,
              ylabel: str = "Training loss", title: str = "", width: int = 900,
              height: int = 600) -> Path:
    """Draw named (xs in tokens, ys) series into a PNG at `out`."""
    series = {k: v for k, v in series.items() if v[0]}
    if not series:
        raise ValueError("nothing to plot: no finite values in the given runs")
    all_x = [x for xs, _ in series.values() for x in xs]
    all_y = [y for _, ys in series.values() for y in ys]
    div, xlabel = token_unit(max(all_x))
    xt = nice_ticks(0.0, max(all_x) / div)
    yt = nice_ticks(min(all_y), max(all_y))
    c = Canvas(width, height)
    s = 2  # font scale
    left, right, top, bottom = 100, width - 30, 50 if title else 30, height - 80
    x_lo, x_hi, y_lo, y_hi = xt[0], xt[-1], yt[0], yt[-1]

    def px(x):
        return left + (x / div - x_lo) / (x_hi - x_lo) * (right - left)

    def py(y):
        return bottom - (y - y_lo) / (y_hi - y_lo) * (bottom - top)

    for v in xt:
        x = round(px(v * div))
        c.rect(x, top, x + 1, bottom, GRID)
        c.rect(x, bottom, x + 1, bottom + 6, (0, 0, 0))
        c.text(x, bottom + 12, _fmt(v), scale=s, anchor="center")
    for v in yt:
        y = round(py(v))
        c.rect(left, y, right, y + 1, GRID)
        c.rect(left - 6, y, left, y + 1, (0, 0, 0))
        c.text(left - 10, y - GLYPH_H * s // 2, _fmt(v), scale=s, anchor="right")
    c.rect(left, top, left + 1, bottom + 1, (0, 0, 0))
    c.rect(left, bottom, right + 1, bottom + 1, (0, 0, 0))
    c.rect(right, top, right + 1, bottom + 1, (0, 0, 0))
    c.rect(left, top, right + 1, top + 1, (0, 0, 0))
    c.text((left + right) // 2, height - 30, xlabel, scale=s, anchor="center")
    c.text(14, (top + bottom) // 2, ylabel, scale=s, vertical=True)
    if title:
        c.text((left + right) // 2, 14, title, scale=s, anchor="center")
    clip = (left + 1, top + 1, right, bottom)
    for i, (name, (xs, ys)) in enumerate(series.items()):
        color = COLORS[i % len(COLORS)]
        c.polyline([px(x) for x in xs], [py(y) for y in ys], color, width=2.5, clip=clip)
        ly = top + 14 + i * (GLYPH_H * s + 10)
        lx = right - 14 - (6 * len(name)) * s - 40
        c.rect(lx, ly + GLYPH_H * s // 2 - 1, lx + 30, ly + GLYPH_H * s // 2 + 2, color)
        c.text(lx + 38, ly, name, scale=s)
    return c.save(out)


FLAGS = flags.FLAGS
flags.DEFINE_string("out", "loss.png", "Output PNG path.")
flags.DEFINE_string("key", "loss_mean", "Metric to plot against tokens: loss_mean (training "
                    "loss averaged between records), loss, eval_loss/<source>, ...")
flags.DEFINE_list("labels", [], "Legend names, one per workdir (default: folder names).")
flags.DEFINE_float("smooth", 0.0, "EMA weight on the past in [0, 1) (0 = raw values).")
flags.DEFINE_string("title", "", "Title above the plot.")


def main(argv: Sequence[str]) -> None:
    """Plot each WORKDIR's metrics into --out (errors: `llama_jax.cli`, exit 2)."""
    workdirs = argv[1:]
    if not workdirs:
        raise app.UsageError("usage: python -m llama_jax.plot WORKDIR [WORKDIR ...] --out loss.png")
    labels = FLAGS.labels or [Path(w).name or str(w) for w in workdirs]
    if len(labels) != len(workdirs):
        raise app.UsageError(f"--labels has {len(labels)} names for {len(workdirs)} workdirs")
    if not 0.0 <= FLAGS.smooth < 1.0:
        raise app.UsageError(f"--smooth={FLAGS.smooth} must be in [0, 1)")
    series = {}
    for label, workdir in zip(labels, workdirs, strict=True):
        xs, ys = load_series(workdir, FLAGS.key)
        series[label] = (xs, ema(ys, FLAGS.smooth))
    ylabel = "Training loss" if FLAGS.key in ("loss", "loss_mean") else FLAGS.key
    path = plot_runs(series, FLAGS.out, ylabel=ylabel, title=FLAGS.title)
    print(f"wrote {path}", file=sys.stderr)


if __name__ == "__main__":
    run_cli(main)
