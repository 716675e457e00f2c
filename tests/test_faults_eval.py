"""Faults in evaluation input: an empty data file of any task, --limit below 1,
--batch_size 0 and a prompt too long for the context are errors, never a score
on no examples or a silent cut (issue 16, items 4 and 7)."""

import shutil

import jax
import pytest
from eval_fixtures import (
    TOK,
    ByteTokenizer,
    FakeGenerator,
    FakeScorer,
    _ctx,
    data_dir,  # noqa: F401  (pytest fixture)
    prefers,
)

from llama_jax.errors import ConfigError, DataError
from llama_jax.eval import runner
from llama_jax.eval.tasks import TASKS, get_task
from llama_jax.eval.tasks.base import apply_limit
from llama_jax.infer.engine import Generator, generate_text
from llama_jax.model import LlamaConfig, init_params


def _emptied(data_dir, tmp_path, task):  # noqa: F811
    """A copy of the fixture data with every file of `task` emptied (0 bytes)."""
    root = tmp_path / "data"
    shutil.copytree(data_dir, root)
    files = [p for p in (root / task).rglob("*") if p.is_file()]
    assert files, task
    for p in files:
        p.write_bytes(b"")
    return root, files


@pytest.mark.parametrize("name", sorted(set(TASKS) - {"passkey"}))  # passkey reads no files
def test_every_task_refuses_an_empty_data_file(name, data_dir, tmp_path):  # noqa: F811
    root, files = _emptied(data_dir, tmp_path, name)
    ctx = _ctx(FakeScorer(prefers("correct")), FakeGenerator(lambda text, s: " 4"))
    task = get_task(name)
    with pytest.raises(DataError) as e:
        runner.evaluate(ctx, [(task, task.default_fewshot)], str(root))
    msg = str(e.value)
    assert any(str(p) in msg for p in files), msg  # names the file
    assert "expected" in msg  # and the format that belongs there


def test_a_file_with_an_empty_list_and_a_task_with_no_examples(data_dir, tmp_path):  # noqa: F811
    root = tmp_path / "data"
    shutil.copytree(data_dir, root)
    (root / "triviaqa" / "wikipedia-dev.json").write_text('{"Data": []}')
    ctx = _ctx(FakeScorer(prefers("x")), FakeGenerator(lambda text, s: " x"))
    with pytest.raises(DataError, match=r"wikipedia-dev\.json: holds no records"):
        runner.evaluate(ctx, [(get_task("triviaqa"), 0)], str(root))

    def no_docs(ctx, data_dir, shots, limit):
        return {"acc": 0.0, "primary_metric": "acc", "num_examples": 0}

    task = get_task("boolq")
    empty = type(task)(task.name, task.kind, no_docs, 0, task.data_format)
    with pytest.raises(DataError, match=r"boolq: no examples to score in .*boolq; expected BoolQ"):
        runner.evaluate(ctx, [(empty, 0)], str(root))


@pytest.mark.parametrize("limit", [0, -1])
def test_limit_below_one_is_an_error_not_all(limit, data_dir):  # noqa: F811
    ctx = _ctx(FakeScorer(prefers("x")))
    with pytest.raises(ConfigError, match=rf"--limit={limit} must be an integer >= 1"):
        runner.evaluate(ctx, [(get_task("boolq"), 0)], str(data_dir), limit=limit)
    with pytest.raises(ConfigError, match="--limit"):
        apply_limit([1, 2, 3], limit)
    assert apply_limit([1, 2, 3], None) == [1, 2, 3] and apply_limit([1, 2, 3], 2) == [1, 2]


@pytest.fixture(scope="module")
def tiny():
    cfg = LlamaConfig(dim=32, n_layers=1, n_heads=4, n_kv_heads=2, vocab_size=384,
                      multiple_of=32, max_seq_len=32)
    return cfg, init_params(cfg, jax.random.key(0))


def test_batch_size_zero_is_an_error(tiny):
    cfg, params = tiny
    with pytest.raises(ConfigError, match=r"--batch_size=0 must be an integer >= 1"):
        runner.build_context(cfg, params, ByteTokenizer(), batch_size=0)
    with pytest.raises(ValueError, match=r"batch_size=0 must be an integer >= 1"):
        Generator(cfg, params, batch_size=0)


def test_a_prompt_too_long_is_an_error_unless_truncated(tiny, caplog):
    cfg, params = tiny
    gen = Generator(cfg, params, batch_size=8, prompt_buckets=(8, 32), chunk_size=4)
    long = "abcdefghij" * 3  # 30 bytes + BOS = 31 tokens; 31 + 4 > 32
    with pytest.raises(ValueError, match=r"prompt 0 has 31 tokens; with max_new_tokens=4 that is "
                                         r"35 > the model's max_seq_len=32.*--truncate to keep "
                                         r"its last 28 tokens"):
        generate_text(gen, TOK, [long], max_new_tokens=4)
    with caplog.at_level("WARNING"):
        cut = generate_text(gen, TOK, [long], max_new_tokens=4, truncate_left=True)
    assert len(cut) == 1 and len(cut[0]) == 1
    assert "truncated 1 prompt(s) to their last 28 tokens (the longest had 31)" in caplog.text
    # The truncated prompt continues exactly as its last 28 tokens do.
    ids = TOK.encode(long, bos=True)[-28:]
    want = gen.generate_tokens([ids], max_new_tokens=4, eos_id=TOK.eos_id)[0][0]
    assert cut[0][0] == TOK.decode(want)
    with pytest.raises(ValueError, match=r"prompt 0 \(''\) has no tokens without BOS \(--nobos\)"):
        generate_text(gen, TOK, [""], max_new_tokens=4, add_bos=False)
    with pytest.raises(ValueError, match=r"max_new_tokens=32 leaves no room"):
        generate_text(gen, TOK, ["a"], max_new_tokens=32)
