"""Multiple-choice scoring as the paper did it (Gao et al. 2021; Brown et al. 2020).

Each choice is scored by the summed log-likelihood of ``" " + choice`` after
the context. Three selection rules are reported:

* ``acc``: the highest log-likelihood;
* ``acc_norm``: the highest log-likelihood divided by the number of characters
  of the choice (the harness's acc_norm; the paper's main rule);
* ``acc_uncond``: the highest ``log P(choice | context) - log P(choice | "Answer:")``
  (Brown et al.'s normalisation, which the paper uses for BoolQ and OpenBookQA).

Partial scoring (WinoGrande): the choices are alternative contexts and the
shared continuation (the sentence after the blank) is scored after each.
"""

from __future__ import annotations

import dataclasses
import random
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from llama_jax.eval.tasks.base import EvalContext, encode_pair, sample_fewshot

TARGET_DELIMITER = " "
FEWSHOT_DELIMITER = "\n\n"
UNCONDITIONAL_CONTEXT = "Answer:"


@dataclasses.dataclass
class MCDoc:
    """One multiple-choice question.

    Attributes:
      query: the prompt text (the harness's doc_to_text).
      choices: the answer strings; with `partial_target`, alternative contexts.
      gold: index of the right choice.
      partial_target: shared continuation for partial scoring (WinoGrande).
      group: a label for grouped averages (MMLU subject).
    """

    query: str
    choices: list[str]
    gold: int
    partial_target: str | None = None
    group: str | None = None

    def fewshot_text(self) -> str:
        """This doc answered, for use as a few-shot example."""
        if self.partial_target is not None:
            return self.choices[self.gold] + TARGET_DELIMITER + self.partial_target
        return self.query + TARGET_DELIMITER + self.choices[self.gold]


def build_requests(doc: MCDoc, prefix: str) -> list[tuple[str, str]]:
    """(context, continuation) strings for every choice of `doc`."""
    if doc.partial_target is not None:
        return [(prefix + c, TARGET_DELIMITER + doc.partial_target) for c in doc.choices]
    return [(prefix + doc.query, TARGET_DELIMITER + c) for c in doc.choices]


def choose(lls: Sequence[float], choices: Sequence[str],
           uncond: Sequence[float] | None = None) -> dict[str, int]:
    """The chosen index under each selection rule (ties: the first)."""
    lls = np.asarray(lls, np.float64)
    lengths = np.asarray([max(len(c), 1) for c in choices], np.float64)
    out = {"acc": int(np.argmax(lls)), "acc_norm": int(np.argmax(lls / lengths))}
    if uncond is not None:
        out["acc_uncond"] = int(np.argmax(lls - np.asarray(uncond, np.float64)))
    return out


def evaluate_multiple_choice(
    ctx: EvalContext,
    docs: Sequence[MCDoc],
    *,
    fewshot_pool: Sequence[MCDoc] | Callable[[MCDoc], Sequence[MCDoc]] = (),
    num_fewshot: int = 0,
    description: str | Any = "",
    unconditional: bool = False,
    first_n: bool = False,
    primary_metric: str = "acc_norm",
) -> dict[str, Any]:
    """Score `docs` and return accuracies under each selection rule.

    Args:
      ctx: evaluation context (tokenizer, scorer).
      docs: the questions.
      fewshot_pool: examples for few-shot prompts (if empty: the other docs);
        a callable gets the doc (MMLU: that subject's dev examples).
      num_fewshot: examples per prompt, joined with blank lines.
      description: text before the examples; a callable gets the doc.
      unconditional: also score each choice after "Answer:" (acc_uncond).
      first_n: take the first examples of the pool instead of a random sample.
      primary_metric: which metric is the headline number.

    Returns:
      {"acc", "acc_norm", ["acc_uncond"], "primary_metric", "num_examples",
       "predictions"} plus per-group accuracies when docs have groups.
    """
    rng = random.Random(1234 + ctx.seed)
    tok = ctx.tokenizer
    requests, spans = [], []
    for doc in docs:
        pool = fewshot_pool(doc) if callable(fewshot_pool) else (fewshot_pool or docs)
        shots = sample_fewshot(pool, num_fewshot, rng, exclude=doc, first_n=first_n)
        desc = description(doc) if callable(description) else description
        prefix = desc + "".join(s.fewshot_text() + FEWSHOT_DELIMITER for s in shots)
        start = len(requests)
        requests.extend(encode_pair(tok, c, x, ctx.chat) for c, x in build_requests(doc, prefix))
        spans.append((start, len(requests)))
    uncond_index: dict[str, int] = {}
    if unconditional:
        for doc in docs:
            for c in doc.choices:
                if c not in uncond_index:
                    uncond_index[c] = len(requests)
                    requests.append(encode_pair(tok, UNCONDITIONAL_CONTEXT,
                                                TARGET_DELIMITER + c, ctx.chat))
    scores = [r.logprob for r in ctx.scorer.loglikelihood(
        requests, progress=ctx.progress, desc=ctx.label or "scoring")] if requests else []

    correct: dict[str, list[float]] = {"acc": [], "acc_norm": []}
    if unconditional:
        correct["acc_uncond"] = []
    groups: dict[str, dict[str, list[float]]] = {}
    predictions = []
    for doc, (a, b) in zip(docs, spans, strict=True):
        lls = scores[a:b]
        # Partial scoring shares one continuation, so every rule reduces to acc.
        lens = doc.choices if doc.partial_target is None else [doc.partial_target] * len(lls)
        uncond = [scores[uncond_index[c]] for c in doc.choices] if unconditional else None
        picks = choose(lls, lens, uncond)
        predictions.append({"gold": doc.gold, "loglikelihoods": lls, **picks})
        for metric, pick in picks.items():
            hit = float(pick == doc.gold)
            correct[metric].append(hit)
            if doc.group is not None:
                groups.setdefault(doc.group, {}).setdefault(metric, []).append(hit)
    result: dict[str, Any] = {m: float(np.mean(v)) if v else 0.0 for m, v in correct.items()}
    result["primary_metric"] = primary_metric
    result["num_examples"] = len(docs)
    if groups:
        result["groups"] = {g: {m: float(np.mean(v)) for m, v in d.items()} | {
            "num_examples": len(d["acc"])} for g, d in sorted(groups.items())}
    result["predictions"] = predictions
    return result
