"""Mesh axes, logical-axis rules, and the context that activates them.

The only module that names mesh axes. Model code speaks logical names
(`embed`, `heads`, `activation_batch`, ...); `DEFAULT_RULES` maps them onto
the four mesh axes `data`, `fsdp`, `tensor`, `sequence`.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence

import flax.linen as nn
import jax
from jax.sharding import AxisType, Mesh

DATA, FSDP, TENSOR, SEQUENCE = "data", "fsdp", "tensor", "sequence"
MESH_AXES = (DATA, FSDP, TENSOR, SEQUENCE)

Rules = tuple[tuple[str, str | tuple[str, ...] | None], ...]

# Logical axis -> mesh axis (or axes, or None for replicated).
DEFAULT_RULES: Rules = (
    # Parameters.
    ("layers", None),
    ("vocab", TENSOR),
    ("embed", FSDP),
    ("heads", TENSOR),
    ("kv_heads", TENSOR),
    ("kv", None),
    ("mlp", TENSOR),
    ("norm", None),
    # Activations.
    ("activation_batch", (DATA, FSDP)),
    ("activation_length", SEQUENCE),
    ("activation_embed", None),
    ("activation_heads", TENSOR),
    ("activation_kv_heads", TENSOR),
    ("activation_kv", None),
    ("activation_mlp", TENSOR),
    ("activation_vocab", TENSOR),
)


def make_mesh(shape: Sequence[int], devices: Sequence[jax.Device] | None = None) -> Mesh:
    """A mesh of axes (data, fsdp, tensor, sequence); one -1 takes the rest."""
    devices = list(devices) if devices is not None else jax.devices()
    shape = list(shape)
    if len(shape) != len(MESH_AXES):
        raise ValueError(f"mesh shape {shape} must give one size per axis {MESH_AXES}")
    if shape.count(-1) > 1:
        raise ValueError(f"mesh shape {shape}: at most one axis may be -1")
    known = 1
    for s in shape:
        if s != -1:
            known *= s
    if -1 in shape:
        if len(devices) % known:
            raise ValueError(f"mesh shape {shape}: {len(devices)} devices are not "
                             f"divisible by the fixed axes' product {known}")
        shape[shape.index(-1)] = len(devices) // known
    total = 1
    for s in shape:
        total *= s
    if total != len(devices):
        raise ValueError(
            f"mesh shape {dict(zip(MESH_AXES, shape, strict=True))} has {total} devices but "
            f"{len(devices)} are available; make the product equal the device "
            "count or set one axis to -1")
    return jax.make_mesh(tuple(shape), MESH_AXES, axis_types=(AxisType.Auto,) * 4,
                         devices=devices)


@contextlib.contextmanager
def activate(mesh: Mesh, rules: Rules = DEFAULT_RULES) -> Iterator[None]:
    """Make `mesh` and `rules` current for tracing (constraints, shard_map)."""
    with jax.set_mesh(mesh), nn.logical_axis_rules(rules):
        yield
