"""The sharded train state, loss, jitted train/eval steps and global batches.

Shardings are derived, never hand-listed: `jax.eval_shape` of the init gives
boxed leaves that carry logical names, `llama_jax.sharding.logical_shardings`
maps them to `NamedSharding`s, and the real init is a `jax.jit` with those
`out_shardings`, so a 65B model is never materialised on one device.

The train step is one `jax.jit` with explicit in/out shardings and a donated
state. Gradient accumulation runs `lax.scan` over microbatches inside the jit
and weights each by its token count, so k microbatches equal one big batch.
Every jitted function here traces and runs under `sharding.activate(mesh,
rules)`, so the model's logical activation constraints resolve on `mesh`.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import flax.linen as nn
import flax.struct
import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from llama_jax import sharding as shd
from llama_jax.model.config import LlamaConfig
from llama_jax.model.llama import Llama
from llama_jax.model.lora import LoraConfig
from llama_jax.model.lora import merge as merge_lora
from llama_jax.train.optim import schedule_count

Batch = Mapping[str, jax.Array]
# The [batch, len] arrays a training batch carries (the data side adds per-row metadata).
BATCH_KEYS = ("inputs", "targets", "positions", "segment_ids", "loss_mask")


class TrainState(flax.struct.PyTreeNode):
    """What a training run carries from step to step (and checkpoints)."""

    step: jax.Array
    params: Any
    opt_state: Any


# --------------------------------------------------------------------------
# State and its shardings.


def check_remat_backend(config: LlamaConfig, mesh: Mesh) -> None:
    """Fail clearly when `config.remat_policy` offloads to pinned host memory
    and the mesh's devices have no such memory space."""
    if not config.remat_policy.startswith("offload"):
        return
    for device in mesh.local_devices:
        kinds = {m.kind for m in device.addressable_memories()}
        if "pinned_host" not in kinds:
            raise ValueError(
                f"remat_policy={config.remat_policy!r} offloads saved activations to "
                f"'pinned_host' memory, but device {device} ({device.platform}) only has "
                f"memory kinds {sorted(kinds)}; use remat_policy='save_linear' instead")


def _init_fn(config: LlamaConfig, optimizer: optax.GradientTransformation,
             boxed_optimizer: bool) -> Callable[[jax.Array], TrainState]:
    """rng -> TrainState with boxed (logically named) params and opt state."""

    def init(rng):
        tokens = jnp.zeros((1, 1), jnp.int32)
        params = Llama(config).init(rng, tokens)["params"]  # boxed leaves
        opt_state = optimizer.init(params if boxed_optimizer else nn.meta.unbox(params))
        return TrainState(step=jnp.zeros((), jnp.int32), params=params, opt_state=opt_state)

    return init


def _opt_state_shardings(abstract_opt: Any, param_shardings: Any, mesh: Mesh,
                         rules: shd.Rules) -> Any:
    """Shardings of an optimizer state: boxed leaves by their logical names,
    unboxed param-shaped subtrees like the params, everything else replicated."""
    params_def = jax.tree_util.tree_structure(param_shardings)

    def is_leaf(x):
        return shd.is_boxed(x) or (
            not isinstance(x, jax.ShapeDtypeStruct)
            and jax.tree_util.tree_structure(x) == params_def)

    def one(path, x):
        if shd.is_boxed(x):
            return shd.leaf_sharding("opt_state/" + shd.path_str(path), x, mesh, rules)
        if isinstance(x, jax.ShapeDtypeStruct):
            return shd.replicated(mesh)
        return param_shardings

    return jax.tree_util.tree_map_with_path(one, abstract_opt, is_leaf=is_leaf)


def abstract_train_state(model_config: LlamaConfig, optimizer: optax.GradientTransformation,
                         mesh: Mesh, rules: shd.Rules = shd.DEFAULT_RULES):
    """(abstract state of `jax.ShapeDtypeStruct`s with `.sharding` set, shardings).

    No allocation: this is what a checkpoint restore needs as its target.
    """
    state, shardings, _ = _abstract(model_config, optimizer, mesh, rules)
    return state, shardings


def _abstract(config, optimizer, mesh, rules):
    rng = jax.ShapeDtypeStruct((), jax.random.key(0).dtype)
    with shd.activate(mesh, rules):
        try:
            boxed = True
            abstract = jax.eval_shape(_init_fn(config, optimizer, True), rng)
        except Exception:  # noqa: BLE001 - an optimizer that cannot see flax boxes
            boxed = False
            abstract = jax.eval_shape(_init_fn(config, optimizer, False), rng)
    state, shardings = sharded_abstract_state(abstract, mesh, rules)
    return state, shardings, boxed


def sharded_abstract_state(abstract: TrainState, mesh: Mesh, rules: shd.Rules):
    """(abstract unboxed state with shardings, state shardings) of a boxed abstract state.

    Params shard by their logical names; the optimizer state follows the params.
    """
    param_shardings = shd.logical_shardings(abstract.params, mesh, rules)
    shardings = TrainState(
        step=shd.replicated(mesh), params=param_shardings,
        opt_state=_opt_state_shardings(abstract.opt_state, param_shardings, mesh, rules))
    unboxed = nn.meta.unbox(abstract)
    state = jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s),
                         unboxed, shardings)
    return state, shardings


def init_train_state(model_config: LlamaConfig, optimizer: optax.GradientTransformation,
                     mesh: Mesh, rules: shd.Rules, rng: jax.Array):
    """A freshly initialised, sharded `TrainState` and its shardings.

    `eval_shape` of the init -> logical specs -> `NamedSharding`s -> a jitted
    init with `out_shardings`: each device only ever holds its own shard.

    Returns:
      (state, state_shardings), both `TrainState`s.
    """
    init, shardings = make_init(model_config, optimizer, mesh, rules)
    return init(rng), shardings


def make_init(model_config: LlamaConfig, optimizer: optax.GradientTransformation,
              mesh: Mesh, rules: shd.Rules = shd.DEFAULT_RULES):
    """(jitted `init(rng) -> TrainState` with sharded outputs, state shardings).

    What `init_train_state` calls; exposed so its compiled memory can be
    inspected (`init.lower(rng).compile().memory_analysis()`).
    """
    check_remat_backend(model_config, mesh)
    _, shardings, boxed = _abstract(model_config, optimizer, mesh, rules)
    init = _init_fn(model_config, optimizer, boxed)
    jitted = shd.JittedStep(lambda r: nn.meta.unbox(init(r)), mesh, rules,
                        out_shardings=shardings)
    return jitted, shardings


# --------------------------------------------------------------------------
# Loss.


def loss_sums(params: Any, batch: Batch, model_config: LlamaConfig):
    """(sum of next-token cross-entropy over counted tokens, number counted).

    `batch` has [batch, len] arrays `inputs`, `targets` and optionally
    `positions`, `segment_ids` (0 = padding) and `loss_mask` (float or bool).
    A token counts when its `loss_mask` is set and its segment id is not 0.
    Computed in float32; the vocab dimension may be sharded (no gather).
    """
    logits = Llama(model_config).apply(
        {"params": params}, batch["inputs"], positions=batch.get("positions"),
        segment_ids=batch.get("segment_ids"))  # [batch, len, vocab]
    return masked_nll_sums(logits, batch)


def masked_nll_sums(logits: jax.Array, batch: Batch):
    """(summed cross-entropy of `logits` [batch, len, vocab] over counted tokens, count).

    The counting rule of `loss_sums`: `loss_mask` (if any) times segment id != 0.
    A step divides the sum by the count of the whole global batch, so positions
    outside the mask (prompts, template text, padding) get exactly zero gradient.
    """
    logits = logits.astype(jnp.float32)
    targets = batch["targets"]
    mask = batch.get("loss_mask")
    mask = jnp.ones(targets.shape, jnp.float32) if mask is None else mask.astype(jnp.float32)
    if batch.get("segment_ids") is not None:
        mask = mask * (batch["segment_ids"] != 0).astype(jnp.float32)
    log_z = jax.nn.logsumexp(logits, axis=-1)  # [batch, len]
    if shd.logical_axis_size("activation_vocab") > 1:
        # A one-hot contraction instead of a gather: elementwise + reduce shards
        # over a `tensor`-split vocab without all-gathering the logits.
        target_logit = jnp.sum(logits * jax.nn.one_hot(targets, logits.shape[-1],
                                                       dtype=jnp.float32), axis=-1)  # [batch, len]
    else:  # a whole vocab per device: a gather, no [batch, len, vocab] one-hot product
        target_logit = jnp.take_along_axis(logits, targets[..., None], axis=-1)[..., 0]
    nll = log_z - target_logit  # [batch, len]
    return jnp.sum(nll * mask), jnp.sum(mask)


def loss_fn(params: Any, batch: Batch, model_config: LlamaConfig):
    """(mean next-token cross-entropy over counted tokens, number counted)."""
    total, count = loss_sums(params, batch, model_config)
    return total / jnp.maximum(count, 1.0), count


# --------------------------------------------------------------------------
# Steps.


def global_norm(tree: Any) -> jax.Array:
    """The L2 norm of all leaves of `tree` together, in float32."""
    return jnp.sqrt(sum(jnp.sum(jnp.square(x.astype(jnp.float32)))
                        for x in jax.tree.leaves(tree)))


def _microbatches(batch: Batch, k: int, mesh: Mesh, rules: shd.Rules) -> Batch:
    """[B, ...] -> [k, B/k, ...] with microbatch j = rows j, j+k, j+2k, ...

    Interleaved rows keep every device's contiguous block of the batch on
    that device for every microbatch (no resharding).
    """
    spec = shd.data_sharding(mesh, rules).spec

    def split(x):
        if x.shape[0] % k:
            raise ValueError(f"global batch size {x.shape[0]} is not divisible by "
                             f"grad_accum_steps={k}")
        x = x.reshape(x.shape[0] // k, k, *x.shape[1:])  # [B/k, k, ...]
        x = jnp.swapaxes(x, 0, 1)  # [k, B/k, ...]
        return jax.lax.with_sharding_constraint(x, PartitionSpec(None, *spec[: x.ndim - 1]))

    return {key: split(x) for key, x in batch.items()}


def _grads(params, batch, config, k, mesh, rules, param_shardings, loss=None):
    """(grads of the summed loss, loss sum, token count), accumulated in f32.

    `loss(params, batch, config) -> (sum, count)` defaults to `loss_sums`."""
    grad_fn = jax.value_and_grad(loss or loss_sums, has_aux=True)
    if k == 1:
        (total, count), grads = grad_fn(params, batch, config)
        return grads, total, count

    def body(carry, micro):
        g_acc, t_acc, n_acc = carry
        (total, count), g = grad_fn(params, micro, config)
        g_acc = jax.tree.map(lambda a, b: a + b.astype(jnp.float32), g_acc, g)
        return (g_acc, t_acc + total, n_acc + count), None

    zeros = jax.tree.map(lambda p: jnp.zeros(p.shape, jnp.float32), params)
    zeros = jax.lax.with_sharding_constraint(zeros, param_shardings)
    init = (zeros, jnp.zeros((), jnp.float32), jnp.zeros((), jnp.float32))
    (grads, total, count), _ = jax.lax.scan(body, init, _microbatches(batch, k, mesh, rules))
    return grads, total, count


def _lora_loss(lora, base):
    """`loss_sums` of the base params with the adapters (the trained params) merged in."""
    def loss(adapters, batch, config):
        return loss_sums(merge_lora(base, adapters, lora), batch, config)
    return loss


def make_train_step(model_config: LlamaConfig, optimizer: optax.GradientTransformation,
                    mesh: Mesh, rules: shd.Rules, state_shardings: TrainState, *,
                    grad_accum_steps: int = 1, donate: bool = True,
                    lora: LoraConfig | None = None, base_shardings: Any = None) -> shd.JittedStep:
    """The jitted `step(state, batch) -> (state, metrics)`.

    With `lora`, ``state.params`` are the adapters (`llama_jax.model.lora`) and
    the step is `step(state, batch, base)`: the frozen base params (sharded as
    `base_shardings`) get no gradient and no optimizer state.

    In/out shardings are explicit (`state_shardings`, `data_sharding` for every
    batch array, replicated metrics); the state is donated. Metrics: `loss`
    (mean over counted tokens), `grad_norm` (global L2 norm before any
    clipping the optimizer does), `param_norm`, `num_tokens`, `update_count`
    (the learning-rate schedule's count this update used: skipped non-finite
    updates do not advance it; the step count for a schedule-less optimizer).

    With `grad_accum_steps` = k > 1 the global batch is split inside the jit
    into k microbatches (`lax.scan`); gradients and losses are summed and
    divided by the total token count, so the update equals the big-batch one.
    """
    if not isinstance(grad_accum_steps, int) or grad_accum_steps < 1:
        raise ValueError(f"grad_accum_steps={grad_accum_steps!r} must be a positive integer")
    check_remat_backend(model_config, mesh)
    k = grad_accum_steps
    param_shardings = state_shardings.params

    def step(state: TrainState, batch: Batch, base: Any = None):
        loss = None if lora is None else _lora_loss(lora, base)
        grads, total, count = _grads(state.params, batch, model_config, k, mesh, rules,
                                     param_shardings, loss)
        denom = jnp.maximum(count, 1.0)
        grads = jax.tree.map(lambda g, p: (g / denom).astype(p.dtype), grads, state.params)
        grads = jax.lax.with_sharding_constraint(grads, param_shardings)
        updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        sched_count = schedule_count(state.opt_state)
        metrics = {
            "loss": total / denom,
            "grad_norm": global_norm(grads),
            "param_norm": global_norm(params),
            "num_tokens": count,
            "update_count": state.step if sched_count is None else sched_count,
        }
        return state.replace(step=state.step + 1, params=params, opt_state=opt_state), metrics

    in_shardings = (state_shardings, shd.data_sharding(mesh, rules))
    if lora is not None:
        in_shardings += (base_shardings,)
    return shd.JittedStep(
        step, mesh, rules, in_shardings=in_shardings,
        out_shardings=(state_shardings, shd.replicated(mesh)),
        donate_argnums=(0,) if donate else ())


def make_eval_step(model_config: LlamaConfig, mesh: Mesh, rules: shd.Rules,
                   param_shardings: Any, lora: LoraConfig | None = None,
                   base_shardings: Any = None) -> shd.JittedStep:
    """The jitted `eval_step(params, batch) -> {'loss_sum', 'num_tokens'}`
    (sums, so a caller can add them over batches and divide once); with
    `lora`, `eval_step(adapters, batch, base)`."""

    def evaluate(params, batch, base=None):
        loss = loss_sums if lora is None else _lora_loss(lora, base)
        total, count = loss(params, batch, model_config)
        return {"loss_sum": total, "num_tokens": count}

    in_shardings = (param_shardings, shd.data_sharding(mesh, rules))
    if lora is not None:
        in_shardings += (base_shardings,)
    return shd.JittedStep(evaluate, mesh, rules, in_shardings=in_shardings,
                          out_shardings=shd.replicated(mesh))


# --------------------------------------------------------------------------
# Inputs.


def global_batch(mesh: Mesh, local_batch: Mapping[str, Any], rules: shd.Rules = shd.DEFAULT_RULES,
                 global_shape: tuple[int, ...] | None = None) -> dict[str, jax.Array]:
    """Global, sharded arrays from this process's share of the batch.

    `local_batch` maps names to numpy [local_batch, len] arrays: this
    process's equal share of the rows (the whole batch in a single process),
    placed on the rows its devices hold under `data_sharding(mesh, rules)`
    (`jax.make_array_from_process_local_data`); `global_shape` is inferred
    (even split across processes) when not given. Bool arrays are kept bool.
    """
    sharding: NamedSharding = shd.data_sharding(mesh, rules)
    out = {}
    for key, value in local_batch.items():
        arr = np.asarray(value)
        if arr.ndim != 2:
            raise ValueError(f"batch[{key!r}] must be [batch, len], got shape {arr.shape}")
        out[key] = jax.make_array_from_process_local_data(sharding, arr, global_shape)
    return out
