"""Loading a checkpoint straight onto a mesh, one device shard at a time.

`load_onto_mesh` is `from_pretrained(path, mesh=..., rules=...)`. The target
sharding of every parameter comes from its logical axis names and the rules
(`llama_jax.sharding.logical_shardings`, lenient as evaluation places params:
a dimension the mesh does not divide is replicated). Each array is built with
`place`, which is `jax.make_array_from_callback` one shard at a time: for
every distinct block its devices hold, a process reads just that block of the
stored tensor, puts it on those devices and drops it. So a process reads only
its own shards, and the host holds one device's block of one parameter at a
time (for stacked layers, that device's share of every layer), never the model.

Our layout differs from the files': a linear weight is stored ``[out, in]``
and kept as ``[in..., out...]`` (e.g. wq ``[dim, heads, head_dim]``), and HF
permutes the q/k rows. A device's index range in our array is mapped to the
stored rows and columns it needs (through the permutation), their bounding
block is read, and the rows/columns are picked and transposed in memory.

Orbax model folders and training workdirs are restored by orbax with the
target shardings (tensorstore reads only the local chunks); a cast or a
change of layout runs on the devices, sharded.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import jax
import numpy as np
from absl import logging
from jax.sharding import Mesh

from llama_jax import sharding
from llama_jax.convert.common import (
    GLOBAL_TABLE,
    LAYER_TABLE,
    LINEAR,
    ConversionError,
    check_tensors,
    meta_shapes,
    param_shapes,
    resolve_dtype,
    stack_layers,
    to_layout,
    unflatten,
)
from llama_jax.convert.orbax_format import load_orbax_sharded
from llama_jax.convert.overrides import resolve_config
from llama_jax.convert.progress import progress_bar
from llama_jax.convert.safetensors_io import READ_STATS
from llama_jax.convert.sharded_sources import HFSource, MetaSource
from llama_jax.convert.workdir import load_params
from llama_jax.model import abstract_params
from llama_jax.model.config import DTYPES, LlamaConfig


def target_shardings(config: LlamaConfig, mesh: Mesh, rules: sharding.Rules) -> Any:
    """NamedShardings of `config`'s params, as evaluation places them (lenient)."""
    return sharding.logical_shardings(abstract_params(config), mesh, rules, strict=False)


def _ranges(index: tuple[slice, ...], shape: tuple[int, ...]) -> tuple[slice, ...]:
    """`index` with every slice's start/stop filled in (step 1)."""
    out = []
    for s, n in zip(index, shape, strict=True):
        start, stop, step = s.indices(n)
        if step != 1:
            raise ValueError(f"shard index {index} has a step")
        out.append(slice(start, stop))
    return tuple(out)


def _flat(index: tuple[slice, ...], dims: tuple[int, ...]) -> np.ndarray:
    """C-order flat positions in `dims` of the block `index`."""
    grids = np.meshgrid(*(np.arange(s.start, s.stop) for s in index), indexing="ij")
    return np.ravel_multi_index(grids, dims).ravel()


def _split_point(shape: tuple[int, ...], n_in: int, n_out: int) -> int:
    """How many leading dims of our linear kernel are the input features."""
    for k in range(1, len(shape)):
        if math.prod(shape[:k]) == n_in and math.prod(shape[k:]) == n_out:
            return k
    raise ConversionError(f"kernel shape {shape} does not split into in={n_in} x out={n_out}")


def convert_block(source, name: str, shape: tuple[int, ...],
                  index: tuple[slice, ...]) -> np.ndarray:
    """Our-layout block `index` of Meta tensor `name` (our per-layer shape `shape`)."""
    stored = tuple(source.shape(name))
    suffix = name.split(".", 2)[-1] if name.startswith("layers.") else name
    if suffix not in LINEAR:
        if stored == shape:
            return source.block(name, index)
        full = tuple(slice(0, n) for n in stored)
        return np.ascontiguousarray(source.block(name, full).reshape(shape)[index])
    n_out, n_in = stored
    k = _split_point(shape, n_in, n_out)
    cols = _flat(index[:k], shape[:k])
    rows = _flat(index[k:], shape[k:])
    row_map = source.row_map(name)
    if row_map is not None:
        rows = row_map[rows]
    r0, r1, c0, c1 = rows.min(), rows.max() + 1, cols.min(), cols.max() + 1
    block = source.block(name, (slice(r0, r1), slice(c0, c1)))  # [rows, cols] stored
    if len(rows) != r1 - r0 or not np.array_equal(rows, np.arange(r0, r1)):
        block = block[rows - r0]
    if len(cols) != c1 - c0:
        block = block[:, cols - c0]
    sizes = tuple(s.stop - s.start for s in index)
    return np.ascontiguousarray(block.T.reshape(sizes))  # [in..., out...]


def place(shape: tuple[int, ...], target: jax.sharding.Sharding,
          read: Callable[[tuple[slice, ...]], np.ndarray]) -> jax.Array:
    """A global array of `shape` on `target`, each local shard made by `read(index)`.

    `jax.make_array_from_callback`, one shard at a time: every distinct block
    this process needs is read once, put on the devices that hold it, and
    dropped before the next is read (the callback version keeps all of an
    array's local blocks on the host until it places them together).
    """
    index_map = target.addressable_devices_indices_map(shape)
    groups: dict[tuple, tuple[tuple[slice, ...], list]] = {}
    for device, index in index_map.items():
        index = _ranges(index, shape)
        key = tuple((s.start, s.stop) for s in index)
        groups.setdefault(key, (index, []))[1].append(device)
    placed = {}
    for index, devices in groups.values():
        block = read(index)
        for device in devices:
            placed[device] = jax.device_put(block, device)
        # The copies are asynchronous: wait for them, so the host holds one block at a time.
        jax.block_until_ready([placed[d] for d in devices])
        del block
    return jax.make_array_from_single_device_arrays(shape, target,
                                                    [placed[d] for d in index_map])


def _paths(config: LlamaConfig):
    """(our path, Meta name or per-layer suffix, per-layer?) in Meta's file order."""
    for name, path in GLOBAL_TABLE.items():
        yield path, name, False
    for suffix, path in LAYER_TABLE.items():
        yield ("layers", *path), suffix, True


def _from_source(source, config: LlamaConfig, cast_to: np.dtype | None, mesh: Mesh,
                 rules: sharding.Rules, progress: bool) -> dict:
    """Our param tree (layout of `config.scan_layers`) on `mesh`, read from `source`."""
    shapes = param_shapes(config)  # scanned layout
    scanned = target_shardings(config.with_run_options(scan_layers=True), mesh, rules)
    flat_shardings = {tuple(str(getattr(k, "key", k)) for k in p): s for p, s in
                      jax.tree_util.tree_flatten_with_path(scanned)[0]}
    out: dict[tuple[str, ...], Any] = {}
    items = [item for item in _paths(config) if item[0] in shapes]  # tied: no output head

    def build(name_of, shape, where):
        def read(index):
            if name_of is None:
                block = convert_block(source, where, shape, index)
            else:  # stacked layers: one stored tensor per layer
                block = np.stack([convert_block(source, name_of(i), shape[1:], index[1:])
                                  for i in range(index[0].start, index[0].stop)])
            return block if cast_to is None else block.astype(cast_to, copy=False)
        return read

    for path, name, per_layer in progress_bar(items, total=len(items),
                                              desc=f"placing {source.path.name}",
                                              enabled=progress):
        shape = shapes[path]
        if not per_layer:
            arr = place(shape, flat_shardings[path], build(None, shape, name))
        elif config.scan_layers:
            arr = place(shape, flat_shardings[path],
                        build(lambda i, s=name: f"layers.{i}.{s}", shape, None))
        else:
            layer_sharding = jax.sharding.NamedSharding(
                mesh, jax.sharding.PartitionSpec(*flat_shardings[path].spec[1:]))
            arr = [place(shape[1:], layer_sharding, build(None, shape[1:], f"layers.{i}.{name}"))
                   for i in range(config.n_layers)]
        out[path] = arr
    if config.scan_layers:
        return unflatten(out)
    tree: dict[str, Any] = unflatten({p: v for p, v in out.items() if p[0] != "layers"})
    for i in range(config.n_layers):
        tree[f"layers_{i}"] = unflatten({p[1:]: v[i] for p, v in out.items()
                                         if p[0] == "layers"})
    return tree


def _relayout(params: Any, cast_to: np.dtype | None, config: LlamaConfig, mesh: Mesh,
              rules: sharding.Rules) -> Any:
    """Stack, cast and lay out `params` for `config` on the devices (sharded)."""
    target = target_shardings(config, mesh, rules)

    def fn(tree):
        tree = stack_layers(tree)
        if cast_to is not None:
            tree = jax.tree_util.tree_map(lambda x: x.astype(cast_to), tree)
        return to_layout(tree, config.scan_layers)

    return jax.jit(fn, out_shardings=target)(params)


def _check_shapes(loaded: LlamaConfig, final: LlamaConfig, path: Path,
                  overrides: Mapping[str, Any]) -> None:
    """Overrides must keep the shapes the stored tensors have."""
    found = {"/".join(p): s for p, s in param_shapes(loaded).items()}
    check_tensors(found, {"/".join(p): s for p, s in param_shapes(final).items()},
                  where=lambda name: f"the checkpoint {path}",
                  config_source=f"its config with config_overrides={dict(overrides)}")


def load_onto_mesh(path: str | Path, fmt: str, np_dtype: np.dtype | None,
                   config_overrides: Mapping[str, Any] | None, mesh: Mesh,
                   rules: sharding.Rules = sharding.DEFAULT_RULES, *,
                   progress: bool = True) -> tuple[LlamaConfig, dict]:
    """(config, params as sharded `jax.Array`s on `mesh`) from any layout.

    The params equal `from_pretrained`'s host path bit for bit (same config
    rules, same casts); see the module docstring for how they are read.
    """
    path = Path(path)
    READ_STATS.reset()
    if fmt in ("hf", "meta"):
        source = HFSource(path) if fmt == "hf" else MetaSource(path)
        loaded, stored = source.config, source.stored
        config, overrides = resolve_config(loaded, stored, np_dtype, config_overrides, path)
        _check_shapes(loaded, config, path, overrides)
        cast_to = None if np_dtype is None and stored == config.param_dtype else \
            resolve_dtype(config.param_dtype)
        params = _from_source(source, config, cast_to, mesh, rules, progress)
        total = sum(math.prod(source.shape(n)) * np.dtype(source.dtype(n)).itemsize
                    for n in _meta_names(config))
        logging.info("loaded %s onto the mesh: process %d of %d read %d of %d tensor bytes "
                     "(%d blocks)", path, jax.process_index(), jax.process_count(),
                     READ_STATS.bytes, total, READ_STATS.blocks)
        return config, params
    if fmt == "orbax":
        def shardings_for(c):
            return target_shardings(c.with_run_options(scan_layers=True), mesh, rules)
        loaded, params = load_orbax_sharded(path, shardings_for)
    elif fmt == "training":
        loaded, params = load_params(
            path, shardings=lambda c: target_shardings(c, mesh, rules))
    else:
        raise ConversionError(f"format={fmt!r} is not one of ['meta', 'hf', 'orbax', 'training']")
    emb = stack_layers(params)["tok_embeddings"]["embedding"]
    stored = np.dtype(emb.dtype).name
    config, overrides = resolve_config(loaded, stored if stored in DTYPES else None,
                                       np_dtype, config_overrides, path)
    _check_shapes(loaded, config, path, overrides)
    cast_to = None if np_dtype is None and stored == config.param_dtype else \
        resolve_dtype(config.param_dtype)
    if cast_to is None and loaded.scan_layers == config.scan_layers:
        return config, params
    return config, _relayout(params, cast_to, config, mesh, rules)


def _meta_names(config: LlamaConfig):
    yield from meta_shapes(config)  # a tied config has no output.weight
