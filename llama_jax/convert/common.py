"""Shared pieces of weight conversion.

The one rename table between Meta's state dict and our Flax parameter tree,
Meta's shape table (our own tree's shapes are read off the model's abstract
init, never written out), key/shape validation with messages that name the
file and tensor, layer stacking (scanned <-> unscanned layouts), dtype helpers
(numpy has no bfloat16; `ml_dtypes` provides it) and an atomic directory writer.

Meta's layout is the hub: the Hugging Face reader/writer translate names and
undo/apply the rotary permutation around it, so the mapping to our tree lives
here only. Meta stores every linear weight as ``[out_features, in_features]``;
we store ``[in..., out...]`` kernels (see `llama_jax.model.layers.Linear`).
"""

from __future__ import annotations

import contextlib
import functools
import os
import re
import shutil
import tempfile
import uuid
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

import flax.linen as nn
import jax
import ml_dtypes
import numpy as np

from llama_jax.convert.progress import progress_bar
from llama_jax.errors import ConversionError
from llama_jax.fileio import unwritable_parent
from llama_jax.model.config import DTYPES, LlamaConfig
from llama_jax.model.layer_layout import (  # noqa: F401 (re-exported)
    _UNSCANNED,
    is_scanned,
    stack_layers,
    to_layout,
    unstack_layers,
)
from llama_jax.model.llama import abstract_params

# Per-layer tensors: Meta name suffix -> path inside a block of our tree.
LAYER_TABLE: dict[str, tuple[str, ...]] = {
    "attention.wq.weight": ("attention", "wq", "kernel"),
    "attention.wk.weight": ("attention", "wk", "kernel"),
    "attention.wv.weight": ("attention", "wv", "kernel"),
    "attention.wo.weight": ("attention", "wo", "kernel"),
    "feed_forward.w1.weight": ("feed_forward", "w1", "kernel"),
    "feed_forward.w2.weight": ("feed_forward", "w2", "kernel"),
    "feed_forward.w3.weight": ("feed_forward", "w3", "kernel"),
    "attention_norm.weight": ("attention_norm", "scale"),
    "ffn_norm.weight": ("ffn_norm", "scale"),
}
# Model-level tensors: Meta name -> path in our tree.
GLOBAL_TABLE: dict[str, tuple[str, ...]] = {
    "tok_embeddings.weight": ("tok_embeddings", "embedding"),
    "norm.weight": ("norm", "scale"),
    "output.weight": ("output", "kernel"),
}
# Meta names that are linear weights ([out, in] in Meta, transposed in ours).
LINEAR = {"attention.wq.weight", "attention.wk.weight", "attention.wv.weight",
          "attention.wo.weight", "feed_forward.w1.weight", "feed_forward.w2.weight",
          "feed_forward.w3.weight", "output.weight"}

_LAYER_KEY = re.compile(r"^layers\.(\d+)\.(.+)$")
# ----------------------------------------------------------------------------- dtypes

def resolve_dtype(dtype: Any) -> np.dtype | None:
    """`None` or a float dtype (name, numpy or jax dtype) as a numpy dtype."""
    if dtype is None:
        return None
    try:
        resolved = np.dtype(ml_dtypes.bfloat16 if str(dtype) == "bfloat16" else dtype)
    except TypeError as e:
        raise ConversionError(f"dtype={dtype!r} is not a dtype; use one of {DTYPES}") from e
    if resolved.name not in DTYPES:
        raise ConversionError(f"dtype={dtype!r} is not supported; use one of {DTYPES}")
    return resolved


def torch_to_numpy(tensor) -> np.ndarray:
    """A CPU torch tensor as a numpy array (bfloat16 via `ml_dtypes`), no copy."""
    import torch

    tensor = tensor.detach().cpu()
    if tensor.dtype == torch.bfloat16:
        return tensor.view(torch.int16).numpy().view(ml_dtypes.bfloat16)
    return tensor.numpy()


def numpy_to_torch(array: np.ndarray):
    """A numpy array as a torch tensor that owns a contiguous copy of the data."""
    import torch

    array = np.array(array, copy=True, order="C")
    if array.dtype == np.dtype(ml_dtypes.bfloat16):
        return torch.from_numpy(array.view(np.int16)).view(torch.bfloat16)
    return torch.from_numpy(array)


def params_dtype_name(params: Mapping[str, Any]) -> str | None:
    """Name of the token-embedding dtype (the model's storage dtype), if supported."""
    name = np.dtype(params["tok_embeddings"]["embedding"].dtype).name
    return name if name in DTYPES else None


# ----------------------------------------------------------------------------- shapes

def meta_shapes(config: LlamaConfig) -> dict[str, tuple[int, ...]]:
    """Meta state-dict name -> shape for `config` (HF uses the same shapes).

    A tied config (`tie_embeddings`) has no ``output.weight``.
    """
    d, f, v = config.dim, config.ffn_dim, config.vocab_size
    q, kv = config.n_heads * config.head_dim, config.num_kv_heads * config.head_dim
    layer = {
        "attention.wq.weight": (q, d), "attention.wk.weight": (kv, d),
        "attention.wv.weight": (kv, d), "attention.wo.weight": (d, q),
        "feed_forward.w1.weight": (f, d), "feed_forward.w2.weight": (d, f),
        "feed_forward.w3.weight": (f, d),
        "attention_norm.weight": (d,), "ffn_norm.weight": (d,),
    }
    shapes = {"tok_embeddings.weight": (v, d), "norm.weight": (d,), "output.weight": (v, d)}
    if config.tie_embeddings:
        del shapes["output.weight"]
    for i in range(config.n_layers):
        shapes.update({f"layers.{i}.{k}": s for k, s in layer.items()})
    return shapes


def param_shapes(config: LlamaConfig) -> dict[tuple[str, ...], tuple[int, ...]]:
    """Our scanned-layout parameter path -> shape for `config`.

    Read off the model itself (`jax.eval_shape` of its init, no allocation),
    so the converter never restates the tree: a layer added to the model is a
    tensor the converter expects. An unscanned config's ``layers_N`` blocks
    are stacked into one ``layers`` subtree with a leading layers axis.
    """
    return dict(_param_shapes(config))


@functools.lru_cache(maxsize=16)
def _param_shapes(config: LlamaConfig) -> dict[tuple[str, ...], tuple[int, ...]]:
    config = config.with_run_options(scan_layers=True)  # One traced block, not n_layers.
    tree = flatten(nn.meta.unbox(abstract_params(config)))
    shapes: dict[tuple[str, ...], tuple[int, ...]] = {}
    for path, leaf in tree.items():
        m = _UNSCANNED.match(path[0])
        if m is None:
            shapes[path] = tuple(leaf.shape)
        elif m.group(1) == "0":
            shapes[("layers", *path[1:])] = (config.n_layers, *leaf.shape)
    return shapes


def check_tensors(
    found: Mapping[str, tuple[int, ...]],
    expected: Mapping[str, tuple[int, ...]],
    where: Callable[[str], str],
    config_source: str,
    ignored: Callable[[str], bool] = lambda name: False,
) -> None:
    """Raise `ConversionError` on unknown, missing or mis-shaped tensors.

    Args:
      found: tensor name -> shape as stored.
      expected: tensor name -> shape the config implies.
      where: tensor name -> the file that holds it (for messages).
      config_source: the file the config came from (for messages).
      ignored: names that may be present and are skipped (e.g. `rope.freqs`).
    """
    unknown = sorted(n for n in found if n not in expected and not ignored(n))
    missing = sorted(n for n in expected if n not in found)
    problems = []
    if unknown:
        problems.append(f"unknown tensors {_short_list(unknown)} in {where(unknown[0])}")
    if missing:
        problems.append(f"missing tensors {_short_list(missing)}")
    for name, shape in found.items():
        want = expected.get(name)
        if want is not None and tuple(shape) != tuple(want):
            problems.append(f"tensor {name!r} in {where(name)} has shape {tuple(shape)} "
                            f"but {config_source} implies {tuple(want)}")
    if problems:
        raise ConversionError("; ".join(problems) + f" (checkpoint config: {config_source})")


def _short_list(names: list[str], limit: int = 12) -> str:
    shown = ", ".join(repr(n) for n in names[:limit])
    more = f", ... ({len(names)} in all)" if len(names) > limit else ""
    return f"[{shown}{more}]"


# ----------------------------------------------------------------------------- layouts
# is_scanned, stack_layers, unstack_layers, to_layout: llama_jax.model.layer_layout
# (imported above), so inference imports them without this package.

def flatten(tree: Mapping[str, Any], prefix: tuple[str, ...] = ()) -> dict[tuple[str, ...], Any]:
    """Nested dicts -> {path tuple: leaf}."""
    flat = {}
    for key, value in tree.items():
        if isinstance(value, Mapping):
            flat.update(flatten(value, (*prefix, key)))
        else:
            flat[(*prefix, key)] = value
    return flat


def unflatten(flat: Mapping[tuple[str, ...], Any]) -> dict[str, Any]:
    """{path tuple: leaf} -> nested dicts."""
    tree: dict[str, Any] = {}
    for path, value in flat.items():
        node = tree
        for key in path[:-1]:
            node = node.setdefault(key, {})
        node[path[-1]] = value
    return tree


def canonical_params(
    config: LlamaConfig,
    params: Mapping[str, Any],
    params_source: str = "the params passed in",
    config_source: str = "the LlamaConfig passed in",
) -> dict[tuple[str, ...], Any]:
    """Validate `params` (either layout) against `config`; flat scanned tree.

    Raises `ConversionError` listing unknown/missing parameters or naming a
    parameter whose shape does not match the config (the two sources name
    where params and config came from in that message).
    """
    params = dict(params)
    if "params" in params and len(params) == 1:
        params = dict(params["params"])  # A Flax variables dict.
    flat = flatten(stack_layers(params))
    expected = param_shapes(config)
    found = {"/".join(p): tuple(np.shape(x)) for p, x in flat.items()}
    check_tensors(found, {"/".join(p): s for p, s in expected.items()},
                  where=lambda name: params_source, config_source=config_source)
    return flat


# ----------------------------------------------------------------------------- Meta <-> ours

def count_meta_tensors(config: LlamaConfig, tied_output: bool = False) -> int:
    """How many tensors a checkpoint of `config` holds (for progress bars).

    `tied_output`: a tied model's ``output.weight`` copy is written too.
    """
    untied = not config.tie_embeddings or tied_output
    return len(GLOBAL_TABLE) - (not untied) + config.n_layers * len(LAYER_TABLE)


def meta_to_params(
    config: LlamaConfig,
    take: Callable[[str], np.ndarray],
    dtype: np.dtype | None = None,
    *,
    progress: bool = True,
    desc: str = "reading",
) -> dict[str, Any]:
    """Build our scanned param tree (numpy) from Meta-named, Meta-shaped tensors.

    Args:
      config: the model shape; tensors must already have been shape-checked.
      take: Meta name -> array; called once per name (it may drop its copy).
      dtype: cast every tensor to this dtype (None keeps the stored dtype).
      progress: show a per-tensor bar labelled `desc` (on a TTY only).
    """
    def convert(name: str, suffix: str, array: np.ndarray, shape: tuple[int, ...]):
        array = np.asarray(array)
        if suffix in LINEAR:
            array = array.T  # [in, out]
        array = array.reshape(shape)
        return array.astype(dtype or array.dtype, copy=False)

    shapes = param_shapes(config)
    names = [(name, name, path) for name, path in GLOBAL_TABLE.items() if path in shapes]
    names += [(f"layers.{i}.{suffix}", suffix, ("layers", *path))
              for suffix, path in LAYER_TABLE.items() for i in range(config.n_layers)]
    flat: dict[tuple[str, ...], np.ndarray] = {}
    for name, suffix, path in progress_bar(names, total=len(names), desc=desc,
                                           enabled=progress):
        if path[0] != "layers":
            # Always a copy: never hand out views of memory-mapped checkpoint files.
            flat[path] = np.array(convert(name, suffix, take(name), shapes[path]), order="C")
            continue
        full = shapes[path]  # [layers, ...]
        layer = convert(name, suffix, take(name), full[1:])
        if path not in flat:
            flat[path] = np.empty(full, layer.dtype)
        flat[path][split_layer_key(name)[0]] = layer
    return unflatten(flat)


def params_to_meta(
    config: LlamaConfig, flat: Mapping[tuple[str, ...], Any], *, tied_output: bool = False
) -> Iterator[tuple[str, np.ndarray]]:
    """Yield (Meta name, contiguous [out, in] numpy array) from a canonical tree.

    `flat` is the output of `canonical_params`. Order follows Meta's files:
    embeddings, final norm, output, then layer by layer. A tied model has no
    ``output.weight`` unless `tied_output` asks for a copy of the embedding
    (Meta's layout has no tie flag: its code always loads an output matrix).
    """
    shapes = meta_shapes(config)
    if config.tie_embeddings and tied_output:
        shapes["output.weight"] = shapes["tok_embeddings.weight"]

    def convert(name: str, suffix: str, array) -> np.ndarray:
        array = np.asarray(jax.device_get(array))
        shape = shapes[name]
        if suffix in LINEAR:
            array = array.reshape(shape[1], shape[0]).T  # [out, in]
        return np.ascontiguousarray(array.reshape(shape))

    for name, path in GLOBAL_TABLE.items():
        if name not in shapes:
            continue
        if path not in flat:  # The tied head: [vocab, dim] is the embedding itself.
            yield name, convert(name, "tok_embeddings.weight",
                                flat[GLOBAL_TABLE["tok_embeddings.weight"]])
            continue
        yield name, convert(name, name, flat[path])
    for i in range(config.n_layers):
        for suffix, path in LAYER_TABLE.items():
            yield f"layers.{i}.{suffix}", convert(f"layers.{i}.{suffix}", suffix,
                                                  flat[("layers", *path)][i])


def split_layer_key(name: str) -> tuple[int, str] | None:
    """'layers.3.attention.wq.weight' -> (3, 'attention.wq.weight'); else None."""
    m = _LAYER_KEY.match(name)
    return (int(m.group(1)), m.group(2)) if m else None


# ----------------------------------------------------------------------------- files

def check_disjoint(src: str | os.PathLike, dst: str | os.PathLike) -> None:
    """Refuse a `dst` that is, contains or lies inside `src` (paths resolved, symlinks followed).

    Writing (and, with ``--overwrite``, replacing) such a `dst` would delete
    or clobber the source being read; checked before anything is written.
    """
    src_r, dst_r = Path(src).resolve(), Path(dst).resolve()
    if src_r == dst_r:
        raise ConversionError(f"--src and --dst are the same directory ({src_r}); choose a "
                              "--dst outside the source checkpoint")
    if dst_r in src_r.parents:
        raise ConversionError(f"--dst={dst} contains --src={src} ({dst_r} holds {src_r}); "
                              "writing it would delete the source: choose a --dst outside it")
    if src_r in dst_r.parents:
        raise ConversionError(f"--dst={dst} lies inside --src={src} ({dst_r} is under "
                              f"{src_r}); choose a --dst outside the source checkpoint")


def check_destination(path: str | os.PathLike, overwrite: bool = False) -> Path:
    """Refuse a destination that cannot be written, before anything is loaded or written.

    A `path` that is a file, a non-empty folder without `overwrite`, a path
    under a file, or one whose nearest existing folder is not writable raises
    `ConversionError` naming it and the fix. Creates nothing; returns `path`.
    """
    path = Path(path)
    if path.exists():
        if not path.is_dir():
            raise ConversionError(f"destination {path} exists and is not a directory; "
                                  "choose a folder path")
        if any(path.iterdir()) and not overwrite:
            raise ConversionError(f"destination {path} is not empty; choose another path or "
                                  "pass overwrite=True (--overwrite) to replace it")
    problem = unwritable_parent(path.absolute().parent)
    if problem is not None:
        raise ConversionError(f"destination {path}: {problem}; choose a writable destination "
                              "whose parents are folders")
    return path


@contextlib.contextmanager
def atomic_directory(path: str | os.PathLike, overwrite: bool = False) -> Iterator[Path]:
    """Yield a fresh temp directory that replaces `path` only on success.

    The temp directory is a sibling of `path` (same filesystem, so the final
    rename is atomic). On an exception it is removed and `path` is untouched.
    A destination `check_destination` refuses (non-empty without `overwrite`,
    under a file, not writable) is refused before anything is written.
    """
    path = check_destination(path, overwrite)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.tmp-", dir=path.parent))
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    tmp.chmod(0o755)
    old = None
    if path.exists():
        old = path.parent / f".{path.name}.old-{uuid.uuid4().hex[:8]}"
        path.rename(old)
    tmp.rename(path)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
