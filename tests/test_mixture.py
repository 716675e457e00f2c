"""The grain mixture pipeline: shares, determinism, process partition, packing, resume, eval, bad input."""

import collections
import inspect
import json
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from llama_jax.data import mixture as M
from llama_jax.data import sources as S
from llama_jax.data.packing import END_OF_STREAM, RowPacker
from llama_jax.data.sources import DataError, SourceSpec
from llama_jax.data.tokenizer import Tokenizer, train_tokenizer

WEIGHTS = {"web": 0.6, "code": 0.3, "books": 0.1}
KEYS = ("inputs", "targets", "positions", "segment_ids", "loss_mask", "source_id", "epoch", "epoch_progress")


@pytest.fixture(scope="module")
def tok(tmp_path_factory) -> Tokenizer:
    return train_tokenizer([inspect.getsource(textwrap), inspect.getsource(json)],
                           tmp_path_factory.mktemp("tok") / "tiny", 400)


@pytest.fixture(scope="module")
def specs(tmp_path_factory):
    """Three JSONL sources of 40 documents (2..25 words) each."""
    root = tmp_path_factory.mktemp("mix")
    rng = np.random.default_rng(0)
    words = {"web": "the of and to in is that for it as was with be by on not".split(),
             "code": "def return if else for while x y 0 1 2 ( ) : = + self".split(),
             "books": "thou art my lord and lady the king queen doth hath".split()}
    out = []
    for name, weight in WEIGHTS.items():
        path = root / f"{name}.jsonl"
        docs = [" ".join(rng.choice(words[name], rng.integers(2, 25))) + f" #{i}" for i in range(40)]
        path.write_text("".join(json.dumps({"text": d}) + "\n" for d in docs))
        out.append(SourceSpec(name, "jsonl", str(path), weight=weight, heldout_fraction=0.05))
    return out


def take(it, steps):
    return [{k: np.array(v) for k, v in next(it).items()} for _ in range(steps)]


def assert_same(batches_a, batches_b):
    assert len(batches_a) == len(batches_b)
    for a, b in zip(batches_a, batches_b, strict=True):
        assert set(a) == set(KEYS)
        for k in KEYS:
            np.testing.assert_array_equal(a[k], b[k], err_msg=k)


def test_batch_layout(specs, tok):
    it = M.make_train_iterator(specs, tok, seq_len=16, global_batch_size=8, seed=0)
    batch = next(it)
    for k in ("inputs", "targets", "positions", "segment_ids"):
        assert batch[k].shape == (8, 16) and batch[k].dtype == np.int32
    assert batch["loss_mask"].dtype == np.float32 and batch["loss_mask"].shape == (8, 16)
    assert batch["source_id"].shape == batch["epoch"].shape == (8,) and batch["epoch"].dtype == np.int32
    assert batch["epoch_progress"].dtype == np.float32


def test_source_shares_match_weights_over_20000_sequences(specs, tok):
    it = M.make_train_iterator(specs, tok, seq_len=8, global_batch_size=100, seed=3)
    ids = np.concatenate([next(it)["source_id"] for _ in range(200)])
    assert ids.size == 20_000
    shares = np.bincount(ids, minlength=3) / ids.size
    np.testing.assert_allclose(shares, list(WEIGHTS.values()), atol=0.01)


def test_same_seed_same_batches_other_seed_other_batches(specs, tok):
    def run(seed):
        return take(M.make_train_iterator(specs, tok, seq_len=16, global_batch_size=8, seed=seed), 4)

    first = run(7)
    assert_same(first, run(7))
    assert not np.array_equal(first[0]["inputs"], run(8)[0]["inputs"])


@pytest.mark.parametrize("process_count", [2, 4])
def test_process_count_partitions_the_same_global_batches(specs, tok, process_count):
    kw = dict(seq_len=16, global_batch_size=8, seed=1)
    whole = take(M.make_train_iterator(specs, tok, **kw), 5)
    parts = [take(M.make_train_iterator(specs, tok, process_index=p, process_count=process_count, **kw), 5)
             for p in range(process_count)]
    for step in range(5):
        for k in KEYS:
            got = np.concatenate([parts[p][step][k] for p in range(process_count)])
            np.testing.assert_array_equal(got, whole[step][k], err_msg=f"step {step} {k}")


def test_packing_loses_and_duplicates_nothing_and_marks_boundaries(specs, tok):
    """Rebuild each (slot, source) token stream from the rows and check it against the documents."""
    G, L, steps = 4, 16, 500
    batches = take(M.make_train_iterator(specs, tok, seq_len=L, global_batch_size=G, seed=5), steps)
    streams = collections.defaultdict(list)  # (slot, source) -> rows in order
    for b in batches:
        for g in range(G):
            streams[g, int(b["source_id"][g])].append({k: b[k][g] for k in KEYS})
    bos = tok.bos_id
    for s, spec in enumerate(specs):
        train, _ = S.split_heldout(S.build_source(spec))
        docs = collections.Counter(tuple(tok.encode(train[i], bos=True, eos=True)) for i in range(len(train)))
        n = len(train)
        epoch0 = collections.Counter()
        for g in range(G):
            rows = streams[g, s]
            flat = np.concatenate([r["inputs"] for r in rows])
            for i, r in enumerate(rows):
                # Rows come from this source only, and every row continues the previous one exactly.
                assert r["source_id"] == s
                if i + 1 < len(rows):
                    np.testing.assert_array_equal(r["targets"], flat[i * L + 1:(i + 1) * L + 1])
                starts = (r["inputs"] == bos)
                starts[0] = True
                np.testing.assert_array_equal(r["segment_ids"], np.cumsum(starts))  # restart per document
                last_start = np.maximum.accumulate(np.where(starts, np.arange(L), 0))
                np.testing.assert_array_equal(r["positions"], np.arange(L) - last_start)
                np.testing.assert_array_equal(r["loss_mask"], (r["targets"] != bos).astype(np.float32))
            # Split the stream into documents at bos; all but the last are complete documents.
            cuts = np.flatnonzero(flat == bos)
            assert cuts[0] == 0
            pieces = [tuple(flat[a:b]) for a, b in zip(cuts[:-1], cuts[1:], strict=True)]
            assert all(docs[p] for p in pieces), "a packed document is not one of the source's documents"
            n_epoch0 = -(-(n - g) // G)  # slot g reads stream positions g, g+G, ... < n in epoch 0
            assert len(pieces) >= n_epoch0, "run longer: slot has not finished epoch 0"
            epoch0.update(pieces[:n_epoch0])
            assert rows[0]["epoch"] == 0 and max(r["epoch"] for r in rows) >= 1
        assert epoch0 == docs, f"source {spec.name}: epoch 0 must serve every training document exactly once"


def test_row_packer_by_hand():
    docs = [np.array([1, 5, 6, 2]), np.array([], np.int32), np.array([1, 7, 2]), np.array([1, 8, 9, 10, 11, 2]),
            np.array([1, 2])]
    p = RowPacker(lambda n: docs[n] if n < len(docs) else END_OF_STREAM, seq_len=4, pad_id=0)
    r1 = p.next_row()
    np.testing.assert_array_equal(r1["inputs"], [1, 5, 6, 2])
    np.testing.assert_array_equal(r1["targets"], [5, 6, 2, 1])
    np.testing.assert_array_equal(r1["loss_mask"], [1, 1, 1, 0])
    np.testing.assert_array_equal(r1["segment_ids"], [1, 1, 1, 1])
    assert p.skipped == 1  # the empty document, counted
    r2 = p.next_row()
    np.testing.assert_array_equal(r2["inputs"], [1, 7, 2, 1])
    np.testing.assert_array_equal(r2["targets"], [7, 2, 1, 8])
    np.testing.assert_array_equal(r2["segment_ids"], [1, 1, 1, 2])
    np.testing.assert_array_equal(r2["positions"], [0, 1, 2, 0])
    np.testing.assert_array_equal(r2["loss_mask"], [1, 1, 0, 1])
    r3 = p.next_row()  # a document continued from the previous row: positions restart at the row start
    np.testing.assert_array_equal(r3["inputs"], [8, 9, 10, 11])
    np.testing.assert_array_equal(r3["positions"], [0, 1, 2, 3])
    np.testing.assert_array_equal(r3["targets"], [9, 10, 11, 2])
    state = p.get_state()
    r4 = p.next_row()  # the stream ends: padding with segment 0 and no loss
    np.testing.assert_array_equal(r4["inputs"], [2, 1, 2, 0])
    np.testing.assert_array_equal(r4["targets"], [1, 2, 0, 0])
    np.testing.assert_array_equal(r4["segment_ids"], [1, 2, 2, 0])
    np.testing.assert_array_equal(r4["positions"], [0, 0, 1, 0])
    np.testing.assert_array_equal(r4["loss_mask"], [0, 1, 0, 0])
    assert p.next_row() is None
    p.set_state(state)  # [doc, offset, skipped] is all it takes to resume
    np.testing.assert_array_equal(p.next_row()["inputs"], r4["inputs"])


_RESUME_SCRIPT = """
import json, sys
import numpy as np
import grain
import orbax.checkpoint as ocp
from llama_jax.data import mixture as M
from llama_jax.data.sources import SourceSpec
args = json.loads(sys.argv[1])
specs = [SourceSpec.from_dict(d) for d in args["specs"]]
out = {}
it = M.make_train_iterator(specs, args["tokenizer"], **args["kw"])
it.set_state(json.loads(open(args["state"]).read()))
out["json"] = [next(it) for _ in range(args["m"])]
it2 = M.make_train_iterator(specs, args["tokenizer"], **args["kw"])
mngr = ocp.CheckpointManager(args["ckpt"], item_names=("data",),
                             item_handlers={"data": grain.checkpoint.CheckpointHandler()})
mngr.restore(args["k"], args=ocp.args.Composite(data=grain.checkpoint.CheckpointRestore(it2)))
out["orbax"] = [next(it2) for _ in range(args["m"])]
np.savez(args["out"], **{f"{how}/{i}/{key}": b[key] for how, bs in out.items() for i, b in enumerate(bs) for key in b})
"""


def test_resume_in_a_fresh_process_equals_uninterrupted(specs, tok, tmp_path):
    import grain
    import orbax.checkpoint as ocp

    kw = dict(seq_len=16, global_batch_size=8, seed=11)
    k, m = 7, 6
    full = take(M.make_train_iterator(specs, tok, **kw), k + m)
    it = M.make_train_iterator(specs, tok, **kw)
    take(it, k)
    (tmp_path / "state.json").write_text(json.dumps(it.get_state()))
    mngr = ocp.CheckpointManager(str(tmp_path / "ckpt"), item_names=("data",),
                                 item_handlers={"data": grain.checkpoint.CheckpointHandler()})
    mngr.save(k, args=ocp.args.Composite(data=grain.checkpoint.CheckpointSave(it)))
    mngr.wait_until_finished()
    args = dict(specs=[s.to_dict() for s in specs], tokenizer=tok.path, kw=kw, k=k, m=m,
                state=str(tmp_path / "state.json"), ckpt=str(tmp_path / "ckpt"), out=str(tmp_path / "out.npz"))
    env = dict(os.environ, JAX_PLATFORMS="cpu")
    proc = subprocess.run([sys.executable, "-c", _RESUME_SCRIPT, json.dumps(args)], capture_output=True, text=True,
                          timeout=300, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    got = np.load(tmp_path / "out.npz")
    for how in ("json", "orbax"):
        resumed = [{key: got[f"{how}/{i}/{key}"] for key in KEYS} for i in range(m)]
        assert_same(resumed, full[k:])


@pytest.mark.multiprocess
def test_worker_processes_give_the_same_batches_and_resume(specs, tok):
    kw = dict(seq_len=16, global_batch_size=8, seed=2)
    ref = take(M.make_train_iterator(specs, tok, **kw), 8)
    it = M.make_train_iterator(specs, tok, num_workers=2, **kw)
    try:
        assert_same(take(it, 4), ref[:4])
        state = it.get_state()
        assert_same(take(it, 2), ref[4:6])
        it.set_state(state)
        assert_same(take(it, 4), ref[4:8])
    finally:
        it.close()


def test_eval_batches_cover_exactly_the_heldout_documents(specs, tok):
    spec = specs[1]
    src = S.build_source(spec)
    train, held = S.split_heldout(src)
    assert len(held) == 2
    batches = M.make_eval_batches(spec, tok, seq_len=16, batch_size=4, max_batches=100, source_id=1)
    flat = np.concatenate([b["inputs"][b["segment_ids"] > 0] for b in batches])
    expected = np.concatenate([tok.encode(held[i], bos=True, eos=True) for i in range(len(held))])
    np.testing.assert_array_equal(flat, expected)  # held-out documents, in order, nothing else
    assert all(b["inputs"].shape == (4, 16) and (b["source_id"] == 1).all() for b in batches)
    last = batches[-1]
    assert last["loss_mask"][-1].sum() == 0 and last["segment_ids"][-1].sum() == 0  # padding rows
    train_texts = {train[i] for i in range(len(train))}
    assert not train_texts & {held[i] for i in range(len(held))}
    halves = [M.make_eval_batches(spec, tok, seq_len=16, batch_size=4, max_batches=100, process_index=p,
                                  process_count=2) for p in range(2)]
    for i, b in enumerate(batches):
        np.testing.assert_array_equal(np.concatenate([halves[0][i]["inputs"], halves[1][i]["inputs"]]), b["inputs"])
    assert len(M.make_eval_batches(spec, tok, seq_len=16, batch_size=4, max_batches=1)) == 1


def test_bad_mixture_configuration_is_a_clear_error(specs, tok):
    kw = dict(seq_len=16, global_batch_size=8, seed=0)
    with pytest.raises(DataError, match="all zero"):
        M.make_train_iterator([s.replace(weight=0) for s in specs], tok, **kw)
    with pytest.raises(DataError, match="weight"):
        M.make_train_iterator([specs[0].to_dict() | {"weight": -1}], tok, **kw)
    with pytest.raises(DataError, match="unique"):
        M.make_train_iterator([specs[0], specs[0]], tok, **kw)
    with pytest.raises(DataError, match="non-empty list"):
        M.make_train_iterator([], tok, **kw)
    with pytest.raises(ValueError, match="divisible by process_count"):
        M.make_train_iterator(specs, tok, seq_len=16, global_batch_size=6, seed=0, process_count=4)
    with pytest.raises(ValueError, match="num_workers=3 must divide"):
        M.make_train_iterator(specs, tok, num_workers=3, **kw)
    with pytest.raises(DataError, match="no held-out documents"):
        M.make_eval_batches(specs[0].replace(heldout_fraction=0.0), tok, seq_len=16, batch_size=4)
    # A zero weight is allowed for some sources: they are never sampled.
    it = M.make_train_iterator([specs[0], specs[1].replace(weight=0), specs[2]], tok, **kw)
    assert 1 not in np.concatenate([next(it)["source_id"] for _ in range(20)])
    with pytest.raises(DataError, match="paper_mixture"):
        M.paper_mixture({"github": "/x"})


def _bad_record_spec(tmp_path, on_error):
    from array_record.python.array_record_module import ArrayRecordWriter

    path = tmp_path / "docs.array_record"
    writer = ArrayRecordWriter(str(path), "group_size:1")
    for i in range(12):
        writer.write(b"caf\xe9 broken" if i == 5 else f"record number {i} with words".encode())
    writer.close()
    return SourceSpec("rec", "array_record", str(path), on_error=on_error, heldout_fraction=0.0)


def test_bad_record_in_the_pipeline_raises_or_is_counted(tok, tmp_path):
    kw = dict(seq_len=8, global_batch_size=2, seed=0)
    it = M.make_train_iterator([_bad_record_spec(tmp_path, "raise")], tok, **kw)
    with pytest.raises(DataError, match=r"record 5.*not valid UTF-8"):
        for _ in range(200):
            next(it)
    it = M.make_train_iterator([_bad_record_spec(tmp_path, "skip")], tok, **kw)
    for _ in range(200):
        next(it)
    skipped = sum(p[2] for slot in it.get_state()["packers"] for p in slot)
    assert skipped >= 1  # counted in the iterator state, once per epoch it is met


def test_paper_mixture_weights():
    assert sum(M.PAPER_MIXTURE.values()) == pytest.approx(100.0)
    specs = M.paper_mixture({name: f"/data/{name}" for name in M.PAPER_MIXTURE})
    assert [s.weight for s in specs] == list(M.PAPER_MIXTURE.values())
    np.testing.assert_allclose(M.normalized_weights([s.weight for s in specs])[0], 0.67)
    # Without paths each source is the folder named after it (under data.root).
    assert [(s.name, s.path, s.kind) for s in M.paper_mixture()] == [
        (name, name, "jsonl") for name in M.PAPER_MIXTURE]
