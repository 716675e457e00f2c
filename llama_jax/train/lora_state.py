"""LoRA training state: the adapters train, the base stays frozen outside the state.

With ``model.lora.rank > 0`` the `TrainState`'s params are the adapters
(`llama_jax.model.lora`), so the optimizer state and every checkpoint hold
only them; the base weights come from ``init.checkpoint`` (required), are
placed once with the training shardings and passed to each step as a frozen
argument (no gradient, no moments). A resumed run reloads the base from
``init.checkpoint`` and restores the adapters from its workdir.
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from jax.sharding import Mesh

from llama_jax import sharding as shd
from llama_jax.errors import ConfigError
from llama_jax.model.config import LlamaConfig
from llama_jax.model.llama import Llama
from llama_jax.model.lora import LoraConfig, init_adapters
from llama_jax.train.step import TrainState, sharded_abstract_state


def lora_from_config(config: ml_collections.ConfigDict) -> LoraConfig | None:
    """The ``model.lora`` section as a `LoraConfig`; None when ``rank`` is 0 (off)."""
    section = config.model.lora
    if not section.rank:
        return None
    if not config.init.checkpoint:
        raise ConfigError("model.lora.rank > 0 trains adapters on pretrained weights: set "
                          "--config.init.checkpoint=PATH to the base model")
    try:
        return LoraConfig(rank=int(section.rank), alpha=float(section.alpha),
                          targets=tuple(section.targets))
    except ValueError as e:
        raise ConfigError(f"model.lora: {e}") from e


def _boxed_params(model_config: LlamaConfig, rng):
    return Llama(model_config).init(rng, jnp.zeros((1, 1), jnp.int32))["params"]


def base_shardings(model_config: LlamaConfig, mesh: Mesh, rules: shd.Rules) -> Any:
    """Shardings of the frozen base params (as a full training run shards them)."""
    rng = jax.ShapeDtypeStruct((), jax.random.key(0).dtype)
    with shd.activate(mesh, rules):
        abstract = jax.eval_shape(lambda r: _boxed_params(model_config, r), rng)
    return shd.logical_shardings(abstract, mesh, rules)


def place_base(params: Any, shardings: Any, model_config: LlamaConfig) -> Any:
    """Host params -> sharded device arrays in the model's param dtype."""
    dtype = np.dtype(model_config.param_dtype)
    params = jax.tree.map(lambda x: x if x.dtype == dtype else np.asarray(x).astype(dtype), params)
    return jax.device_put(params, shardings)


def _init_fn(model_config, lora, optimizer):
    def init(rng):
        boxed = jax.eval_shape(lambda r: _boxed_params(model_config, r), rng)
        adapters = init_adapters(rng, boxed, lora, dtype=model_config.weight_dtype)
        return TrainState(step=jnp.zeros((), jnp.int32), params=adapters,
                          opt_state=optimizer.init(nn.meta.unbox(adapters)))
    return init


def lora_state(model_config: LlamaConfig, lora: LoraConfig,
               optimizer: optax.GradientTransformation, mesh: Mesh, rules: shd.Rules):
    """(jitted `init(rng) -> TrainState` of adapters, abstract state, state shardings).

    Adapter shardings come from their logical names (those of the kernels they
    adapt); the optimizer state's follow the adapters'.
    """
    init = _init_fn(model_config, lora, optimizer)
    rng = jax.ShapeDtypeStruct((), jax.random.key(0).dtype)
    with shd.activate(mesh, rules):
        abstract = jax.eval_shape(init, rng)
    state, shardings = sharded_abstract_state(abstract, mesh, rules)
    jitted = shd.JittedStep(lambda r: nn.meta.unbox(init(r)), mesh, rules,
                            out_shardings=shardings)
    return jitted, state, shardings
