"""Where evaluation runs: the default mesh, sharded parameters, batch sizes.

Scoring and generation run under a mesh with the logical-axis rules of
`llama_jax.sharding`. Parameters are placed by their logical names with
`sharding.logical_shardings(..., strict=False)` (a dimension the mesh does not
divide is replicated instead of failing), and batches are split like
`sharding.data_sharding` (along the mesh axes that `activation_batch` maps to).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import flax.linen as nn
import jax
from jax.sharding import Mesh

from llama_jax import distributed, sharding
from llama_jax.model import LlamaConfig, abstract_params


def default_mesh(devices: Sequence[jax.Device] | None = None) -> Mesh:
    """All devices on the `fsdp` axis: weights sharded, batch split."""
    return _mesh((1, -1, 1, 1), devices)


def _mesh(shape: Sequence[int], devices: Sequence[jax.Device] | None) -> Mesh:
    """One host: `make_mesh`; several processes: `mesh_from_config` (hosts on DCN axes)."""
    if jax.process_count() > 1:
        return sharding.mesh_from_config(dict(zip(sharding.MESH_AXES, shape, strict=True)),
                                         devices)
    return sharding.make_mesh(shape, devices)


def join_job(coordinator_address: str | None, num_processes: int | None,
             process_id: int | None) -> distributed.ProcessInfo:
    """Join a multi-process job as training does (`distributed.initialize_from_config`).

    The eval / generate CLIs call it first thing, with their
    ``--coordinator_address``, ``--num_processes`` and ``--process_id``
    flags; with none of them set outside a cluster it is a no-op. Raises
    `ConfigError` for an incomplete spec.
    """
    return distributed.initialize_from_config({
        "enabled": "auto", "coordinator_address": coordinator_address,
        "num_processes": num_processes, "process_id": process_id})


def parse_mesh(spec: str | None, devices: Sequence[jax.Device] | None = None) -> Mesh:
    """A mesh from "data,fsdp,tensor,sequence" sizes (one may be -1); None -> default."""
    if not spec:
        return default_mesh(devices)
    try:
        shape = [int(s) for s in spec.split(",")]
    except ValueError:
        raise ValueError(f"mesh={spec!r}: expected four comma-separated integers "
                         f"for {sharding.MESH_AXES}, e.g. '1,-1,1,1'") from None
    return _mesh(shape, devices)


def place_params(config: LlamaConfig, params, mesh: Mesh,
                 rules: sharding.Rules = sharding.DEFAULT_RULES):
    """Put `params` (a plain or boxed tree for `config`) on `mesh`, sharded."""
    params = nn.meta.unbox(params)
    # Lenient: a dimension the mesh does not divide is replicated, so any
    # checkpoint can be evaluated on any mesh (training keeps the strict rule).
    target = sharding.logical_shardings(abstract_params(config), mesh, rules, strict=False)
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


def batch_multiple(mesh: Mesh, rules: sharding.Rules = sharding.DEFAULT_RULES) -> int:
    """How many ways the batch axis is split: batch sizes must be a multiple."""
    entry = sharding.data_sharding(mesh, rules, shard_length=False).spec[0]
    axes = () if entry is None else (entry,) if isinstance(entry, str) else tuple(entry)
    return math.prod(mesh.shape[a] for a in axes)


def round_batch(batch_size: int, mesh: Mesh, rules: sharding.Rules) -> int:
    """`batch_size` rounded up to a multiple of the batch split."""
    m = batch_multiple(mesh, rules)
    return max(m, -(-batch_size // m) * m)
