"""Mesh axes, logical-axis rules, mesh construction and sharding derivation.

The only module that names mesh axes. Model code speaks logical names
(`embed`, `heads`, `activation_batch`, ...); `DEFAULT_RULES` maps them onto
the four mesh axes `data`, `fsdp`, `tensor`, `sequence`:

* FSDP (ZeRO-3): every weight's `embed` dimension is split over `fsdp`;
* Megatron tensor parallelism: heads, FFN hidden width and vocab over `tensor`;
* batch over `data` and `fsdp` together, activation length over `sequence`.

Shardings are derived, never hand-listed: `logical_shardings` turns the boxed
`jax.eval_shape` of an init (each leaf carries its logical names) into a tree
of `NamedSharding`, failing loudly for a name with no rule or a dimension that
its mesh axes do not divide. All mesh axes are `AxisType.Auto` (GSPMD).
"""

from __future__ import annotations

import contextlib
import functools
import math
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any

import flax.linen as nn
import jax
from jax.experimental import mesh_utils
from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec

DATA, FSDP, TENSOR, SEQUENCE = "data", "fsdp", "tensor", "sequence"
MESH_AXES = (DATA, FSDP, TENSOR, SEQUENCE)

MeshAxes = str | tuple[str, ...] | None
Rules = tuple[tuple[str, MeshAxes], ...]

# Logical axis -> mesh axis (or axes, or None for replicated). Order matters
# only when two names of one array want the same mesh axis: the earlier rule
# wins and the later dimension stays unsharded (flax's semantics).
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


# --------------------------------------------------------------------------
# Rules.


def _as_axes(value: Any, where: str) -> MeshAxes:
    """Normalise a rule's right-hand side and check its mesh-axis names."""
    if value is None:
        return None
    axes = (value,) if isinstance(value, str) else tuple(value)
    bad = [a for a in axes if a not in MESH_AXES]
    if bad:
        raise ValueError(f"sharding rule {where}: unknown mesh axis {bad[0]!r}; "
                         f"mesh axes are {MESH_AXES}")
    if len(set(axes)) != len(axes):
        raise ValueError(f"sharding rule {where}: mesh axes {axes} repeat an axis")
    if not axes:
        return None
    return axes[0] if len(axes) == 1 else axes


def _parse_rules_text(text: str) -> list[tuple[str, Any]]:
    """``'name=axis[+axis],name='`` -> [(name, axes)]; an empty right-hand side is None."""
    pairs = []
    for item in text.split(","):
        if not item.strip():
            continue
        if "=" not in item:
            raise ValueError(f"sharding rule entry {item.strip()!r} must look like "
                             "'logical=axis', 'logical=axis+axis' or 'logical=' (replicated)")
        name, value = (s.strip() for s in item.split("=", 1))
        axes = tuple(a.strip() for a in value.split("+") if a.strip())
        pairs.append((name, axes or None))
    return pairs


def make_rules(overrides: str | Mapping[str, Any] | Sequence[Sequence[Any]] | None = None,
               base: Rules = DEFAULT_RULES) -> Rules:
    """`base` with `overrides` applied in place: the one parser of rule overrides.

    Args:
      overrides: None or ``''`` (no change); a string
        ``'name=axis[+axis],name='`` as the ``mesh.rules`` config key takes it
        (an empty right-hand side means replicated); a mapping ``logical name
        -> mesh axis | tuple of axes | None`` (e.g. an ml_collections
        ConfigDict); or a sequence of such pairs.
      base: the table to start from.

    Raises:
      ValueError: for an entry that is not ``name=axes`` / a pair, a logical
        name `base` has no rule for (listing the known names: a mistyped name
        is never silently added), or an unknown / repeated mesh axis.
    """
    rules = [(name, _as_axes(axes, repr(name))) for name, axes in base]
    if overrides is None:
        return tuple(rules)
    if isinstance(overrides, str):
        pairs: Any = _parse_rules_text(overrides)
    elif hasattr(overrides, "to_dict"):  # an ml_collections ConfigDict
        pairs = overrides.to_dict().items()
    elif isinstance(overrides, Mapping):
        pairs = overrides.items()
    else:
        pairs = overrides
    known = [n for n, _ in rules]
    for pair in pairs:
        if isinstance(pair, str) or len(pair) != 2:
            raise ValueError(f"sharding rule {pair!r} must be a (logical name, mesh axes) pair")
        name, axes = str(pair[0]), pair[1]
        if name not in known:
            raise ValueError(f"sharding rules: unknown logical axis {name!r}; rules can only "
                             f"re-map the known logical axes {sorted(set(known))}")
        new = (name, _as_axes(axes, repr(name)))
        rules = [new if n == name else (n, a) for n, a in rules]
    return tuple(rules)


def logical_to_spec(names: Sequence[str | None], rules: Rules, *,
                    what: str = "array") -> PartitionSpec:
    """The `PartitionSpec` for an array whose dimensions have logical `names`.

    Rules are applied in table order; a rule is skipped for a dimension when
    one of its mesh axes is already used by another dimension of the same
    array (that dimension stays replicated). A name that no rule mentions is
    an error, never a silent replication.
    """
    known = {n for n, _ in rules}
    for name in names:
        if name is not None and name not in known:
            raise ValueError(
                f"{what}: unknown logical axis {name!r} (logical names {tuple(names)}); "
                f"add a rule for {name!r} to the sharding rules (known: {sorted(known)})")
    assigned: list[MeshAxes] = [None] * len(names)
    done = [n is None for n in names]
    used: set[str] = set()
    for rule_name, axes in rules:
        for i, name in enumerate(names):
            if done[i] or name != rule_name:
                continue
            want = () if axes is None else ((axes,) if isinstance(axes, str) else axes)
            if used.isdisjoint(want):
                assigned[i] = axes
                used.update(want)
                done[i] = True
    return PartitionSpec(*assigned)


def _axes_size(mesh: Mesh, axes: MeshAxes) -> int:
    if axes is None:
        return 1
    axes = (axes,) if isinstance(axes, str) else axes
    return math.prod(mesh.shape[a] for a in axes)


def path_str(path: Any) -> str:
    """A tree path as `a/b/c`."""
    return "/".join(str(getattr(k, "key", getattr(k, "name", getattr(k, "idx", k))))
                    for k in path)


def is_boxed(x: Any) -> bool:
    """Whether `x` is a flax metadata box (e.g. `nn.LogicallyPartitioned`)."""
    return isinstance(x, nn.meta.AxisMetadata)


def leaf_sharding(where: str, leaf: Any, mesh: Mesh, rules: Rules = DEFAULT_RULES, *,
                  strict: bool = True) -> NamedSharding:
    """The `NamedSharding` of one boxed abstract leaf named `where` (see
    `logical_shardings` for the rules, `strict` and the errors)."""
    if not is_boxed(leaf):
        if not tuple(getattr(leaf, "shape", ())):
            return NamedSharding(mesh, PartitionSpec())
        raise ValueError(f"parameter {where!r} (shape {leaf.shape}) has no logical axis "
                         "names; create it with nn.with_logical_partitioning")
    names = tuple(leaf.names)
    shape = leaf.unbox().shape
    if len(names) != len(shape):
        raise ValueError(f"parameter {where!r}: logical names {names} do not match "
                         f"its shape {shape}")
    spec = logical_to_spec(names, rules, what=f"parameter {where!r}")
    fitted = []
    for dim, (size, axes, name) in enumerate(zip(shape, spec, names, strict=True)):
        n = _axes_size(mesh, axes)
        if size % n and strict:
            raise ValueError(
                f"parameter {where!r}: dimension {dim} ({name!r}) of size {size} is not "
                f"divisible by mesh axis {axes!r} of size {n}; change the mesh shape "
                f"or the rule for {name!r}")
        fitted.append(None if size % n else axes)
    return NamedSharding(mesh, PartitionSpec(*fitted))


def logical_shardings(boxed_tree: Any, mesh: Mesh, rules: Rules = DEFAULT_RULES, *,
                      strict: bool = True) -> Any:
    """A tree of `NamedSharding` for a boxed abstract tree (from `jax.eval_shape`
    of a flax init: leaves are `nn.LogicallyPartitioned` boxes).

    The result has the structure of the *unboxed* tree. Leaves without logical
    names are replicated only if they are scalars; any other leaf without names
    is an error (a weight without logical names would be silently replicated).

    Args:
      boxed_tree: the boxed abstract tree.
      mesh: the mesh to shard over.
      rules: logical-axis rules.
      strict: True (training): a dimension that its mesh axes do not divide is
        an error. False (evaluation, so any checkpoint runs on any mesh): that
        dimension is replicated instead. Unknown logical names raise either way.

    Raises:
      ValueError: naming the parameter path and the logical axis for a name
        with no rule, or (strict) the parameter, dimension size, mesh axis and
        its size when the mesh axis does not divide the dimension.
    """

    def one(path, leaf):
        return leaf_sharding(path_str(path), leaf, mesh, rules, strict=strict)

    return jax.tree_util.tree_map_with_path(one, boxed_tree, is_leaf=is_boxed)


def with_logical_constraint(x: jax.Array, names: Sequence[str | None]) -> jax.Array:
    """Constrain activation `x` by logical `names` under the active rules/mesh.

    A no-op outside `activate` (no rules or no mesh). Unknown names raise.
    Mesh axes that are manual here (inside `shard_map`) are left out.
    """
    rules = nn.get_logical_axis_rules()
    mesh = jax.sharding.get_abstract_mesh()
    if not rules or mesh.empty:
        return x
    spec = logical_to_spec(tuple(names), tuple(rules),
                           what=f"activation of shape {tuple(x.shape)}")
    manual = set(mesh.manual_axes)
    if manual:
        def keep(axes):
            if axes is None:
                return None
            kept = tuple(a for a in ((axes,) if isinstance(axes, str) else axes)
                         if a not in manual)
            return kept or None
        spec = PartitionSpec(*(keep(a) for a in spec))
        if all(a is None for a in spec):
            return x
    return jax.lax.with_sharding_constraint(x, spec)


def logical_axis_size(name: str) -> int:
    """How many ways the active mesh splits logical axis `name` (1 outside `activate`)."""
    rules = nn.get_logical_axis_rules()
    mesh = jax.sharding.get_abstract_mesh()
    if not rules or mesh.empty:
        return 1
    axes = dict(rules).get(name)
    axes = () if axes is None else (axes,) if isinstance(axes, str) else tuple(axes)
    return math.prod(mesh.shape[a] for a in axes if a not in set(mesh.manual_axes))


# --------------------------------------------------------------------------
# Meshes.


def _resolve_shape(shape: Sequence[int], n: int, what: str = "mesh shape") -> list[int]:
    """Fill the (at most one) -1 of `shape` so its product is `n`; validate."""
    shape = [int(s) for s in shape]
    if len(shape) != len(MESH_AXES):
        raise ValueError(f"{what} {shape} must give one size per axis {MESH_AXES}")
    if shape.count(-1) > 1:
        raise ValueError(f"{what} {shape}: at most one axis may be -1")
    if any(s == 0 or s < -1 for s in shape):
        raise ValueError(f"{what} {shape}: sizes must be positive (or one -1)")
    known = math.prod(s for s in shape if s != -1)
    if -1 in shape:
        if n % known:
            raise ValueError(f"{what} {dict(zip(MESH_AXES, shape, strict=True))}: {n} devices "
                             f"are not divisible by the fixed axes' product {known}")
        shape[shape.index(-1)] = n // known
    total = math.prod(shape)
    if total != n:
        raise ValueError(
            f"{what} {dict(zip(MESH_AXES, shape, strict=True))} has {total} devices but "
            f"{n} are available; make the product equal the device count or set one "
            "axis to -1")
    return shape


def make_mesh(shape: Sequence[int], devices: Sequence[jax.Device] | None = None) -> Mesh:
    """A single-granule mesh of axes (data, fsdp, tensor, sequence); one -1
    takes the devices that are left. Uses `jax.make_mesh` (topology-aware)."""
    devices = list(devices) if devices is not None else jax.devices()
    shape = _resolve_shape(shape, len(devices))
    return jax.make_mesh(tuple(shape), MESH_AXES, axis_types=(AxisType.Auto,) * 4,
                         devices=devices)


def _cfg_get(cfg: Any, key: str, default: Any = None) -> Any:
    if cfg is None:
        return default
    if isinstance(cfg, Mapping):
        return cfg.get(key, default)
    try:
        return cfg[key]
    except (KeyError, TypeError, AttributeError):
        return getattr(cfg, key, default)


def _granules(devices: Sequence[jax.Device]) -> tuple[bool, int]:
    """(process_is_granule, number of granules): slices where devices report
    more than one `slice_index` (TPU multislice), else processes."""
    slices = {getattr(d, "slice_index", None) for d in devices}
    if None not in slices and len(slices) > 1:
        return False, len(slices)
    return True, len({d.process_index for d in devices})


def mesh_from_config(mesh_cfg: Any = None,
                     devices: Sequence[jax.Device] | None = None) -> Mesh:
    """The mesh a config asks for.

    `mesh_cfg` has ints `data`, `fsdp`, `tensor`, `sequence` (total axis sizes;
    one may be -1 = the devices that are left; missing = 1, or -1 for `data`
    when no axis is -1) and an optional `dcn` part with the same keys: how
    many of each axis span the slow network (hosts or slices). With one
    granule (a single host) the mesh comes from `jax.make_mesh`; with several,
    from `mesh_utils.create_hybrid_device_mesh`, so the per-host (ICI) axes
    keep fsdp/tensor/sequence traffic inside a host. Without a `dcn` part the
    granules go on `data`, or on `fsdp` if `data` cannot hold them.
    """
    devices = list(devices) if devices is not None else jax.devices()
    sizes = [_cfg_get(mesh_cfg, a, None) for a in MESH_AXES]
    if all(s is None for s in sizes) or (-1 not in sizes and sizes[0] is None):
        sizes[0] = -1
    shape = _resolve_shape([1 if s is None else s for s in sizes], len(devices))
    process_is_granule, n_granules = _granules(devices)
    dcn_cfg = _cfg_get(mesh_cfg, "dcn", None)
    if n_granules == 1 and dcn_cfg is None:
        return make_mesh(shape, devices)

    if dcn_cfg is not None:
        dcn = [int(_cfg_get(dcn_cfg, a, 1) or 1) for a in MESH_AXES]
    else:
        dcn = [1, 1, 1, 1]
        for i in (0, 1):
            if shape[i] % n_granules == 0:
                dcn[i] = n_granules
                break
        else:
            raise ValueError(
                f"mesh {dict(zip(MESH_AXES, shape, strict=True))}: cannot place {n_granules} "
                "hosts/slices on `data` or `fsdp`; set mesh.dcn.<axis> explicitly")
    if math.prod(dcn) != n_granules:
        raise ValueError(f"mesh.dcn {dict(zip(MESH_AXES, dcn, strict=True))} has product "
                         f"{math.prod(dcn)} but there are {n_granules} hosts/slices")
    for a, s, d in zip(MESH_AXES, shape, dcn, strict=True):
        if s % d:
            raise ValueError(f"mesh axis {a!r} of size {s} is not divisible by its dcn "
                             f"size {d}; mesh.dcn.{a} must divide mesh.{a}")
    ici = [s // d for s, d in zip(shape, dcn, strict=True)]
    if n_granules == 1:
        arr = mesh_utils.create_device_mesh(ici, devices)
    else:
        arr = mesh_utils.create_hybrid_device_mesh(
            ici, dcn, devices, process_is_granule=process_is_granule)
    return Mesh(arr, MESH_AXES, axis_types=(AxisType.Auto,) * 4)


# --------------------------------------------------------------------------
# Inputs and contexts.


def replicated(mesh: Mesh) -> NamedSharding:
    """Fully replicated sharding on `mesh`."""
    return NamedSharding(mesh, PartitionSpec())


def data_sharding(mesh: Mesh, rules: Rules = DEFAULT_RULES, *,
                  shard_length: bool = True) -> NamedSharding:
    """Sharding of [batch, len] inputs: batch over `activation_batch`'s mesh
    axes (data+fsdp by default), length over `activation_length`'s (sequence).

    `shard_length=False` keeps the length dimension whole, for inputs whose
    length need not be a multiple of the `sequence` axis (evaluation buckets,
    prompts).
    """
    names = ("activation_batch", "activation_length" if shard_length else None)
    return NamedSharding(mesh, logical_to_spec(names, rules, what="input batch"))


@contextlib.contextmanager
def activate(mesh: Mesh, rules: Rules = DEFAULT_RULES) -> Iterator[None]:
    """Make `mesh` and `rules` current for tracing (constraints, shard_map)."""
    with jax.set_mesh(mesh), nn.logical_axis_rules(rules):
        yield


class JittedStep:
    """A `jax.jit`-ed function that traces and runs under `activate(mesh, rules)`.

    The one jit-under-mesh wrapper: the train and eval steps, `Scorer` and
    `Generator` all run through it. Call it like the function (static
    arguments by keyword, as `jit_kwargs` declares them). `trace_count`
    counts traces (a second trace means a recompile); `lower(...)` gives the
    lowered computation for ``.compile().memory_analysis()`` /
    ``cost_analysis()``.
    """

    def __init__(self, fn: Callable, mesh: Mesh, rules: Rules = DEFAULT_RULES, **jit_kwargs):
        self.mesh, self.rules = mesh, rules
        self.trace_count = 0

        @functools.wraps(fn)
        def counted(*args, **kwargs):
            self.trace_count += 1
            return fn(*args, **kwargs)

        self.jitted = jax.jit(counted, **jit_kwargs)

    def __call__(self, *args, **kwargs):
        with activate(self.mesh, self.rules):
            return self.jitted(*args, **kwargs)

    def lower(self, *args, **kwargs):
        """`jax.jit(...).lower(...)` under the mesh and rules."""
        with activate(self.mesh, self.rules):
            return self.jitted.lower(*args, **kwargs)
