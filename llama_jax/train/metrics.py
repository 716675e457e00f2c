"""Training metrics: model FLOPs and MFU, JSONL + TensorBoard, a progress bar.

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

import json
import math
import sys
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any, TextIO

import flax.linen as nn
import jax
import numpy as np

from llama_jax.event_file import EventFileWriter
from llama_jax.model.config import LlamaConfig
from llama_jax.model.llama import abstract_params

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


def peak_flops(device_kind: str) -> float | None:
    """Dense bf16 peak FLOP/s of one device of `device_kind`, or None if unknown."""
    for name, peak in PEAK_FLOPS:
        if name.lower() in device_kind.lower():
            return peak
    return None


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

    Only the main process writes (`enabled`). TensorBoard event files go to
    ``WORKDIR/tensorboard`` (`llama_jax.event_file`, no TensorFlow needed).
    """

    def __init__(self, workdir: str | Path, *, tensorboard: bool = True, enabled: bool = True):
        self.path = Path(workdir) / "metrics.jsonl"
        self.enabled = enabled
        self._tb = None
        if enabled:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            if tensorboard:
                self._tb = EventFileWriter(Path(workdir) / "tensorboard")

    def truncate_after(self, step: int) -> int:
        """Drop records with step > `step` (a resumed run recomputes them).

        Returns the number of records dropped.
        """
        if not self.enabled or not self.path.exists():
            return 0
        kept, dropped = [], 0
        for line in self.path.read_text().splitlines():
            try:
                rec = json.loads(line)
            except json.JSONDecodeError:  # A line cut by a kill.
                dropped += 1
                continue
            if rec.get("step", 0) > step:
                dropped += 1
            else:
                kept.append(line)
        self.path.write_text("".join(k + "\n" for k in kept))
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
            self._tb.scalars(step, {k: v for k, v in record.items()
                                    if k != "step" and isinstance(v, int | float)
                                    and not isinstance(v, bool)})
            self._tb.flush()

    def close(self) -> None:
        if self._tb is not None:
            self._tb.close()


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


def format_duration(seconds: float) -> str:
    """'1:02:03' / '2:03' from seconds."""
    seconds = max(int(seconds), 0)
    h, rem = divmod(seconds, 3600)
    m, s = divmod(rem, 60)
    return f"{h}:{m:02d}:{s:02d}" if h else f"{m}:{s:02d}"


class ProgressBar:
    """A one-line progress bar with ETA, redrawn in place on a terminal.

    `mode`: 'bar' always draws, 'log' never does, 'auto' draws when `stream`
    is a TTY. The ETA uses the step rate since the first update (so the
    compilation before it is not extrapolated).
    """

    def __init__(self, total: int, start: int = 0, *, mode: str = "auto",
                 stream: TextIO | None = None, width: int = 24):
        self.stream = stream or sys.stderr
        self.enabled = mode == "bar" or (mode == "auto" and self.stream.isatty())
        self.total, self.start, self.width = total, start, width
        self._t0: float | None = None
        self._s0 = start
        self._drawn = False

    def eta(self, step: int, now: float | None = None) -> float | None:
        now = time.perf_counter() if now is None else now
        if self._t0 is None or step <= self._s0:
            return None
        rate = (step - self._s0) / max(now - self._t0, 1e-9)
        return (self.total - step) / rate

    def update(self, step: int, text: str = "") -> None:
        if self._t0 is None:
            self._t0, self._s0 = time.perf_counter(), step
        if not self.enabled:
            return
        frac = step / max(self.total, 1)
        filled = int(self.width * frac)
        eta = self.eta(step)
        eta_text = format_duration(eta) if eta is not None else "?"
        line = (f"\r[{'#' * filled}{'.' * (self.width - filled)}] {step}/{self.total} "
                f"{100 * frac:5.1f}% {text} ETA {eta_text}")
        self.stream.write(line + "\x1b[K")
        self.stream.flush()
        self._drawn = True

    def close(self) -> None:
        if self.enabled and self._drawn:
            self.stream.write("\n")
            self.stream.flush()
