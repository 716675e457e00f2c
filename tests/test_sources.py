"""Document sources: every kind, TFDS without TensorFlow, held-out split, bad input."""

import importlib
import json
import pickle
import sys

import pytest

from llama_jax.data import sources as S
from llama_jax.data.sources import DataError, SourceSpec


def _write_jsonl(path, rows, field="text"):
    path.write_text("".join(json.dumps({field: r, "id": i}) + "\n" for i, r in enumerate(rows)))
    return path


def _write_array_record(path, payloads):
    from array_record.python.array_record_module import ArrayRecordWriter

    writer = ArrayRecordWriter(str(path), "group_size:1")
    for p in payloads:
        writer.write(p)
    writer.close()
    return path


@pytest.fixture()
def text_dir(tmp_path):
    d = tmp_path / "texts"
    (d / "sub").mkdir(parents=True)
    (d / "b.txt").write_text("second\tdocument\n")
    (d / "a.txt").write_text("first document\n\n")
    (d / "sub" / "c.py").write_text("def c():\n    return 3\n")
    (d / ".hidden").write_text("ignored")
    (d / "empty.txt").write_text("  \n")
    return d


def test_text_folder_glob_and_file(text_dir):
    src = S.build_source(SourceSpec("t", "text", str(text_dir)))
    assert len(src) == 3  # sorted; hidden skipped; the empty file counted, not read
    assert [src[i] for i in range(3)] == ["first document\n\n", "second\tdocument\n", "def c():\n    return 3\n"]
    assert src.stats["empty"] == 1 and src.stats["skipped"] == 0
    assert len(S.build_source(SourceSpec("g", "text", str(text_dir / "**" / "*.py")))) == 1
    assert S.build_source(SourceSpec("f", "text", str(text_dir / "b.txt")))[0] == "second\tdocument\n"
    assert "b.txt" in src.location(1)
    with pytest.raises(IndexError):
        src[3]


def test_jsonl_field_and_blank_lines(tmp_path):
    path = _write_jsonl(tmp_path / "d.jsonl", ["one", "two ✓", "three"], field="body")
    with open(path, "a") as f:
        f.write("\n")  # a trailing blank line: an empty document, counted
    src = S.build_source({"name": "j", "kind": "jsonl", "path": str(path), "field": "body"})
    assert [src[i] for i in range(len(src))] == ["one", "two ✓", "three"]
    assert src.stats["empty"] == 1
    assert "line 2" in src.location(1)


def test_array_record_text_and_json(tmp_path):
    _write_array_record(tmp_path / "a.array_record", [b"alpha", "beta \u00e9".encode()])
    _write_array_record(tmp_path / "b.array_record", [json.dumps({"text": "gamma"}).encode()])
    src = S.build_source(SourceSpec("ar", "array_record", str(tmp_path / "a.array_record")))
    assert [src[0], src[1]] == ["alpha", "beta \u00e9"]
    js = S.build_source(SourceSpec("js", "array_record", str(tmp_path / "b.array_record"), record_format="json"))
    assert js[0] == "gamma"
    assert pickle.loads(pickle.dumps(src))[1] == "beta \u00e9"  # reopened lazily after pickling


def test_tfds_folder_dataset_reads_without_tensorflow(tmp_path, text_dir):
    """Build an array_record TFDS data set from a folder and read it back; TensorFlow is not installed."""
    with pytest.raises(ImportError):
        importlib.import_module("tensorflow")
    from llama_jax.data.tfds_builder import build_text_folder_dataset

    built = build_text_folder_dataset(str(text_dir), str(tmp_path / "tfds"), name="unit_texts")
    assert "array_record" in " ".join(p.name for p in (tmp_path / "tfds" / "unit_texts" / "1.0.0").iterdir())
    by_dir = S.build_source(SourceSpec("tf", "tfds", built))
    by_name = S.build_source(SourceSpec("tf", "tfds", "unit_texts", data_dir=str(tmp_path / "tfds")))
    expected = {"first document\n\n", "second\tdocument\n", "def c():\n    return 3\n"}
    assert {by_dir[i] for i in range(len(by_dir))} == expected  # the empty file was left out
    assert [by_name[i] for i in range(3)] == [by_dir[i] for i in range(3)]
    assert pickle.loads(pickle.dumps(by_dir))[0] == by_dir[0]
    assert "tensorflow" not in sys.modules
    with pytest.raises(DataError, match="cannot open TFDS data set"):
        S.build_source(SourceSpec("tf", "tfds", "no_such_set", data_dir=str(tmp_path / "tfds")))


@pytest.mark.parametrize("kind", ["text", "jsonl", "array_record"])
def test_missing_path_names_the_path(tmp_path, kind):
    with pytest.raises(DataError, match=r"does not exist") as e:
        S.build_source(SourceSpec("m", kind, str(tmp_path / "nowhere")))
    assert "nowhere" in str(e.value)


def test_empty_sources_are_errors(tmp_path):
    with pytest.raises(DataError, match="no files match"):
        S.build_source(SourceSpec("g", "text", str(tmp_path / "*.txt")))
    (tmp_path / "e").mkdir()
    with pytest.raises(DataError, match="holds no"):
        S.build_source(SourceSpec("e", "text", str(tmp_path / "e")))
    (tmp_path / "e" / "blank.txt").write_text("\n \n")
    with pytest.raises(DataError, match="has no documents.*1 empty"):
        S.build_source(SourceSpec("e", "text", str(tmp_path / "e")))
    (tmp_path / "x.jsonl").write_text("\n\n")
    with pytest.raises(DataError, match="has no documents"):
        S.build_source(SourceSpec("x", "jsonl", str(tmp_path / "x.jsonl")))
    _write_array_record(tmp_path / "z.array_record", [])
    with pytest.raises(DataError, match="has no documents"):
        S.build_source(SourceSpec("z", "array_record", str(tmp_path / "z.array_record")))


def test_bad_json_line_raise_or_counted_skip(tmp_path):
    path = tmp_path / "bad.jsonl"
    path.write_text('{"text": "ok"}\n{"text": broken\n{"other": "no text field"}\n{"text": "fine"}\n')
    with pytest.raises(DataError, match=r"bad\.jsonl line 2 is not valid JSON.*on_error='skip'"):
        S.build_source(SourceSpec("b", "jsonl", str(path)))
    src = S.build_source(SourceSpec("b", "jsonl", str(path), on_error="skip"))
    assert [src[i] for i in range(len(src))] == ["ok", "fine"]
    assert src.stats["skipped"] == 2
    assert any("line 3" in s and "no field 'text'" in s for s in src.stats["skipped_examples"])


def test_non_utf8_bytes_raise_or_counted_skip(tmp_path):
    d = tmp_path / "mixed"
    d.mkdir()
    (d / "good.txt").write_text("good text")
    (d / "latin1.txt").write_bytes("caf\u00e9".encode("latin-1"))
    with pytest.raises(DataError, match=r"latin1\.txt.*not valid UTF-8"):
        S.build_source(SourceSpec("u", "text", str(d)))
    src = S.build_source(SourceSpec("u", "text", str(d), on_error="skip"))
    assert len(src) == 1 and src.stats["skipped"] == 1

    jl = tmp_path / "u.jsonl"
    jl.write_bytes(b'{"text": "fine"}\n{"text": "caf\xe9"}\n')
    with pytest.raises(DataError, match=r"u\.jsonl line 2.*not valid UTF-8"):
        S.build_source(SourceSpec("uj", "jsonl", str(jl)))
    assert len(S.build_source(SourceSpec("uj", "jsonl", str(jl), on_error="skip"))) == 1

    # Records are decoded on read: the error names the record.
    _write_array_record(tmp_path / "u.array_record", [b"fine", b"caf\xe9"])
    ar = S.build_source(SourceSpec("ua", "array_record", str(tmp_path / "u.array_record")))
    assert ar[0] == "fine"
    with pytest.raises(DataError, match=r"record 1.*not valid UTF-8"):
        ar[1]


def test_source_spec_validation():
    with pytest.raises(DataError, match="kind"):
        SourceSpec("a", "parquet", "/x")
    with pytest.raises(DataError, match="weight"):
        SourceSpec("a", "text", "/x", weight=-1)
    with pytest.raises(DataError, match="weight"):
        SourceSpec("a", "text", "/x", weight=float("nan"))
    with pytest.raises(DataError, match="on_error"):
        SourceSpec("a", "text", "/x", on_error="ignore")
    with pytest.raises(DataError, match="path is empty"):
        SourceSpec("a", "text", "")
    with pytest.raises(DataError, match=r"unknown keys \['wieght'\]"):
        SourceSpec.from_dict({"name": "a", "kind": "text", "path": "/x", "wieght": 2})
    spec = SourceSpec("a", "jsonl", "/x", weight=2, field="body")
    assert SourceSpec.from_dict(spec.to_dict()) == spec
    assert S.source_from_arg("jsonl=/d/x.txt").kind == "jsonl"
    assert S.source_from_arg("/d/x.jsonl").kind == "jsonl"
    assert S.source_from_arg("/d/shard-*.array_record").kind == "array_record"
    assert S.source_from_arg("/d/folder").kind == "text"


class _Docs:
    name = "docs"

    def __init__(self, n):
        self.n = n

    def __len__(self):
        return self.n

    def __getitem__(self, i):
        return f"doc {i}"


@pytest.mark.parametrize("n", [1, 2, 7, 99, 100, 101, 1000, 12345])
def test_heldout_split_partitions_documents(n):
    train, held = S.split_heldout(_Docs(n), 0.01)
    got_train = [train.source_index(i) for i in range(len(train))]
    got_held = [held.source_index(i) for i in range(len(held))]
    assert sorted(got_train + got_held) == list(range(n))  # disjoint and complete
    assert got_train == sorted(got_train)
    if n >= 2:
        assert 1 <= len(held) <= max(1, round(n * 0.01) + 1)
    else:
        assert len(held) == 0
    train2, held2 = S.split_heldout(_Docs(n), 0.01)
    assert [held2.source_index(i) for i in range(len(held2))] == got_held  # deterministic


def test_shard_partitions_documents():
    src = _Docs(10)
    shards = [S.shard(src, p, 3) for p in range(3)]
    assert sorted(shards[p][i] for p in range(3) for i in range(len(shards[p]))) == sorted(
        f"doc {i}" for i in range(10))
    assert [len(s) for s in shards] == [4, 3, 3]
