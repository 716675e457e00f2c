"""The device side of continuous batching: decode slots over one KV cache.

`SlotEngine` holds, on the mesh, one preallocated KV cache of ``slots`` rows
(each row a batch-1 cache of `Llama(decode=True)`, stacked on a leading slot
axis that is split like the batch) and per-slot state: the next-token logits,
the position, the step count, the random key and the sampling settings.
Three compiled functions touch it, each with fixed shapes:

* `prefill(slot, tokens, start)`: one chunk of one prompt (right-padded to a
  bucket) into the slot's row at column `start`; one compile per bucket.
  Prompts longer than the largest bucket arrive as several chunks.
* `decode(active)`: one token for every slot, then the model on those tokens
  (vmapped over slots, so each slot writes at its own column). One compile.
* `copy(src, dst)`: a prefilled row into another slot (``n`` > 1 choices).

The decoder runs unscanned (``scan_layers=False``, the parameters converted
to the ``layers_0, layers_1, ...`` layout): a layer scan inside the slot vmap
copies the whole cache every step (8x slower on CPU, measured).

With several processes (`llama_jax.serve.lockstep`), every process holds one
`SlotEngine` and makes the same calls: host inputs are placed replicated on
the mesh and the sampled tokens are gathered (`distributed.to_host`).

The row's ``cache_index`` is set from the slot's position before each call,
so no model change is needed: a slot reads and writes at its own column, and
the causal mask (keys at columns <= the query's) hides whatever an earlier
request left further along the row.
"""

from __future__ import annotations

from collections.abc import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from llama_jax import distributed, sharding
from llama_jax.infer import placement
from llama_jax.model import Llama, LlamaConfig, init_cache
from llama_jax.model.layer_layout import to_layout
from llama_jax.serve.sampling import sample_rows

DEFAULT_BUCKETS = (16, 64, 256)


def _with_index(cache, index: jax.Array):
    """`cache` with every ``cache_index`` leaf set to `index` (a scalar)."""
    def put(path, leaf):
        if getattr(path[-1], "key", None) == "cache_index":
            return jnp.broadcast_to(index, leaf.shape).astype(leaf.dtype)
        return leaf
    return jax.tree_util.tree_map_with_path(put, cache)


def _key_data(key: jax.Array) -> np.ndarray:
    """A typed PRNG key's raw words on the host (a compiled call's input on any mesh)."""
    return np.asarray(jax.random.key_data(key))


def serve_rules(rules: sharding.Rules) -> tuple[sharding.Rules, object]:
    """Rules for a batch-1 row inside the slot vmap, and the slot axis' mesh axes.

    The slots take the mesh axes `activation_batch` maps to; inside the vmap a
    row's own batch dimension (size 1) is not split.
    """
    batch_axes = dict(rules).get("activation_batch")
    inner = tuple((name, None if name == "activation_batch" else axes) for name, axes in rules)
    return inner, batch_axes


class SlotEngine:
    """Compiled prefill / decode / copy over `slots` rows of one KV cache.

    Args:
      config: the model config.
      params: its parameters: host arrays, or already on `mesh` in the
        unscanned layout (``from_pretrained(..., config_overrides=
        {"scan_layers": False}, mesh=mesh)``: then nothing is copied).
      slots: decode slots (rounded up to a multiple of the batch split).
      max_seq_len: most tokens (prompt + completion) a slot holds; at most
        ``config.max_seq_len``.
      prefill_buckets: padded chunk lengths a prompt is prefilled in.
      mesh / rules: where to run (default: all devices on `fsdp`).
    """

    def __init__(self, config: LlamaConfig, params, *, slots: int = 8,
                 max_seq_len: int | None = None, prefill_buckets: Sequence[int] = DEFAULT_BUCKETS,
                 mesh: Mesh | None = None, rules: sharding.Rules = sharding.DEFAULT_RULES):
        if isinstance(slots, bool) or not isinstance(slots, int) or slots < 1:
            raise ValueError(f"slots={slots!r} must be an integer >= 1 (--slots)")
        self.max_seq_len = int(max_seq_len or config.max_seq_len)
        if not 1 < self.max_seq_len <= config.max_seq_len:
            raise ValueError(f"max_seq_len={self.max_seq_len} must be in [2, the model's "
                             f"max_seq_len={config.max_seq_len}] (--max_seq_len)")
        buckets = sorted({int(b) for b in prefill_buckets})
        if not buckets or buckets[0] < 1:
            raise ValueError(f"prefill_buckets={tuple(prefill_buckets)} must be lengths >= 1")
        self.buckets = tuple(b for b in buckets if b < self.max_seq_len) or (self.max_seq_len,)
        config = config.with_run_options(scan_layers=False)
        params = to_layout(nn.meta.unbox(params), scan_layers=False)
        self.config = config
        self.mesh = mesh if mesh is not None else placement.default_mesh()
        self.slots = placement.round_batch(slots, self.mesh, rules)
        self.rules, self._slot_axes = serve_rules(rules)
        self.params = placement.place_params(config, params, self.mesh, rules)
        # Room past max_seq_len so a chunk padded to its bucket never runs off the row.
        self.cache_len = self.max_seq_len + self.buckets[-1]
        self._model = Llama(config, decode=True)
        self.state = self._init_state()
        self._prefill = sharding.JittedStep(self._prefill_fn, self.mesh, self.rules,
                                            donate_argnums=(1,))
        self._decode = sharding.JittedStep(self._decode_fn, self.mesh, self.rules,
                                           donate_argnums=(1,))
        self._copy = sharding.JittedStep(self._copy_fn, self.mesh, self.rules,
                                         donate_argnums=(0,))

    @property
    def trace_count(self) -> dict[str, int]:
        """Traces of each compiled function (a recompile adds one)."""
        return {"prefill": self._prefill.trace_count, "decode": self._decode.trace_count,
                "copy": self._copy.trace_count}

    def _init_state(self):
        s = self.slots

        def make():
            row = init_cache(self.config, 1, self.cache_len)
            return dict(
                cache=jax.tree_util.tree_map(lambda x: jnp.zeros((s, *x.shape), x.dtype), row),
                logits=jnp.zeros((s, self.config.vocab_size), jnp.float32),
                pos=jnp.zeros((s,), jnp.int32), step=jnp.zeros((s,), jnp.int32),
                keys=jax.random.split(jax.random.key(0), s),
                temperature=jnp.zeros((s,), jnp.float32), top_p=jnp.ones((s,), jnp.float32))

        slot_sharding = NamedSharding(self.mesh, PartitionSpec(self._slot_axes))
        # Made on the devices (no host array to send: works with several processes too).
        return jax.jit(make, out_shardings=slot_sharding)()

    def _host(self, x):
        """A host input of a compiled call: as is on one process, else a replicated
        global array every process builds from its own (identical) copy."""
        if jax.process_count() == 1:
            return x
        x = np.asarray(x)
        return jax.make_array_from_callback(x.shape, sharding.replicated(self.mesh),
                                            lambda index: x[index])

    # ----- traced functions -------------------------------------------------
    def _prefill_fn(self, params, state, tokens, n_valid, start, slot, key_data, temperature,
                    top_p):
        key = jax.random.wrap_key_data(key_data)
        bucket = tokens.shape[1]
        row = jax.tree_util.tree_map(
            lambda x: jax.lax.dynamic_index_in_dim(x, slot, 0, keepdims=False), state["cache"])
        cols = jnp.arange(bucket, dtype=jnp.int32)[None]  # [1, bucket]
        logits, mutated = self._model.apply(
            {"params": params, "cache": _with_index(row, start)}, tokens,
            positions=start + cols, segment_ids=(cols < n_valid).astype(jnp.int32),
            mutable=["cache"])  # [1, bucket, vocab]
        cache = jax.tree_util.tree_map(
            lambda x, r: jax.lax.dynamic_update_index_in_dim(x, r, slot, 0),
            state["cache"], mutated["cache"])
        last = jax.lax.dynamic_index_in_dim(logits[0], n_valid - 1, 0, keepdims=False)  # [vocab]
        return dict(cache=cache, logits=state["logits"].at[slot].set(last),
                    pos=state["pos"].at[slot].set(start + n_valid),
                    step=state["step"].at[slot].set(0), keys=state["keys"].at[slot].set(key),
                    temperature=state["temperature"].at[slot].set(temperature),
                    top_p=state["top_p"].at[slot].set(top_p))

    def _decode_fn(self, params, state, active):
        keys = jax.vmap(jax.random.fold_in)(state["keys"], state["step"])
        tok = sample_rows(state["logits"], keys, state["temperature"], state["top_p"])  # [slots]

        def one(cache, t, p):
            logits, mutated = self._model.apply(
                {"params": params, "cache": _with_index(cache, p)}, t[None, None],
                positions=p[None, None], segment_ids=jnp.ones((1, 1), jnp.int32),
                mutable=["cache"])  # [1, 1, vocab]
            return logits[0, 0], mutated["cache"]

        logits, cache = jax.vmap(one, spmd_axis_name=self._slot_axes)(
            state["cache"], tok, state["pos"])  # [slots, vocab]
        step = active.astype(jnp.int32)
        new = dict(state, cache=cache, logits=logits, pos=state["pos"] + step,
                   step=state["step"] + step)
        return new, tok

    def _copy_fn(self, state, src, dst, key_data):
        key = jax.random.wrap_key_data(key_data)
        def move(x):
            return jax.lax.dynamic_update_index_in_dim(
                x, jax.lax.dynamic_index_in_dim(x, src, 0, keepdims=False), dst, 0)
        new = jax.tree_util.tree_map(move, {k: v for k, v in state.items() if k != "keys"})
        new["keys"] = state["keys"].at[dst].set(key)
        new["step"] = new["step"].at[dst].set(0)
        return new

    # ----- host side ----------------------------------------------------------
    def chunks(self, n: int) -> list[tuple[int, int, int]]:
        """(start, length, bucket) of each prefill chunk of an `n`-token prompt."""
        out, start, biggest = [], 0, self.buckets[-1]
        while n - start > biggest:
            out.append((start, biggest, biggest))
            start += biggest
        rest = n - start
        out.append((start, rest, next(b for b in self.buckets if b >= rest)))
        return out

    def prefill(self, slot: int, tokens: Sequence[int], start: int, bucket: int, key: jax.Array,
                temperature: float, top_p: float) -> None:
        """Write one chunk (``len(tokens) <= bucket``) into `slot` at column `start`."""
        buf = np.zeros((1, bucket), np.int32)
        buf[0, :len(tokens)] = tokens
        i32 = np.int32
        args = (buf, i32(len(tokens)), i32(start), i32(slot), _key_data(key),
                np.float32(temperature), np.float32(top_p))
        self.state = self._prefill(self.params, self.state, *map(self._host, args))

    def recover(self) -> bool:
        """After a failed call: True (and a fresh, empty state) if the state was lost.

        The compiled functions donate the state, so a call that fails on the
        device can leave it deleted; every slot's cache is then gone.
        """
        leaves = jax.tree_util.tree_leaves(self.state)
        if not any(getattr(x, "is_deleted", lambda: False)() for x in leaves):
            return False
        self.state = self._init_state()
        return True

    def warmup(self) -> None:
        """Compile every prefill bucket, the decode step and the copy (slot 0 gets junk,
        which the next request there overwrites)."""
        key = jax.random.key(0)
        for b in self.buckets:
            self.prefill(0, [0], 0, b, key, 0.0, 1.0)
        self.copy(0, 0, key)
        self.decode(np.zeros((self.slots,), bool))

    def copy(self, src: int, dst: int, key: jax.Array) -> None:
        """Give slot `dst` the prefilled prompt of slot `src` and its own `key`."""
        self.state = self._copy(self.state, *map(self._host, (np.int32(src), np.int32(dst),
                                                              _key_data(key))))

    def decode(self, active: np.ndarray) -> np.ndarray:
        """One step for every slot; returns the [slots] sampled tokens.

        Only `active` slots advance; the others compute and are ignored.
        """
        self.state, tok = self._decode(self.params, self.state,
                                       self._host(np.asarray(active, bool)))
        return distributed.to_host(tok)
