"""The Books stage: MinHash LSH removes a book with > 90% overlap and keeps one with 50%."""

import importlib.util
import os
import pickle
import random
import string

import pytest
from datatrove.data import Document
from datatrove.executor import LocalPipelineExecutor
from datatrove.pipeline.base import PipelineStep

from llama_jax.errors import ConfigError
from llama_jax.prepare import minhash, stage


def _words(rng, n):
    return [rng.choice(VOCAB) for _ in range(n)]


VOCAB = ["".join(random.Random(i).choice(string.ascii_lowercase) for _ in range(7)) for i in range(5000)]


def _shingles(text, n=5):
    words = text.split()
    return {tuple(words[i:i + n]) for i in range(len(words) - n + 1)}


def _jaccard(a, b):
    sa, sb = _shingles(a), _shingles(b)
    return len(sa & sb) / len(sa | sb)


def _dedup(shards, work_dir, cfg=None):
    """Runs the stage's three passes and its filter over `shards` (lists of Documents)."""
    cfg = cfg or minhash.default_config()
    built = minhash.build(cfg, stage.StageEnv(name="minhash", work_dir=str(work_dir), tasks=len(shards)))
    signature, buckets, cluster = (p.steps[0] for p in built.index_passes)
    for rank, docs in enumerate(shards):
        signature.run(iter(docs), rank, len(shards))
    for rank in range(built.index_passes[1].tasks):
        buckets.run(None, rank, built.index_passes[1].tasks)
    cluster.run(None, 0, 1)
    kept = [[d.id for d in built.steps[0].run(iter(docs), rank, len(shards))] for rank, docs in enumerate(shards)]
    return kept, built.steps[0].stats


def test_lsh_threshold_sits_at_ninety_percent():
    cfg = minhash.default_config()
    b, r = cfg.num_buckets, cfg.hashes_per_bucket
    assert minhash.lsh_threshold(b, r) == pytest.approx(0.90, abs=0.005)
    # Hand computation of 1 - (1 - J^r)^b.
    assert minhash.pair_probability(0.95, b, r) == pytest.approx(1 - (1 - 0.95**25) ** 14)
    assert minhash.pair_probability(0.95, b, r) > 0.98
    assert minhash.pair_probability(0.5, b, r) < 1e-6


def test_95_percent_overlap_removed_50_percent_kept(tmp_path):
    rng = random.Random(0)
    base = _words(rng, 6000)
    book = " ".join(base)
    near = " ".join(base + _words(rng, 300))              # the book plus 5% more
    half = " ".join(base[:4000] + _words(rng, 2000))       # shares two thirds of its text
    other = " ".join(_words(rng, 6000))
    assert _jaccard(book, near) > 0.95
    assert _jaccard(book, half) == pytest.approx(0.5, abs=0.01)
    shards = [[Document(text=book, id="book"), Document(text=other, id="other")],
              [Document(text=near, id="near"), Document(text=half, id="half")]]
    kept, stats = _dedup(shards, tmp_path)
    assert kept == [["book", "other"], ["half"]]
    assert stats["dropped_near_duplicate"].total == 1


class _Shards(PipelineStep):
    """Task ``rank`` yields ``shards[rank]`` (an in-memory reader)."""

    def __init__(self, shards):
        super().__init__()
        self.shards = shards

    def run(self, data=None, rank=0, world_size=1):
        yield from (Document(text=d.text, id=d.id) for d in self.shards[rank])


class _Collect(PipelineStep):
    def __init__(self, folder):
        super().__init__()
        self.folder = folder

    def run(self, data, rank=0, world_size=1):
        with open(os.path.join(self.folder, f"{rank}.ids"), "w") as f:
            f.writelines(d.id + "\n" for d in data)
        return
        yield


def test_passes_on_datatrove_local_executor(tmp_path):
    rng = random.Random(2)
    base = _words(rng, 3000)
    shards = [[Document(text=" ".join(base), id="a"), Document(text=" ".join(_words(rng, 3000)), id="b")],
              [Document(text=" ".join(base + _words(rng, 100)), id="a2")],
              [Document(text=" ".join(base[:2000] + _words(rng, 1000)), id="c")]]
    work = tmp_path / "work"
    built = minhash.build(minhash.default_config(), stage.StageEnv(name="minhash", work_dir=str(work), tasks=3))
    for n, p in enumerate(built.index_passes):
        steps = ([_Shards(shards)] if p.reads_documents else []) + list(p.steps)
        LocalPipelineExecutor(steps, tasks=p.tasks or 3, workers=1, logging_dir=str(work / f"logs{n}")).run()
    LocalPipelineExecutor([_Shards(shards), *built.steps, _Collect(str(tmp_path))], tasks=3, workers=1,
                          logging_dir=str(work / "logs_final")).run()
    kept = [(tmp_path / f"{r}.ids").read_text().split() for r in range(3)]
    assert kept == [["a", "b"], [], ["c"]]


def test_exact_copies_in_one_shard_leave_one(tmp_path):
    rng = random.Random(1)
    text = " ".join(_words(rng, 500))
    shards = [[Document(text=text, id=f"copy{i}") for i in range(3)]]
    kept, _ = _dedup(shards, tmp_path)
    assert len(kept[0]) == 1


def test_config_errors_and_config_file():
    cfg = minhash.default_config()
    cfg.num_buckets = 0
    with pytest.raises(ConfigError, match="num_buckets"):
        minhash.build(cfg, stage.StageEnv(name="minhash", work_dir="/tmp/unused", tasks=1))
    path = os.path.join(os.path.dirname(__file__), "..", "configs", "prepare", "books.py")
    spec = importlib.util.spec_from_file_location("books_config", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    assert module.get_config().stages == ("minhash",)


def test_steps_survive_pickling_for_multiprocess_executors():
    built = minhash.build(minhash.default_config(), stage.StageEnv(name="minhash", work_dir="/tmp/unused", tasks=1))
    steps = list(built.steps) + [s for p in built.index_passes for s in p.steps]
    copies = pickle.loads(pickle.dumps(steps))
    assert copies[1].word_tokenizer.word_tokenize("a b") == ["a", "b"]
