"""The embedded instruction set: deterministic, three kinds, answers that are real text.

Function answers are the standard library's own source (they compile and
define the named function, checked against `inspect.getsource`); topic
answers come from `pydoc_data.topics`; both formats read back through the
SFT readers.
"""

import ast
import importlib
import inspect
import json
import subprocess
import sys
import textwrap
from pydoc_data.topics import topics

from llama_jax.data.sft import read_jsonl
from llama_jax.data.sft.embedded import build_instructions, ensure_instructions, write_instructions


def test_build_is_deterministic_and_has_every_kind(tmp_path):
    a, b = tmp_path / "a.jsonl", tmp_path / "b.jsonl"
    n = write_instructions(a)
    write_instructions(b)
    assert a.read_bytes() == b.read_bytes() and n > 150
    convs = build_instructions()
    kinds = {m[0]["content"].split()[0] for m in convs}
    assert kinds == {"Write", "Explain", "What"}
    assert all([x["role"] for x in m] == ["user", "assistant"] for m in convs)
    assert ensure_instructions(tmp_path).read_bytes() == a.read_bytes()


def test_answers_are_the_sources_text(tmp_path):
    convs = build_instructions()
    fn = next(m for m in convs if m[0]["content"].startswith("Write"))
    q = fn[0]["content"]
    name, module = q.split("`")[1], q.split("`")[3]
    src = fn[1]["content"]
    tree = ast.parse(src)
    assert isinstance(tree.body[0], ast.FunctionDef) and tree.body[0].name == name
    want = textwrap.dedent(inspect.getsource(getattr(importlib.import_module(module), name)))
    assert src == want.strip()
    topic = next(m for m in convs if m[0]["content"].startswith("Explain"))
    key = topic[0]["content"][len("Explain "):-len(" in Python.")]
    assert topics[key].strip().startswith(topic[1]["content"][:40])


def test_both_formats_read_back(tmp_path):
    for fmt in ("chat", "alpaca"):
        p = tmp_path / f"{fmt}.jsonl"
        n = write_instructions(p, fmt)
        got = list(read_jsonl(p, fmt))
        assert len(got) == n
        first = json.loads(p.read_text().splitlines()[0])
        assert ("messages" in first) == (fmt == "chat")


def test_cli_writes_the_file(tmp_path):
    out = tmp_path / "x.jsonl"
    proc = subprocess.run([sys.executable, "-m", "llama_jax.data.sft", f"--out={out}",
                           "--format=alpaca"], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "alpaca examples" in proc.stdout
    assert len(list(read_jsonl(out, "alpaca"))) > 150
