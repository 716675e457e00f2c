"""Bad input is a counted skip or a clear error before any work; a killed run, started
again, redoes no finished task and ends with the uninterrupted run's output."""

import gzip
import json
import os
import signal
import subprocess
import sys
import time

import prepare_helpers as ph
import pytest

from llama_jax.errors import ConfigError
from llama_jax.prepare import pipeline, readers

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_bad_records_are_counted_skips_never_a_crash(tmp_path):
    good = [{"text": f"{t} Number {i}."} for i, t in enumerate(ph.ENGLISH)]
    ph.write_jsonl(str(tmp_path / "in/clean.jsonl"), good[:2])
    ph.write_jsonl(str(tmp_path / "in/mixed.jsonl"), [
        good[2],
        b"\xff\xfe not utf-8 \x80\n",
        b"{this is not json\n",
        b"[1, 2, 3]\n",
        {"body": "no text field here"},
        {"text": 42},
        {"text": "   "},
        b"\n",                                   # a blank line is not a record
        good[3],
    ])
    # a gzip file cut in the middle: the lines before the cut are read, then one counted skip
    whole = gzip.compress(b"".join((json.dumps(g) + "\n").encode() for g in good[4:] * 200))
    (tmp_path / "in/truncated.jsonl.gz").write_bytes(whole[: len(whole) // 2])
    ph.write_jsonl(str(tmp_path / "in/fine.jsonl.gz"), good[4:5], gz=True)

    cfg = ph.config(str(tmp_path / "in/*"), str(tmp_path / "out"), stages=("language",))
    summary = pipeline.run(cfg, print_table=False)
    row = ph.stage_row(summary, "input")
    skipped = {f"skipped_{r}": 1 for r in (readers.NOT_UTF8, readers.NOT_JSON, readers.NOT_AN_OBJECT,
                                         readers.NO_TEXT_FIELD, readers.TEXT_NOT_STRING,
                                         readers.EMPTY_TEXT, readers.CORRUPT_GZIP)}
    assert row["dropped"] == skipped
    with open(tmp_path / "out/stats.json") as f:
        assert ph.stage_row(json.load(f), "input")["dropped"] == skipped
    texts = [r["text"] for r in ph.read_output(str(tmp_path / "out"))]
    for g in good[:5]:
        assert g["text"] in texts
    assert 0 < len(texts) - 5 < 400  # the truncated file gave its first lines, not all 400
    assert row["documents_out"] == len(texts) == row["documents_in"] - len(skipped)


@pytest.mark.parametrize("pattern, match", [
    ("", "--config.input is empty"),
    ("{tmp}/nothing/*.jsonl", "matches no file"),
])
def test_empty_input_glob_is_an_error_before_any_work(tmp_path, pattern, match):
    cfg = ph.config(pattern.format(tmp=tmp_path), str(tmp_path / "out"))
    with pytest.raises(ConfigError, match=match):
        pipeline.run(cfg, print_table=False)
    assert not os.path.exists(tmp_path / "out")


def test_missing_model_and_unknown_language_fail_before_any_work(tmp_path):
    ph.write_jsonl(str(tmp_path / "in/a.jsonl"), [{"text": ph.ENGLISH[0]}])
    cfg = ph.config(str(tmp_path / "in/a.jsonl"), str(tmp_path / "out"))
    cfg.language.model = str(tmp_path / "lid.176.bin")
    with pytest.raises(ConfigError, match="lid.176.bin: no such file"):
        pipeline.run(cfg, print_table=False)
    cfg.language.model = ""
    cfg.language.languages = ("english",)
    with pytest.raises(ConfigError, match="'english' is not a language of the model"):
        pipeline.run(cfg, print_table=False)
    assert not os.path.exists(tmp_path / "out")
    cfg.language.languages = ("en",)
    cfg.output_format = "parquet"
    with pytest.raises(ConfigError, match="output_format='parquet'"):
        pipeline.run(cfg, print_table=False)


_RUN = """
import sys
sys.path.insert(0, {tests!r})
import prepare_helpers as ph
from llama_jax.prepare import pipeline
ph.register_hang_stage()
cfg = ph.config({glob!r}, {out!r}, stages=("line_dedup", "hang", "language"))
cfg.hang.flag = {flag!r}
pipeline.run(cfg, print_table=False)
"""


def _hang_config(glob, out, flag):
    ph.register_hang_stage()
    cfg = ph.config(glob, out, stages=("line_dedup", "hang", "language"))
    cfg.hang.flag = flag
    return cfg


@pytest.mark.multiprocess
def test_killed_run_resumes_without_redoing_finished_tasks(tmp_path):
    for i in range(4):
        names = (["Ann", "Bo", "Cy", "Di"][i:] + ["Ed"] * i)[:4]
        texts = [f"{t} Told by {name}." for t, name in zip(ph.ENGLISH[:4], names, strict=True)]
        if i == 2:
            texts[1] += " HANG"
        ph.write_jsonl(str(tmp_path / f"in/{i}.jsonl"), [{"text": t} for t in texts])
    glob, out, flag = str(tmp_path / "in/*.jsonl"), str(tmp_path / "killed"), str(tmp_path / "hung")
    env = dict(os.environ, PYTHONPATH=REPO, JAX_PLATFORMS="cpu")
    script = _RUN.format(tests=os.path.join(REPO, "tests"), glob=glob, out=out, flag=flag)
    proc = subprocess.Popen([sys.executable, "-c", script], env=env, start_new_session=True,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.time() + 120
        while not os.path.exists(flag):
            assert proc.poll() is None and time.time() < deadline, "the run ended before hanging"
            time.sleep(0.2)
        os.killpg(proc.pid, signal.SIGKILL)  # mid-way: task 2 of the last segment is running
    finally:
        proc.wait(timeout=30)
    last = os.path.join(out, "logs", "03_flow_to_output")
    assert sorted(os.listdir(os.path.join(last, "completions"))) == ["00000", "00001"]
    assert not os.path.exists(os.path.join(out, "stats.json"))
    finished = [os.path.join(last, "stats", "00000.json"), os.path.join(out, "data", "00001.jsonl"),
                os.path.join(out, "work", "line_dedup", "duplicates.npy")]
    before = {p: os.stat(p).st_mtime_ns for p in finished}

    resumed = pipeline.run(_hang_config(glob, out, flag), print_table=False)
    assert {p: os.stat(p).st_mtime_ns for p in finished} == before  # not redone
    fresh = pipeline.run(_hang_config(glob, str(tmp_path / "fresh"), flag), print_table=False)
    assert ph.shard_bytes(out) == ph.shard_bytes(str(tmp_path / "fresh"))
    assert len(ph.shard_bytes(out)) == 4
    assert resumed["stages"] == fresh["stages"]


def test_unknown_input_format_is_an_error(tmp_path):
    ph.write_jsonl(str(tmp_path / "in/a.jsonl"), [{"text": ph.ENGLISH[0]}])
    cfg = ph.config(str(tmp_path / "in/a.jsonl"), str(tmp_path / "out"), input_format="warc")
    with pytest.raises(ConfigError, match="input_format='warc' is not one of jsonl"):
        pipeline.run(cfg, print_table=False)
