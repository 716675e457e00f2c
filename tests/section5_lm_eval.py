"""Shared set-up of the Section 5 task tests (test_eval_bias.py, test_eval_truthfulqa.py):
a random tiny Hugging Face Llama with a SentencePiece tokenizer saved by our
exporter, the same weights as our params, and lm-evaluation-harness run offline
on local fixture files through a task yaml that includes lm-eval's own."""

import os
import pathlib

import jax
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")
pytest.importorskip("lm_eval")

import llama_jax  # noqa: E402
from llama_jax import sharding  # noqa: E402
from llama_jax.data.tokenizer import train_tokenizer  # noqa: E402
from llama_jax.eval.runner import build_context  # noqa: E402

LM_EVAL_TASKS = pathlib.Path(__import__("lm_eval").__file__).parent / "tasks"
TOKENIZER_TEXTS = [
    "The quick brown fox jumps over the lazy dog. She said he was a nurse, they agreed.",
    "Q: What is human life expectancy in the United States?\nA: 78 years.\n",
    "The technician told the customer that he could pay with cash. Poor people are lazy.",
]


def tiny_model(folder: pathlib.Path, seed: int = 0, text_only: bool = False):
    """(our tokenizer, config, params) of a random tiny HF Llama saved to `folder`.

    `text_only` zeroes the output rows of byte, unknown and control tokens, so
    greedy decoding picks text pieces: random byte soup decodes differently in
    transformers (a run of bytes that is not UTF-8 becomes all U+FFFD) and in
    SentencePiece, which would hide whether the generated ids agree.
    """
    folder.mkdir(parents=True, exist_ok=True)
    tok = train_tokenizer(TOKENIZER_TEXTS * 20, str(folder / "spm"), vocab_size=300,
                          progress=False)
    torch.manual_seed(seed)
    cfg = transformers.LlamaConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                                   num_key_value_heads=2, intermediate_size=64,
                                   vocab_size=tok.vocab_size, max_position_embeddings=1024,
                                   rms_norm_eps=1e-6, initializer_range=0.3,
                                   tie_word_embeddings=False)
    model = transformers.LlamaForCausalLM(cfg).eval()
    if text_only:
        sp = tok._sp
        rows = [i for i in range(tok.vocab_size)
                if sp.IsByte(i) or sp.IsControl(i) or sp.IsUnknown(i)]
        with torch.no_grad():
            model.lm_head.weight[rows] = 0.0
    model.save_pretrained(folder)
    config, params = llama_jax.from_pretrained(folder, progress=False)
    llama_jax.save_pretrained(config, params, folder, format="hf", tokenizer=tok,
                              overwrite=True, progress=False)
    return tok, config, params


def our_context(tok, config, params, **options):
    """An EvalContext on one CPU device with these weights."""
    from llama_jax.eval.tasks import EvalOptions

    mesh = sharding.make_mesh((1, 1, 1, 1), jax.devices()[:1])
    return build_context(config, params, tok, mesh=mesh, batch_size=8, progress=False,
                         options=EvalOptions(**options))


def lm_eval_yaml(folder: pathlib.Path, name: str, base: str, data_file: str, split: str,
                 builder: str = "json") -> None:
    """A task `name` = lm-eval's yaml `base` (relative to lm_eval/tasks) on a local file."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / f"{name}.yaml").write_text(
        f"include: {LM_EVAL_TASKS / base}\n"
        f"task: {name}\n"
        "tag: []\n"
        f"dataset_path: {builder}\n"
        "dataset_name: null\n"
        f"dataset_kwargs:\n  data_files:\n    {split}: {data_file}\n")


def run_lm_eval(model_dir, task_dir, tasks, cache_dir):
    """lm-eval's results dict (with samples) for `tasks` on the HF model at `model_dir`."""
    os.environ.update(HF_DATASETS_OFFLINE="1", HF_HUB_OFFLINE="1",
                      HF_DATASETS_CACHE=str(cache_dir))
    from lm_eval import simple_evaluate
    from lm_eval.models.huggingface import HFLM
    from lm_eval.tasks import TaskManager

    lm = HFLM(pretrained=str(model_dir), device="cpu", dtype="float32", batch_size=8)
    manager = TaskManager(include_path=str(task_dir), include_defaults=False)
    return simple_evaluate(model=lm, tasks=list(tasks), task_manager=manager, log_samples=True,
                           bootstrap_iters=0)


def sample_lls(results, task):
    """Per-document lists of log-likelihoods from lm-eval's logged samples, in doc order."""
    samples = sorted(results["samples"][task], key=lambda s: s["doc_id"])
    return [[float(r[0]) for r in s["filtered_resps"]] for s in samples]
