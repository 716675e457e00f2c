"""Training metrics: model FLOPs and MFU, JSONL + TensorBoard (tensorboardX), a tqdm bar.

FLOPs per trained token (forward + backward), the PaLM-style count::

    flops_per_token = 6 * N + 6 * n_layers * seq_len * dim

``N`` counts the parameters that take part in matmuls: every parameter except
the token-embedding table (a gather, no FLOPs); the output head counts. The
second term is attention's score and value matmuls: 2 matmuls x 2 FLOPs x
``seq_len`` keys x ``dim`` per token per layer forward (4 T d), times 3 for
forward + backward (12 L T d), halved because causal attention computes only
the lower triangle (6 L T d). Remat's recomputation is not counted (this is
*model* FLOPs utilization).

    MFU = tokens_per_second * flops_per_token / (n_devices * peak_flops_per_device)

with the dense bf16 peak of the accelerator (`PEAK_FLOPS`); MFU is not
reported where the peak is unknown (CPU, unlisted devices).
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import sys
import time
from collections.abc import Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, TextIO

import flax.linen as nn
import jax
import numpy as np

from llama_jax.fileio import atomic_write
from llama_jax.model.config import LlamaConfig
from llama_jax.model.llama import abstract_params
from llama_jax.progress import bar as progress_bar

if TYPE_CHECKING:
    from tensorboardX import SummaryWriter

# Dense bf16 peak FLOP/s per device, matched against `jax.Device.device_kind`
# by substring, first match wins (so the more specific names come first).
PEAK_FLOPS: tuple[tuple[str, float], ...] = (
    ("GH200", 989e12),
    ("H200", 989e12),
    ("H100 PCIe", 756e12),
    ("H100", 989e12),   # SXM / HBM3.
    ("H800", 989e12),
    ("B200", 2250e12),
    ("A100", 312e12),
    ("A800", 312e12),
    ("L40S", 362e12),
    ("L4", 121e12),
    ("A10G", 70e12),
    ("V100", 125e12),   # fp16 tensor cores (no bf16).
    ("TPU v6 lite", 918e12),  # v6e / Trillium.
    ("TPU v6e", 918e12),
    ("TPU v5 lite", 197e12),  # v5e.
    ("TPU v5e", 197e12),
    ("TPU v5p", 459e12),
    ("TPU v5", 459e12),       # v5p reports "TPU v5".
    ("TPU v4", 275e12),
    ("TPU v3", 123e12),
)


def lookup_device_kind(table: Sequence[tuple[str, float]], device_kind: str) -> float | None:
    """The value of the first `table` name contained in `device_kind` (case-insensitive),
    or None: how every per-device table here is read (peak FLOP/s, power, HBM bandwidth)."""
    kind = device_kind.lower()
    return next((value for name, value in table if name.lower() in kind), None)


def peak_flops(device_kind: str) -> float | None:
    """Dense bf16 peak FLOP/s of one device of `device_kind`, or None if unknown."""
    return lookup_device_kind(PEAK_FLOPS, device_kind)


def matmul_params(config: LlamaConfig) -> int:
    """Parameters that take part in matmuls: all but the embedding table.

    Counted on the model's own abstract init (`jax.eval_shape`, no allocation).
    """
    shapes = nn.meta.unbox(abstract_params(config))
    total = sum(int(x.size) for x in jax.tree_util.tree_leaves(shapes))
    return total - int(shapes["tok_embeddings"]["embedding"].size)


def flops_per_token(config: LlamaConfig, seq_len: int) -> float:
    """Training FLOPs per token: 6 N + 6 L T d (see the module docstring)."""
    return 6.0 * matmul_params(config) + 6.0 * config.n_layers * seq_len * config.dim


def mfu(tokens_per_second: float, flops_per_tok: float, n_devices: int,
        peak_per_device: float | None) -> float | None:
    """Model FLOPs utilization in [0, 1], or None when the peak is unknown."""
    if not peak_per_device or n_devices <= 0:
        return None
    return tokens_per_second * flops_per_tok / (n_devices * peak_per_device)


class MetricWriter:
    """One JSON object per logged step in ``WORKDIR/metrics.jsonl``, plus TensorBoard.

    Only the main process writes (`enabled`). TensorBoard events go to
    ``WORKDIR/tensorboard`` through `tensorboardX.SummaryWriter`: every numeric
    value of a record as a scalar at its step, and once per run
    (`write_run_config`) the run config as text and its scalar-typed values as
    hparams. `purge_step` (a resumed run's first step) tells TensorBoard to drop
    the earlier run's events from that step on, as `truncate_after` does for
    the JSONL.
    """

    def __init__(self, workdir: str | Path, *, tensorboard: bool = True, enabled: bool = True,
                 purge_step: int | None = None):
        self.path = Path(workdir) / "metrics.jsonl"
        self.enabled = enabled
        self._tb: SummaryWriter | None = None
        if enabled:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            if tensorboard:
                # Imported here: the FLOP counting above must import on the GPU
                # benchmark image, which has no tensorboardX (benchmarks/gpu_suite.py).
                from tensorboardX import SummaryWriter
                # tensorboardX names files by the second and opens them with 'wb':
                # a suffix in nanoseconds keeps a quick restart from overwriting
                # the previous file, and the files in the order they were written.
                self._tb = SummaryWriter(logdir=str(Path(workdir) / "tensorboard"),
                                         purge_step=purge_step,
                                         filename_suffix=f".{time.time_ns():020d}.{os.getpid()}")

    def truncate_after(self, step: int) -> int:
        """Drop records with step > `step` (a resumed run recomputes them).

        The file is rewritten through a temporary file in the same folder and a
        rename, so a kill at any moment leaves either the old history or the
        new one, never a partial file. Nothing is rewritten when nothing is
        dropped. Returns the number of records dropped.
        """
        if not self.enabled or not self.path.exists():
            return 0
        kept, dropped = [], 0
        for line in self.path.read_text(encoding="utf-8", errors="replace").splitlines():
            try:
                rec = json.loads(line)
            except json.JSONDecodeError:  # A line cut by a kill.
                dropped += 1
                continue
            if rec.get("step", 0) > step:
                dropped += 1
            else:
                kept.append(line)
        if dropped:
            atomic_write(str(self.path), "".join(k + "\n" for k in kept).encode("utf-8"))
        return dropped

    def write(self, step: int, metrics: Mapping[str, Any]) -> None:
        """Append `metrics` at `step`; non-finite floats are written as strings."""
        if not self.enabled:
            return
        record = {"step": int(step)}
        for k, v in metrics.items():
            if isinstance(v, np.generic | np.ndarray):
                v = v.item()
            if isinstance(v, float) and not math.isfinite(v):
                v = str(v)
            record[k] = v
        with open(self.path, "a") as f:
            f.write(json.dumps(record) + "\n")
        if self._tb is not None:
            for k, v in record.items():
                if k != "step" and isinstance(v, int | float) and not isinstance(v, bool):
                    self._tb.add_scalar(k, float(v), global_step=int(step))
            self._tb.flush()

    def write_run_config(self, config: Mapping[str, Any], step: int = 0,
                         metric_tags: Iterable[str] = ("loss", "loss_mean")) -> None:
        """The run config (a JSON-able mapping) to TensorBoard: as text, and its
        scalar-typed values (bool, int, float, str; dotted keys) as hparams with
        `metric_tags` as the hparams table's metric columns."""
        if self._tb is None:
            return
        from tensorboardX.summary import hparams as hparams_summaries

        text = json.dumps(config, indent=2, sort_keys=True, default=str)
        self._tb.add_text("config", "".join("    " + line + "\n" for line in text.splitlines()),
                          global_step=int(step))  # Indented: a markdown code block.
        experiment, session_start, _ = hparams_summaries(scalar_hparams(config),
                                                          dict.fromkeys(metric_tags, 0.0))
        writer = self._tb.file_writer  # The run's own file: no hparams sub-run.
        writer.add_summary(experiment, global_step=int(step))
        writer.add_summary(session_start, global_step=int(step))
        self._tb.flush()

    def close(self) -> None:
        """Flush and close the TensorBoard file.

        (No hparams session-end record: tensorboardX's says 'success' even for
        a run that stopped on a NaN; TensorBoard shows the status as unknown.)
        """
        if self._tb is not None:
            self._tb.close()
            self._tb = None


def scalar_hparams(config: Mapping[str, Any], prefix: str = "") -> dict[str, bool | int | float | str]:
    """The bool / int / float / str leaves of a nested mapping, by dotted key
    (lists, tuples and None are left out: TensorBoard's hparams take scalars)."""
    out: dict[str, bool | int | float | str] = {}
    for k, v in config.items():
        key = f"{prefix}{k}"
        if isinstance(v, Mapping):
            out.update(scalar_hparams(v, key + "."))
        elif isinstance(v, bool | int | float | str):
            out[key] = v
    return out


def read_metrics(path: str | Path) -> list[dict]:
    """The records of a metrics.jsonl (a workdir or the file itself)."""
    path = Path(path)
    if path.is_dir():
        path = path / "metrics.jsonl"
    if not path.exists():
        raise FileNotFoundError(f"no metrics at {path}; pass a training workdir or its metrics.jsonl")
    out = []
    for line in path.read_text().splitlines():
        try:
            out.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return out


class ProgressBar:
    """The training loop's `tqdm` bar: step count, rate, ETA and the logged text.

    `mode`: 'bar' always draws, 'log' never does, 'auto' draws when `stream`
    is a TTY. The bar starts at the first update, so its rate and ETA leave
    out the compilation before it.
    """

    def __init__(self, total: int, start: int = 0, *, mode: str = "auto",
                 stream: TextIO | None = None):
        self.stream = stream or sys.stderr
        self.enabled = mode == "bar" or (mode == "auto" and self.stream.isatty())
        self.total, self.start = total, start
        self._bar: Any = None  # a tqdm bar once drawn

    def update(self, step: int, text: str = "") -> None:
        """Move the bar to `step` (the count of finished steps) and show `text`."""
        if not self.enabled:
            return
        if self._bar is None:
            self._bar = progress_bar(total=self.total, initial=step, file=self.stream,
                                     unit="step", progress=True, mininterval=0.0, leave=True)
        self._bar.set_postfix_str(text, refresh=False)
        self._bar.update(step - self._bar.n)

    @contextlib.contextmanager
    def suspended(self) -> Iterator[None]:
        """Clear the bar while the body writes to the stream, then redraw it."""
        if self._bar is None:
            yield
            return
        with type(self._bar).external_write_mode(file=self.stream):
            yield

    def close(self) -> None:
        """End the bar's line."""
        if self._bar is not None:
            self._bar.close()
            self._bar = None
