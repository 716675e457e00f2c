"""Line dedup (stage ``line_dedup``): cc_net's normalisation and hash, and the rule
"every line whose hash occurs more than once in the group is removed, first
occurrence included", checked against an independent re-computation."""

import collections
import hashlib
import json
import os
import struct
import unicodedata

import numpy as np
import prepare_helpers as ph
import pytest

from llama_jax.errors import DataError
from llama_jax.prepare import pipeline
from llama_jax.prepare.line_dedup import HashMerger, doc_hashes, line_hash, normalize_for_dedup


@pytest.mark.parametrize("line, expected", [
    ("  Hello World!  ", "hello world!"),               # strip + lower; ASCII punctuation stays
    ("Order 66 at 10:45", "order 00 at 00:00"),          # every digit -> 0
    ("Prix：１２ euros", "prix00 euros"),                 # fullwidth colon removed; fullwidth digits -> 0
    ("«Bonjour» — dit-il…", "bonjour  dit-il"),          # cc_net's unicode punctuation removed
    ("“Quoted” ’tis", "quoted tis"),
    ("tab\there\x07bell\x85nel", "tabherebellnel"),      # C0 / C1 control characters removed
    ("   ", ""),
    ("", ""),
    ("ÉCOLE Straße", "école straße"),                    # accents are kept (cc_net's dedup keeps them)
])
def test_normalize_for_dedup_hand_cases(line, expected):
    assert normalize_for_dedup(line) == expected


def test_normalisation_follows_the_published_rule_on_many_characters():
    # The rule restated independently: strip, lower, unicode digits to 0, then drop
    # cc_net's punctuation table and the C0 (0-31) / C1 (127-159) controls.
    punct = set("，。、„”“«»１」「《》´∶：？！（）；–—．～’…━〈〉【】％►")
    controls = {chr(c) for c in [*range(32), *range(127, 160)]}

    def reference(s):
        s = s.strip().lower()
        s = "".join("0" if unicodedata.category(ch) == "Nd" else ch for ch in s)
        return "".join(ch for ch in s if ch not in punct and ch not in controls)

    rng = np.random.default_rng(0)
    alphabet = [chr(c) for c in range(0, 0x3100) if not 0xD800 <= c < 0xE000]
    for _ in range(300):
        s = "".join(rng.choice(alphabet, size=12))
        assert normalize_for_dedup(s) == reference(s), repr(s)


def test_hash_is_cc_nets_sha1_prefix():
    for line in ["Hello", "The year 2024.", "", "  «x»  "]:
        digest = hashlib.sha1(normalize_for_dedup(line).encode()).digest()
        assert line_hash(line) == struct.unpack("<Q", digest[:8])[0]
    hashes = doc_hashes("a 1\nb\n\nA 2")
    assert hashes.dtype == np.uint64 and hashes.shape == (4,)
    assert hashes[0] == hashes[3] == line_hash("a 9")
    assert hashes[2] == line_hash("")


def _reference_dedup(docs):
    """cc_net's rule restated: count normalised lines over all docs; keep lines seen once."""
    counts = collections.Counter(normalize_for_dedup(x) for d in docs for x in d.split("\n"))
    kept = []
    for d in docs:
        lines = [x for x in d.split("\n") if counts[normalize_for_dedup(x)] == 1]
        kept.append("\n".join(lines) if lines else None)
    return kept


def test_first_occurrence_included_across_shards(tmp_path):
    shard_a = ["Welcome to our site\nThe river rose by 3 metres overnight.\nShared footer line",
               "Only unique words here\nanother unique sentence",
               "Shared footer line\nSHARED FOOTER LINE"]
    shard_b = ["The river rose by 7 metres overnight.\nA line only in shard b",
               "Welcome to our site\nShared footer line",            # every line repeated: dropped
               "Repeated twice in one doc\nRepeated twice in one doc\nkept line of b"]
    ph.write_jsonl(str(tmp_path / "in/a.jsonl"), [{"text": t} for t in shard_a])
    ph.write_jsonl(str(tmp_path / "in/b.jsonl"), [{"text": t} for t in shard_b])
    cfg = ph.config(str(tmp_path / "in/*.jsonl"), str(tmp_path / "out"), stages=("line_dedup",))
    summary = pipeline.run(cfg, print_table=False)

    expected = [t for t in _reference_dedup(shard_a + shard_b) if t is not None]
    got = [r["text"] for r in ph.read_output(str(tmp_path / "out"))]
    assert got == expected
    assert "The river rose" not in " ".join(got)  # equal after digits -> 0, both copies gone
    assert got[0] == "Only unique words here\nanother unique sentence"
    row = ph.stage_row(summary, "line_dedup")
    assert row["documents_in"] == 6
    assert row["dropped"] == {"all_lines_duplicate": 3}
    assert row["documents_out"] == 3
    with open(tmp_path / "out/stats.json") as f:
        assert json.load(f)["stages"] == summary["stages"]
    duplicates = np.load(tmp_path / "out/work/line_dedup/duplicates.npy")
    assert duplicates.dtype == np.uint64 and np.all(np.diff(duplicates.astype(np.float64)) > 0)


def test_merger_refuses_missing_count_files(tmp_path):
    os.makedirs(tmp_path / "counts")
    np.savez(tmp_path / "counts/00000.npz", hashes=np.zeros(1, np.uint64), counts=np.ones(1, np.uint32))
    with pytest.raises(DataError, match="found 1 of 2 hash-count files"):
        list(HashMerger(str(tmp_path), tasks=2).run())
