"""The preparation pipeline: stages in order, a disabled stage skipped, per-stage stats,
output the training sources read, the same output on the local executor and a
real local Ray cluster, a Slurm dry run, and the CLI."""

import importlib.util
import json
import os
import subprocess
import sys

import prepare_helpers as ph
import pytest

from llama_jax.data.sources import SourceSpec, build_source
from llama_jax.errors import ConfigError
from llama_jax.prepare import pipeline

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BOILERPLATE = "Subscribe to our newsletter for weekly updates."
AUTHORS = ["Ada", "Brook", "Cyril", "Dana", "Emil", "Farah"]


def _inputs(folder, files=3):
    """`files` shards of 3 English pages (unique lines + a shared boilerplate line)
    and one French or German page."""
    for i in range(files):
        records = [{"text": f"{ph.ENGLISH[j]} Reported by {AUTHORS[i]}.\n{BOILERPLATE}",
                    "url": f"https://site{i}.example/{j}"} for j in range(3)]
        records.append({"text": f"{ph.FRENCH if i % 2 else ph.GERMAN} {AUTHORS[i]}"})
        ph.write_jsonl(os.path.join(folder, f"part{i}.jsonl"), records)
    return os.path.join(folder, "*.jsonl")


def test_stages_run_in_order_with_stats(tmp_path):
    cfg = ph.config(_inputs(tmp_path / "in"), str(tmp_path / "out"))
    summary = pipeline.run(cfg, print_table=False)
    assert [r["stage"] for r in summary["stages"]] == ["input", "line_dedup", "language"]
    rows = {r["stage"]: r for r in summary["stages"]}
    assert rows["input"]["documents_out"] == 12 and rows["input"]["dropped"] == {}
    assert rows["line_dedup"]["documents_in"] == 12
    # the language stage sees what line dedup let through, bytes fall along the way
    assert rows["language"]["documents_in"] == rows["line_dedup"]["documents_out"] == 12
    assert rows["language"]["documents_out"] == 9
    assert rows["language"]["dropped"] == {"language_not_kept": 3}
    assert rows["line_dedup"]["bytes_out"] < rows["line_dedup"]["bytes_in"]
    out = ph.read_output(str(tmp_path / "out"))
    assert len(out) == 9 and not any(BOILERPLATE in r["text"] for r in out)
    assert all(r["metadata"]["url"].startswith("https://") for r in out)
    # the training pipeline reads the output folder as a JSONL source
    source = build_source(SourceSpec(name="cc", kind="jsonl", path=str(tmp_path / "out/data")))
    assert len(source) == 9 and source[0] == out[0]["text"]


def test_disabled_stage_is_skipped(tmp_path):
    cfg = ph.config(_inputs(tmp_path / "in"), str(tmp_path / "out"))
    cfg.line_dedup.enabled = False
    summary = pipeline.run(cfg, print_table=False)
    assert [r["stage"] for r in summary["stages"]] == ["input", "language"]
    assert not os.path.exists(tmp_path / "out/work/line_dedup")
    out = ph.read_output(str(tmp_path / "out"))
    assert sum(BOILERPLATE in r["text"] for r in out) == 9


def test_array_record_output_reads_as_a_source(tmp_path):
    cfg = ph.config(_inputs(tmp_path / "in", files=1), str(tmp_path / "out"), output_format="array_record")
    pipeline.run(cfg, print_table=False)
    source = build_source(SourceSpec(name="cc", kind="array_record", record_format="json",
                                     path=str(tmp_path / "out/data/*.array_record")))
    assert len(source) == 3 and ph.ENGLISH[0] in source[0]


def test_rerun_with_other_options_is_refused(tmp_path):
    cfg = ph.config(_inputs(tmp_path / "in", files=1), str(tmp_path / "out"))
    pipeline.run(cfg, print_table=False)
    cfg.language.threshold = 0.9
    with pytest.raises(ConfigError, match="holds a run with other options .*language"):
        pipeline.run(cfg, print_table=False)
    cfg.language.threshold = 0.5
    cfg.workers = 2  # how it runs may change
    pipeline.run(cfg, print_table=False)


@pytest.mark.multiprocess
def test_local_and_ray_give_identical_output(tmp_path):
    import ray  # noqa: F401 - in the test extra; a missing ray is a failure, not a skip
    glob = _inputs(tmp_path / "in", files=2)
    local = pipeline.run(ph.config(glob, str(tmp_path / "local"), workers=2), print_table=False)
    on_ray = pipeline.run(ph.config(glob, str(tmp_path / "ray"), executor="ray", workers=2,
                                    mem_per_cpu_gb=0.25), print_table=False)
    assert ph.shard_bytes(str(tmp_path / "ray")) == ph.shard_bytes(str(tmp_path / "local"))
    assert len(ph.shard_bytes(str(tmp_path / "local"))) == 2
    assert on_ray["stages"] == local["stages"]


def test_slurm_dry_run_writes_the_sbatch_scripts(tmp_path):
    cfg = ph.config(_inputs(tmp_path / "in", files=2), str(tmp_path / "out"), executor="slurm",
                    slurm_dry_run=True)
    result = pipeline.run(cfg, print_table=False)
    assert result["dry_run"] and len(result["scripts"]) == 4  # flow, 2 dedup passes, flow
    for path in result["scripts"]:
        script = open(path).read()
        assert "#SBATCH --partition=PARTITION" in script and "launch_pickled_pipeline" in script
    # each job after the first waits for the one before (sbatch --dependency=afterok:...)
    jobs = [s for s in result["submitted"] if "merge_stats" not in s["script"]]
    assert len(jobs) == 4 and not any("--dependency" in a for a in jobs[0]["sbatch_args"])
    assert all(any(a.startswith("--dependency=afterok:DRYRUN") for a in j["sbatch_args"]) for j in jobs[1:])
    assert not os.path.exists(tmp_path / "out/data")


def _cli(*args):
    env = dict(os.environ, PYTHONPATH=REPO, JAX_PLATFORMS="cpu")
    return subprocess.run([sys.executable, "-m", "llama_jax.prepare", *args], capture_output=True,
                          text=True, env=env, cwd=REPO, timeout=120)


@pytest.mark.multiprocess
def test_cli_runs_and_reports_user_errors(tmp_path):
    glob = _inputs(tmp_path / "in", files=1)
    config = "--config=configs/prepare/ccnet.py:line_dedup,language"
    done = _cli(config, f"--config.input={glob}", f"--config.output={tmp_path / 'out'}",
                "--config.workers=1")
    assert done.returncode == 0, done.stderr[-2000:]
    assert "| language | 4 | 3 |" in done.stdout
    assert json.load(open(tmp_path / "out/stats.json"))["stages"][-1]["documents_out"] == 3
    bad = _cli(config, f"--config.input={glob}", f"--config.output={tmp_path / 'o2'}",
               "--config.language.languages=('xx',)")
    assert bad.returncode == 2 and "error: --config.language.languages: 'xx'" in bad.stderr
    assert not os.path.exists(tmp_path / "o2/logs")  # refused before any executor started
    typo = _cli(config, "--config.line_dedupe.enabled=False")
    assert typo.returncode == 2 and "did you mean 'line_dedup'" in typo.stderr


def test_ccnet_config_loads_all_or_a_subset_of_its_stages():
    from llama_jax.train.config_file import load_config_file

    cfg = load_config_file(os.path.join(REPO, "configs/prepare/ccnet.py:language,line_dedup"))
    assert cfg.stages == ("line_dedup", "language") and cfg.source == "commoncrawl"
    assert cfg.language.threshold == 0.5 and cfg.language.languages == ("en",)
    with pytest.raises(ConfigError, match=r"\['minhash'\] not among the CCNet stages"):
        load_config_file(os.path.join(REPO, "configs/prepare/ccnet.py:line_dedup,minhash"))
    if all(importlib.util.find_spec(f"llama_jax.prepare.{m}") for m in ("perplexity", "reference")):
        full = load_config_file(os.path.join(REPO, "configs/prepare/ccnet.py"))
        assert full.stages == ("line_dedup", "language", "perplexity", "reference")
