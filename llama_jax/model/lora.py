"""LoRA (Hu et al. 2021): low-rank adapters on the decoder's projections.

For a targeted projection with kernel ``W`` [*in, *out] (``wq`` [embed,
heads, head_dim], ``wo`` [heads, head_dim, embed], ...) an adapter is a pair
``A`` [*in, rank] (Gaussian, std 1/sqrt(fan_in)) and ``B`` [rank, *out]
(zeros, so training starts at the base model), and the projection becomes
``x W + (alpha / rank) (x A) B = x (W + (alpha / rank) A B)``. The adapters
are applied in the weight form: `merge` adds the low-rank product to each
targeted kernel (a rank-r product per layer, small next to a step's matmuls),
so the model runs unchanged and the merged export equals the trained model.

Adapters live in their own tree mirroring the params' paths (``layers/
attention/wq/{lora_a, lora_b}``; a scanned stack keeps its leading ``layers``
axis) and carry the logical names of the kernel they adapt (``A``: the
kernel's input names, ``B``: its output names; the rank axis replicated), so
they shard like the weights they adapt.
"""

from __future__ import annotations

import dataclasses
import string
from collections.abc import Mapping, Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

# Projection name -> (its module in a block, number of input dims of its kernel).
TARGETS: dict[str, tuple[str, int]] = {
    "wq": ("attention", 1), "wk": ("attention", 1), "wv": ("attention", 1),
    "wo": ("attention", 2), "w1": ("feed_forward", 1), "w2": ("feed_forward", 1),
    "w3": ("feed_forward", 1),
}
DEFAULT_TARGETS = ("wq", "wv")


@dataclasses.dataclass(frozen=True)
class LoraConfig:
    """rank r, alpha (the update is scaled by alpha / r) and the targeted projections."""

    rank: int
    alpha: float = 16.0
    targets: tuple[str, ...] = DEFAULT_TARGETS

    def __post_init__(self):
        if not isinstance(self.rank, int) or self.rank < 1:
            raise ValueError(f"lora rank={self.rank!r} must be a positive integer")
        if not self.targets:
            raise ValueError("lora targets is empty; name projections from "
                             f"{sorted(TARGETS)}")
        unknown = sorted(set(self.targets) - set(TARGETS))
        if unknown:
            raise ValueError(f"lora targets {unknown} are not projections; use names from "
                             f"{sorted(TARGETS)}")
        object.__setattr__(self, "targets", tuple(self.targets))

    @property
    def scale(self) -> float:
        return float(self.alpha) / self.rank

    def to_dict(self) -> dict[str, Any]:
        return {"rank": self.rank, "alpha": float(self.alpha), "targets": list(self.targets)}


def _blocks(params: Mapping[str, Any]) -> list[str]:
    """The block keys of a params tree: ['layers'] (scanned) or ['layers_0', ...]."""
    if "layers" in params:
        return ["layers"]
    return sorted((k for k in params if k.startswith("layers_")), key=lambda k: int(k[7:]))


def _kernel_names(leaf: Any) -> tuple[str | None, ...] | None:
    return tuple(leaf.names) if isinstance(leaf, nn.LogicallyPartitioned) else None


def init_adapters(rng: jax.Array, params: Mapping[str, Any], lora: LoraConfig,
                  dtype: Any = jnp.float32) -> dict[str, Any]:
    """Adapters for `params` (boxed or plain; arrays or ShapeDtypeStructs).

    Boxed kernels (from a flax init / eval_shape) give boxed adapters with
    logical names; plain ones give plain arrays. Usable under `jax.eval_shape`.
    """
    out: dict[str, Any] = {}
    keys = iter(jax.random.split(rng, len(_blocks(params)) * len(lora.targets)))
    for block in _blocks(params):
        for name in lora.targets:
            module, in_dims = TARGETS[name]
            leaf = params[block][module][name]["kernel"]
            names = _kernel_names(leaf)
            shape = tuple(leaf.value.shape if names is not None else leaf.shape)
            lead = len(shape) - _core_ndim(leaf, names, block)
            in_shape = shape[lead:lead + in_dims]
            out_shape = shape[lead + in_dims:]
            fan_in = 1
            for d in in_shape:
                fan_in *= d
            a = (jax.random.normal(next(keys), (*shape[:lead + in_dims], lora.rank), jnp.float32)
                 / jnp.sqrt(float(fan_in))).astype(dtype)
            b = jnp.zeros((*shape[:lead], lora.rank, *out_shape), dtype)
            if names is not None:
                a = nn.LogicallyPartitioned(a, (*names[:lead + in_dims], None))
                b = nn.LogicallyPartitioned(b, (*names[:lead], None, *names[lead + in_dims:]))
            out.setdefault(block, {}).setdefault(module, {})[name] = {"lora_a": a, "lora_b": b}
    return out


def _core_ndim(leaf, names, block) -> int:
    """Dims of one layer's kernel (without a scanned stack's leading axis)."""
    ndim = len(leaf.value.shape if names is not None else leaf.shape)
    return ndim - 1 if block == "layers" else ndim


def delta(a: jax.Array, b: jax.Array, scale: float, n_lead: int = 0) -> jax.Array:
    """scale * A @ B over the rank axis, batched over `n_lead` leading (layer) axes, in f32.

    a: [*lead, *in, rank]; b: [*lead, rank, *out] -> [*lead, *in, *out].
    """
    letters = iter(string.ascii_letters)
    lead = "".join(next(letters) for _ in range(n_lead))
    ins = "".join(next(letters) for _ in range(a.ndim - n_lead - 1))
    outs = "".join(next(letters) for _ in range(b.ndim - n_lead - 1))
    r = next(letters)
    spec = f"{lead}{ins}{r},{lead}{r}{outs}->{lead}{ins}{outs}"
    return scale * jnp.einsum(spec, a.astype(jnp.float32), b.astype(jnp.float32))


def merge(params: Mapping[str, Any], adapters: Mapping[str, Any], lora: LoraConfig) -> dict:
    """`params` with ``W + (alpha/rank) A B`` in every adapted kernel (in W's dtype)."""
    out = jax.tree.map(lambda x: x, dict(params))  # a shallow-copied tree of the same leaves
    for block, modules in adapters.items():
        for module, projections in modules.items():
            for name, ab in projections.items():
                node = dict(out[block])
                mod = dict(node[module])
                proj = dict(mod[name])
                w = proj["kernel"]
                proj["kernel"] = (w.astype(jnp.float32)
                                  + delta(ab["lora_a"], ab["lora_b"], lora.scale,
                                          n_lead=int(block == "layers"))).astype(w.dtype)
                mod[name] = proj
                node[module] = mod
                out[block] = node
    return out


def check_adapters(adapters: Mapping[str, Any], lora: LoraConfig,
                   blocks: Sequence[str]) -> None:
    """Raise ValueError unless `adapters` holds exactly `lora.targets` in each block."""
    for block in blocks:
        got = {n for m in adapters.get(block, {}).values() for n in m}
        if got != set(lora.targets):
            raise ValueError(f"LoRA adapters of {block} are for {sorted(got)}, the config "
                             f"targets {sorted(lora.targets)}")
