"""The XLA flags every command applies when it runs on the CPU (the ``cpu`` preset).

XLA's CPU back-end in jaxlib 0.10 hands dots, reductions and elementwise
fusions to YNNPACK. Its reductions are slow on the attention shapes of a
train step: the softmax backward's sum over keys (``f32[8,4,1,256,256] ->
[8,4,1,256]``) took 14% of the shape-(a) step alone (benchmarks/profile_step.py).
The preset keeps YNNPACK's defaults minus reductions (``=-reduce``).

An earlier preset kept YNNPACK for dots only (``=dot``). That made its dot
fusions convert bf16 operands to f32, so a bf16 train step lost the CPU's
bf16 dot instructions. Measured side by side on the 2-core CI machine kind
(benchmarks/train_step.py, 4 alternating rounds, with the canonical linear
layers of `llama_jax.kernels.matmul`), ``-reduce`` against ``dot`` in tokens/s:

- shape (a): f32 5,255 vs 5,152; bf16 5,548 vs 4,529; bf16 unrolled 6,567 vs 5,222;
- shape (b): f32 673 vs 644; bf16 806 vs 527; bf16 unrolled 982 vs 649.

Against no preset, ``dot`` measured shape (a) f32 4,037 vs 3,566 tokens/s and
shape (b) 621 vs 545 (``-reduce``: 3,900 and 629, the same run).

It does not help batched decoding (greedy decode of shape (b) at batch 16:
417-456 tokens/s with the ``dot`` preset, 489-491 without;
benchmarks/decode.py), so the train and eval commands apply it (``run_cli(...,
cpu_preset=True)``) and generate, serve and chat do not.

`apply` adds the preset to ``XLA_FLAGS`` before the backend starts when the
run will be on the CPU and the installed jaxlib is one the preset was measured
on. A flag the user already set in ``XLA_FLAGS`` wins, and
``LLAMA_JAX_CPU_FLAGS=0`` turns the preset off. ``launch/xla_flags.py
--preset=cpu --check`` prints and checks the same flags.

Imports no jax: it must run before the backend is initialised.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import os
import shlex
from collections.abc import MutableMapping

CPU_FLAGS = ("--xla_cpu_experimental_ynn_fusion_type=-reduce",)
# jaxlib minor versions the preset was measured on (its flags are experimental).
TESTED_JAXLIB = ("0.10.",)
OFF_ENV = "LLAMA_JAX_CPU_FLAGS"
_ACCELERATOR_PLUGINS = ("jax_cuda12_plugin", "jax_cuda13_plugin", "jax_rocm60_plugin",
                        "jax_rocm7_plugin", "libtpu")


def runs_on_cpu(environ: MutableMapping[str, str] = os.environ) -> bool:
    """True when JAX will pick the CPU: ``JAX_PLATFORMS=cpu``, or no accelerator plugin."""
    platforms = environ.get("JAX_PLATFORMS", "").strip().lower()
    if platforms:
        return platforms.split(",")[0] == "cpu"
    return not any(importlib.util.find_spec(p) for p in _ACCELERATOR_PLUGINS)


def _jaxlib_version() -> str:
    try:
        return importlib.metadata.version("jaxlib")
    except importlib.metadata.PackageNotFoundError:
        return ""


def apply(environ: MutableMapping[str, str] = os.environ) -> bool:
    """Add `CPU_FLAGS` to ``environ["XLA_FLAGS"]`` when they apply; True if added."""
    if environ.get(OFF_ENV, "1").strip() in ("0", "false", "False", "no"):
        return False
    if not _jaxlib_version().startswith(TESTED_JAXLIB) or not runs_on_cpu(environ):
        return False
    current = shlex.split(environ.get("XLA_FLAGS", ""))
    names = {f.split("=", 1)[0] for f in current}
    new = [f for f in CPU_FLAGS if f.split("=", 1)[0] not in names]
    if not new:
        return False
    environ["XLA_FLAGS"] = " ".join([*current, *new])
    return True
