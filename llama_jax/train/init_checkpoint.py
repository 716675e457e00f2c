"""``init.checkpoint``: start a training run from pretrained weights.

``--config.init.checkpoint=PATH`` takes any checkpoint `llama_jax.from_pretrained`
reads (Hugging Face, Meta, this project's orbax format, a training workdir).
The run then takes from it:

- the model's shape (every `LlamaConfig` shape field). A ``model.<field>``
  override that disagrees is a `ConfigError` naming both values; the run
  options (``dtype``, ``attention_impl``, ``remat_policy``, ``scan_layers``),
  ``max_seq_len`` and the ``rope_*`` fields (RoPE has no parameters: context
  extension sets them, the scaling's original length defaulting to the
  checkpoint's ``max_seq_len``) and ``param_dtype`` stay the run's to choose.
  ``param_dtype`` defaults to float32 master weights, whatever the checkpoint
  stores (a bf16 release is upcast);
- the tokenizer: ``data.tokenizer`` if set, else the ``tokenizer.model``
  `find_tokenizer` finds for PATH;
- the parameters, at step 0 only: a run that resumes from its own workdir's
  checkpoint restores those instead (the workdir wins).

The loaded host arrays are placed with the training shardings (derived from
logical names as for a fresh init) and the optimizer state is initialised by
one jitted call with the state's out_shardings, as `step.make_init` does.
"""

from __future__ import annotations

import dataclasses
import os
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from jax.sharding import Mesh

from llama_jax import sharding as shd
from llama_jax.convert import from_pretrained
from llama_jax.convert.hf_tokenizer import find_tokenizer
from llama_jax.errors import ConfigError, LlamaJaxError
from llama_jax.model.config import RUN_OPTIONS, LlamaConfig
from llama_jax.train.step import TrainState, abstract_train_state

# model.* keys a run may set on top of an init checkpoint (everything else is its shape):
# the context length and RoPE's scaling have no parameters (context extension sets them).
ROPE_FIELDS = tuple(f.name for f in dataclasses.fields(LlamaConfig) if f.name.startswith("rope_"))
OVERRIDABLE = (*RUN_OPTIONS, "max_seq_len", "param_dtype", *ROPE_FIELDS)
MASTER_DTYPE = "float32"


@dataclasses.dataclass
class InitCheckpoint:
    """What ``init.checkpoint`` gives a run."""

    path: str
    config: LlamaConfig  # its shape with the run's options
    params: Any  # host arrays in `config`'s layout; None when not loaded (resuming)
    tokenizer_path: str


def explicit_model_fields(model_section: ml_collections.ConfigDict) -> dict[str, Any]:
    """The ``model.<field>`` values the config sets (None = unset; the preset is ignored)."""
    return {k: v for k, v in model_section.items()
            if k not in ("preset", "lora") and v is not None}


def _overrides(config: ml_collections.ConfigDict, run_config: LlamaConfig) -> dict[str, Any]:
    explicit = explicit_model_fields(config.model)
    out = dict(run_config.run_options())
    out.update({k: v for k, v in explicit.items() if k in OVERRIDABLE})
    out.setdefault("param_dtype", MASTER_DTYPE)
    return out


def check_shape_overrides(config: ml_collections.ConfigDict, ckpt_config: LlamaConfig,
                          path: str) -> None:
    """Raise ConfigError for ``model.<field>`` shape overrides the checkpoint contradicts."""
    explicit = explicit_model_fields(config.model)
    diffs = [f"model.{k}={v!r} but the checkpoint has {getattr(ckpt_config, k)!r}"
             for k, v in sorted(explicit.items())
             if k not in OVERRIDABLE and getattr(ckpt_config, k) != v]
    if diffs:
        raise ConfigError(
            f"init.checkpoint={path} fixes the model's shape:\n  " + "\n  ".join(diffs)
            + "\nDrop these --config.model.* overrides (the shape comes from the checkpoint); "
            f"only {', '.join(OVERRIDABLE)} may be set on top of it.")


def init_tokenizer(config: ml_collections.ConfigDict, path: str) -> str:
    """``data.tokenizer`` if set, else the checkpoint's own ``tokenizer.model``."""
    if config.data.tokenizer:
        return os.path.expanduser(config.data.tokenizer)
    found = find_tokenizer(path)
    if found is None:
        raise ConfigError(f"init.checkpoint={path} has no tokenizer.model (looked in it, beside "
                          "a Meta release and in a training workdir); set "
                          "--config.data.tokenizer=PATH to the SentencePiece model it was "
                          "trained with")
    return str(found)


def resolve(config: ml_collections.ConfigDict, run_config: LlamaConfig, *,
            saved_model: dict | None = None, load: bool = True) -> InitCheckpoint:
    """The init checkpoint of `config` (``init.checkpoint`` must be set).

    Args:
      config: the run's config.
      run_config: the config's own `LlamaConfig` (preset + overrides), whose
        run options the run keeps.
      saved_model: the resumed workdir's saved model config, used instead of
        reading the checkpoint when `load` is False.
      load: read the parameters (False: a resumed run restores its own).
    """
    path = os.path.expanduser(config.init.checkpoint)
    overrides = _overrides(config, run_config)
    if load or saved_model is None:
        try:
            ckpt_config, params = from_pretrained(
                path, dtype=overrides.pop("param_dtype"), config_overrides=overrides)
        except LlamaJaxError as e:
            raise ConfigError(f"init.checkpoint={path}: {e}") from e
        if not load:
            params = None
    else:
        params = None
        ckpt_config = LlamaConfig.from_dict(saved_model).replace(**overrides)
    check_shape_overrides(config, ckpt_config, path)
    if config.train.seq_len > ckpt_config.max_seq_len:
        raise ConfigError(f"train.seq_len={config.train.seq_len} exceeds init.checkpoint's "
                          f"max_seq_len={ckpt_config.max_seq_len}; lower train.seq_len or set "
                          f"--config.model.max_seq_len={config.train.seq_len}")
    return InitCheckpoint(path, ckpt_config, params, init_tokenizer(config, path))


def init_state_from_params(model_config: LlamaConfig, optimizer: optax.GradientTransformation,
                           mesh: Mesh, rules: shd.Rules, params: Any):
    """(sharded `TrainState` at step 0 holding `params`, state shardings).

    The host arrays go straight to their shards (`jax.device_put` with the
    logical-name shardings); the optimizer state is made inside a jit with the
    state's out_shardings, so no device holds more than its share.
    """
    abstract, shardings = abstract_train_state(model_config, optimizer, mesh, rules)
    want = jax.tree_util.tree_structure(shardings.params)
    got = jax.tree_util.tree_structure(params)
    if want != got:
        raise ConfigError(f"init.checkpoint params do not form this model's tree: {got} vs {want}")
    # Cast on the host (a device cast would gather each array on one device first).
    params = jax.tree.map(lambda x, a: x if x.dtype == a.dtype else np.asarray(x).astype(a.dtype),
                          params, abstract.params)
    params = jax.device_put(params, shardings.params)

    def make(p):
        return TrainState(step=jnp.zeros((), jnp.int32), params=p, opt_state=optimizer.init(p))

    jitted = shd.JittedStep(make, mesh, rules, in_shardings=(shardings.params,),
                            out_shardings=shardings)
    return jitted(params), shardings
