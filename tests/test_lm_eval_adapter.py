"""`LlamaJaxLM` (lm-eval's ``--model llama_jax``) against lm-eval's own ``hf`` model.

A random tiny transformers Llama and a SentencePiece tokenizer are saved to a
folder (the files lm-eval's ``hf`` model reads) and converted with
`llama_jax.convert` to our orbax checkpoint. lm-eval itself runs, offline, on
local fixture files: task configs in a tmp ``include_path`` include lm-eval's
own hellaswag / arc_easy yamls and point ``dataset_path: json`` at the files.

- `simple_evaluate` gives the same acc / acc_norm and per-sample
  log-likelihoods (``log_samples``) for ``LlamaJaxLM(checkpoint=...)`` and
  ``HFLM(pretrained=...)``;
- ``loglikelihood_rolling`` (several windows: max_length=16) and greedy
  ``generate_until`` (with ``until`` strings) equal HFLM's on the same requests;
- ``python -m llama_jax.lm_eval`` (lm-eval's CLI arguments) runs in a
  subprocess and writes lm-eval's results file;
- bad model_args are `ConfigError`s naming the key.
"""

import importlib.metadata
import inspect
import json
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")
lm_eval = pytest.importorskip("lm_eval")

from lm_eval.api.instance import Instance  # noqa: E402
from lm_eval.models.huggingface import HFLM  # noqa: E402
from lm_eval.models.utils import (  # noqa: E402
    handle_stop_sequences,
    normalize_gen_kwargs,
    postprocess_generated_text,
)
from lm_eval.tasks import TaskManager  # noqa: E402

from llama_jax.convert import convert_checkpoint, from_pretrained  # noqa: E402
from llama_jax.convert.hf_tokenizer import save_hf_tokenizer  # noqa: E402
from llama_jax.data.tokenizer import train_tokenizer  # noqa: E402
from llama_jax.errors import ConfigError  # noqa: E402
from llama_jax.eval import lm_eval_results  # noqa: E402
from llama_jax.eval.lm_eval_adapter import (  # noqa: E402
    ENTRY_POINT_GROUP,
    LlamaJaxLM,
    cut_at_stops,
    gen_options,
)
from llama_jax.eval.runner import evaluate  # noqa: E402
from llama_jax.eval.tasks import parse_task_list  # noqa: E402
from llama_jax.eval.tasks.base import encode_pair  # noqa: E402

TASKS_DIR = os.path.join(os.path.dirname(lm_eval.__file__), "tasks")
OFFLINE = {"HF_DATASETS_OFFLINE": "1", "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}

HELLASWAG = [
    dict(ind=i, activity_label=a, ctx_a=ca, ctx_b=cb, ctx=f"{ca} {cb}", endings=e,
         source_id=f"src{i}", split="val", split_type="indomain", label=str(lbl))
    for i, (a, ca, cb, e, lbl) in enumerate([
        ("Baking cookies", "A woman puts flour in a bowl.", "she",
         ["stirs the batter with a spoon.", "drives a car to the moon.",
          "paints the bowl [title] red.", "sings to the oven loudly."], 0),
        ("Playing guitar", "A man sits on a stool holding a guitar.", "he",
         ["eats the guitar.", "strums the strings and plays a song.",
          "throws the stool at a tree.", "reads a newspaper upside down."], 1),
        ("Washing a dog", "A girl fills a tub with warm water.", "the dog",
         ["flies away over the house.", "writes a letter.",
          "jumps in and gets soapy.", "turns into a cat."], 2),
    ])]
ARC = [
    dict(id=f"q{i}", question=q, choices={"text": t, "label": list("ABCD"[:len(t)])},
         answerKey=k)
    for i, (q, t, k) in enumerate([
        ("Which is a source of light?", ["the sun", "a rock", "a shoe", "water"], "A"),
        ("What do plants need to grow?", ["noise", "sunlight", "plastic"], "B"),
        ("Which animal can fly?", ["a fish", "a dog", "a bird", "a worm"], "C"),
        ("What is ice made of?", ["water", "sand", "wood", "glass"], "A"),
        ("Which is the largest?", ["an ant", "a mouse", "a whale"], "C"),
        ("What makes a shadow?", ["sound", "blocked light", "heat", "wind"], "B"),
        ("Which season is coldest?", ["summer", "spring", "autumn", "winter"], "D"),
        ("Where do fish live?", ["in trees", "in water"], "B"),
    ])]


def _write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))


@pytest.fixture(scope="module")
def model_dirs(tmp_path_factory):
    """(HF folder, our orbax checkpoint) of one random tiny Llama with our tokenizer."""
    root = tmp_path_factory.mktemp("lmeval")
    text = " ".join(f"{r['activity_label']}: {r['ctx']} {' '.join(r['endings'])}"
                    for r in HELLASWAG) + " ".join(
        f"Question: {r['question']}\nAnswer: {' '.join(r['choices']['text'])}" for r in ARC)
    tok = train_tokenizer([inspect.getsource(textwrap), text * 20], root / "tok" / "tiny", 400)
    torch.manual_seed(0)
    cfg = transformers.LlamaConfig(hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
                                   num_key_value_heads=2, intermediate_size=96,
                                   vocab_size=tok.vocab_size, max_position_embeddings=256,
                                   initializer_range=0.2)  # spread logits: no argmax near-ties
    hf_dir = root / "hf"
    transformers.LlamaForCausalLM(cfg).eval().save_pretrained(hf_dir)
    config, _ = from_pretrained(hf_dir, progress=False)
    save_hf_tokenizer(hf_dir, config, tok)  # the tokenizer files AutoTokenizer reads
    ours = root / "ours"
    convert_checkpoint(hf_dir, ours, "orbax", tokenizer=tok.path, progress=False)
    return hf_dir, ours


@pytest.fixture(scope="module")
def include_dir(tmp_path_factory):
    """Task configs that include lm-eval's own yamls, reading local json files."""
    root = tmp_path_factory.mktemp("tasks")
    files = {"hellaswag": {"train": HELLASWAG, "validation": HELLASWAG},
             "arc_easy": {"train": ARC, "validation": ARC, "test": ARC}}
    yamls = {"hellaswag": "hellaswag/hellaswag.yaml", "arc_easy": "arc/arc_easy.yaml"}
    for task, splits in files.items():
        data_files = {}
        for split, rows in splits.items():
            _write_jsonl(root / f"{task}_{split}.jsonl", rows)
            data_files[split] = str(root / f"{task}_{split}.jsonl")
        cfg = {"include": os.path.join(TASKS_DIR, yamls[task]), "task": task,
               "dataset_path": "json", "dataset_name": None,
               "dataset_kwargs": {"data_files": data_files}}
        (root / f"{task}.yaml").write_text(json.dumps(cfg))  # JSON is YAML
    return root


@pytest.fixture(scope="module")
def ours(model_dirs):
    return LlamaJaxLM(checkpoint=str(model_dirs[1]), batch_size=8)


@pytest.fixture(scope="module")
def hf(model_dirs):
    return HFLM(pretrained=str(model_dirs[0]), device="cpu", batch_size=8, dtype="float32")


@pytest.fixture(autouse=True)
def _offline(monkeypatch):
    for k, v in OFFLINE.items():
        monkeypatch.setenv(k, v)


def _evaluate(lm, include_dir):
    manager = TaskManager(include_path=str(include_dir), include_defaults=False)
    return lm_eval.simple_evaluate(model=lm, tasks=["hellaswag", "arc_easy"],
                                   task_manager=manager, log_samples=True, bootstrap_iters=1000)


@pytest.fixture(scope="module")
def runs(ours, hf, include_dir):
    """lm-eval's simple_evaluate with our model and with its hf model."""
    return _evaluate(ours, include_dir), _evaluate(hf, include_dir)


def test_simple_evaluate_equals_hf(runs):
    got, want = runs
    for task in ("hellaswag", "arc_easy"):
        for metric in ("acc,none", "acc_norm,none", "acc_stderr,none", "acc_norm_stderr,none"):
            assert got["results"][task][metric] == want["results"][task][metric], (task, metric)
        ours_ll = [[r[0][0] for r in s["resps"]] for s in got["samples"][task]]
        hf_ll = [[r[0][0] for r in s["resps"]] for s in want["samples"][task]]
        assert len(ours_ll) == len(HELLASWAG if task == "hellaswag" else ARC)
        for a, b in zip(ours_ll, hf_ll, strict=True):
            np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-4)
        greedy = [[r[0][1] for r in s["resps"]] for s in got["samples"][task]]
        assert greedy == [[r[0][1] for r in s["resps"]] for s in want["samples"][task]]
        # The same prompts: lm-eval's arguments, our numbers.
        assert [s["arguments"] for s in got["samples"][task]] == \
            [s["arguments"] for s in want["samples"][task]]


def test_our_eval_json_equals_lm_evals_results(runs, ours, tmp_path):
    """Our arc_easy task (published ARC files) -> our lm-eval-shaped document == lm-eval's."""
    rows = [{"id": r["id"], "question": {"stem": r["question"], "choices": [
        {"text": t, "label": lab} for t, lab in zip(r["choices"]["text"], r["choices"]["label"],
                                                    strict=True)]}, "answerKey": r["answerKey"]}
        for r in ARC]
    (tmp_path / "arc_easy").mkdir()
    _write_jsonl(tmp_path / "arc_easy" / "ARC-Easy-Test.jsonl", rows)
    results = evaluate(ours._ctx, parse_task_list("arc_easy:0"), str(tmp_path))
    ours_doc = lm_eval_results.document(results)["results"]["arc_easy"]
    theirs = runs[0]["results"]["arc_easy"]
    assert 0.0 < theirs["acc_norm,none"] < 1.0  # a stderr that is not 0
    for key in ("acc,none", "acc_stderr,none", "acc_norm,none", "acc_norm_stderr,none"):
        assert ours_doc[key] == pytest.approx(theirs[key], rel=1e-12, abs=1e-12), key
    assert ours_doc["alias"] == theirs["alias"] == "arc_easy"
    assert runs[0]["n-samples"]["arc_easy"]["effective"] == len(ARC)


def _requests(kind, args):
    return [Instance(request_type=kind, doc={}, arguments=a, idx=i) for i, a in enumerate(args)]


def test_loglikelihood_rolling_equals_hf(model_dirs):
    ours = LlamaJaxLM(checkpoint=str(model_dirs[1]), max_length=16, batch_size=4)
    hf = HFLM(pretrained=str(model_dirs[0]), device="cpu", batch_size=4, max_length=16)
    texts = [HELLASWAG[0]["ctx"] + " " + " ".join(HELLASWAG[0]["endings"]),  # several windows
             "A man sits.", ARC[1]["question"] * 3]
    got = ours.loglikelihood_rolling(_requests("loglikelihood_rolling", [(t,) for t in texts]))
    want = hf.loglikelihood_rolling(_requests("loglikelihood_rolling", [(t,) for t in texts]))
    assert len(ours.tok_encode(texts[0])) > 2 * 16
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)


def test_generate_until_equals_hf(model_dirs, hf):
    # The checkpoint's tokenizer.json read by `tokenizers`, as HF reads it: SentencePiece
    # decodes a run of invalid UTF-8 byte tokens per byte, tokenizers' ByteFallback per run,
    # and a random model generates such runs.
    ours = LlamaJaxLM(checkpoint=str(model_dirs[1]), tokenizer=str(model_dirs[0] / "tokenizer.json"))
    args = [("A woman puts flour in a bowl.", {"until": ["\n", "."], "max_gen_toks": 12}),
            ("Question: Which animal can fly?\nAnswer:", {"until": ["\n"], "max_gen_toks": 8,
                                                          "do_sample": False}),
            ("The dog", {"until": ["\n", "."], "max_gen_toks": 12})]
    got = ours.generate_until(_requests("generate_until", args))
    want = hf.generate_until(_requests("generate_until", args))
    assert got == want
    assert any(g for g in got)


def test_empty_context_and_encoding_match_hf(ours, hf):
    args = [("", "A woman puts flour"), ("Question: What do plants need?\nAnswer: ", "sunlight")]
    got = ours.loglikelihood(_requests("loglikelihood", args))
    want = hf.loglikelihood(_requests("loglikelihood", args))
    np.testing.assert_allclose([g[0] for g in got], [w[0] for w in want], rtol=1e-4, atol=1e-4)
    for text in ("Hello world", " two  spaces", "a\n\nb "):
        assert ours.tok_encode(text) == hf.tok_encode(text), text
    # A rendered chat prompt: its "<s>" is the BOS id (as a Llama tokenizer parses it; the
    # exported tokenizer.json splits special-token text, so HFLM would read three pieces).
    assert ours.tok_encode("<s>Question") == [1, *ours.tok.encode("Question")]
    assert ours.tok_encode("Question", add_special_tokens=False) == ours.tok.encode("Question")
    assert ours.prefix_token_id == hf.prefix_token_id and ours.eot_token_id == hf.eot_token_id
    # Our own tasks' encode_pair is lm-eval's split (TemplateLM._encode_pair, BOS first).
    for c, x in [("Question: Which is a source of light?\nAnswer:", " the sun"),
                 ("A man sits on a stool holding a guitar. he ", "strums the strings."),
                 ("Baking cookies: A woman", " puts flour in a bowl.")]:
        assert encode_pair(ours.tok, c, x) == ours._encode_pair(c, x) == hf._encode_pair(c, x)


def test_registered_and_cli_runs(model_dirs, include_dir, tmp_path):
    assert lm_eval.api.registry.get_model("llama_jax") is LlamaJaxLM
    assert lm_eval.api.registry.get_model("hf") is HFLM  # lm-eval's own models stay listed
    out = tmp_path / "out"
    env = {**os.environ, **OFFLINE, "PYTHONPATH": os.getcwd()}
    proc = subprocess.run(
        [sys.executable, "-m", "llama_jax.lm_eval", "--model", "llama_jax", "--model_args",
         f"checkpoint={model_dirs[1]},batch_size=4", "--batch_size", "2", "--tasks", "arc_easy", "--include_path",
         str(include_dir), "--output_path", str(out), "--limit", "2"],
        env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    files = list(out.rglob("results_*.json"))
    assert len(files) == 1, proc.stdout[-2000:]
    res = json.loads(files[0].read_text())["results"]["arc_easy"]
    assert 0.0 <= res["acc,none"] <= 1.0 and "acc_stderr,none" in res


def test_bad_model_args(model_dirs, tmp_path):
    with pytest.raises(ConfigError, match="checkpoint=PATH"):
        LlamaJaxLM()
    with pytest.raises(ConfigError, match=r"unknown key\(s\) \['pretrained'\]"):
        LlamaJaxLM.create_from_arg_string(f"checkpoint={model_dirs[1]},pretrained=gpt2")
    with pytest.raises(ConfigError, match="batch_size"):
        LlamaJaxLM(checkpoint=str(model_dirs[1]), batch_size="lots")
    with pytest.raises(ConfigError, match="mesh"):
        LlamaJaxLM(checkpoint=str(model_dirs[1]), mesh="1x2")
    with pytest.raises(ConfigError, match=f"checkpoint={tmp_path / 'missing'} does not exist"):
        LlamaJaxLM(checkpoint=str(tmp_path / "missing"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="tokenizer=FILE"):
        LlamaJaxLM(checkpoint=str(tmp_path / "empty"))


@pytest.mark.parametrize("kwargs", [
    {"until": ["\n\n", "Question:"], "max_gen_toks": 32, "do_sample": False},
    {"until": "\n", "max_new_tokens": 5, "temperature": 0.0},
    {"max_tokens": 7, "temperature": 0.7},  # do_sample absent, temperature > 0: sampling
    {"do_sample": True, "temperature": 0.5, "top_p": 0.9, "top_k": 4},
    {"do_sample": False, "temperature": 0.8},  # greedy wins
    {},
])
def test_gen_options_read_gen_kwargs_as_lm_eval_does(kwargs):
    want = dict(normalize_gen_kwargs(kwargs, 256))
    until, max_gen, sampling = gen_options(kwargs, 256, "</s>")
    assert until == handle_stop_sequences(want["until"], eos="</s>")
    assert max_gen == want["max_gen_toks"]
    assert sampling.temperature == (want["temperature"] if want["do_sample"] else 0.0)
    assert (sampling.top_k, sampling.top_p) == ((kwargs.get("top_k", 0), kwargs.get("top_p", 1.0))
                                                if not sampling.greedy else (0, 1.0))
    text = "An answer.\n\nQuestion: next</s> more"
    assert cut_at_stops(text, until) == postprocess_generated_text(text, until, None)


def test_from_params_chat_template_and_entry_point(model_dirs, ours):
    config, params = from_pretrained(model_dirs[1], progress=False)
    live = LlamaJaxLM.from_params(config, params, ours.tok, batch_size=4)
    reqs = _requests("loglikelihood", [("Question: Which is a source of light?\nAnswer:",
                                        " the sun")])
    np.testing.assert_allclose(live.loglikelihood(reqs)[0][0], ours.loglikelihood(reqs)[0][0],
                               rtol=1e-5)
    # --apply_chat_template: the llama2 template (the checkpoint has none); "<s>" is BOS.
    chat = [{"role": "user", "content": "Which animal can fly?"}]
    prompt = ours.apply_chat_template(chat)
    assert prompt.startswith("<s>[INST]") and ours.chat_template(True)
    assert ours.tok_encode(prompt)[0] == 1 and ours.tok_encode(prompt).count(1) == 1
    # Newer lm-eval loads plugins from this entry point (group "lm_eval.models").
    ep = importlib.metadata.EntryPoint(name="llama_jax", group=ENTRY_POINT_GROUP,
                                       value="llama_jax.eval.lm_eval_adapter:LlamaJaxLM")
    assert ep.load() is LlamaJaxLM


def test_simple_evaluate_with_chat_template_runs(ours, include_dir):
    manager = TaskManager(include_path=str(include_dir), include_defaults=False)
    out = lm_eval.simple_evaluate(model=ours, tasks=["arc_easy"], task_manager=manager,
                                  apply_chat_template=True, limit=1, bootstrap_iters=0)
    args = out["samples"]["arc_easy"][0]["arguments"]
    context = args[0][0]  # (context, continuation) of the first choice
    assert context.startswith("<s>[INST]") and "Which is a source of light?" in context
    assert 0.0 <= out["results"]["arc_easy"]["acc,none"] <= 1.0
