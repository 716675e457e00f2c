"""Batched sampling with a KV cache: a jitted prefill and a jitted decode loop.

Prompts are left-padded to a length bucket: padding has segment id 0 and real
tokens segment id 1 (the model's attention masks by segment), and positions
start at 0 at each prompt's first real token. The prefill writes the prompt's
keys and values into the cache (`llama_jax.init_cache`); the decode loop is a
`lax.while_loop` inside jit that samples one token per step (greedy,
temperature, top-k, top-p) and feeds it back through `Llama(decode=True)`.

The loop runs in chunks of `chunk_size` steps: between chunks the host checks
stop strings (which need the tokenizer) and marks rows done; the loop also
stops early once every row is done (EOS or stop string). Each (prompt, sample)
row gets its own random stream keyed by the prompt's tokens and the sample
index (`row_keys`), so results do not depend on how rows are batched.

The samples of one prompt share its prefill: a batch prefills each distinct
prompt once (in a smaller batch, rounded to a power of two so the compiled
shapes stay few) and copies its cache rows and last logits to every sample's
row before decoding (`share_prefill`).

The layers run unrolled (`unroll_layers`): a layer `scan` inside the decode
loop slices every layer's weights out of the stacked arrays at every step, a
copy of the whole model per token (2x slower on CPU, shape (b) at batch 16:
376 against 770 tokens/s, `docs/performance.md`). Scanned params are converted
(a copy); loading with ``config_overrides={"scan_layers": False}`` avoids it.
"""

from __future__ import annotations

import dataclasses
import zlib
from collections.abc import Callable, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from absl import logging
from jax.sharding import Mesh

from llama_jax import distributed, sharding
from llama_jax.infer import placement
from llama_jax.model import Llama, LlamaConfig, init_cache
from llama_jax.model.layer_layout import to_layout
from llama_jax.progress import bar as progress_bar


@dataclasses.dataclass(frozen=True)
class SamplingConfig:
    """How the next token is chosen.

    Attributes:
      temperature: 0 means greedy (argmax); otherwise logits are divided by it.
      top_k: keep only the k most likely tokens (0: off).
      top_p: keep the smallest set of tokens whose probability reaches top_p
        (1.0: off).
    """

    temperature: float = 0.0
    top_k: int = 0
    top_p: float = 1.0

    def __post_init__(self):
        if self.temperature < 0:
            raise ValueError(f"temperature={self.temperature} must be >= 0")
        if self.top_k < 0:
            raise ValueError(f"top_k={self.top_k} must be >= 0 (0 turns it off)")
        if not 0.0 < self.top_p <= 1.0:
            raise ValueError(f"top_p={self.top_p} must be in (0, 1]")

    @property
    def greedy(self) -> bool:
        """True when the temperature is 0 (argmax decoding)."""
        return self.temperature == 0.0


GREEDY = SamplingConfig()


def greedy_tokens(logits: jax.Array) -> jax.Array:
    """``argmax(logits, -1)`` as int32 [...]: the first index of each row's maximum.

    A max, then the least index that holds it: two plain reductions, where
    `jnp.argmax`'s (value, index) reduction is ~5x slower on XLA's CPU back-end
    ([16, 32000]: 1.26 vs 0.26 ms, a twentieth of a batch-16 decode step). A
    row with a NaN gives the last id (argmax would give the NaN's).
    """
    vocab = logits.shape[-1]
    top = jnp.max(logits, axis=-1, keepdims=True)  # [batch, 1]
    first = jnp.min(jnp.where(logits == top, jnp.arange(vocab, dtype=jnp.int32), vocab),
                    axis=-1)  # [batch]
    return jnp.minimum(first, vocab - 1)


def sample_logits(logits: jax.Array, keys: jax.Array, sampling: SamplingConfig) -> jax.Array:
    """One token id per row of `logits` [batch, vocab]; `keys` is [batch] keys."""
    if sampling.greedy:
        return greedy_tokens(logits)
    logits = logits.astype(jnp.float32) / sampling.temperature
    if sampling.top_k:
        k = min(sampling.top_k, logits.shape[-1])
        kth = jax.lax.top_k(logits, k)[0][:, -1:]  # [batch, 1]
        logits = jnp.where(logits < kth, -jnp.inf, logits)
    if sampling.top_p < 1.0:
        sorted_logits = jnp.sort(logits, axis=-1)[:, ::-1]  # [batch, vocab], descending
        probs = jax.nn.softmax(sorted_logits, axis=-1)
        before = jnp.cumsum(probs, axis=-1) - probs  # mass of strictly more likely tokens
        keep = before < sampling.top_p  # the most likely token is always kept
        cutoff = jnp.min(jnp.where(keep, sorted_logits, jnp.inf), axis=-1, keepdims=True)
        logits = jnp.where(logits < cutoff, -jnp.inf, logits)
    return jax.vmap(jax.random.categorical)(keys, logits).astype(jnp.int32)


class Generator:
    """Generates continuations of token prompts under one model, on one mesh.

    Args:
      config: the model config.
      params: parameters for `config`.
      mesh / rules: where to run (default: all devices on `fsdp`).
      batch_size: rows per compiled batch (rounded up to the batch split).
      prompt_buckets: allowed padded prompt lengths (default: powers of two).
      chunk_size: decode steps per jitted call between stop-string checks.
      share_prefill: prefill a prompt once for all its samples (False prefills
        every row; the results are the same).
      unroll_layers: run the layers unrolled (module docstring); scanned params
        are converted to the unscanned layout, a copy. False keeps `config`'s
        layout, for a caller that swaps `params` in later (training's task
        evaluation).
    """

    def __init__(self, config: LlamaConfig, params, *, mesh: Mesh | None = None,
                 rules: sharding.Rules = sharding.DEFAULT_RULES, batch_size: int = 8,
                 prompt_buckets: Sequence[int] | None = None, chunk_size: int = 32,
                 share_prefill: bool = True, unroll_layers: bool = True):
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"batch_size={batch_size!r} must be an integer >= 1 (--batch_size)")
        if unroll_layers and config.scan_layers:
            config = config.with_run_options(scan_layers=False)
            params = to_layout(nn.meta.unbox(params), scan_layers=False)
        self.config = config
        self.mesh = mesh if mesh is not None else placement.default_mesh()
        self.rules = rules
        self.batch_size = placement.round_batch(batch_size, self.mesh, rules)
        self.params = placement.place_params(config, params, self.mesh, rules)
        self.prompt_buckets = tuple(sorted(prompt_buckets or (16, 32, 64, 128, 256, 512,
                                                              1024, 2048, 4096, 8192)))
        self.chunk_size = int(chunk_size)
        self.share_prefill = bool(share_prefill)
        self.prefilled_rows = 0  # rows through the prefill so far (a measure of its work)
        self._model = Llama(config, decode=True)
        self._prefill = sharding.JittedStep(self._prefill_fn, self.mesh, rules,
                                            static_argnames=("cache_len",))
        self._decode = sharding.JittedStep(self._decode_fn, self.mesh, rules,
                                           static_argnames=("sampling",), donate_argnums=(1,))
        self._expand = sharding.JittedStep(self._expand_fn, self.mesh, rules)

    @property
    def trace_count(self) -> dict[str, int]:
        """Traces of the prefill and decode functions (a recompile adds one)."""
        return {"prefill": self._prefill.trace_count, "decode": self._decode.trace_count,
                "expand": self._expand.trace_count}

    # ----- traced functions -------------------------------------------------
    def _prefill_fn(self, params, tokens, positions, segment_ids, *, cache_len):
        cache = init_cache(self.config, tokens.shape[0], cache_len)
        logits, mutated = self._model.apply(
            {"params": params, "cache": cache}, tokens, positions=positions,
            segment_ids=segment_ids, mutable=["cache"])  # [batch, len, vocab]
        return logits[:, -1], mutated["cache"]

    def _expand_fn(self, logits, cache, index):
        """Rows `index` of the prefill's last logits and cache (one per decode row)."""
        axis = 1 if self.config.scan_layers else 0  # scanned caches lead with the layer axis

        def take(x):  # cache_index (a scalar per layer) has no batch axis
            return jnp.take(x, index, axis=axis) if x.ndim > axis else x

        return jnp.take(logits, index, axis=0), jax.tree_util.tree_map(take, cache)

    def _decode_fn(self, params, state, keys, stop_at, eos_id, *, sampling):
        """Sample until step == stop_at or every row is done."""

        def cond(s):
            return (s["step"] < stop_at) & ~jnp.all(s["done"])

        def body(s):
            step_keys = jax.vmap(jax.random.fold_in, in_axes=(0, None))(keys, s["step"])
            tok = sample_logits(s["logits"], step_keys, sampling)  # [batch]
            tok = jnp.where(s["done"], 0, tok)
            out = jax.lax.dynamic_update_slice(s["out"], tok[:, None], (0, s["step"]))
            done = s["done"] | jnp.any(tok[:, None] == eos_id[None, :], axis=-1)  # [batch]
            logits, mutated = self._model.apply(
                {"params": params, "cache": s["cache"]}, tok[:, None],
                positions=s["pos"][:, None],
                segment_ids=jnp.ones_like(tok)[:, None], mutable=["cache"])  # [batch, 1, vocab]
            return dict(cache=mutated["cache"], logits=logits[:, 0], pos=s["pos"] + 1,
                        done=done, out=out, step=s["step"] + 1)

        return jax.lax.while_loop(cond, body, state)

    # ----- host side ----------------------------------------------------------
    def _bucket(self, n: int) -> int:
        for b in self.prompt_buckets:
            if n <= b:
                return b
        return n

    def generate_tokens(
        self,
        prompts: Sequence[Sequence[int]],
        *,
        max_new_tokens: int,
        sampling: SamplingConfig = GREEDY,
        num_samples: int = 1,
        eos_id: int | Sequence[int] | None = None,
        seed: int = 0,
        is_finished: Callable[[int, list[int]], bool] | None = None,
        progress: bool | None = None,
        desc: str = "generating",
    ) -> list[list[list[int]]]:
        """Continuations of token `prompts`.

        Args:
          prompts: token id lists (include BOS yourself if the model wants it).
          max_new_tokens: most tokens generated per row.
          sampling: greedy / temperature / top-k / top-p.
          num_samples: continuations per prompt.
          eos_id: a row stops after producing it, or any of several (Llama 3's
            end-of-text and end-of-turn); it is not returned.
          seed: base of the per-row random streams.
          is_finished: called between chunks with a row's prompt index and its
            tokens so far; True stops that row (used for stop strings).
          progress: a tqdm bar of sequences done (with ETA) on stderr, per
            batch; None = only when stderr is a terminal, False = never.
          desc: the bar's name.

        Returns:
          ``out[prompt][sample]`` = the generated token ids.
        """
        if max_new_tokens < 1:
            raise ValueError(f"max_new_tokens={max_new_tokens} must be >= 1")
        if num_samples < 1:
            raise ValueError(f"num_samples={num_samples} must be >= 1")
        for i, p in enumerate(prompts):
            if len(p) == 0:
                raise ValueError(f"prompt {i} is empty; give at least one token (e.g. BOS)")
        rows = [(p, s) for p in range(len(prompts)) for s in range(num_samples)]
        # Long prompts first, so a batch's prompts share a bucket.
        rows.sort(key=lambda r: -len(prompts[r[0]]))
        result: list[list[list[int]]] = [[[] for _ in range(num_samples)] for _ in prompts]
        with progress_bar(total=len(rows), desc=desc, unit="seq", progress=progress) as bar:
            for start in range(0, len(rows), self.batch_size):
                chunk = rows[start:start + self.batch_size]
                outs = self._generate_batch([list(prompts[p]) for p, _ in chunk], chunk,
                                            max_new_tokens, sampling, eos_id, seed, is_finished)
                for (p, s), toks in zip(chunk, outs, strict=True):
                    result[p][s] = toks
                bar.update(len(chunk))
        return result

    def _generate_batch(self, prompts, row_ids, max_new, sampling, eos_id, seed, is_finished):
        cfg = self.config
        b = self.batch_size
        n_real = len(prompts)
        prompts = prompts + [[0]] * (b - n_real)  # dummy rows keep shapes fixed
        length = self._bucket(max(len(p) for p in prompts))
        cache_len = length + max_new  # cache slots; positions stay below max_seq_len
        longest = max(len(p) for p in prompts[:n_real])
        if longest + max_new > cfg.max_seq_len:
            raise ValueError(
                f"a prompt of {longest} tokens + max_new_tokens {max_new} exceeds the "
                f"model's max_seq_len={cfg.max_seq_len}; shorten the prompt or generate "
                "fewer tokens")
        rows, index = self._prefill_rows(prompts[:n_real])
        tokens = np.zeros((len(rows), length), np.int32)
        positions = np.zeros((len(rows), length), np.int32)
        segs = np.zeros((len(rows), length), np.int32)
        for r, p in enumerate(rows):
            n = len(p)
            tokens[r, length - n:] = p
            positions[r, length - n:] = np.arange(n)
            segs[r, length - n:] = 1
        keys = row_keys(seed, prompts[:n_real], [s for _, s in row_ids], b)
        bs2 = sharding.data_sharding(self.mesh, self.rules, shard_length=False)
        # Host-made arrays (positions, flags) join the loop's state under the
        # mesh too, so every decode call sees the same shardings (one trace).
        with sharding.activate(self.mesh, self.rules):
            logits, cache = self._prefill(self.params,
                                          *jax.device_put((tokens, positions, segs), bs2),
                                          cache_len=cache_len)
            self.prefilled_rows += len(rows)
            if index is not None:
                logits, cache = self._expand(logits, cache,
                                             jax.device_put(index, sharding.replicated(self.mesh)))
            done = np.zeros((b,), bool)
            done[n_real:] = True
            state = dict(cache=cache, logits=logits,
                         pos=jnp.asarray([len(p) for p in prompts], jnp.int32),
                         done=jnp.asarray(done), out=jnp.zeros((b, max_new), jnp.int32),
                         step=jnp.asarray(0, jnp.int32))
            eos = jnp.asarray(_eos_ids(eos_id) or (-1,), jnp.int32)  # [n_eos]
            step = 0
            ends = [None] * n_real  # where a row stopped on `is_finished`
            while step < max_new:
                stop_at = min(step + self.chunk_size, max_new)
                state = self._decode(self.params, state, keys, jnp.asarray(stop_at, jnp.int32),
                                     eos, sampling=sampling)
                step = int(state["step"])
                done = np.array(distributed.to_host(state["done"]))  # writable copy
                if done.all():
                    break
                if is_finished is not None:
                    out = distributed.to_host(state["out"])
                    changed = False
                    for r in range(n_real):
                        if not done[r] and is_finished(row_ids[r][0],
                                                       _trim(out[r, :step], eos_id)):
                            done[r] = changed = True
                            ends[r] = step
                    if changed:
                        state["done"] = jnp.asarray(done)
                        if done.all():
                            break
        out = distributed.to_host(state["out"])
        return [_trim(out[r, :step if ends[r] is None else ends[r]], eos_id)
                for r in range(n_real)]

    def _prefill_rows(self, prompts: list[list[int]]):
        """The rows to prefill and, when prompts repeat, each decode row's source row.

        Without repeats (or with `share_prefill` off) every row is prefilled
        and the index is None. Otherwise the distinct prompts are prefilled in
        a batch of the next power of two (rounded to the mesh's batch split,
        at most `batch_size`), padded with dummy rows.
        """
        b = self.batch_size
        distinct = list(dict.fromkeys(tuple(p) for p in prompts))
        if not self.share_prefill or len(distinct) == len(prompts):
            return prompts + [[0]] * (b - len(prompts)), None
        n = min(b, placement.round_batch(1 << (len(distinct) - 1).bit_length(), self.mesh,
                                         self.rules))
        where = {p: i for i, p in enumerate(distinct)}
        index = [where[tuple(p)] for p in prompts] + [0] * (b - len(prompts))
        return [list(p) for p in distinct] + [[0]] * (n - len(distinct)), np.asarray(index, np.int32)


def row_keys(seed: int, prompts: Sequence[Sequence[int]], samples: Sequence[int],
             batch: int) -> jax.Array:
    """One key per row: ``fold_in(fold_in(key(seed), crc32(prompt)), sample)``.

    Keyed by the prompt's tokens, not its position, so a prompt's samples are
    the same whichever batch (and padding) it is decoded in.
    """
    base = jax.random.key(seed)
    keys = [jax.random.fold_in(jax.random.fold_in(
        base, zlib.crc32(np.asarray(p, np.int32).tobytes()) & 0x7FFFFFFF), s)
        for p, s in zip(prompts, samples, strict=True)]
    keys += [base] * (batch - len(keys))
    return jnp.stack(keys)


def end_ids(tokenizer) -> int | tuple[int, ...] | None:
    """The ids a generation ends at: a tokenizer's `stop_ids` (tokenizer.json
    tokenizers: eos and the config's ``eos_token_id``s), else its eos."""
    return getattr(tokenizer, "stop_ids", None) or tokenizer.eos_id


def _eos_ids(eos_id: int | Sequence[int] | None) -> tuple[int, ...]:
    if eos_id is None:
        return ()
    return (int(eos_id),) if isinstance(eos_id, int | np.integer) else tuple(int(e) for e in eos_id)


def _trim(tokens: np.ndarray, eos_id: int | Sequence[int] | None) -> list[int]:
    """Tokens up to (not including) the first EOS (any of `eos_id`)."""
    toks = [int(t) for t in tokens]
    stops = set(_eos_ids(eos_id))
    for i, t in enumerate(toks):
        if t in stops:
            return toks[:i]
    return toks


def truncate_at_stop(text: str, stop: Sequence[str]) -> str:
    """`text` up to the earliest occurrence of any stop string."""
    cut = len(text)
    for s in stop:
        if s:
            i = text.find(s)
            if i != -1:
                cut = min(cut, i)
    return text[:cut]


def generate_text(
    generator: Generator,
    tokenizer,
    prompts: Sequence[str],
    *,
    max_new_tokens: int,
    sampling: SamplingConfig = GREEDY,
    num_samples: int = 1,
    stop: Sequence[str] = (),
    seed: int = 0,
    add_bos: bool = True,
    truncate_left: bool = False,
    progress: bool | None = None,
    desc: str = "generating",
    encode: Callable[[str], list[int]] | None = None,
) -> list[list[str]]:
    """Text continuations of text `prompts` (cut at the first stop string).

    `encode` turns a prompt into ids (default: the tokenizer's, with BOS
    when `add_bos`); chat-rendered prompts pass `encode_rendered`.

    A prompt longer than ``max_seq_len - max_new_tokens`` tokens is an error
    naming the lengths, unless `truncate_left`: then it keeps only its last
    tokens (as lm-evaluation-harness does) and one warning says how many
    prompts were cut. A prompt with no tokens (empty, without BOS) is an
    error. `progress` and `desc`: the bar of `Generator.generate_tokens`.
    """
    ids = [encode(p) if encode is not None else tokenizer.encode(p, bos=add_bos, eos=False)
           for p in prompts]
    for i, p in enumerate(ids):
        if not p:
            raise ValueError(f"prompt {i} ({prompts[i]!r}) has no tokens without BOS (--nobos); "
                             "give a non-empty prompt or keep BOS")
    max_len = generator.config.max_seq_len
    room = max_len - max_new_tokens
    if room < 1:
        raise ValueError(f"max_new_tokens={max_new_tokens} leaves no room for a prompt in the "
                         f"model's max_seq_len={max_len}; generate fewer tokens")
    too_long = [i for i, p in enumerate(ids) if len(p) > room]
    if too_long and not truncate_left:
        i = too_long[0]
        raise ValueError(
            f"prompt {i} has {len(ids[i])} tokens; with max_new_tokens={max_new_tokens} that "
            f"is {len(ids[i]) + max_new_tokens} > the model's max_seq_len={max_len}. Shorten "
            f"the prompt, generate fewer tokens, or pass --truncate to keep its last {room} tokens")
    if too_long:
        logging.warning("truncated %d prompt(s) to their last %d tokens (the longest had %d) so "
                        "that prompt + max_new_tokens=%d fits max_seq_len=%d", len(too_long), room,
                        max(len(ids[i]) for i in too_long), max_new_tokens, max_len)
        ids = [p[-room:] for p in ids]
    stop = tuple(s for s in stop if s)
    decode = ContinuationDecoder(tokenizer, ids)

    def finished(prompt_index: int, toks: list[int]) -> bool:
        text = decode(prompt_index, toks)
        return any(s in text for s in stop)

    out = generator.generate_tokens(
        ids, max_new_tokens=max_new_tokens, sampling=sampling, num_samples=num_samples,
        eos_id=end_ids(tokenizer), seed=seed, is_finished=finished if stop else None,
        progress=progress, desc=desc)
    return [[truncate_at_stop(decode(i, t), stop) for t in per_prompt]
            for i, per_prompt in enumerate(out)]


class ContinuationDecoder:
    """Text of generated tokens as they continue their prompt.

    SentencePiece drops the leading space of a decoded sequence (its dummy
    prefix), so ``decode(continuation)`` alone would lose the space before
    " Paris" or one indentation space of "    return x". The continuation's
    text is ``decode(prompt + continuation)`` minus ``decode(prompt)``.
    """

    def __init__(self, tokenizer, prompts: Sequence[Sequence[int]]):
        self.tokenizer = tokenizer
        self.prompts = [list(p) for p in prompts]
        self._prefix: dict[int, str] = {}

    def __call__(self, prompt_index: int, tokens: Sequence[int]) -> str:
        prompt = self.prompts[prompt_index]
        if prompt_index not in self._prefix:
            self._prefix[prompt_index] = self.tokenizer.decode(prompt)
        prefix = self._prefix[prompt_index]
        text = self.tokenizer.decode(prompt + list(tokens))
        if text.startswith(prefix):
            return text[len(prefix):]
        return self.tokenizer.decode(list(tokens))  # a split multi-byte character
