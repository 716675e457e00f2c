"""The LLaMA decoder: pre-norm blocks, a scanned stack, the LM head, remat.

Parameter names follow Meta's checkpoint (`tok_embeddings`, `layers`,
`attention.wq`, `feed_forward.w1`, `attention_norm`, `ffn_norm`, `norm`,
`output`), so conversion is a rename table. With `tie_embeddings` there is no
`output`: the logits are ``h @ tok_embeddings^T``. With `scan_layers` the blocks live
under `layers` with a leading `layers` axis; otherwise under `layers_0`, ...
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

from llama_jax.model.attention import Attention
from llama_jax.model.config import LlamaConfig
from llama_jax.model.layers import Embed, FeedForward, Linear, RMSNorm, constrain, linear_kw
from llama_jax.model.remat import REMAT_POLICIES
from llama_jax.model.rope import rope_cos_sin

ACTIVATION = ("activation_batch", "activation_length", "activation_embed")


class Block(nn.Module):
    """One pre-norm decoder block: x + attn(norm(x)), then h + ffn(norm(h))."""

    config: LlamaConfig
    decode: bool = False

    @nn.compact
    def __call__(self, x, cos_sin, segment_ids):
        cfg = self.config
        norm_kw = dict(eps=cfg.norm_eps, dtype=cfg.compute_dtype,
                       param_dtype=cfg.weight_dtype)
        x = constrain(x, ACTIVATION)
        h = RMSNorm(name="attention_norm", **norm_kw)(x)
        h = x + Attention(cfg, decode=self.decode, name="attention")(
            h, cos_sin, segment_ids)  # [batch, len, embed]
        out = RMSNorm(name="ffn_norm", **norm_kw)(h)
        out = h + FeedForward(cfg, name="feed_forward")(out)  # [batch, len, embed]
        return constrain(out, ACTIVATION)


class _ScanBlock(Block):
    """`Block` with the (carry, out) signature `nn.scan` expects."""

    @nn.compact
    def __call__(self, x, cos_sin, segment_ids):
        return super().__call__(x, cos_sin, segment_ids), None


def _block_class(cfg: LlamaConfig, base: type[nn.Module]) -> type[nn.Module]:
    policy = REMAT_POLICIES[cfg.remat_policy]
    if cfg.remat_policy == "none":
        return base
    # Inside nn.scan the loop already stops CSE across the remat boundary.
    return nn.remat(base, policy=policy, prevent_cse=not cfg.scan_layers)


def _materialized(fn, positions: jax.Array):
    """`fn(positions)` computed once into buffers: XLA does not fuse a conditional's outputs.

    Both branches are `fn` and the predicate (integer positions at or above
    their dtype's minimum) always holds, so this is `fn(positions)`. Plainly
    written, XLA's CPU fusion (cos and sin count as cheap) inlined RoPE's cos
    and sin into every consumer, each layer's q and k, forward and backward,
    where a loop fusion evaluates them once per output element (16 cos ops in
    the 4-layer step, 2 like this): shape (a) bf16 7,892 vs 7,604 tokens/s.
    Only on the CPU: a GPU conditional reads its predicate on the host.
    """
    if jax.default_backend() != "cpu" or not jnp.issubdtype(positions.dtype, jnp.integer):
        return fn(positions)
    ok = jnp.all(positions >= jnp.iinfo(positions.dtype).min)
    return jax.lax.cond(ok, fn, fn, positions)


class Llama(nn.Module):
    """LLaMA decoder-only language model.

    Call: ``apply({'params': p}, tokens, positions=None, segment_ids=None)``
    -> float32 logits [batch, len, vocab]. With ``logit_index`` ([batch, k]
    positions along len) the output head runs only there: logits [batch, k,
    vocab], equal to the full logits gathered (scoring needs a continuation's
    positions only). With ``decode=True`` the model reads and writes a KV
    cache in the ``cache`` collection (see `init_cache`).
    """

    config: LlamaConfig
    decode: bool = False

    @nn.compact
    def __call__(
        self,
        tokens: jax.Array,
        positions: jax.Array | None = None,
        segment_ids: jax.Array | None = None,
        logit_index: jax.Array | None = None,
    ) -> jax.Array:
        cfg = self.config
        if tokens.ndim != 2:
            raise ValueError(f"tokens must be [batch, len], got shape {tokens.shape}")
        if positions is None:
            positions = jnp.broadcast_to(jnp.arange(tokens.shape[1]), tokens.shape)
        # RoPE's cos and sin once for every layer ([batch, len, head_dim/2] each).
        cos_sin = _materialized(lambda p: rope_cos_sin(p, cfg, cfg.head_dim), positions)
        embed = Embed(cfg, name="tok_embeddings")
        x = embed(tokens)  # [batch, len, embed]
        x = constrain(x, ACTIVATION)
        if cfg.scan_layers:
            stack = nn.scan(
                _block_class(cfg, _ScanBlock),
                variable_axes={"params": 0, "cache": 0},
                split_rngs={"params": True},
                in_axes=(nn.broadcast, nn.broadcast),
                length=cfg.n_layers,
                metadata_params={nn.PARTITION_NAME: "layers"},
            )
            x, _ = stack(cfg, decode=self.decode, name="layers")(
                x, cos_sin, segment_ids)
        else:
            block = _block_class(cfg, Block)
            for i in range(cfg.n_layers):
                x = block(cfg, decode=self.decode, name=f"layers_{i}")(
                    x, cos_sin, segment_ids)
        if logit_index is not None:
            x = jnp.take_along_axis(x, logit_index[..., None], axis=1)  # [batch, k, embed]
        x = RMSNorm(eps=cfg.norm_eps, dtype=cfg.compute_dtype,
                    param_dtype=cfg.weight_dtype, name="norm")(x)
        if cfg.tie_embeddings:
            logits = embed.attend(x)  # [batch, len, vocab]: h @ embedding^T
        else:
            logits = Linear((cfg.vocab_size,), ("embed", "vocab"), name="output",
                            out_dtype=jnp.float32, **linear_kw(cfg))(x)  # [batch, len, vocab]
        logits = constrain(logits, ("activation_batch", "activation_length",
                                    "activation_vocab"))
        return logits.astype(jnp.float32)


def init_params(config: LlamaConfig, rng: jax.Array, seq_len: int = 8):
    """Random parameters (logical-name boxes stripped) for `config`, on one device.

    Jitted: an eager Flax init dispatches op by op and is many times slower.
    For sharded initialisation use `llama_jax.train.step.init_train_state`.
    """
    tokens = jnp.zeros((1, min(seq_len, config.max_seq_len)), jnp.int32)
    init = jax.jit(lambda r: nn.meta.unbox(Llama(config).init(r, tokens)["params"]))
    return init(rng)


def abstract_params(config: LlamaConfig):
    """`jax.ShapeDtypeStruct`s of the boxed parameters (no allocation).

    The parameters do not depend on how attention or remat run, so the init is
    traced on the plain XLA path (a Pallas-configured model is not traced
    through its kernel, nor refused on a backend the kernel does not target).
    """
    config = config.with_run_options(attention_impl="xla", remat_policy="none")
    tokens = jax.ShapeDtypeStruct((1, 1), jnp.int32)
    return jax.eval_shape(
        lambda rng, t: Llama(config).init(rng, t)["params"],
        jax.ShapeDtypeStruct((2,), jnp.uint32), tokens)


def count_params(config: LlamaConfig) -> int:
    """Number of parameters of `config`, computed via `jax.eval_shape`."""
    shapes = nn.meta.unbox(abstract_params(config))
    return sum(int(x.size) for x in jax.tree_util.tree_leaves(shapes))


def init_cache(config: LlamaConfig, batch_size: int, max_len: int | None = None,
               dtype=None):
    """A zeroed KV cache (the `cache` collection) for `batch_size` x `max_len`."""
    max_len = max_len or config.max_seq_len
    model = Llama(config, decode=True)
    tokens = jax.ShapeDtypeStruct((batch_size, max_len), jnp.int32)
    shapes = jax.eval_shape(
        lambda t: model.init(jax.random.key(0), t), tokens)["cache"]
    cache_dtype = jnp.dtype(dtype) if dtype is not None else config.compute_dtype

    def zeros(s):
        dt = cache_dtype if jnp.issubdtype(s.dtype, jnp.floating) else s.dtype
        return jnp.zeros(s.shape, dt)

    return jax.tree_util.tree_map(zeros, shapes)
