#!/usr/bin/env python3
"""XLA flag presets for compute/communication overlap, checked against the installed jaxlib.

    eval "$(python launch/xla_flags.py --preset=gpu_overlap --check)"

prints ``export XLA_FLAGS='...'`` (GPU presets) or ``export LIBTPU_INIT_ARGS='...'``
(TPU presets): the preset's flags merged into what the variable already holds
(a flag given twice keeps the later value; ``--extra`` flags come last). With
``--check`` it first starts ``python -c 'import jax; jax.devices()'`` under
those flags: XLA aborts on a flag it does not know ("Unknown flags in
XLA_FLAGS: ..."), and this script then exits 1 naming the flags instead of
letting a long job die at start-up. (libtpu flags can only be checked on a TPU
host; elsewhere --check verifies the GPU/CPU side only.)

Presets (see docs/training.md):

- ``gpu_overlap``: the latency-hiding scheduler (overlaps collectives with
  compute), pipelined all-gather / reduce-scatter / all-reduce inside the
  scanned layer loop, while-loop double buffering, and combine thresholds that
  merge small collectives into large ones (FSDP's per-layer all-gathers and
  gradient reduce-scatters). Follows NVIDIA's JAX-Toolbox / MaxText GPU
  recommendations.
- ``gpu_overlap_tp``: ``gpu_overlap`` plus settings for tensor parallelism
  inside a node (higher-priority async stream for the latency-critical
  collectives).
- ``tpu_overlap``: libtpu's async collective fusion and data-parallel
  all-reduce optimisations (``LIBTPU_INIT_ARGS``).
- ``cpu``: YNNPACK for dots only (its reductions are slow on attention shapes);
  the train and eval commands apply it themselves on the CPU
  (``llama_jax/cpu_flags.py``; ``LLAMA_JAX_CPU_FLAGS=0`` turns it off).
- ``none``: nothing (debugging).

No import of jax or llama_jax at module level: launchers run this before
anything else.
"""

from __future__ import annotations

import argparse
import os
import re
import shlex
import subprocess
import sys

_GIB = 1 << 30
_MIB = 1 << 20

GPU_OVERLAP = (
    "--xla_gpu_enable_latency_hiding_scheduler=true",
    "--xla_gpu_enable_pipelined_all_gather=true",
    "--xla_gpu_enable_pipelined_reduce_scatter=true",
    "--xla_gpu_enable_pipelined_all_reduce=true",
    "--xla_gpu_enable_while_loop_double_buffering=true",
    f"--xla_gpu_all_gather_combine_threshold_bytes={_GIB}",
    f"--xla_gpu_reduce_scatter_combine_threshold_bytes={128 * _MIB}",
    f"--xla_gpu_all_reduce_combine_threshold_bytes={_GIB}",
    "--xla_gpu_enable_all_gather_combine_by_dim=false",
    "--xla_gpu_enable_reduce_scatter_combine_by_dim=false",
    # cuBLAS matmuls rather than Triton GEMM autotuning; CUDA graphs off
    # (they serialize the overlap the scheduler builds).
    "--xla_gpu_enable_triton_gemm=false",
    "--xla_gpu_enable_command_buffer=",
)

PRESETS: dict[str, tuple[str, tuple[str, ...]]] = {
    "gpu_overlap": ("XLA_FLAGS", GPU_OVERLAP),
    "gpu_overlap_tp": ("XLA_FLAGS", GPU_OVERLAP + (
        "--xla_gpu_enable_highest_priority_async_stream=true",
    )),
    "tpu_overlap": ("LIBTPU_INIT_ARGS", (
        "--xla_tpu_enable_data_parallel_all_reduce_opt=true",
        "--xla_tpu_data_parallel_opt_different_sized_ops=true",
        "--xla_tpu_enable_async_collective_fusion=true",
        "--xla_tpu_enable_async_collective_fusion_fuse_all_gather=true",
        "--xla_tpu_enable_async_collective_fusion_multiple_steps=true",
        "--xla_tpu_overlap_compute_collective_tc=true",
        "--xla_enable_async_all_gather=true",
    )),
    # What every llama_jax command applies on the CPU (llama_jax/cpu_flags.py, the
    # measurements there); kept equal to it by tests/test_launch.py.
    "cpu": ("XLA_FLAGS", ("--xla_cpu_experimental_ynn_fusion_type=-reduce",)),
    "none": ("XLA_FLAGS", ()),
}

_UNKNOWN = re.compile(r"Unknown flags? in (?:XLA_FLAGS|LIBTPU_INIT_ARGS)[^:]*:\s*(.*)")


def _name(flag: str) -> str:
    return flag.split("=", 1)[0]


def merge(existing: str, new: list[str] | tuple[str, ...]) -> str:
    """`existing` flags (a string) with `new` appended; a repeated flag keeps its last value."""
    flags: dict[str, str] = {}
    for flag in [*shlex.split(existing or ""), *new]:
        if not flag.startswith("--"):
            raise ValueError(f"XLA flag {flag!r} must start with '--'")
        flags.pop(_name(flag), None)
        flags[_name(flag)] = flag
    return " ".join(flags.values())


def preset_flags(preset: str, extra: list[str] | tuple[str, ...] = ()) -> tuple[str, list[str]]:
    """(environment variable, flags) of `preset` followed by `extra`."""
    if preset not in PRESETS:
        raise ValueError(f"unknown XLA flag preset {preset!r}; choose one of {sorted(PRESETS)}")
    var, flags = PRESETS[preset]
    return var, [*flags, *extra]


def unknown_flags(var: str, value: str, python: str = sys.executable,
                  timeout: float = 300.0) -> list[str]:
    """Flags in `value` that the installed jaxlib rejects (empty if all are known).

    Starts ``python -c 'import jax; jax.devices()'`` with ``var=value``; XLA
    parses XLA_FLAGS when the backend starts and aborts on unknown ones.

    Raises:
      RuntimeError: if the probe fails for another reason (its output included).
    """
    env = dict(os.environ)
    env[var] = value
    proc = subprocess.run([python, "-c", "import jax; jax.devices()"], env=env,
                          capture_output=True, text=True, timeout=timeout)
    text = proc.stdout + proc.stderr
    match = _UNKNOWN.search(text)
    if match:
        return shlex.split(match.group(1).strip())
    if proc.returncode != 0:
        raise RuntimeError(f"checking {var} failed (exit {proc.returncode}):\n{text[-2000:]}")
    return []


def main(argv: list[str] | None = None) -> int:
    """CLI: print the export line for a preset; with --check, verify it first."""
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--preset", default="gpu_overlap", help=f"one of {sorted(PRESETS)}")
    p.add_argument("--extra", default="", help="more flags, appended last (a quoted string)")
    p.add_argument("--check", action="store_true",
                   help="fail (exit 1) if the installed jaxlib does not know a flag")
    p.add_argument("--python", default=sys.executable, help="interpreter for --check")
    p.add_argument("--format", choices=("shell", "value"), default="shell",
                   help="'shell': export VAR='...'; 'value': the flags only")
    args = p.parse_args(argv)
    try:
        var, flags = preset_flags(args.preset, shlex.split(args.extra))
        value = merge(os.environ.get(var, ""), flags)
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if args.check:
        bad = unknown_flags(var, value, args.python)
        if bad:
            print(f"error: the installed jaxlib does not know these {var} flags: {' '.join(bad)}\n"
                  f"Remove them (--preset=none, or edit launch/xla_flags.py) or upgrade jax/jaxlib.",
                  file=sys.stderr)
            return 1
    print(f"export {var}={shlex.quote(value)}" if args.format == "shell" else value)
    return 0


if __name__ == "__main__":
    sys.exit(main())
