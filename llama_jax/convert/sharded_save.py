"""Saving sharded params as a Hugging Face folder, one tensor at a time.

`save_pretrained(..., format="hf")` comes here when the params are
`jax.Array`s spread over several devices (or processes): each tensor (each
layer's slice of a stacked one) is fetched on its own (`distributed.to_host`:
assembled from local shards, or gathered across processes), turned into HF's
layout, appended to its safetensors file (`StreamedWriter`, header written
first) and dropped, so no host ever holds the model. The folder is the one
`llama_jax.convert.hf.save_hf` writes: the same files, the same split into
``shards`` files, the same index and config.json. With several processes all
of them take part in the gathers; process 0 writes.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import jax
import numpy as np
from jax.experimental import multihost_utils

from llama_jax import distributed
from llama_jax.convert import hf
from llama_jax.convert.common import (
    GLOBAL_TABLE,
    LAYER_TABLE,
    LINEAR,
    ConversionError,
    atomic_directory,
    meta_shapes,
)
from llama_jax.convert.hf_tokenizer import save_hf_tokenizer
from llama_jax.convert.progress import progress_bar
from llama_jax.convert.safetensors_io import StreamedWriter
from llama_jax.data.tokenizer import Tokenizer
from llama_jax.model.config import LlamaConfig


def spans_devices(flat: Mapping[tuple[str, ...], Any]) -> bool:
    """Whether any parameter is a jax.Array on more than one device."""
    return any(isinstance(x, jax.Array) and len(x.sharding.device_set) > 1
               for x in flat.values())


@functools.cache
def _take_layer():
    return jax.jit(lambda a, i: jax.lax.dynamic_index_in_dim(a, i, keepdims=False))


def _tensors(config: LlamaConfig, flat: Mapping[tuple[str, ...], Any]
             ) -> Iterator[tuple[str, Any, str]]:
    """(Meta name, leaf or (stacked leaf, layer), dtype name) in Meta's file order."""
    for name, path in GLOBAL_TABLE.items():
        yield name, (flat[path], None), np.dtype(flat[path].dtype).name
    for i in range(config.n_layers):
        for suffix, path in LAYER_TABLE.items():
            leaf = flat[("layers", *path)]
            yield f"layers.{i}.{suffix}", (leaf, i), np.dtype(leaf.dtype).name


def _fetch(config: LlamaConfig, name: str, ref: tuple[Any, int | None]) -> np.ndarray:
    """Tensor `name` on this host in HF's layout ([out, in], q/k permuted)."""
    leaf, layer = ref
    if layer is not None:
        leaf = _take_layer()(leaf, layer) if isinstance(leaf, jax.Array) else leaf[layer]
    array = distributed.to_host(leaf)
    shape = meta_shapes(config)[name]
    suffix = name.split(".", 2)[-1] if layer is not None else name
    if suffix in LINEAR:
        array = array.reshape(shape[1], shape[0]).T  # [out, in]
    array = np.ascontiguousarray(array.reshape(shape))
    if suffix == "attention.wq.weight":
        array = hf.permute_rotary(array, config.n_heads)
    elif suffix == "attention.wk.weight":
        array = hf.permute_rotary(array, config.num_kv_heads)
    return array


def write_hf_streamed(config: LlamaConfig, flat: Mapping[tuple[str, ...], Any],
                      out_dir: Path | None, shards: int = 1, *, progress: bool = True) -> None:
    """Write config.json and the safetensors file(s) + index into `out_dir`.

    `flat` is a canonical tree (`canonical_params`). `out_dir=None` writes
    nothing and only takes part in the gathers (processes other than 0).
    """
    if not isinstance(shards, int) or shards < 1:
        raise ConversionError(f"shards={shards!r} must be a positive integer")
    tensors = list(_tensors(config, flat))
    if shards > len(tensors):
        raise ConversionError(f"shards={shards} exceeds the number of tensors ({len(tensors)})")
    shapes = meta_shapes(config)
    groups = [list(g) for g in np.array_split(np.arange(len(tensors)), shards)]
    fnames = ([hf.WEIGHTS_FILE] if shards == 1 else
              [f"model-{i + 1:05d}-of-{shards:05d}.safetensors" for i in range(shards)])
    weight_map, total = {}, 0
    bar = iter(progress_bar(range(len(tensors)), total=len(tensors),
                            desc="writing safetensors", enabled=progress and out_dir is not None))
    for fname, group in zip(fnames, groups, strict=True):
        entries = [(hf.hf_name(tensors[j][0]), tensors[j][2], shapes[tensors[j][0]])
                   for j in group]
        writer = (StreamedWriter(out_dir / fname, entries, metadata={"format": "pt"})
                  if out_dir is not None else None)
        try:
            for j, (hf_name, _, _) in zip(group, entries, strict=True):
                array = _fetch(config, tensors[j][0], tensors[j][1])
                if writer is not None:
                    writer.write(hf_name, array)
                weight_map[hf_name] = fname
                total += int(array.nbytes)
                del array
                next(bar, None)
        finally:
            if writer is not None:
                writer.close()
    if out_dir is None:
        return
    dtype_name = tensors[0][2]  # the token embedding's
    (out_dir / hf.CONFIG_FILE).write_text(json.dumps(hf.hf_config_for(config, dtype_name),
                                                     indent=2))
    if shards > 1:
        (out_dir / hf.INDEX_FILE).write_text(json.dumps(
            {"metadata": {"total_size": total}, "weight_map": weight_map}, indent=2))


def save_hf_sharded(config: LlamaConfig, flat: Mapping[tuple[str, ...], Any],
                    path: str | Path, shards: int, overwrite: bool,
                    tok: Tokenizer | None, *, progress: bool = True) -> Path:
    """`save_pretrained(format="hf")` for sharded params: streamed, process 0 writes."""
    if jax.process_index() == 0:
        with atomic_directory(path, overwrite) as tmp:
            write_hf_streamed(config, flat, tmp, shards, progress=progress)
            save_hf_tokenizer(tmp, config, tok)
    else:
        write_hf_streamed(config, flat, None, shards, progress=False)
    if jax.process_count() > 1:
        multihost_utils.sync_global_devices(f"save_pretrained {path}")
    return Path(path)
