"""Launchers: XLA flag presets (checked against the installed jaxlib), local, SLURM, TPU pod."""

import importlib.util
import os
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
LAUNCH = REPO / "launch"


def _xla_flags():
    spec = importlib.util.spec_from_file_location("xla_flags", LAUNCH / "xla_flags.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


xf = _xla_flags()


def test_presets_overlap_flags():
    var, flags = xf.preset_flags("gpu_overlap")
    assert var == "XLA_FLAGS"
    assert "--xla_gpu_enable_latency_hiding_scheduler=true" in flags
    assert any(f.startswith("--xla_gpu_all_gather_combine_threshold_bytes=") for f in flags)
    assert any(f.startswith("--xla_gpu_reduce_scatter_combine_threshold_bytes=") for f in flags)
    assert xf.preset_flags("tpu_overlap")[0] == "LIBTPU_INIT_ARGS"
    assert xf.preset_flags("none")[1] == []
    with pytest.raises(ValueError, match="unknown XLA flag preset"):
        xf.preset_flags("gpu_fast")


def test_merge_keeps_existing_and_last_value_wins():
    merged = xf.merge("--xla_force_host_platform_device_count=8 --xla_a=1", ["--xla_a=2", "--xla_b=3"])
    assert merged == "--xla_force_host_platform_device_count=8 --xla_a=2 --xla_b=3"
    with pytest.raises(ValueError, match="must start with '--'"):
        xf.merge("", ["xla_a=1"])


def test_gpu_presets_are_known_to_the_installed_jaxlib():
    for preset in ("gpu_overlap", "gpu_overlap_tp"):
        var, flags = xf.preset_flags(preset)
        assert xf.unknown_flags(var, " ".join(flags)) == [], preset


def test_unknown_flag_is_caught_and_named():
    # --xla_gpu_enable_async_collectives was removed from XLA (async is the default now).
    bad = xf.unknown_flags("XLA_FLAGS", "--xla_gpu_enable_latency_hiding_scheduler=true "
                                        "--xla_gpu_enable_async_collectives=true --xla_no_such_flag=1")
    assert bad == ["--xla_gpu_enable_async_collectives=true", "--xla_no_such_flag=1"]
    proc = subprocess.run([sys.executable, str(LAUNCH / "xla_flags.py"), "--preset=gpu_overlap",
                           "--extra=--xla_no_such_flag=1", "--check"],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 1
    assert "does not know these XLA_FLAGS flags: --xla_no_such_flag=1" in proc.stderr
    assert proc.stdout == ""


def test_cli_prints_an_export_line_that_a_shell_can_eval():
    proc = subprocess.run([sys.executable, str(LAUNCH / "xla_flags.py"), "--preset=gpu_overlap"],
                          capture_output=True, text=True, timeout=60,
                          env=dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=8"))
    assert proc.returncode == 0
    out = subprocess.run(["bash", "-c", proc.stdout + '\necho "$XLA_FLAGS"'], capture_output=True,
                         text=True, timeout=60).stdout.split()
    assert out[0] == "--xla_force_host_platform_device_count=8"
    assert "--xla_gpu_enable_latency_hiding_scheduler=true" in out


@pytest.mark.parametrize("script", ["local.sh", "slurm.sbatch", "tpu_pod.sh"])
def test_scripts_parse_and_print_usage(script):
    assert subprocess.run(["bash", "-n", str(LAUNCH / script)]).returncode == 0
    proc = subprocess.run(["bash", str(LAUNCH / script)], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2 and "usage:" in proc.stderr


def _fake(bin_dir: Path, name: str) -> Path:
    """A stand-in for `name` that records its arguments (and XLA_FLAGS) and succeeds."""
    log = bin_dir / f"{name}.log"
    script = bin_dir / name
    script.write_text(f'#!/usr/bin/env bash\nprintf "%s\\n" "$@" > {shlex.quote(str(log))}\n'
                      f'echo "XLA_FLAGS=$XLA_FLAGS" >> {shlex.quote(str(log))}\n')
    script.chmod(0o755)
    return log


def test_local_launcher_dry_run(tmp_path):
    env = dict(os.environ, DRY_RUN="1", PYTHON=sys.executable, XLA_PRESET="gpu_overlap")
    proc = subprocess.run(["bash", str(LAUNCH / "local.sh"), "configs/tiny.py", str(tmp_path / "w"),
                           "--config.train.steps=2"], capture_output=True, text=True, env=env,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert "--xla_gpu_enable_latency_hiding_scheduler=true" in proc.stdout
    assert "-m llama_jax.train --config=configs/tiny.py" in proc.stdout
    assert "--config.train.steps=2" in proc.stdout
    bad = subprocess.run(["bash", str(LAUNCH / "local.sh"), "configs/tiny.py", str(tmp_path / "w")],
                         capture_output=True, text=True, timeout=300,
                         env=dict(env, XLA_FLAGS="--xla_no_such_flag=1"))
    assert bad.returncode == 1 and "--xla_no_such_flag=1" in bad.stderr


def test_slurm_script_checks_flags_and_runs_srun(tmp_path):
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    log = _fake(bin_dir, "srun")
    env = dict(os.environ, PATH=f"{bin_dir}:{os.environ['PATH']}", PYTHON=sys.executable,
               SLURM_SUBMIT_DIR=str(REPO), SLURM_JOB_ID="42", SLURM_JOB_NUM_NODES="2")
    proc = subprocess.run(["bash", str(LAUNCH / "slurm.sbatch"), "configs/llama.py:7b", "/runs/7b",
                           "--config.train.grad_accum_steps=4"], capture_output=True, text=True,
                          env=env, timeout=300, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    args = log.read_text().splitlines()
    assert args[:2] == ["--kill-on-bad-exit=1", "--export=ALL"]
    assert args[2:7] == [sys.executable, "-m", "llama_jax.train", "--config=configs/llama.py:7b",
                         "--workdir=/runs/7b"]
    assert "--config.train.grad_accum_steps=4" in args
    assert "--xla_gpu_enable_latency_hiding_scheduler=true" in args[-1]
    header = (LAUNCH / "slurm.sbatch").read_text()
    assert "#SBATCH --signal=TERM@" in header and "#SBATCH --requeue" in header


def test_tpu_pod_script_runs_on_all_workers(tmp_path):
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    log = _fake(bin_dir, "gcloud")
    env = dict(os.environ, PATH=f"{bin_dir}:{os.environ['PATH']}", SKIP_SYNC="1")
    proc = subprocess.run(["bash", str(LAUNCH / "tpu_pod.sh"), "my-tpu", "us-central2-b",
                           "configs/llama.py:7b", "/mnt/gcs/runs/7b", "--config.mesh.tensor=4"],
                          capture_output=True, text=True, env=env, timeout=120)
    assert proc.returncode == 0, proc.stderr
    args = log.read_text().splitlines()
    assert args[:5] == ["compute", "tpus", "tpu-vm", "ssh", "my-tpu"]
    assert "--worker=all" in args and "--zone=us-central2-b" in args
    command = args[args.index("--command") + 1]
    assert "python3 -m llama_jax.train --config=configs/llama.py:7b --workdir=/mnt/gcs/runs/7b" in command
    assert "--config.mesh.tensor=4" in command and "--xla_tpu_enable_async_collective_fusion=true" in command


def test_cpu_preset_is_what_the_commands_apply_and_is_known():
    from llama_jax import cpu_flags

    assert xf.PRESETS["cpu"] == ("XLA_FLAGS", cpu_flags.CPU_FLAGS)
    assert xf.unknown_flags("XLA_FLAGS", " ".join(cpu_flags.CPU_FLAGS)) == []


def test_cpu_flags_apply_only_on_the_cpu_and_never_over_the_users():
    from llama_jax import cpu_flags

    env = {"JAX_PLATFORMS": "cpu", "XLA_FLAGS": "--xla_force_host_platform_device_count=2"}
    assert cpu_flags.apply(env)
    assert env["XLA_FLAGS"] == ("--xla_force_host_platform_device_count=2 "
                                + " ".join(cpu_flags.CPU_FLAGS))
    assert not cpu_flags.apply(env)  # already there: not twice
    mine = {"JAX_PLATFORMS": "cpu", "XLA_FLAGS": "--xla_cpu_experimental_ynn_fusion_type=dot,reduce"}
    assert not cpu_flags.apply(mine) and mine["XLA_FLAGS"].endswith("dot,reduce")  # the user's wins
    gpu = {"JAX_PLATFORMS": "cuda"}
    assert not cpu_flags.apply(gpu) and "XLA_FLAGS" not in gpu
    off = {"JAX_PLATFORMS": "cpu", cpu_flags.OFF_ENV: "0"}
    assert not cpu_flags.apply(off) and "XLA_FLAGS" not in off


@pytest.mark.parametrize("preset", [True, False])
def test_the_train_cli_compiles_with_the_cpu_preset(preset):
    """A CLI that asks for the preset (train, eval) gets it in XLA_FLAGS before its
    backend starts: its compiled softmax sum has no YNNPACK reduction fusion; one
    that does not (generate, serve) compiles with XLA's defaults."""
    code = ("import os, sys; sys.argv = ['x', '--helpshort']\n"
            "from llama_jax import cli\n"
            "def main(argv): pass\n"
            f"try:\n    cli.run_cli(main, cpu_preset={preset})\nexcept SystemExit:\n    pass\n"
            "import jax, jax.numpy as jnp\n"
            "x = jnp.ones((8, 4, 256, 256))\n"
            "text = jax.jit(lambda a: (a * a).sum(-1)).lower(x).compile().as_text()\n"
            "print('FLAGS', os.environ.get('XLA_FLAGS', ''), 'YNN', 'ynn' in text)\n")
    env = {k: v for k, v in os.environ.items() if k not in ("XLA_FLAGS", "LLAMA_JAX_CPU_FLAGS")}
    out = subprocess.run([sys.executable, "-c", code], env=dict(env, JAX_PLATFORMS="cpu"),
                         capture_output=True, text=True, timeout=120).stdout
    from llama_jax import cpu_flags
    assert (cpu_flags.CPU_FLAGS[0] in out) == preset and f"YNN {not preset}" in out, out
