"""Meta's checkpoint layout: `params.json` + `consolidated.NN.pth`.

Meta ships the larger models as model-parallel shards (13B: 2, 33B: 4,
65B: 8), split the way its fairscale layers split them:

- column-parallel (output features, dim 0): wq, wk, wv, w1, w3, output;
- row-parallel (input features, dim 1): wo, w2;
- `ParallelEmbedding` splits tok_embeddings along the embedding dim (dim 1);
  Llama 3's `VocabParallelEmbedding` splits along the vocab (dim 0), which the
  reader detects from the shard shapes;
- norms are replicated in every shard.

torch is imported inside the functions only (it is an optional extra).
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import numpy as np

from llama_jax.convert.common import (
    ConversionError,
    check_tensors,
    count_meta_tensors,
    meta_shapes,
    meta_to_params,
    numpy_to_torch,
    params_to_meta,
    split_layer_key,
    torch_to_numpy,
)
from llama_jax.convert.progress import progress_bar
from llama_jax.convert.rope_config import meta_rope_entries, rope_fields_from_meta
from llama_jax.model.config import LlamaConfig, ffn_hidden_dim

PARAMS_FILE = "params.json"
_SHARD = re.compile(r"^consolidated\.(\d+)\.pth$")

# Meta name (suffix for per-layer tensors) -> axis split across model-parallel shards.
SPLIT_AXIS: dict[str, int | None] = {
    "attention.wq.weight": 0, "attention.wk.weight": 0, "attention.wv.weight": 0,
    "attention.wo.weight": 1,
    "feed_forward.w1.weight": 0, "feed_forward.w3.weight": 0,
    "feed_forward.w2.weight": 1,
    "attention_norm.weight": None, "ffn_norm.weight": None, "norm.weight": None,
    "output.weight": 0, "tok_embeddings.weight": 1,
}
# Tensors Meta's files may hold that the model does not use (LLaMA 1/2 store
# the RoPE inverse frequencies; Meta's own code loads with strict=False).
IGNORED = {"rope.freqs"}

_REQUIRED_KEYS = ("dim", "n_layers", "n_heads")
_OPTIONAL_KEYS = ("n_kv_heads", "vocab_size", "multiple_of", "ffn_dim_multiplier",
                  "norm_eps", "rope_theta", "max_seq_len", "max_batch_size",
                  "use_scaled_rope")


def shard_files(path: Path) -> list[Path]:
    """The `consolidated.NN.pth` files of `path`, checked to be 00..N-1."""
    found = {}
    for f in path.iterdir():
        m = _SHARD.match(f.name)
        if m:
            found[int(m.group(1))] = f
    if not found:
        raise ConversionError(f"{path}: no consolidated.NN.pth files next to {PARAMS_FILE}")
    indices = sorted(found)
    if indices != list(range(len(indices))):
        raise ConversionError(
            f"{path}: inconsistent shard set {[found[i].name for i in indices]}; a Meta "
            f"checkpoint with {len(indices)} model-parallel shards needs consolidated.00.pth "
            f"... consolidated.{len(indices) - 1:02d}.pth")
    return [found[i] for i in indices]


def _read_params_json(file: Path) -> dict[str, Any]:
    if not file.is_file():
        raise ConversionError(f"{file} is missing: a Meta checkpoint directory holds "
                              f"{PARAMS_FILE} next to its consolidated.NN.pth files")
    try:
        params = json.loads(file.read_text())
    except json.JSONDecodeError as e:
        raise ConversionError(f"{file}: not valid JSON ({e})") from e
    missing = [k for k in _REQUIRED_KEYS if k not in params]
    unknown = sorted(set(params) - set(_REQUIRED_KEYS) - set(_OPTIONAL_KEYS))
    if missing or unknown:
        raise ConversionError(f"{file}: missing keys {missing}, unknown keys {unknown}; "
                              f"expected {list(_REQUIRED_KEYS)} and optionally "
                              f"{list(_OPTIONAL_KEYS)}")
    if not isinstance(params.get("use_scaled_rope", False), bool):
        raise ConversionError(f"{file}: use_scaled_rope={params['use_scaled_rope']!r} must be "
                              "true or false")
    return params


def config_from_params_json(params: dict[str, Any], vocab_size: int,
                            tie_embeddings: bool = False) -> LlamaConfig:
    """LlamaConfig from Meta's params.json (`vocab_size` resolves -1).

    ``use_scaled_rope: true`` is llama3 RoPE scaling with Meta's constants
    (`llama_jax.convert.rope_config.META_LLAMA3_ROPE`).
    """
    kwargs = dict(
        dim=params["dim"], n_layers=params["n_layers"], n_heads=params["n_heads"],
        n_kv_heads=params.get("n_kv_heads"), vocab_size=vocab_size,
        multiple_of=params.get("multiple_of", 256),
        ffn_dim_multiplier=params.get("ffn_dim_multiplier"),
        norm_eps=params.get("norm_eps", 1e-5),
        rope_theta=float(params.get("rope_theta", 10000.0)),
        tie_embeddings=tie_embeddings, **rope_fields_from_meta(params),
    )
    if "max_seq_len" in params:
        kwargs["max_seq_len"] = params["max_seq_len"]
    return LlamaConfig(**kwargs)


def _load_pth(file: Path) -> dict[str, Any]:
    import torch

    try:
        try:
            state = torch.load(file, map_location="cpu", weights_only=True, mmap=True)
        except RuntimeError:  # Legacy (non-zip) files cannot be memory-mapped.
            state = torch.load(file, map_location="cpu", weights_only=True)
    except Exception as e:
        raise ConversionError(f"{file}: torch.load(weights_only=True) failed: {e}") from e
    if not isinstance(state, dict) or not all(torch.is_tensor(v) for v in state.values()):
        raise ConversionError(f"{file}: expected a flat state dict of tensors (Meta's "
                              "consolidated.NN.pth), got something else")
    return state


def _suffix(name: str) -> str:
    split = split_layer_key(name)
    return split[1] if split else name


def load_meta(path: str | Path, dtype: np.dtype | None = None, *,
              progress: bool = True) -> tuple[LlamaConfig, dict]:
    """Load a Meta checkpoint directory -> (config, scanned numpy params).

    `progress` shows a per-tensor bar (on a TTY only).
    """
    path = Path(path)
    params_json = _read_params_json(path / PARAMS_FILE)
    files = shard_files(path)
    n = len(files)
    states = [_load_pth(f) for f in files]
    keys = set(states[0])
    for f, state in zip(files[1:], states[1:], strict=True):
        if set(state) != keys:
            diff = sorted(keys.symmetric_difference(state))
            raise ConversionError(f"inconsistent shards: {files[0].name} and {f.name} hold "
                                  f"different tensors (differing: {diff[:8]})")

    def axis_of(name: str, shard_shape: tuple[int, ...]) -> int | None:
        axis = SPLIT_AXIS.get(_suffix(name))
        if name == "tok_embeddings.weight" and n > 1 and shard_shape[1] == params_json["dim"]:
            axis = 0  # Llama 3: VocabParallelEmbedding splits the vocab.
        return axis

    merged_shapes = {}
    for name in states[0]:
        shapes = [tuple(s[name].shape) for s in states]
        axis = axis_of(name, shapes[0])
        if len(set(shapes)) != 1:
            raise ConversionError(f"inconsistent shards: tensor {name!r} has shapes {shapes} "
                                  f"in {[f.name for f in files]}")
        shape = list(shapes[0])
        if axis is not None and axis < len(shape):
            shape[axis] *= n
        merged_shapes[name] = tuple(shape)

    vocab = params_json.get("vocab_size", -1)
    if vocab is None or vocab < 0:
        if "tok_embeddings.weight" not in merged_shapes:
            raise ConversionError(f"{path / PARAMS_FILE}: vocab_size={vocab} and no "
                                  "tok_embeddings.weight to take it from")
        vocab = merged_shapes["tok_embeddings.weight"][0]
    try:
        # Meta has no tie flag; a checkpoint without an output matrix is tied.
        config = config_from_params_json(params_json, vocab,
                                         tie_embeddings="output.weight" not in merged_shapes)
    except ValueError as e:
        raise ConversionError(f"{path / PARAMS_FILE}: {e}") from e
    where = files[0].name if n == 1 else f"{files[0].name}..{files[-1].name}"
    check_tensors(merged_shapes, meta_shapes(config),
                  where=lambda name: str(path / where),
                  config_source=str(path / PARAMS_FILE),
                  ignored=lambda name: name in IGNORED)

    def take(name: str) -> np.ndarray:
        parts = [torch_to_numpy(s.pop(name)) for s in states]
        axis = axis_of(name, parts[0].shape)
        if n == 1:
            return parts[0]
        if axis is None:
            for f, part in zip(files[1:], parts[1:], strict=True):
                if not np.array_equal(parts[0], part):
                    raise ConversionError(
                        f"inconsistent shards: replicated tensor {name!r} differs between "
                        f"{files[0].name} and {f.name}")
            return parts[0]
        return np.concatenate(parts, axis=axis)

    return config, meta_to_params(config, take, dtype, progress=progress,
                                  desc=f"reading {path.name}")


def meta_ffn_fields(config: LlamaConfig) -> tuple[int, float | None]:
    """(multiple_of, ffn_dim_multiplier) that make Meta's rule give `config.ffn_dim`.

    Meta's params.json cannot state the FFN width directly; for a width that
    does not follow the config's own rule (e.g. a HF `intermediate_size`)
    pick fields that reproduce it exactly, or fail.
    """
    target, dim = config.ffn_dim, config.dim
    if ffn_hidden_dim(dim, config.multiple_of, config.ffn_dim_multiplier) == target:
        return config.multiple_of, config.ffn_dim_multiplier
    base = int(2 * (4 * dim) / 3)
    if target >= base:
        return target, None  # Rounds base up to exactly one multiple: target.
    guess = target / base
    for multiplier in (guess, float(np.nextafter(guess, 2.0)), (target + 0.5) / base):
        if ffn_hidden_dim(dim, 1, multiplier) == target:
            return 1, multiplier
    raise ConversionError(f"FFN width {target} cannot be expressed in Meta's params.json "
                          f"for dim={dim}")


def params_json_for(config: LlamaConfig) -> dict[str, Any]:
    """Meta's params.json for `config` (only keys Meta's own code accepts)."""
    multiple_of, multiplier = meta_ffn_fields(config)
    out: dict[str, Any] = {"dim": config.dim, "n_layers": config.n_layers,
                           "n_heads": config.n_heads}
    if config.n_kv_heads is not None and config.n_kv_heads != config.n_heads:
        out["n_kv_heads"] = config.n_kv_heads
    out.update(vocab_size=config.vocab_size, multiple_of=multiple_of)
    if multiplier is not None:
        out["ffn_dim_multiplier"] = multiplier
    out["norm_eps"] = config.norm_eps
    if config.rope_theta != 10000.0:
        out["rope_theta"] = config.rope_theta
    out.update(meta_rope_entries(config))
    return out


def check_shardable(config: LlamaConfig, shards: int) -> None:
    """Raise unless every split dimension divides into `shards` equal parts."""
    if not isinstance(shards, int) or shards < 1:
        raise ConversionError(f"shards={shards!r} must be a positive integer")
    sizes = {"n_heads": config.n_heads, "n_kv_heads": config.num_kv_heads,
             "ffn_dim": config.ffn_dim, "dim": config.dim, "vocab_size": config.vocab_size}
    bad = {k: v for k, v in sizes.items() if v % shards}
    if bad:
        raise ConversionError(f"cannot split into shards={shards}: {bad} not divisible by "
                              f"{shards}; choose a shard count that divides all of {sizes}")


def save_meta(config: LlamaConfig, flat: dict, out_dir: Path, shards: int = 1, *,
              progress: bool = True) -> None:
    """Write params.json and `shards` consolidated.NN.pth files into `out_dir`.

    `flat` is a canonical (validated, scanned) tree from `canonical_params`;
    `progress` shows a per-tensor bar per shard (on a TTY only).
    """
    import torch

    check_shardable(config, shards)
    # A tied model is written with an output.weight copy: Meta's code always loads one.
    (out_dir / PARAMS_FILE).write_text(json.dumps(params_json_for(config)))
    for s in range(shards):
        state = {}
        fname = f"consolidated.{s:02d}.pth"
        for name, array in progress_bar(params_to_meta(config, flat, tied_output=True),
                                        total=count_meta_tensors(config, tied_output=True),
                                        desc=f"writing {fname}", enabled=progress):
            axis = SPLIT_AXIS[_suffix(name)]
            if shards > 1 and axis is not None:
                array = np.split(array, shards, axis=axis)[s]
            state[name] = numpy_to_torch(array)
        torch.save(state, out_dir / fname)
