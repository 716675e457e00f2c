"""MATH (Hendrycks et al., 2021) with Minerva's 4-shot prompt, greedy and maj1@k.

The prompt, the stop sequence and the scoring are lm-evaluation-harness
0.4.13's ``minerva_math`` task (``lm_eval/tasks/minerva_math/``, after
Lewkowycz et al. 2022): the four fixed examples of ``list_fewshot_samples``
as ``"Problem:\\n<problem>\\n\\nSolution: <solution>\\n\\n"``, then
``"Problem:\\n<problem>\\n\\nSolution:"``; generation stops at "Problem:";
the answer is X of "Final Answer: The final answer is X. I hope it is
correct.", the reference the last ``\\boxed{}`` of the solution, both
normalised as Minerva (`math_normalize`) and compared with `is_equiv`.

With ``math_samples`` = k > 1 (the paper: k = 256) each problem gets k samples
at ``math_temperature`` and maj1@k is the majority vote over the normalised
answers (invalid ones do not vote); maj1@1 is the first sample. Accuracies
are also given per subject and per level (averages over problems).

Data (``--data_dir/math/``): the release tarball's ``[MATH/]test/<subject>/<n>.json``
(fields 'problem', 'level', 'type', 'solution'), or the Hugging Face export:
``EleutherAI/hendrycks_math`` (``<subject>/test-*.parquet`` / ``.jsonl``) or
``hendrycks/competition_math`` (``test.jsonl`` / ``test-*.parquet``), same fields.
"""

from __future__ import annotations

import glob
import os
import re
from typing import Any

from llama_jax.errors import ConfigError
from llama_jax.eval import metrics
from llama_jax.eval.tasks import readers
from llama_jax.eval.tasks.base import EvalContext, Task, check_limit
from llama_jax.eval.tasks.generative import run_generation
from llama_jax.eval.tasks.math_normalize import (
    INVALID_ANSWER,
    SYMPY_EQUIVALENCE,
    boxed_answer,
    get_unnormalized_answer,
    is_equiv,
    normalize_final_answer,
)
from llama_jax.eval.tasks.readers import DataError, get_field, require
from llama_jax.infer.engine import GREEDY, SamplingConfig

MATH_FORMAT = ("Hendrycks MATH as released: test/<subject>/<n>.json (or MATH/test/...), each "
               "a JSON object with 'problem', 'level', 'type', 'solution' (with a \\boxed{} "
               "answer); or the HF export (EleutherAI/hendrycks_math <subject>/test-*.parquet, "
               "hendrycks/competition_math test.jsonl / test-*.parquet) with the same fields")
MATH_STOP = ("Problem:",)
_FIELDS = ("problem", "level", "type", "solution")

# lm-eval minerva_math utils.list_fewshot_samples (Lewkowycz et al. 2022, Appendix D.2).
FEWSHOT = (
    ("Find the domain of the expression  $\\frac{\\sqrt{x-2}}{\\sqrt{5-x}}$.",
     "The expressions inside each square root must be non-negative. Therefore, $x-2 \\ge 0$, so "
     "$x\\ge2$, and $5 - x \\ge 0$, so $x \\le 5$. Also, the denominator cannot be equal to zero, "
     "so $5-x>0$, which gives $x<5$. Therefore, the domain of the expression is "
     "$\\boxed{[2,5)}$.\nFinal Answer: The final answer is $[2,5)$. I hope it is correct."),
    ("If $\\det \\mathbf{A} = 2$ and $\\det \\mathbf{B} = 12,$ then find "
     "$\\det (\\mathbf{A} \\mathbf{B}).$",
     "We have that $\\det (\\mathbf{A} \\mathbf{B}) = (\\det \\mathbf{A})(\\det \\mathbf{B}) = "
     "(2)(12) = \\boxed{24}.$\nFinal Answer: The final answer is $24$. I hope it is correct."),
    ("Terrell usually lifts two 20-pound weights 12 times. If he uses two 15-pound weights "
     "instead, how many times must Terrell lift them in order to lift the same total weight?",
     "If Terrell lifts two 20-pound weights 12 times, he lifts a total of "
     "$2\\cdot 12\\cdot20=480$ pounds of weight.  If he lifts two 15-pound weights instead for "
     "$n$ times, he will lift a total of $2\\cdot15\\cdot n=30n$ pounds of weight.  Equating "
     "this to 480 pounds, we can solve for $n$:\n\\begin{align*}\n30n&=480\\\\\n"
     "\\Rightarrow\\qquad n&=480/30=\\boxed{16}\n\\end{align*}\nFinal Answer: The final answer "
     "is $16$. I hope it is correct."),
    ("If the system of equations\n\n\\begin{align*}\n6x-4y&=a,\\\\\n6y-9x &=b.\n\\end{align*}"
     "has a solution $(x, y)$ where $x$ and $y$ are both nonzero,\nfind $\\frac{a}{b},$ "
     "assuming $b$ is nonzero.",
     "If we multiply the first equation by $-\\frac{3}{2}$, we obtain\n\n$$6y-9x=-\\frac{3}{2}a."
     "$$Since we also know that $6y-9x=b$, we have\n\n$$-\\frac{3}{2}a=b\\Rightarrow\\frac{a}{b}"
     "=\\boxed{-\\frac{2}{3}}.$$\nFinal Answer: The final answer is $-\\frac{2}{3}$. I hope it "
     "is correct."),
)


def doc_to_text(problem: str) -> str:
    """lm-eval's minerva_math doc_to_text."""
    return "Problem:" + "\n" + problem + "\n\n" + "Solution:"


def minerva_prompt(problem: str, num_fewshot: int = 4) -> str:
    """The first `num_fewshot` Minerva examples (target delimiter " ", few-shot
    delimiter a blank line, as lm-eval joins them), then the problem."""
    if not 0 <= num_fewshot <= len(FEWSHOT):
        raise ConfigError(f"math: {num_fewshot} shots asked, but Minerva's prompt has "
                          f"{len(FEWSHOT)} examples; use --tasks=math:<0-{len(FEWSHOT)}>")
    shots = "".join(doc_to_text(p) + " " + s + "\n\n" for p, s in FEWSHOT[:num_fewshot])
    return shots + doc_to_text(problem)


def _subject_of(path: str, rec: dict[str, Any]) -> str:
    """The subject folder name ("intermediate_algebra"), from 'type' if need be."""
    kind = rec.get("type")
    if isinstance(kind, str) and kind:
        return re.sub(r"[^a-z]+", "_", kind.lower().replace("&", "and")).strip("_")
    return os.path.basename(os.path.dirname(path))


def _doc(rec: Any, i: int, path: str) -> dict[str, Any]:
    require(isinstance(rec, dict), path, i, "not a JSON object", MATH_FORMAT)
    doc = {k: get_field(rec, k, i, path, MATH_FORMAT) for k in _FIELDS}
    answer = boxed_answer(doc["solution"])
    require(answer is not None, path, i, "'solution' has no \\boxed{...} answer", MATH_FORMAT)
    doc.update(answer=answer, subject=_subject_of(path, rec))
    return doc


def _number(path: str) -> tuple[int, str]:
    stem = os.path.splitext(os.path.basename(path))[0]
    return (int(stem), stem) if stem.isdigit() else (1 << 62, stem)


def load_math(data_dir: str) -> list[dict[str, Any]]:
    """Test problems in the release's order (subjects sorted, files by number)."""
    root = os.path.join(data_dir, "math")
    for base in ("test", "MATH/test"):
        folders = sorted(d for d in glob.glob(os.path.join(root, base, "*")) if os.path.isdir(d))
        files = [f for d in folders for f in sorted(glob.glob(os.path.join(d, "*.json")),
                                                    key=_number)]
        if files:
            docs = []
            for path in files:
                rec = readers.read_json(path, MATH_FORMAT)
                docs.append(_doc(rec, 0, path))
            return docs
    for folder in ("", "*"):  # competition_math at the top, hendrycks_math per subject
        for pattern in readers.hf_split("test"):
            hits = sorted(glob.glob(os.path.join(root, folder, pattern)))
            if hits:
                return [_doc(r, i, p) for p in hits
                        for i, r in enumerate(readers.read_records(p, MATH_FORMAT))]
    if not os.path.isdir(root):
        raise DataError(f"math: {root} does not exist; expected {MATH_FORMAT}. Put the data "
                        f"set's published files under {root}/ (nothing is downloaded at run time)")
    raise DataError(f"math: no test problems found under {root} (looked for test/<subject>/"
                    f"*.json, MATH/test/<subject>/*.json, test.jsonl, test*.parquet and "
                    f"<subject>/test*.parquet); expected {MATH_FORMAT}")


def _limit_per_subject(docs: list[dict[str, Any]], limit: int | None) -> list[dict[str, Any]]:
    check_limit(limit)
    if limit is None:
        return docs
    seen: dict[str, int] = {}
    out = []
    for d in docs:
        seen[d["subject"]] = seen.get(d["subject"], 0) + 1
        if seen[d["subject"]] <= limit:
            out.append(d)
    return out


def score_samples(samples: list[str], reference: str) -> dict[str, Any]:
    """Answers of one problem's samples, the first's correctness and maj1@k's."""
    answers = [normalize_final_answer(get_unnormalized_answer(s)) for s in samples]
    votes = [None if a == INVALID_ANSWER else a for a in answers]
    vote = metrics.majority_vote(votes)
    return {"answers": answers, "vote": vote, "first_correct": is_equiv(answers[0], reference),
            "vote_correct": vote is not None and is_equiv(vote, reference)}


def _grouped(docs, hits, key: str) -> dict[str, dict[str, Any]]:
    groups: dict[str, list[float]] = {}
    for d, h in zip(docs, hits, strict=True):
        groups.setdefault(str(d[key]), []).append(float(h))
    return {g: {"acc": metrics.mean(v), "num_examples": len(v)} for g, v in sorted(groups.items())}


def run_math(ctx: EvalContext, data_dir: str, num_fewshot: int, limit: int | None):
    """maj1@1 (greedy, or the first sample) and maj1@k, overall, per subject, per level
    (``limit``: problems per subject)."""
    docs = _limit_per_subject(load_math(data_dir), limit)
    prompts = [minerva_prompt(d["problem"], num_fewshot) for d in docs]
    k = ctx.options.math_samples
    sampling = GREEDY if k == 1 else SamplingConfig(temperature=ctx.options.math_temperature)
    outs = run_generation(ctx, prompts, stop=MATH_STOP, sampling=sampling, num_samples=k,
                          max_new_tokens=ctx.options.math_max_new_tokens)
    scored = [score_samples(s, d["answer"]) for s, d in zip(outs, docs, strict=True)]
    primary = "maj1@k" if k > 1 else "maj1@1"
    hits = [s["vote_correct"] if k > 1 else s["first_correct"] for s in scored]
    return {"maj1@1": metrics.mean(s["first_correct"] for s in scored),
            "maj1@k": metrics.mean(s["vote_correct"] for s in scored), "k": k,
            "primary_metric": primary, "num_examples": len(docs), "num_fewshot": num_fewshot,
            "subjects": _grouped(docs, hits, "subject"), "levels": _grouped(docs, hits, "level"),
            "equivalence": "sympy" if SYMPY_EQUIVALENCE else "string",
            "predictions": [{"subject": d["subject"], "level": d["level"],
                             "reference": d["answer"], "answers": s["answers"],
                             "vote": s["vote"], "first_sample": o[0]}
                            for d, s, o in zip(docs, scored, outs, strict=True)]}


TASKS = {"math": Task("math", "generative", run_math, 4, MATH_FORMAT)}
