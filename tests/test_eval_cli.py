"""Eval data errors, the report, the eval CLI end to end, perplexity, and
alternative data formats (parquet, local TFDS)."""

import json
import os
import pathlib
import subprocess
import sys

import pytest
from eval_fixtures import (
    FakeGenerator,
    FakeScorer,
    _ctx,
    _jsonl,
    data_dir,  # noqa: F401  (pytest fixture)
    prefers,
)

from llama_jax.eval import paper_results, report
from llama_jax.eval.tasks import DataError, EvalContext, EvalOptions, get_task, parse_task_list


# ----- data errors ---------------------------------------------------------------------
def test_missing_file_names_path_and_format(tmp_path):
    with pytest.raises(DataError) as e:
        get_task("hellaswag").run(_ctx(FakeScorer(prefers("x"))), str(tmp_path), 0, None)
    msg = str(e.value)
    assert os.path.join(str(tmp_path), "hellaswag", "hellaswag_val.jsonl") in msg
    assert "'ctx_a'" in msg and "'endings'" in msg
    with pytest.raises(DataError, match=r"mmlu.*dev/<subject>_dev.csv"):
        get_task("mmlu").run(_ctx(FakeScorer(prefers("x"))), str(tmp_path), 5, None)


def test_malformed_files_name_file_line_and_fields(tmp_path):
    bad = tmp_path / "boolq" / "dev.jsonl"
    bad.parent.mkdir()
    bad.write_text('{"question": "q", "passage": "p", "answer": true}\n{not json\n')
    with pytest.raises(DataError, match=r"dev.jsonl:2: not valid JSON.*'passage'"):
        get_task("boolq").run(_ctx(FakeScorer(prefers("x"))), str(tmp_path), 0, None)
    bad.write_text('{"question": "q", "answer": true}\n')
    with pytest.raises(DataError, match=r"dev.jsonl: record 0 has no field 'passage'"):
        get_task("boolq").run(_ctx(FakeScorer(prefers("x"))), str(tmp_path), 0, None)
    piqa = tmp_path / "piqa" / "valid.jsonl"
    piqa.parent.mkdir()
    piqa.write_text('{"goal": "g", "sol1": "a", "sol2": "b"}\n')
    with pytest.raises(DataError, match=r"valid-labels.lst does not exist"):
        get_task("piqa").run(_ctx(FakeScorer(prefers("x"))), str(tmp_path), 0, None)
    csv = tmp_path / "mmlu" / "test" / "anatomy_test.csv"
    csv.parent.mkdir(parents=True)
    (tmp_path / "mmlu" / "dev").mkdir()
    (tmp_path / "mmlu" / "dev" / "anatomy_dev.csv").write_text("q,a,b,c,d,A\n")
    csv.write_text("q,a,b,c,d\n")
    with pytest.raises(DataError, match=r"anatomy_test.csv: row 1 has 5 columns, expected 6"):
        get_task("mmlu").run(_ctx(FakeScorer(prefers("x"))), str(tmp_path), 5, None)


def test_task_list_parsing():
    specs = parse_task_list("hellaswag, nq:5,mmlu,triviaqa:64")
    assert [(t.name, k) for t, k in specs] == [("hellaswag", 0), ("naturalqs", 5), ("mmlu", 5),
                                               ("triviaqa", 64)]
    assert [k for _, k in parse_task_list("mmlu,boolq", num_fewshot=1)] == [1, 1]
    with pytest.raises(ValueError, match="unknown task 'helaswag'"):
        parse_task_list("helaswag")


def test_report_uses_nearest_paper_size():
    assert paper_results.nearest_size(6.7e9) == "7B"
    assert paper_results.nearest_size(2e6) == "7B"
    assert paper_results.nearest_size(20e9) == "13B"
    assert paper_results.nearest_size(50e9) == "65B"
    results = {"hellaswag": {"task": "hellaswag", "acc": 0.5, "acc_norm": 0.75, "num_fewshot": 0,
                             "primary_metric": "acc_norm", "num_examples": 4},
               "naturalqs:64": {"task": "naturalqs", "exact_match": 0.25, "num_fewshot": 64,
                                "primary_metric": "exact_match", "num_examples": 4}}
    table = report.markdown_table(results, 13.0e9)
    assert "| hellaswag | acc_norm | 75.0 | 79.2 | n=4 |" in table
    assert "| naturalqs:64 (64-shot) | exact_match | 25.0 | 31.9 | n=4 |" in table
    assert "LLaMA-13B" in table


@pytest.mark.parametrize("flags, message", [
    (["--tasks=unknown_task"], "error: unknown task 'unknown_task'; known tasks: arc_challenge, "),
    (["--tasks=boolq:x"], "error: task 'boolq:x': shots after ':' must be an integer"),
    (["--tasks=boolq", "--mesh=1,2"], "error: mesh shape [1, 2] must give one size per axis"),
])
def test_eval_cli_user_errors_are_one_line_and_exit_2(flags, message, tmp_path):
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=2",
               JAX_PLATFORMS="cpu")
    done = subprocess.run([sys.executable, "-m", "llama_jax.eval", f"--checkpoint={tmp_path}",
                           f"--data_dir={tmp_path}", *flags],
                          capture_output=True, text=True, env=env, timeout=300)
    assert done.returncode == 2, done.stderr[-3000:]
    assert "Traceback" not in done.stderr
    assert done.stderr.strip().splitlines() == [done.stderr.strip().splitlines()[-1]]
    assert done.stderr.strip().startswith(message)
    if "unknown_task" in message:
        assert "hellaswag" in done.stderr and "winogrande" in done.stderr


# ----- the whole path with a real model ------------------------------------------------
def test_eval_cli_end_to_end(data_dir, tmp_path):
    """`python -m llama_jax.eval` on a HF checkpoint with a SentencePiece tokenizer."""
    import jax

    import llama_jax
    from llama_jax.data.tokenizer import train_tokenizer
    from llama_jax.model import LlamaConfig, init_params

    # Real text from the standard library (a pathlib.Path is read as a file).
    tok = train_tokenizer([pathlib.Path(json.__file__)], str(tmp_path / "tok"), vocab_size=384)
    cfg = LlamaConfig(dim=64, n_layers=2, n_heads=4, n_kv_heads=2, vocab_size=384,
                      multiple_of=32, max_seq_len=256)
    ckpt = tmp_path / "hf"
    llama_jax.save_pretrained(cfg, init_params(cfg, jax.random.key(0)), ckpt, format="hf")
    out = tmp_path / "results.json"
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=2",
               JAX_PLATFORMS="cpu")
    base = [sys.executable, "-m", "llama_jax.eval", f"--checkpoint={ckpt}",
            f"--tokenizer={tok.path}", f"--data_dir={data_dir}", f"--output={out}"]
    done = subprocess.run(base + ["--tasks=hellaswag,mmlu,naturalqs:1,humaneval,perplexity",
                                  "--limit=2", "--max_gen_tokens=8", "--batch_size=4"],
                          capture_output=True, text=True, env=env, timeout=600)
    assert done.returncode == 0, done.stderr[-4000:]
    results = json.loads(out.read_text())["results"]
    assert set(results) == {"hellaswag", "mmlu", "naturalqs", "humaneval", "perplexity"}
    assert 0.0 <= results["hellaswag"]["acc_norm"] <= 1.0
    assert results["mmlu"]["num_examples"] == 4 and results["naturalqs"]["num_fewshot"] == 1
    assert results["humaneval"]["n"] == 1 and results["perplexity"]["sources"]["code"]["tokens"] > 0
    # A random model is near-uniform: per-token perplexity is within the vocabulary size.
    assert 1.0 < results["perplexity"]["perplexity"] < 3 * cfg.vocab_size
    table = (tmp_path / "results.md").read_text()
    assert "LLaMA-7B (paper)" in table and "| hellaswag | acc_norm |" in table
    # A missing data set fails with the file and the expected format.
    bad = subprocess.run(base + ["--tasks=winogrande", f"--data_dir={tmp_path / 'none'}"],
                         capture_output=True, text=True, env=env, timeout=300)
    assert bad.returncode == 2
    assert "winogrande/dev.jsonl" in bad.stderr and "'option1'" in bad.stderr


def test_perplexity_on_a_held_out_split_matches_a_direct_computation(tmp_path):
    """The corpus path: make_eval_batches' packed held-out rows, scored on the mesh,
    equal a plain single-device forward pass over the same rows."""
    import jax
    import numpy as np

    from llama_jax.data.mixture import make_eval_batches
    from llama_jax.data.sources import SourceSpec
    from llama_jax.data.tokenizer import train_tokenizer
    from llama_jax.eval.scoring import Scorer
    from llama_jax.model import Llama, LlamaConfig, init_params

    tok = train_tokenizer([pathlib.Path(json.__file__)], str(tmp_path / "tok"), vocab_size=384)
    docs = pathlib.Path(json.__file__).read_text().split("\n\n")
    _jsonl(tmp_path / "src.jsonl", [{"text": d} for d in docs if d.strip()])
    spec = SourceSpec(name="json_src", kind="jsonl", path=str(tmp_path / "src.jsonl"),
                      heldout_fraction=0.2)
    cfg = LlamaConfig(dim=64, n_layers=2, n_heads=4, n_kv_heads=2, vocab_size=384,
                      multiple_of=32, max_seq_len=64)
    params = init_params(cfg, jax.random.key(5))
    scorer = Scorer(cfg, params, batch_size=8, buckets=(64,))
    ctx = EvalContext(tokenizer=tok, make_scorer=lambda: scorer,
                      options=EvalOptions(perplexity_sources=[spec]))
    res = get_task("perplexity").run(ctx, str(tmp_path), 0, 2)
    got = res["sources"]["json_src"]

    total, count = 0.0, 0
    for batch in make_eval_batches(spec, tok, seq_len=64, batch_size=8, max_batches=2):
        logits = Llama(cfg).apply({"params": params}, batch["inputs"],
                                  positions=batch["positions"], segment_ids=batch["segment_ids"])
        logp = jax.nn.log_softmax(logits, axis=-1)
        picked = np.take_along_axis(np.asarray(logp), batch["targets"][..., None], -1)[..., 0]
        total += float((picked * batch["loss_mask"]).sum())
        count += int(batch["loss_mask"].sum())
    assert got["tokens"] == count > 0
    assert got["nll_per_token"] == pytest.approx(-total / count, rel=1e-5)


def test_parquet_exports_are_read_when_pyarrow_is_there(tmp_path, monkeypatch):
    pq = pytest.importorskip("pyarrow.parquet")
    import pyarrow as pa

    rows = [{"id": "x", "question": "Which is a mammal?",
             "choices": {"text": ["shark", "whale, correct"], "label": ["A", "B"]},
             "answerKey": "B"}]
    (tmp_path / "arc_easy").mkdir()
    path = tmp_path / "arc_easy" / "test-00000-of-00001.parquet"
    pq.write_table(pa.Table.from_pylist(rows), path)
    scorer = FakeScorer(prefers("correct"))
    res = get_task("arc_easy").run(_ctx(scorer), str(tmp_path), 0, None)
    assert scorer.requests[0] == ("Question: Which is a mammal?\nAnswer:", " shark")
    assert res["acc"] == 1.0
    monkeypatch.setitem(sys.modules, "pyarrow.parquet", None)  # as if not installed
    with pytest.raises(DataError, match=r"test-00000-of-00001.parquet: reading Parquet needs "
                                        r"pyarrow.*pip install pyarrow"):
        get_task("arc_easy").run(_ctx(scorer), str(tmp_path), 0, None)


def _build_tfds(folder, splits, features):
    """A TFDS array_record data set {split: records} under `folder` (as
    ``tfds.data_source(name, data_dir=folder)`` would find it)."""
    import tensorflow_datasets as tfds

    class Records(tfds.core.GeneratorBasedBuilder, skip_registration=True):
        name = "records"
        VERSION = tfds.core.Version("1.0.0")
        RELEASE_NOTES = {"1.0.0": "Test records."}

        def _info(self):
            # Unshuffled: records keep the published order (--limit, few-shot draws).
            return tfds.core.DatasetInfo(builder=self, disable_shuffling=True,
                                         features=tfds.features.FeaturesDict(features))

        def _split_generators(self, dl_manager):
            return {split: self._generate_examples(split) for split in splits}

        def _generate_examples(self, split):
            yield from enumerate(splits[split])

    builder = Records(data_dir=str(folder), file_format="array_record")
    builder.download_and_prepare()
    return builder.data_dir


def test_tasks_read_a_local_tfds_dataset_without_tensorflow(data_dir, tmp_path):
    tfds = pytest.importorskip("tensorflow_datasets")
    import numpy as np

    text, texts = tfds.features.Text(), tfds.features.Sequence(tfds.features.Text())
    root = tmp_path / "tfds_data"

    def published(task, name):
        return [json.loads(line) for line in (pathlib.Path(data_dir) / task / name).open()]

    # HellaSwag as the HF export has it (string label), split "validation".
    rows = [dict(r, label=str(r["label"])) for r in published("hellaswag", "hellaswag_val.jsonl")]
    folder = _build_tfds(root / "hellaswag", {"validation": rows}, dict(
        {k: text for k in ("activity_label", "ctx_a", "ctx_b", "ctx", "source_id", "split",
                           "split_type", "label")}, ind=np.int32, endings=texts))
    assert folder == str(root / "hellaswag" / "records" / "1.0.0")
    # ARC-Easy in the HF schema: nested choices {text: [...], label: [...]}, split "test".
    arc = [{"id": "Mercury_7", "question": "Which is a mammal?", "answerKey": "B",
            "choices": {"text": ["shark", "whale, correct", "trout", "eel"],
                        "label": ["A", "B", "C", "D"]}}]
    _build_tfds(root / "arc_easy", {"test": arc}, dict(
        id=text, question=text, answerKey=text, choices={"text": texts, "label": texts}))
    # GSM8K: "test" to evaluate, "train" for the few-shot examples.
    _build_tfds(root / "gsm8k", {"test": published("gsm8k", "test.jsonl"),
                                 "train": published("gsm8k", "train.jsonl")},
                dict(question=text, answer=text))

    for name in ("hellaswag", "arc_easy"):
        want_scorer, got_scorer = FakeScorer(prefers("correct")), FakeScorer(prefers("correct"))
        want = get_task(name).run(_ctx(want_scorer), data_dir, 0, None)
        got = get_task(name).run(_ctx(got_scorer), str(root), 0, None)
        assert got_scorer.requests == want_scorer.requests and got == want
        assert got["acc"] == 1.0
    answers = {"Ann": " 7", "What is 10": " 20"}

    def respond(prompt, s):
        return next(v for k, v in answers.items() if k in prompt.rsplit("Question:", 1)[1])

    want_gen, got_gen = FakeGenerator(respond), FakeGenerator(respond)
    want = get_task("gsm8k").run(_ctx(generator=want_gen), data_dir, 1, None)
    got = get_task("gsm8k").run(_ctx(generator=got_gen), str(root), 1, None)
    assert got_gen.prompts == want_gen.prompts and got == want and got["maj1@1"] == 1.0
    assert got_gen.prompts[0].startswith("Question: What is 1 + 1?\nAnswer: 1 + 1 = 2\n#### 2")
    assert "tensorflow" not in sys.modules
    # A data set without the split a task needs: the error names the split.
    with pytest.raises(DataError, match=r"or a TFDS array_record data set with split validation"):
        get_task("hellaswag").run(_ctx(want_scorer), str(root / "arc_easy"), 0, None)
