"""Where evaluation runs: the default mesh, sharded parameters, batch shardings.

Scoring and generation run under a mesh with the logical-axis rules of
`llama_jax.sharding`. Parameters are placed by their logical names (a
dimension the mesh does not divide is replicated instead of failing), and
batches are split along the mesh axes that `activation_batch` maps to.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import flax.linen as nn
import jax
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from llama_jax import sharding
from llama_jax.model import LlamaConfig, abstract_params


def default_mesh(devices: Sequence[jax.Device] | None = None) -> Mesh:
    """All devices on the `fsdp` axis: weights sharded, batch split."""
    return sharding.make_mesh((1, -1, 1, 1), devices)


def parse_mesh(spec: str | None, devices: Sequence[jax.Device] | None = None) -> Mesh:
    """A mesh from "data,fsdp,tensor,sequence" sizes (one may be -1); None -> default."""
    if not spec:
        return default_mesh(devices)
    try:
        shape = [int(s) for s in spec.split(",")]
    except ValueError:
        raise ValueError(f"mesh={spec!r}: expected four comma-separated integers "
                         f"for {sharding.MESH_AXES}, e.g. '1,-1,1,1'") from None
    return sharding.make_mesh(shape, devices)


def _mesh_axes(entry) -> tuple[str, ...]:
    if entry is None:
        return ()
    return (entry,) if isinstance(entry, str) else tuple(entry)


def _fit_spec(spec: PartitionSpec, shape: tuple[int, ...], mesh: Mesh) -> PartitionSpec:
    """Drop mesh axes from dimensions they do not divide (replicate those)."""
    fixed = []
    for dim, entry in zip(shape, tuple(spec) + (None,) * (len(shape) - len(spec)), strict=True):
        axes = _mesh_axes(entry)
        size = math.prod(mesh.shape[a] for a in axes)
        fixed.append(entry if size and dim % size == 0 else None)
    return PartitionSpec(*fixed)


def param_shardings(config: LlamaConfig, mesh: Mesh, rules: sharding.Rules = sharding.DEFAULT_RULES):
    """A `NamedSharding` per parameter of `config`, from its logical names.

    Like `llama_jax.sharding.logical_shardings`, except that a dimension its
    mesh axes do not divide is replicated instead of being an error, so any
    checkpoint can be evaluated on any mesh (training keeps the strict rule).
    """
    boxed = abstract_params(config)

    def one(path, leaf):
        shape = leaf.unbox().shape
        spec = sharding.logical_to_spec(tuple(leaf.names), rules,
                                        what=f"parameter {sharding.path_str(path)!r}")
        return NamedSharding(mesh, _fit_spec(spec, shape, mesh))

    return jax.tree_util.tree_map_with_path(one, boxed, is_leaf=sharding.is_boxed)


def place_params(config: LlamaConfig, params, mesh: Mesh,
                 rules: sharding.Rules = sharding.DEFAULT_RULES):
    """Put `params` (a plain or boxed tree for `config`) on `mesh`, sharded."""
    params = nn.meta.unbox(params)
    target = param_shardings(config, mesh, rules)
    want = jax.tree_util.tree_structure(target)
    got = jax.tree_util.tree_structure(params)
    if want != got:
        raise ValueError(
            "parameters do not match the model config (scan_layers="
            f"{config.scan_layers}, n_layers={config.n_layers}); load them with "
            "llama_jax.from_pretrained, which returns a matching (config, params) pair.\n"
            f"expected tree {want}\ngot {got}")
    shapes = nn.meta.unbox(abstract_params(config))
    for (path, p), s in zip(jax.tree_util.tree_flatten_with_path(params)[0],
                            jax.tree_util.tree_leaves(shapes), strict=True):
        if tuple(p.shape) != tuple(s.shape):
            raise ValueError(f"parameter {jax.tree_util.keystr(path)} has shape "
                             f"{tuple(p.shape)}, the config expects {tuple(s.shape)}")
    return jax.device_put(params, target)


def batch_spec(mesh: Mesh, rules: sharding.Rules, ndim: int) -> PartitionSpec:
    """The mesh spec of an array whose leading axis is the batch."""
    logical = PartitionSpec("activation_batch", *([None] * (ndim - 1)))
    return nn.logical_to_mesh(logical, rules)


def batch_multiple(mesh: Mesh, rules: sharding.Rules = sharding.DEFAULT_RULES) -> int:
    """How many ways the batch axis is split: batch sizes must be a multiple."""
    entry = tuple(batch_spec(mesh, rules, 1))[0]
    return math.prod(mesh.shape[a] for a in _mesh_axes(entry))


def batch_sharding(mesh: Mesh, rules: sharding.Rules, ndim: int) -> NamedSharding:
    """`NamedSharding` splitting the leading (batch) axis like `activation_batch`."""
    return NamedSharding(mesh, batch_spec(mesh, rules, ndim))


def round_batch(batch_size: int, mesh: Mesh, rules: sharding.Rules) -> int:
    """`batch_size` rounded up to a multiple of the batch split."""
    m = batch_multiple(mesh, rules)
    return max(m, -(-batch_size // m) * m)
