"""The GitHub stages: licence, file quality, licence headers, and exact file dedup over shards."""

import gzip
import importlib.util
import json
import os

import pytest
from datatrove.data import Document
from datatrove.executor import LocalPipelineExecutor
from datatrove.pipeline.base import PipelineStep
from datatrove.pipeline.readers.base import BaseDiskReader

from llama_jax.errors import ConfigError
from llama_jax.prepare import exact_dedup, github, stage

MIT_HEADER = """/*
 * Copyright (c) 2020 Some Author
 *
 * Permission is hereby granted, free of charge, to any person obtaining a copy
 * of this software, to deal in the Software without restriction.
 */
"""
CODE = "int add(int a, int b) {\n    return a + b;\n}\n"


def _build(name, **overrides):
    cfg = stage.default_config(name)
    for key, value in overrides.items():
        cfg[key] = value
    return stage.build(name, cfg, stage.StageEnv(name=name, work_dir="/tmp/unused", tasks=1))


def _run(built, docs):
    flow = iter(docs)
    for step in built.steps:
        flow = step.run(flow)
    return list(flow)


def _doc(text, **metadata):
    return Document(text=text, id=str(hash(text)), metadata=metadata)


def test_license_filter_keeps_apache_bsd_mit_and_counts_the_rest():
    built = _build("github_license")
    docs = [_doc("a", license="apache-2.0"), _doc("b", license="MIT"), _doc("c", license="bsd-3-clause"),
            _doc("d", license="bsd-2-clause"), _doc("e", license="gpl-3.0"), _doc("f"), _doc("g", license=""),
            _doc("h", license=["mit", "apache-2.0"]), _doc("i", license=["mit", "gpl-2.0"])]
    out = _run(built, docs)
    assert [d.text for d in out] == ["a", "b", "c", "d", "h"]
    stats = built.steps[0].stats
    assert stats["dropped_no_license"].total == 2 and stats["dropped_license_not_allowed"].total == 2


def test_license_config_errors():
    with pytest.raises(ConfigError, match="allowed"):
        _build("github_license", allowed=())
    with pytest.raises(ConfigError, match="field"):
        _build("github_license", field="")


def test_line_stats_by_hand():
    longest, mean, alnum = github.line_stats("ab\ncdef\n")
    assert (longest, mean) == (4, 3.0) and alnum == pytest.approx(6 / 8)


@pytest.mark.parametrize("text,reason", [
    ("x = 1\n" + "y" * 1001 + "\n", "max_line_length"),               # one line over 1000
    (("z" * 150 + "\n") * 10, "mean_line_length"),                     # mean 150 > 100
    ("# ---- ==== ++++ ----\n" * 5 + "a1\n", "alnum_fraction"),         # mostly symbols
    ("   \n\n", "empty"),
])
def test_quality_filter_drops_by_the_redpajama_thresholds(text, reason):
    built = _build("github_quality")
    assert [d.text for d in _run(built, [_doc(text), _doc(CODE)])] == [CODE]
    assert built.steps[0].stats[f"dropped_{reason}"].total == 1


def test_quality_thresholds_are_the_published_ones_and_code_passes():
    cfg = github.default_config_github_quality()
    assert (cfg.max_line_length, cfg.mean_line_length, cfg.min_alnum_fraction) == (1000, 100.0, 0.25)
    assert len(_run(_build("github_quality"), [_doc(CODE), _doc("y" * 1000 + "\n" + "z\n" * 10)])) == 2
    with pytest.raises(ConfigError, match="min_alnum_fraction"):
        _build("github_quality", min_alnum_fraction=2.0)


@pytest.mark.parametrize("header,kept_head", [
    (MIT_HEADER, ""),
    ("// SPDX-License-Identifier: Apache-2.0\n// Copyright 2021 Foo Inc.\n\n", ""),
    ("#!/usr/bin/env python\n# Copyright 2019 Bar\n# Licensed under the MIT License.\n\n", "#!/usr/bin/env python\n"),
    ("<!-- Licensed under the BSD 3-Clause license -->\n", ""),
    ("/* Copyright A */\n/* Licensed under the Apache License, Version 2.0 */\n", ""),
])
def test_license_headers_are_stripped(header, kept_head):
    text, removed = github.strip_license_header(header + CODE)
    assert text == kept_head + CODE and removed >= 1


def test_c_preprocessor_lines_are_not_comments():
    text = "#define LICENSE_CHECK 1\n#include <stdio.h>\n" + CODE
    assert github.strip_license_header(text) == (text, 0)
    assert github.strip_license_header(MIT_HEADER + text) == (text, 1)


def test_a_plain_leading_comment_is_kept():
    text = "// Adds two numbers.\n" + CODE
    assert github.strip_license_header(text) == (text, 0)
    text = CODE + "/* Copyright later in the file stays */\n"
    assert github.strip_license_header(text) == (text, 0)


def test_boilerplate_stage_counts_and_drops_files_left_empty():
    built = _build("github_boilerplate")
    out = _run(built, [_doc(MIT_HEADER + CODE), _doc(MIT_HEADER), _doc(CODE)])
    assert [d.text for d in out] == [CODE, CODE]
    stats = built.steps[0].stats
    assert stats["license_header_removed"].total == 2 and stats["dropped_empty_after_boilerplate"].total == 1


class _JsonlReader(BaseDiskReader):
    """datatrove's JsonlReader needs orjson (not installed): the same with json."""

    def read_file(self, filepath):
        with self.data_folder.open(filepath, "rt", compression="gzip") as f:
            for i, line in enumerate(f):
                yield self.get_document_from_dict(json.loads(line), filepath, i)


class _JsonlWriter(PipelineStep):
    def __init__(self, folder):
        super().__init__()
        self.folder = folder

    def run(self, data, rank=0, world_size=1):
        docs = list(data)
        if docs:
            with gzip.open(os.path.join(self.folder, f"{rank}.jsonl.gz"), "wt") as f:
                f.writelines(json.dumps({"id": d.id, "text": d.text}) + "\n" for d in docs)
        return
        yield


def _write_shards(folder, shards):
    os.makedirs(folder, exist_ok=True)
    for i, texts in enumerate(shards):
        with gzip.open(os.path.join(folder, f"in_{i}.jsonl.gz"), "wt") as f:
            for j, t in enumerate(texts):
                f.write(json.dumps({"text": t, "id": f"{i}-{j}"}) + "\n")


@pytest.mark.parametrize("finder_tasks", [1, 3])
def test_exact_dedup_keeps_first_occurrence_over_all_shards(tmp_path, finder_tasks):
    shards = [["a", "b", "a", "c"], ["b", "d", "a"], ["e", "c", "d", "f"]]
    _write_shards(tmp_path / "in", shards)
    work, out = str(tmp_path / "work"), str(tmp_path / "out")
    cfg = exact_dedup.default_config()
    cfg.finder_tasks = finder_tasks
    built = exact_dedup.build(cfg, stage.StageEnv(name="exact_dedup", work_dir=work, tasks=3))

    def reader():
        return _JsonlReader(str(tmp_path / "in"), glob_pattern="*.jsonl.gz")

    for n, p in enumerate(built.index_passes):
        steps = ([reader()] if p.reads_documents else []) + list(p.steps)
        LocalPipelineExecutor(steps, tasks=p.tasks or 3, workers=1, logging_dir=f"{work}/logs{n}").run()
    os.makedirs(out)
    LocalPipelineExecutor([reader(), *built.steps, _JsonlWriter(out)],
                          tasks=3, workers=1, logging_dir=f"{work}/logs_final").run()
    kept = {}
    for name in sorted(os.listdir(out)):
        with gzip.open(os.path.join(out, name), "rt") as f:
            kept[name] = [json.loads(line)["id"] for line in f]
    # Reference: the first occurrence of each text in (shard, index) order.
    seen, expected = set(), {}
    for i, texts in enumerate(shards):
        expected[f"{i}.jsonl.gz"] = [f"{i}-{j}" for j, t in enumerate(texts) if not (t in seen or seen.add(t))]
    assert kept == {k: v for k, v in expected.items() if v}
    with open(f"{work}/logs_final/stats.json") as f:
        merged = json.load(f)
    dropped = [s["stats"].get("dropped_duplicate", 0) for s in merged if "exact dedup" in s["name"]]
    assert sum(d if isinstance(d, int) else d["total"] for d in dropped) == 5


def test_exact_dedup_hash_is_sha1():
    import hashlib
    assert exact_dedup.content_hash("x") == hashlib.sha1(b"x").digest()
    with pytest.raises(ConfigError, match="finder_tasks"):
        _build("exact_dedup", finder_tasks=0)


def test_config_file_runs_the_four_stages():
    path = os.path.join(os.path.dirname(__file__), "..", "configs", "prepare", "github.py")
    spec = importlib.util.spec_from_file_location("github_config", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    cfg = module.get_config()
    assert cfg.stages == ("github_license", "github_quality", "github_boilerplate", "exact_dedup")
    assert cfg.github_license.allowed == github.ALLOWED_LICENSES and cfg.source == "github"
