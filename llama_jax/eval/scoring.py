"""Jitted, mesh-sharded log-likelihood scoring of token sequences.

`Scorer.loglikelihood` scores (context, continuation) token pairs the way
lm-evaluation-harness does: the model reads ``(context + continuation)[:-1]``
(left-truncated to the model's context), and the continuation's log-probability
is the sum over its tokens; ``is_greedy`` says whether every continuation token
is the argmax. Requests are packed into rows of the length bucket of the
longest (`pack_rows`: several requests share a row as separate segments, each
with its own positions from 0, so no request sees another and little of a
batch is padding), in fixed-size batches of rows, so a call compiles once per
bucket that occurs (a handful of times in all), not once per example. The
output head, its log-softmax and argmax run only at the continuations'
positions (`logit_slots` per row: a quarter of the row, or the whole row for
a longer continuation).
`trace_count` counts the traces of the jitted function so tests can assert it.

`Scorer.loglikelihood_rolling` scores whole documents in the harness's rolling
windows (``get_rolling_token_windows`` + ``make_disjoint_window``): every token
is predicted once, and every window after the first sees the model's full
context; for perplexity.

`Scorer.token_logprobs` gives every token's log-probability of a few rows
(for perplexity by position, `llama_jax.eval.tasks.long_context`).
"""

from __future__ import annotations

import collections
import dataclasses
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh

from llama_jax import distributed, sharding
from llama_jax.infer import placement
from llama_jax.infer.engine import greedy_tokens
from llama_jax.model import Llama, LlamaConfig
from llama_jax.progress import bar as progress_bar


@dataclasses.dataclass(frozen=True)
class LoglikelihoodResult:
    """Score of one continuation: summed log-prob, greedy flag, token count."""

    logprob: float
    is_greedy: bool
    num_tokens: int


def default_buckets(max_len: int, smallest: int = 32) -> tuple[int, ...]:
    """Powers of two from `smallest` up to `max_len` (which is always last)."""
    buckets, b = [], smallest
    while b < max_len:
        buckets.append(b)
        b *= 2
    buckets.append(max_len)
    return tuple(buckets)


def _bucket(length: int, buckets: Sequence[int]) -> int:
    for b in buckets:
        if length <= b:
            return b
    raise ValueError(f"sequence of {length} tokens exceeds the largest bucket {buckets[-1]}")


def logit_slots(row_len: int, longest_continuation: int) -> int:
    """Output-head positions per row: a quarter of the row, or all of it when a
    continuation is longer (whole-window perplexity). Two shapes per bucket."""
    quarter = max(1, row_len // 4)
    return quarter if longest_continuation <= quarter else row_len


def pack_rows(lengths: Sequence[int], buckets: Sequence[int], rows_per_batch: int,
              continuations: Sequence[int] | None = None,
              ) -> tuple[int, int, list[list[list[int]]]]:
    """Pack requests into rows: ``(row_len, slots, batches of rows)``.

    Every row is `row_len` long, the bucket of the longest request (one
    compiled shape per call; a batch then holds as many tokens as an unpacked
    batch of that bucket would), and holds at most `slots` continuation tokens
    (`logit_slots`: where the output head runs); each row lists the request
    indices it holds, in order, and a batch has at most `rows_per_batch` rows.
    `continuations` are the requests' continuation lengths (default: all of
    each request). Greedy over the requests sorted longest first: a row opens
    with the longest request left, then takes the longest that still fits,
    else the shortest, until neither fits. Every request lands in exactly one
    row. O(n) deque operations.
    """
    if not lengths:
        return buckets[0], buckets[0], []
    conts = list(lengths) if continuations is None else list(continuations)
    order = collections.deque(sorted(range(len(lengths)), key=lambda i: -lengths[i]))
    row_len = _bucket(lengths[order[0]], buckets)
    slots = logit_slots(row_len, max(conts))

    def fits(i, free, free_slots):
        return lengths[i] <= free and conts[i] <= free_slots

    rows = []
    while order:
        row = [order.popleft()]
        free, free_slots = row_len - lengths[row[0]], slots - conts[row[0]]
        while order:
            if fits(order[0], free, free_slots):
                i = order.popleft()
            elif fits(order[-1], free, free_slots):
                i = order.pop()
            else:
                break
            row.append(i)
            free, free_slots = free - lengths[i], free_slots - conts[i]
        rows.append(row)
    return row_len, slots, [rows[i:i + rows_per_batch]
                            for i in range(0, len(rows), rows_per_batch)]


class Scorer:
    """Log-likelihoods of continuations under one model, on one mesh.

    Args:
      config: the model config.
      params: parameters for `config` (plain or boxed tree).
      mesh: the mesh to run on (default: all devices on `fsdp`).
      rules: logical-axis rules (default `llama_jax.sharding.DEFAULT_RULES`).
      batch_size: rows per compiled batch (rounded up to the batch split).
      max_len: longest model input (default ``config.max_seq_len``).
      buckets: allowed padded lengths (default powers of two up to max_len).
    """

    def __init__(self, config: LlamaConfig, params, *, mesh: Mesh | None = None,
                 rules: sharding.Rules = sharding.DEFAULT_RULES, batch_size: int = 8,
                 max_len: int | None = None, buckets: Sequence[int] | None = None):
        self.config = config
        self.mesh = mesh if mesh is not None else placement.default_mesh()
        self.rules = rules
        self.max_len = int(max_len or config.max_seq_len)
        if self.max_len > config.max_seq_len:
            raise ValueError(f"max_len={self.max_len} exceeds the model's "
                             f"max_seq_len={config.max_seq_len}")
        self.buckets = tuple(sorted(buckets)) if buckets else default_buckets(self.max_len)
        if self.buckets[-1] < self.max_len:
            self.buckets = (*self.buckets, self.max_len)
        self.batch_size = placement.round_batch(batch_size, self.mesh, rules)
        self.params = placement.place_params(config, params, self.mesh, rules)
        self._model = Llama(config)
        self._in_sharding = sharding.data_sharding(self.mesh, rules, shard_length=False)
        self._jitted = sharding.JittedStep(self._score_batch, self.mesh, rules)
        self._jitted_all = sharding.JittedStep(self._score_all, self.mesh, rules)
        self._jitted_tokens = sharding.JittedStep(self._token_batch, self.mesh, rules)

    @property
    def trace_count(self) -> int:
        """How often the scoring function was traced (per (batch, bucket, slots) shape)."""
        return self._jitted.trace_count

    # The traced functions: each runs once per distinct input shape.
    def _score_batch(self, params, tokens, positions, segment_ids, logit_index, targets):
        """At the [batch, slots] positions `logit_index` only: the log-prob of
        `targets` [batch, slots] and whether each is the argmax."""
        logits = self._model.apply({"params": params}, tokens, positions=positions,
                                   segment_ids=segment_ids,
                                   logit_index=logit_index)  # [batch, slots, vocab]
        return self._target_scores(logits, targets)

    def _score_all(self, params, tokens, positions, targets, segment_ids, loss_mask):
        """Every position's target log-prob, 0 outside `loss_mask` (packed perplexity)."""
        logits = self._model.apply({"params": params}, tokens, positions=positions,
                                   segment_ids=segment_ids)  # [batch, len, vocab]
        lp, _ = self._target_scores(logits, targets)
        return jnp.where(loss_mask.astype(bool), lp, 0.0)  # [batch, len]

    @staticmethod
    def _target_scores(logits, targets):
        """(log-prob of `targets`, is-argmax) per position of [batch, n, vocab] `logits`:
        logit(target) - logsumexp, with no second [batch, n, vocab] array."""
        logits = logits.astype(jnp.float32)  # [batch, n, vocab]
        picked = jnp.take_along_axis(logits, targets[..., None], axis=-1)[..., 0]  # [batch, n]
        target_lp = picked - jax.nn.logsumexp(logits, axis=-1)  # [batch, n]
        return target_lp, greedy_tokens(logits) == targets  # [batch, n] each

    def _token_batch(self, params, tokens, positions, targets, segment_ids):
        logits = self._model.apply({"params": params}, tokens, positions=positions,
                                   segment_ids=segment_ids)  # [batch, len, vocab]
        return self._target_scores(logits, targets)[0]  # [batch, len]

    def token_logprobs(self, rows: Sequence[Sequence[int]], *, progress: bool | None = None,
                       desc: str = "scoring") -> list[np.ndarray]:
        """log p(row[i + 1] | row[:i + 1]) for every i of each row: float32 [len(row) - 1] arrays.

        Each row is read from position 0 (put BOS first) and holds 2 to
        ``max_len + 1`` tokens; rows are batched and right-padded to a bucket
        (bar: as `loglikelihood`).
        """
        vocab = self.config.vocab_size
        for r, row in enumerate(rows):
            if not 2 <= len(row) <= self.max_len + 1:
                raise ValueError(f"row {r} has {len(row)} tokens; token_logprobs scores rows of "
                                 f"2 to max_len + 1 = {self.max_len + 1} tokens")
            bad = [t for t in row if not 0 <= t < vocab]
            if bad:
                raise ValueError(f"token id {bad[0]} is outside the model's vocabulary "
                                 f"[0, {vocab}); is the tokenizer the model's?")
        order = sorted(range(len(rows)), key=lambda i: -len(rows[i]))
        out: list[np.ndarray | None] = [None] * len(rows)
        with progress_bar(total=len(order), desc=desc, unit="row", progress=progress) as bar:
            for start in range(0, len(order), self.batch_size):
                idx = order[start:start + self.batch_size]
                length = _bucket(max(len(rows[i]) - 1 for i in idx), self.buckets)
                shape = (self.batch_size, length)
                tokens, targets = np.zeros(shape, np.int32), np.zeros(shape, np.int32)
                segs = np.zeros(shape, np.int32)
                positions = np.broadcast_to(np.arange(length, dtype=np.int32), shape)
                for j, i in enumerate(idx):
                    n = len(rows[i]) - 1
                    tokens[j, :n], targets[j, :n], segs[j, :n] = rows[i][:-1], rows[i][1:], 1
                batch = jax.device_put((tokens, positions, targets, segs), self._in_sharding)
                lp = np.asarray(self._jitted_tokens(self.params, *batch), np.float32)  # [batch, len]
                for j, i in enumerate(idx):
                    out[i] = lp[j, :len(rows[i]) - 1].copy()
                bar.update(len(idx))
        return out  # type: ignore[return-value]

    def _prepare(self, context: Sequence[int], continuation: Sequence[int]):
        if len(continuation) == 0:
            raise ValueError("a continuation must have at least one token")
        if len(continuation) > self.max_len:
            raise ValueError(f"continuation of {len(continuation)} tokens exceeds "
                             f"max_len={self.max_len}")
        if len(context) == 0:
            raise ValueError("a context must have at least one token (e.g. BOS)")
        whole = (list(context) + list(continuation))[-(self.max_len + 1):]
        return whole[:-1], whole[1:], len(continuation)

    def loglikelihood(
        self, requests: Sequence[tuple[Sequence[int], Sequence[int]]], *,
        progress: bool | None = None, desc: str = "scoring",
    ) -> list[LoglikelihoodResult]:
        """Score each (context_ids, continuation_ids) pair; results in input order.

        `progress`: a tqdm bar of requests scored (with ETA) on stderr, named
        `desc`; None = only when stderr is a terminal, False = never.
        """
        prepared = [self._prepare(c, x) for c, x in requests]
        vocab = self.config.vocab_size
        for inp, tgt, _ in prepared:
            bad = [t for t in (*inp, tgt[-1]) if not 0 <= t < vocab]
            if bad:
                raise ValueError(f"token id {bad[0]} is outside the model's vocabulary "
                                 f"[0, {vocab}); is the tokenizer the model's?")
        results: list[LoglikelihoodResult | None] = [None] * len(prepared)
        length, slots, batches = pack_rows([len(p[0]) for p in prepared], self.buckets,
                                           self.batch_size, [p[2] for p in prepared])
        with progress_bar(total=len(prepared), desc=desc, unit="req", progress=progress) as bar:
            for rows in batches:
                shape = (self.batch_size, length)
                tokens, positions = np.zeros(shape, np.int32), np.zeros(shape, np.int32)
                segs = np.zeros(shape, np.int32)
                index = np.zeros((self.batch_size, slots), np.int32)
                targets = np.zeros((self.batch_size, slots), np.int32)
                spans = []  # (request, row, first slot, end slot)
                for r, row in enumerate(rows):
                    at = used = 0
                    for seg, i in enumerate(row, start=1):
                        inp, tgt, n_cont = prepared[i]
                        n = len(inp)
                        tokens[r, at:at + n] = inp
                        positions[r, at:at + n] = np.arange(n)
                        segs[r, at:at + n] = seg
                        index[r, used:used + n_cont] = np.arange(at + n - n_cont, at + n)
                        targets[r, used:used + n_cont] = tgt[n - n_cont:]
                        spans.append((i, r, used, used + n_cont))
                        at, used = at + n, used + n_cont
                batch = jax.device_put((tokens, positions, segs, index, targets),
                                       self._in_sharding)
                lp, greedy = self._jitted(self.params, *batch)
                lp, greedy = distributed.to_host(lp), distributed.to_host(greedy)
                for i, r, a, b in spans:
                    results[i] = LoglikelihoodResult(float(np.sum(lp[r, a:b], dtype=np.float64)),
                                                     bool(np.all(greedy[r, a:b])), prepared[i][2])
                bar.update(len(spans))
        return results  # type: ignore[return-value]

    def packed_loglikelihood(self, batch: dict[str, np.ndarray]) -> tuple[float, int]:
        """(summed log-prob, tokens) of a packed batch from `make_eval_batches`.

        `batch` has [rows, len] arrays "inputs", "targets", "positions",
        "segment_ids" and "loss_mask" (documents packed into rows, as in
        training); rows are padded up to the batch size with empty rows.
        """
        inputs = np.asarray(batch["inputs"], np.int32)
        rows, length = inputs.shape
        if length > self.max_len:
            raise ValueError(f"packed rows of {length} tokens exceed max_len={self.max_len}")
        size = -(-rows // self.batch_size) * self.batch_size

        def pad(x, dtype):
            x = np.asarray(x, dtype)
            return np.concatenate([x, np.zeros((size - rows, length), dtype)]) if size > rows else x

        arrays = (pad(inputs, np.int32), pad(batch["positions"], np.int32),
                  pad(batch["targets"], np.int32), pad(batch["segment_ids"], np.int32),
                  pad(np.asarray(batch["loss_mask"]) > 0, np.int32))
        total = 0.0
        for start in range(0, size, self.batch_size):
            part = tuple(a[start:start + self.batch_size] for a in arrays)
            lp = self._jitted_all(self.params, *jax.device_put(part, self._in_sharding))
            total += float(np.sum(distributed.to_host(lp), dtype=np.float64))
        return total, int(np.sum(arrays[4]))

    def rolling_windows(self, tokens: Sequence[int], prefix_token: int):
        """Disjoint (context, continuation) requests covering `tokens`, for perplexity.

        lm-evaluation-harness's ``get_rolling_token_windows(token_list, prefix_token,
        max_seq_len=max_len, context_len=1)`` followed by ``make_disjoint_window``:
        every token is predicted exactly once; the first window predicts up to
        `max_len` tokens after `prefix_token` (BOS); each later full window of
        `max_len` tokens is conditioned on the one token before it; the last,
        partial window of ``p`` tokens is conditioned on the ``max_len - p + 1``
        tokens before it, so the model sees a full `max_len` tokens there.
        """
        tokens = list(tokens)
        n, size = len(tokens), self.max_len
        if not tokens:
            return []
        first = min(size, n)
        out = [([prefix_token], tokens[:first])]
        predicted = first
        while predicted < n:
            pred_len = min(n - predicted, size)
            end = predicted + pred_len
            window = tokens[end - size - 1:end - 1]  # the model's `size` input tokens
            out.append((window[:size - pred_len + 1], tokens[end - pred_len:end]))
            predicted += pred_len
        return out

    def loglikelihood_rolling(
        self, documents: Sequence[Sequence[int]], prefix_token: int, *,
        progress: bool | None = None, desc: str = "scoring",
    ) -> list[tuple[float, int]]:
        """(summed log-prob, number of tokens) of each whole document (bar: as `loglikelihood`)."""
        requests, owner = [], []
        for d, doc in enumerate(documents):
            for req in self.rolling_windows(doc, prefix_token):
                requests.append(req)
                owner.append(d)
        scores = self.loglikelihood(requests, progress=progress, desc=desc)
        totals = [[0.0, 0] for _ in documents]
        for d, s in zip(owner, scores, strict=True):
            totals[d][0] += s.logprob
            totals[d][1] += s.num_tokens
        return [(lp, n) for lp, n in totals]
