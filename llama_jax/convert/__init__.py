"""Weight conversion: load and save LLaMA checkpoints in three layouts.

- Meta: ``params.json`` + ``consolidated.NN.pth`` (model-parallel shards merged
  and split the way Meta ships 13B/33B/65B); needs torch.
- Hugging Face: ``config.json`` + ``model.safetensors`` or a sharded
  ``model.safetensors.index.json``; the rotary permutation of q/k is undone on
  load and re-applied on save; no torch needed.
- This project's orbax model format: ``llama_config.json`` + ``params/``.

A training workdir (with ``checkpoints/``) or an orbax CheckpointManager step
directory is read by `llama_jax.convert.workdir.load_params`.

    config, params = from_pretrained("/ckpt/llama-7b")            # any layout
    save_pretrained(config, params, "/out/llama-7b-hf", format="hf",
                    tokenizer="/ckpt/tokenizer.model")  # + tokenizer / generation files

CLI: ``python -m llama_jax.convert --src=PATH --dst=PATH --dst_format=hf``.
Meta and HF tensors are read and written with a per-tensor progress bar
(tqdm, on a TTY only; ``progress=False`` silences it).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import jax
from jax.sharding import Mesh

from llama_jax.convert.common import (
    ConversionError,
    atomic_directory,
    canonical_params,
    check_destination,
    check_disjoint,
    params_dtype_name,
    resolve_dtype,
    stack_layers,
    to_layout,
    unstack_layers,
)
from llama_jax.convert.hf import load_hf, save_hf
from llama_jax.convert.hf_tokenizer import (
    find_tokenizer,
    load_tokenizer,
    save_hf_tokenizer,
    save_tokenizer_model,
)
from llama_jax.convert.lora_merge import merge_adapters, merge_saved_lora
from llama_jax.convert.meta import check_shardable, load_meta, save_meta
from llama_jax.convert.orbax_format import is_orbax_model, load_orbax, save_orbax
from llama_jax.convert.overrides import resolve_config
from llama_jax.convert.sharded_read import load_onto_mesh, target_shardings
from llama_jax.convert.sharded_save import save_hf_sharded, spans_devices
from llama_jax.convert.workdir import is_training_checkpoint, load_params, saved_lora
from llama_jax.data.tokenizer import Tokenizer
from llama_jax.model.config import LlamaConfig
from llama_jax.model.lora import LoraConfig
from llama_jax.sharding import DEFAULT_RULES, Rules

__all__ = [
    "FORMATS",
    "ConversionError",
    "convert_checkpoint",
    "detect_format",
    "find_tokenizer",
    "from_pretrained",
    "save_pretrained",
    "stack_layers",
    "unstack_layers",
]

FORMATS = ("orbax", "hf", "meta")
_EXPECTED = ("Meta (params.json + consolidated.NN.pth), Hugging Face (config.json + "
             "model.safetensors or model.safetensors.index.json), llama_jax orbax "
             "(llama_config.json + params/), or a training workdir (checkpoints/) / orbax "
             "checkpoint step directory (_CHECKPOINT_METADATA)")


def detect_format(path: str | os.PathLike) -> str:
    """'orbax', 'training', 'meta' or 'hf' for a checkpoint directory; else raise."""
    path = Path(path)
    if not path.exists():
        raise ConversionError(f"{path} does not exist")
    if not path.is_dir():
        raise ConversionError(f"{path} is a file; pass the checkpoint directory that holds it")
    names = {p.name for p in path.iterdir()}
    if is_orbax_model(path):
        return "orbax"
    if is_training_checkpoint(path):
        return "training"
    if "params.json" in names or any(n.startswith("consolidated.") and n.endswith(".pth")
                                     for n in names):
        return "meta"
    if names & {"config.json", "model.safetensors", "model.safetensors.index.json"}:
        return "hf"
    listing = sorted(names)[:10] or "nothing"
    raise ConversionError(f"{path}: unsupported or unknown checkpoint format (found "
                          f"{listing}); expected {_EXPECTED}")


def from_pretrained(
    path: str | os.PathLike,
    dtype: Any = None,
    config_overrides: Mapping[str, Any] | None = None,
    *,
    format: str | None = None,
    progress: bool = True,
    mesh: Mesh | None = None,
    rules: Rules | None = None,
) -> tuple[LlamaConfig, dict]:
    """Load a checkpoint of any supported layout as (config, params).

    Args:
      path: checkpoint directory (Meta, Hugging Face, llama_jax orbax, or a
        training workdir / checkpoint step directory).
      dtype: cast every parameter to this dtype ("float32", "bfloat16",
        "float16"); None keeps the stored dtype. `config.param_dtype` is set
        to the dtype the params end up in.
      config_overrides: `LlamaConfig` fields to change after loading (e.g.
        ``{"max_seq_len": 4096, "scan_layers": False, "dtype": "bfloat16"}``);
        shape fields must still match the tensors. Run options
        (`llama_jax.model.config.RUN_OPTIONS`, e.g. ``attention_impl``) are
        never read from the checkpoint: they are the defaults unless set here
        (a training checkpoint keeps the layout its tree was saved in).
      format: force one of 'meta', 'hf', 'orbax', 'training' instead of detecting.
      progress: a per-tensor tqdm bar for Meta and HF files (drawn on a TTY only).
      mesh: load straight onto this mesh (`llama_jax.convert.sharded_read`):
        each device's shard of each tensor is read from the files and placed
        with `jax.make_array_from_callback` (orbax restores into the target
        shardings), so no process holds the whole model or reads other
        processes' shards. Works with several processes (`jax.distributed`).
      rules: logical-axis rules for `mesh` (default
        `llama_jax.sharding.DEFAULT_RULES`); shardings as `place_params` makes
        them (a dimension the mesh does not divide is replicated).

    Returns:
      The config and the parameter tree (host numpy arrays from Meta/HF/orbax
      files; sharded `jax.Array`s with `mesh`) in the layout
      `config.scan_layers` asks for (scanned by default). Both paths give the
      same values bit for bit.
    """
    path = Path(path)
    np_dtype = resolve_dtype(dtype)
    fmt = format or detect_format(path)
    rules = DEFAULT_RULES if rules is None else rules
    lora_workdir = fmt == "training" and saved_lora(path) is not None
    if mesh is not None and not lora_workdir:
        return load_onto_mesh(path, fmt, np_dtype, config_overrides, mesh, rules,
                              progress=progress)
    loaders = {"meta": lambda: load_meta(path, np_dtype, progress=progress),
               "hf": lambda: load_hf(path, np_dtype, progress=progress),
               "orbax": lambda: load_orbax(path, np_dtype)}
    if fmt == "training":
        config, params = load_params(path)
        params = stack_layers(params)
        if (lora := saved_lora(path)) is not None:  # adapters only: merge into the base
            config, params = merge_saved_lora(lora, params, config, from_pretrained)
    elif fmt in loaders:
        config, params = loaders[fmt]()
    else:
        raise ConversionError(f"format={fmt!r} is not one of {[*loaders, 'training']}")

    stored = params_dtype_name(params)
    config, overrides = resolve_config(config, stored, np_dtype, config_overrides, path)
    # Overrides must still match the tensors (checks loaders' output too).
    canonical_params(config, params, params_source=f"the checkpoint {path}",
                     config_source=f"its config with config_overrides={overrides}")
    target = resolve_dtype(config.param_dtype)
    if stored != config.param_dtype:
        params = jax.tree_util.tree_map(lambda x: x.astype(target), params)
    params = to_layout(params, config.scan_layers)
    if mesh is not None:  # a LoRA workdir: merged on the host, then placed
        params = jax.device_put(params, target_shardings(config, mesh, rules))
    return config, params


def save_pretrained(
    config: LlamaConfig,
    params: Mapping[str, Any],
    path: str | os.PathLike,
    format: str = "orbax",
    shards: int = 1,
    overwrite: bool = False,
    *,
    tokenizer: Tokenizer | str | os.PathLike | None = None,
    progress: bool = True,
    adapters: Mapping[str, Any] | None = None,
    lora: LoraConfig | None = None,
) -> Path:
    """Write `params` (either layout) as a checkpoint directory at `path`.

    Args:
      config: the model's config (shapes are checked against `params`).
      params: parameter tree, scanned (`layers`) or not (`layers_0`, ...),
        numpy or jax arrays; a Flax ``{'params': ...}`` dict is accepted too.
      path: destination directory. Written into a sibling temp directory and
        renamed into place, so a failure never leaves a half-written checkpoint.
      format: 'orbax' (this project), 'hf' (transformers-loadable) or 'meta'.
      shards: Meta: model-parallel shards, split exactly as Meta does; HF:
        number of safetensors files (with an index when > 1); orbax: must be 1.
      overwrite: replace a non-empty existing `path`.
      tokenizer: the model's SentencePiece tokenizer (a `Tokenizer`, a
        ``tokenizer.model`` path or a folder holding one), written as
        ``tokenizer.model``; with format 'hf' also ``tokenizer.json``,
        ``tokenizer_config.json`` and ``special_tokens_map.json``, so
        ``transformers.AutoTokenizer`` loads the folder and tokenizes as ours.
        'hf' always writes ``generation_config.json``.
      progress: a per-tensor tqdm bar for Meta and HF files (drawn on a TTY only).
      adapters, lora: LoRA adapters of `params` and their `LoraConfig`: merged
        into the weights (``W + alpha/rank A B``) before writing.

    Params spread over several devices or processes (e.g. loaded with
    ``from_pretrained(..., mesh=...)``) are written as 'hf' tensor by tensor
    (`llama_jax.convert.sharded_save`), never gathered whole onto a host; with
    several processes every process calls this and process 0 writes.

    Returns:
      `path` as a Path.
    """
    if (adapters is None) != (lora is None):
        raise ConversionError("pass both adapters= and lora= (or neither)")
    if adapters is not None:
        params = merge_adapters(params, adapters, lora)
    if format not in FORMATS:
        raise ConversionError(f"format={format!r} is not one of {FORMATS}")
    tok = None if tokenizer is None else load_tokenizer(tokenizer)
    flat = canonical_params(config, params)
    if format == "meta":
        check_shardable(config, shards)
    elif format == "orbax" and shards != 1:
        raise ConversionError(f"shards={shards}: the orbax format is never split; use shards=1")
    if format == "hf" and spans_devices(flat):  # sharded: tensor by tensor, no gather
        return save_hf_sharded(config, flat, path, shards, overwrite, tok, progress=progress)
    writers = {"orbax": lambda d: save_orbax(config, flat, d),
               "hf": lambda d: save_hf(config, flat, d, shards, progress=progress),
               "meta": lambda d: save_meta(config, flat, d, shards, progress=progress)}
    with atomic_directory(path, overwrite) as tmp:
        writers[format](tmp)
        if format == "hf":
            save_hf_tokenizer(tmp, config, tok)
        elif tok is not None:
            save_tokenizer_model(tmp, tok)
    return Path(path)


def convert_checkpoint(
    src: str | os.PathLike,
    dst: str | os.PathLike,
    dst_format: str,
    dtype: Any = None,
    shards: int = 1,
    overwrite: bool = False,
    *,
    tokenizer: Tokenizer | str | os.PathLike | None = None,
    progress: bool = True,
) -> LlamaConfig:
    """Load `src` (any layout) and write it to `dst` as `dst_format`; the config.

    A `dst` that is, contains or lies inside `src` is refused before anything
    is written (`check_disjoint`), as is one that cannot be written
    (`check_destination`), so ``overwrite`` can never delete the source.

    The tokenizer travels with the weights: `tokenizer` if given, else the
    ``tokenizer.model`` that `find_tokenizer` finds for `src` (in it, beside
    a Meta release, or in a training workdir), else none.
    """
    if dst_format not in FORMATS:
        raise ConversionError(f"dst_format={dst_format!r} is not one of {FORMATS}")
    check_disjoint(src, dst)  # before anything is read, written or deleted
    check_destination(dst, overwrite)
    found = tokenizer if tokenizer is not None else find_tokenizer(src)
    tok = None if found is None else load_tokenizer(found)
    config, params = from_pretrained(src, dtype=dtype, progress=progress)
    save_pretrained(config, params, dst, format=dst_format, shards=shards, overwrite=overwrite,
                    tokenizer=tok, progress=progress)
    return config
