"""Generative tasks: Natural Questions and TriviaQA (exact match), GSM8K (maj1@k).

Closed-book QA follows the paper's Appendix A: the prompt starts with
"Answer these questions:\\n", then "Q: ...\\nA: ..." examples, then the
question; greedy decoding stopped at the first line break, full stop or comma;
exact match after SQuAD normalisation against any reference answer.

GSM8K uses lm-evaluation-harness's prompt ("Question: ...\\nAnswer: <worked
solution> #### <number>" examples from the train split), k samples per
problem and a majority vote over the extracted final numbers (maj1@k).
"""

from __future__ import annotations

import ast
import random
from typing import Any

from absl import logging

from llama_jax.chat.templates import encode_rendered
from llama_jax.eval import metrics
from llama_jax.eval.tasks import readers
from llama_jax.eval.tasks.base import EvalContext, Task, apply_limit, chat_prompt, sample_fewshot
from llama_jax.eval.tasks.readers import DataError, get_field, require
from llama_jax.infer.engine import GREEDY, SamplingConfig, generate_text

QA_STOP = ("\n", ".", ",")
QA_PREFIX = "Answer these questions:\n"


def run_generation(ctx: EvalContext, prompts: list[str], *, max_new_tokens: int,
                   stop: tuple[str, ...], sampling: SamplingConfig = GREEDY,
                   num_samples: int = 1) -> list[list[str]]:
    """Continuations of `prompts` with the context's generator and tokenizer.

    ``ctx.options.max_gen_tokens`` overrides `max_new_tokens`; either way it
    is capped at half the model's context so prompts keep room (left-truncated
    like the harness when they are longer).
    """
    generator = ctx.generator
    max_new = ctx.options.max_gen_tokens or max_new_tokens
    cap = max(1, generator.config.max_seq_len // 2)
    if max_new > cap:
        logging.warning("max_new_tokens %d capped at %d (half of max_seq_len)", max_new, cap)
        max_new = cap
    encode = None
    if ctx.chat is not None:  # each prompt as one user turn (lm-eval's --apply_chat_template)
        chat, tok = ctx.chat, ctx.tokenizer
        prompts = [chat_prompt(chat, p) for p in prompts]
        stop = (*stop, *chat.stop_strings)

        def encode(text):
            return encode_rendered(tok, text)
    return generate_text(generator, ctx.tokenizer, prompts, max_new_tokens=max_new,
                         sampling=sampling, num_samples=num_samples, stop=stop, seed=ctx.seed,
                         truncate_left=True, progress=ctx.progress, desc=ctx.label or "generating",
                         encode=encode)


# ----- closed-book QA ----------------------------------------------------------
NQ_FORMAT = ("Natural Questions open as published: JSON Lines (NQ-open.test.jsonl, "
             "NQ-open.dev.jsonl, NQ-open.train.jsonl) with 'question' and 'answer' (a list of "
             "strings), or the DPR TSV nq-test.qa.csv (question<TAB>['answer', ...])")
TQA_FORMAT = ("TriviaQA as published: the release JSON ({'Data': [{'Question', 'Answer': "
              "{'Value', 'Aliases', ...}}]}, e.g. wikipedia-dev.json or unfiltered-web-dev.json), "
              "or JSON Lines / Parquet of rows with 'question' and 'answer': {'value', "
              "'aliases'}")


def _qa_from_dpr_tsv(path: str) -> list[dict[str, Any]]:
    out = []
    for i, row in enumerate(readers.read_csv(path, NQ_FORMAT, delimiter="\t", columns=2)):
        try:
            answers = ast.literal_eval(row[1])
        except (ValueError, SyntaxError):
            raise DataError(f"{path}: row {i + 1}: answers {row[1]!r} are not a list literal; "
                            f"expected {NQ_FORMAT}") from None
        out.append({"question": row[0], "answers": [str(a) for a in answers]})
    return out


def _load_nq_file(path: str) -> list[dict[str, Any]]:
    if path.endswith((".csv", ".tsv")):
        return _qa_from_dpr_tsv(path)
    out = []
    for i, r in enumerate(readers.read_records(path, NQ_FORMAT)):
        q = get_field(r, "question", i, path, NQ_FORMAT)
        answers = get_field(r, "answer", i, path, NQ_FORMAT)
        answers = [answers] if isinstance(answers, str) else answers
        require(isinstance(answers, list) and answers, path, i,
                "'answer' must be a non-empty list of strings", NQ_FORMAT)
        out.append({"question": q, "answers": [str(a) for a in answers]})
    return out


def _load_tqa_file(path: str) -> list[dict[str, Any]]:
    if path.endswith((".json", ".json.gz")):
        records = readers.read_json(path, TQA_FORMAT)
        require(isinstance(records, list), path, 0, "no 'Data' list", TQA_FORMAT)
    else:
        records = readers.read_records(path, TQA_FORMAT)
    out = []
    for i, r in enumerate(records):
        require(isinstance(r, dict), path, i, "not a JSON object", TQA_FORMAT)
        if "Question" in r:  # the release JSON
            q = r["Question"]
            ans = get_field(r, "Answer", i, path, TQA_FORMAT)
            value, aliases = ans.get("Value"), ans.get("Aliases", []) + ans.get("NormalizedAliases", [])
        else:  # the HF rows
            q = get_field(r, "question", i, path, TQA_FORMAT)
            ans = get_field(r, "answer", i, path, TQA_FORMAT)
            value = ans.get("value")
            aliases = list(ans.get("aliases", [])) + list(ans.get("normalized_aliases", []))
        require(isinstance(value, str), path, i, "the answer has no 'Value'/'value' string",
                TQA_FORMAT)
        out.append({"question": q, "answers": [value] + [a for a in aliases if a != value]})
    return out


def qa_prompt(question: str, shots: list[dict[str, Any]], add_question_mark: bool) -> str:
    """The paper's closed-book QA prompt (Figure 3)."""

    def q(text):
        text = text.strip()
        return text + "?" if add_question_mark and not text.endswith("?") else text

    body = "".join(f"Q: {q(s['question'])}\nA: {s['answers'][0]}\n" for s in shots)
    return QA_PREFIX + body + f"Q: {q(question)}\nA:"


def _qa_task(name: str, fmt: str, loader, eval_patterns, train_patterns, question_mark: bool):
    def run(ctx: EvalContext, data_dir: str, num_fewshot: int, limit: int | None):
        docs = apply_limit(loader(readers.find_file(data_dir, name, eval_patterns, fmt)), limit)
        train = []
        if num_fewshot > 0:
            train = loader(readers.find_file(data_dir, name, train_patterns,
                                             fmt + " (a train file, for the few-shot examples)"))
        rng = random.Random(1234 + ctx.seed)
        prompts = [qa_prompt(d["question"], sample_fewshot(train, num_fewshot, rng), question_mark)
                   for d in docs]
        outs = run_generation(ctx, prompts, stop=QA_STOP,
                              max_new_tokens=ctx.options.qa_max_new_tokens)
        preds = [o[0].strip() for o in outs]
        hits = [metrics.exact_match(p, d["answers"]) for p, d in zip(preds, docs, strict=True)]
        return {"exact_match": metrics.mean(hits), "primary_metric": "exact_match",
                "num_examples": len(docs), "num_fewshot": num_fewshot,
                "predictions": [{"question": d["question"], "prediction": p, "correct": h}
                                for d, p, h in zip(docs, preds, hits, strict=True)]}

    return Task(name, "generative", run, 0, fmt)


# ----- GSM8K ---------------------------------------------------------------------
GSM8K_FORMAT = ("GSM8K JSON Lines as published (test.jsonl and, for few-shot examples, "
                "train.jsonl) with 'question' and 'answer' (a worked solution ending in "
                "'#### <number>')")
GSM8K_STOP = ("\n\n", "Question:")


def _load_gsm8k(path: str) -> list[dict[str, Any]]:
    out = []
    for i, r in enumerate(readers.read_records(path, GSM8K_FORMAT)):
        q = get_field(r, "question", i, path, GSM8K_FORMAT)
        a = get_field(r, "answer", i, path, GSM8K_FORMAT)
        require("####" in a, path, i, "'answer' has no '#### <number>' final answer", GSM8K_FORMAT)
        out.append({"question": q, "answer": a, "reference": metrics.extract_number(a)})
    return out


def run_gsm8k(ctx: EvalContext, data_dir: str, num_fewshot: int, limit: int | None):
    """maj1@1 (first sample) and maj1@k (k = option gsm8k_samples)."""
    docs = apply_limit(_load_gsm8k(readers.find_file(
        data_dir, "gsm8k", readers.hf_split("test"), GSM8K_FORMAT)), limit)
    train = []
    if num_fewshot > 0:
        train = _load_gsm8k(readers.find_file(data_dir, "gsm8k", readers.hf_split("train"),
                                              GSM8K_FORMAT))
    rng = random.Random(1234 + ctx.seed)
    prompts = []
    for d in docs:
        shots = sample_fewshot(train, num_fewshot, rng)
        prompts.append("".join(f"Question: {s['question']}\nAnswer: {s['answer']}\n\n" for s in shots)
                       + f"Question: {d['question']}\nAnswer:")
    k = ctx.options.gsm8k_samples
    sampling = GREEDY if k == 1 else SamplingConfig(
        temperature=ctx.options.gsm8k_temperature)
    outs = run_generation(ctx, prompts, stop=GSM8K_STOP, sampling=sampling, num_samples=k,
                          max_new_tokens=ctx.options.gsm8k_max_new_tokens)
    first, maj, preds = [], [], []
    for d, samples in zip(docs, outs, strict=True):
        answers = [metrics.extract_number(s) for s in samples]
        first.append(answers[0] is not None and answers[0] == d["reference"])
        maj.append(metrics.maj_at_k(answers, d["reference"]))
        preds.append({"reference": d["reference"], "answers": answers,
                      "vote": metrics.majority_vote(answers), "first_sample": samples[0]})
    return {"maj1@1": metrics.mean(first), "maj1@k": metrics.mean(maj), "k": k,
            "primary_metric": "maj1@k" if k > 1 else "maj1@1", "num_examples": len(docs),
            "predictions": preds}


TASKS: dict[str, Task] = {t.name: t for t in (
    _qa_task("naturalqs", NQ_FORMAT, _load_nq_file,
             ["NQ-open.test.jsonl", "*test*.jsonl", "nq-test.qa.csv", "NQ-open.dev.jsonl",
              "*dev*.jsonl", "test*.parquet", *readers.hf_split("validation")],
             ["NQ-open.train.jsonl", "*train*.jsonl", "nq-train.qa.csv", "train*.parquet"],
             question_mark=True),
    _qa_task("triviaqa", TQA_FORMAT, _load_tqa_file,
             ["*dev*.json", "*dev*.jsonl", *readers.hf_split("validation")],
             ["*train*.json", "*train*.jsonl", "train*.parquet"], question_mark=False),
    Task("gsm8k", "generative", run_gsm8k, 8, GSM8K_FORMAT),
)}
