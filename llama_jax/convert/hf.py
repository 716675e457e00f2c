"""Hugging Face's layout: `config.json` + `model.safetensors` (or a sharded index).

HF's conversion script permutes the rows of Meta's wq/wk so that RoPE can be
applied to two contiguous halves of each head ("rotate_half") instead of
Meta's interleaved pairs:

    w.view(n_heads, head_dim // 2, 2, dim).transpose(1, 2).reshape(n_heads * head_dim, dim)

(with n_kv_heads for wk). We undo it on load and re-apply it on save.

Safetensors files are read with `safetensors.safe_open(framework="numpy")`,
one tensor at a time as the conversion asks for it (safetensors >= 0.6 hands
bfloat16 out as `ml_dtypes.bfloat16`, the dtype of most released checkpoints),
and written with `safetensors.numpy.save_file`. No torch is needed either way.
"""

from __future__ import annotations

import contextlib
import json
from pathlib import Path
from typing import Any

import numpy as np
from safetensors import safe_open
from safetensors.numpy import save_file

from llama_jax.convert.common import (
    ConversionError,
    check_tensors,
    count_meta_tensors,
    meta_shapes,
    meta_to_params,
    params_to_meta,
    split_layer_key,
)
from llama_jax.convert.progress import progress_bar
from llama_jax.convert.rope_config import hf_rope_entries, rope_fields_from_hf
from llama_jax.model.config import LlamaConfig, ffn_hidden_dim

CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"
INDEX_FILE = "model.safetensors.index.json"

# Meta name (suffix for per-layer tensors) -> HF name (suffix after model.layers.N.).
HF_LAYER_NAMES = {
    "attention.wq.weight": "self_attn.q_proj.weight",
    "attention.wk.weight": "self_attn.k_proj.weight",
    "attention.wv.weight": "self_attn.v_proj.weight",
    "attention.wo.weight": "self_attn.o_proj.weight",
    "feed_forward.w1.weight": "mlp.gate_proj.weight",
    "feed_forward.w2.weight": "mlp.down_proj.weight",
    "feed_forward.w3.weight": "mlp.up_proj.weight",
    "attention_norm.weight": "input_layernorm.weight",
    "ffn_norm.weight": "post_attention_layernorm.weight",
}
HF_GLOBAL_NAMES = {
    "tok_embeddings.weight": "model.embed_tokens.weight",
    "norm.weight": "model.norm.weight",
    "output.weight": "lm_head.weight",
}
_META_OF_LAYER = {v: k for k, v in HF_LAYER_NAMES.items()}
_META_OF_GLOBAL = {v: k for k, v in HF_GLOBAL_NAMES.items()}


def hf_name(meta_name: str) -> str:
    """Meta tensor name -> HF tensor name."""
    split = split_layer_key(meta_name)
    if split:
        return f"model.layers.{split[0]}.{HF_LAYER_NAMES[split[1]]}"
    return HF_GLOBAL_NAMES[meta_name]


def meta_name(name: str) -> str | None:
    """HF tensor name -> Meta tensor name, or None if it is not a Llama weight."""
    if name in _META_OF_GLOBAL:
        return _META_OF_GLOBAL[name]
    if name.startswith("model.layers."):
        idx, _, rest = name[len("model.layers."):].partition(".")
        if idx.isdigit() and rest in _META_OF_LAYER:
            return f"layers.{int(idx)}.{_META_OF_LAYER[rest]}"
    return None


def permute_rotary(w: np.ndarray, n_heads: int) -> np.ndarray:
    """Meta's interleaved-pair rows -> HF's rotate-half rows (HF's `permute`)."""
    rows, cols = w.shape
    return (w.reshape(n_heads, rows // n_heads // 2, 2, cols)  # [heads, hd/2, 2, dim]
            .transpose(0, 2, 1, 3)  # [heads, 2, hd/2, dim]
            .reshape(rows, cols))


def unpermute_rotary(w: np.ndarray, n_heads: int) -> np.ndarray:
    """Inverse of `permute_rotary`: HF's q/k rows -> Meta's."""
    rows, cols = w.shape
    return (w.reshape(n_heads, 2, rows // n_heads // 2, cols)  # [heads, 2, hd/2, dim]
            .transpose(0, 2, 1, 3)  # [heads, hd/2, 2, dim]
            .reshape(rows, cols))


class SafetensorsFiles:
    """The tensors of one or more .safetensors files, read on demand via `safe_open`.

    Use as a context manager (it holds the files open). `shapes` maps every
    tensor name to its stored shape (read from the headers only); `get(name)`
    reads one tensor into memory as a numpy array.
    """

    def __init__(self, files: list[Path]):
        self._stack = contextlib.ExitStack()
        self._handles: dict[Path, Any] = {}
        self.file_of: dict[str, Path] = {}
        self.shapes: dict[str, tuple[int, ...]] = {}
        try:
            for file in files:
                handle = self._stack.enter_context(_open(file))
                self._handles[file] = handle
                for name in handle.keys():
                    self.file_of[name] = file
                    self.shapes[name] = tuple(handle.get_slice(name).get_shape())
        except BaseException:
            self._stack.close()
            raise

    def __enter__(self) -> SafetensorsFiles:
        return self

    def __exit__(self, *exc) -> None:
        self._stack.close()

    def get(self, name: str) -> np.ndarray:
        """Tensor `name` as a numpy array (bfloat16 as `ml_dtypes.bfloat16`)."""
        file = self.file_of[name]
        try:
            return self._handles[file].get_tensor(name)
        except Exception as e:  # safetensors raises its own SafetensorError / TypeError
            raise ConversionError(f"{file}: cannot read tensor {name!r} as numpy ({e})") from e


def _open(file: Path):
    try:
        return safe_open(file, framework="numpy")
    except Exception as e:  # SafetensorError (header, size) or OSError
        raise ConversionError(f"{file}: not a readable safetensors file ({e})") from e


def read_safetensors(file: str | Path) -> dict[str, np.ndarray]:
    """All tensors of one .safetensors file as numpy arrays (via `safe_open`)."""
    with SafetensorsFiles([Path(file)]) as st:
        return {name: st.get(name) for name in st.shapes}


def _weight_files(path: Path) -> list[Path]:
    index = path / INDEX_FILE
    if index.is_file():
        try:
            weight_map = json.loads(index.read_text())["weight_map"]
        except (json.JSONDecodeError, KeyError) as e:
            raise ConversionError(f"{index}: not a safetensors index with a weight_map "
                                  f"({e})") from e
        files = [path / f for f in sorted(set(weight_map.values()))]
        missing = [f.name for f in files if not f.is_file()]
        if missing:
            tensors = sorted(n for n, f in weight_map.items() if f == missing[0])
            more = f" and {len(tensors) - 1} more" if len(tensors) > 1 else ""
            raise ConversionError(
                f"{index} names shard files that are missing: {missing} (tensor "
                f"{tensors[0]!r}{more} should be in {missing[0]}); copy them into {path} or "
                "re-download the checkpoint")
        return files
    if (path / WEIGHTS_FILE).is_file():
        return [path / WEIGHTS_FILE]
    raise ConversionError(f"{path}: no {WEIGHTS_FILE} or {INDEX_FILE} next to {CONFIG_FILE} "
                          "(PyTorch .bin checkpoints are not read: re-save them with "
                          "safe_serialization=True)")


def config_from_hf(hf: dict[str, Any], file: Path) -> tuple[LlamaConfig, bool]:
    """LlamaConfig from a HF config.json dict; also whether embeddings are tied."""
    if hf.get("model_type", "llama") != "llama":
        raise ConversionError(f"{file}: model_type={hf.get('model_type')!r}; only 'llama' "
                              "checkpoints are supported")
    required = ("hidden_size", "num_hidden_layers", "num_attention_heads",
                "intermediate_size", "vocab_size")
    missing = [k for k in required if k not in hf]
    if missing:
        raise ConversionError(f"{file}: missing keys {missing}")
    for key in ("attention_bias", "mlp_bias"):
        if hf.get(key):
            raise ConversionError(f"{file}: {key}=true is not supported (LLaMA has no biases)")
    if hf.get("hidden_act", "silu") != "silu":
        raise ConversionError(f"{file}: hidden_act={hf['hidden_act']!r}; LLaMA uses 'silu'")
    dim, heads = hf["hidden_size"], hf["num_attention_heads"]
    if hf.get("head_dim") not in (None, dim // heads):
        raise ConversionError(f"{file}: head_dim={hf['head_dim']} differs from hidden_size / "
                              f"num_attention_heads = {dim // heads}; not supported")
    hidden = hf["intermediate_size"]
    rope = rope_fields_from_hf(hf, file)  # its ConversionErrors name the file already
    try:
        config = LlamaConfig(
            dim=dim, n_layers=hf["num_hidden_layers"], n_heads=heads,
            n_kv_heads=hf.get("num_key_value_heads"), vocab_size=hf["vocab_size"],
            # Keep the paper's rule implicit when the width follows it.
            hidden_dim=None if hidden == ffn_hidden_dim(dim) else hidden,
            norm_eps=hf.get("rms_norm_eps", 1e-6),
            tie_embeddings=bool(hf.get("tie_word_embeddings", False)),
            **rope,
        )
    except ValueError as e:
        raise ConversionError(f"{file}: {e}") from e
    return config, config.tie_embeddings


def load_hf(path: str | Path, dtype: np.dtype | None = None, *,
            progress: bool = True) -> tuple[LlamaConfig, dict]:
    """Load a HF Llama directory -> (config, scanned numpy params).

    `progress` shows a per-tensor bar (on a TTY only).
    """
    path = Path(path)
    config_file = path / CONFIG_FILE
    if not config_file.is_file():
        raise ConversionError(f"{config_file} is missing: a Hugging Face checkpoint directory "
                              f"holds {CONFIG_FILE} next to {WEIGHTS_FILE}")
    try:
        hf = json.loads(config_file.read_text())
    except json.JSONDecodeError as e:
        raise ConversionError(f"{config_file}: not valid JSON ({e})") from e
    config, tied = config_from_hf(hf, config_file)

    with SafetensorsFiles(_weight_files(path)) as st:
        source = {name: name for name in st.shapes}
        # Old HF checkpoints store the RoPE table per layer; it is derived, not learned.
        # A tied model's head is its embedding: a stored lm_head copy is not read.
        ignored = lambda name: (name.endswith("rotary_emb.inv_freq")  # noqa: E731
                                or (tied and name == "lm_head.weight"))
        expected = {hf_name(n): s for n, s in meta_shapes(config).items()}
        check_tensors({n: st.shapes[s] for n, s in source.items()}, expected,
                      where=lambda name: str(st.file_of.get(source.get(name, ""), path)),
                      config_source=str(config_file), ignored=ignored)

        def take(name: str) -> np.ndarray:
            w = st.get(source[hf_name(name)])
            if name.endswith("attention.wq.weight"):
                w = unpermute_rotary(w, config.n_heads)
            elif name.endswith("attention.wk.weight"):
                w = unpermute_rotary(w, config.num_kv_heads)
            return w

        return config, meta_to_params(config, take, dtype, progress=progress,
                                      desc=f"reading {path.name}")


def hf_config_for(config: LlamaConfig, dtype_name: str) -> dict[str, Any]:
    """A config.json that transformers' `LlamaForCausalLM.from_pretrained` loads."""
    return {
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "hidden_size": config.dim,
        "num_hidden_layers": config.n_layers,
        "num_attention_heads": config.n_heads,
        "num_key_value_heads": config.num_kv_heads,
        "head_dim": config.head_dim,
        "intermediate_size": config.ffn_dim,
        "vocab_size": config.vocab_size,
        "rms_norm_eps": config.norm_eps,
        "hidden_act": "silu",
        "attention_bias": False,
        "mlp_bias": False,
        "tie_word_embeddings": config.tie_embeddings,
        # transformers 5.x reads rope_parameters; older ones rope_scaling / rope_theta.
        **hf_rope_entries(config),
        "dtype": dtype_name,
        "torch_dtype": dtype_name,
    }


def save_hf(config: LlamaConfig, flat: dict, out_dir: Path, shards: int = 1, *,
            progress: bool = True) -> None:
    """Write config.json and model.safetensors (or `shards` files + index).

    `flat` is a canonical (validated, scanned) tree from `canonical_params`;
    `progress` shows a per-tensor bar (on a TTY only).
    """
    if not isinstance(shards, int) or shards < 1:
        raise ConversionError(f"shards={shards!r} must be a positive integer")
    tensors = {}
    for name, w in progress_bar(params_to_meta(config, flat), total=count_meta_tensors(config),
                                desc="writing safetensors", enabled=progress):
        if name.endswith("attention.wq.weight"):
            w = permute_rotary(w, config.n_heads)
        elif name.endswith("attention.wk.weight"):
            w = permute_rotary(w, config.num_kv_heads)
        tensors[hf_name(name)] = np.ascontiguousarray(w)
    dtype_name = np.dtype(tensors["model.embed_tokens.weight"].dtype).name
    (out_dir / CONFIG_FILE).write_text(json.dumps(hf_config_for(config, dtype_name), indent=2))
    metadata = {"format": "pt"}  # transformers refuses safetensors without it.
    if shards == 1:
        save_file(tensors, out_dir / WEIGHTS_FILE, metadata=metadata)
        return
    if shards > len(tensors):
        raise ConversionError(f"shards={shards} exceeds the number of tensors ({len(tensors)})")
    names = list(tensors)  # Meta's order: embeddings, norm, output, layer by layer.
    groups = [list(g) for g in np.array_split(np.array(names, dtype=object), shards)]
    weight_map = {}
    for i, group in enumerate(groups):
        fname = f"model-{i + 1:05d}-of-{shards:05d}.safetensors"
        save_file({n: tensors[n] for n in group}, out_dir / fname, metadata=metadata)
        weight_map.update({n: fname for n in group})
    total = sum(int(t.nbytes) for t in tensors.values())
    (out_dir / INDEX_FILE).write_text(json.dumps(
        {"metadata": {"total_size": total}, "weight_map": weight_map}, indent=2))
