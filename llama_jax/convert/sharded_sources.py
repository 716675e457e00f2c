"""Checkpoint files as sources of Meta-named tensor blocks, for the mesh loader.

A source knows a checkpoint's config and, for each Meta tensor name, its
stored shape and dtype; `block(name, index)` reads one rectangular block of
the *stored* tensor, and `row_map(name)` says which stored row each Meta row
is (the Hugging Face q/k rotary permutation, else None). The mesh loader
(`llama_jax.convert.sharded_read`) turns those blocks into our layout.

- `HFSource`: config.json + model.safetensors (or a sharded index), read
  through `SafetensorsBlocks` (headers only, then one block at a time).
- `MetaSource`: params.json + consolidated.NN.pth, memory-mapped by
  ``torch.load(mmap=True)``; a block that spans model-parallel shards is
  assembled from the pieces of each file it touches.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from llama_jax.convert import hf, meta
from llama_jax.convert.common import (
    ConversionError,
    check_tensors,
    meta_shapes,
    split_layer_key,
    torch_to_numpy,
)
from llama_jax.convert.safetensors_io import READ_STATS, SafetensorsBlocks
from llama_jax.model.config import DTYPES


def _dtype_name(dtype: np.dtype) -> str | None:
    name = np.dtype(dtype).name
    return name if name in DTYPES else None


class HFSource:
    """A Hugging Face Llama folder, read block by block."""

    def __init__(self, path: Path):
        self.path = path
        config_file = path / hf.CONFIG_FILE
        if not config_file.is_file():
            raise ConversionError(f"{config_file} is missing: a Hugging Face checkpoint "
                                  f"directory holds {hf.CONFIG_FILE} next to {hf.WEIGHTS_FILE}")
        try:
            hf_cfg = json.loads(config_file.read_text())
        except json.JSONDecodeError as e:
            raise ConversionError(f"{config_file}: not valid JSON ({e})") from e
        self.config, tied = hf.config_from_hf(hf_cfg, config_file)
        self.files = SafetensorsBlocks(hf._weight_files(path))
        st = self.files
        source = {name: name for name in st.shapes}
        # A tied model's head is its embedding: a stored lm_head copy is not read.
        if tied:
            source.pop("lm_head.weight", None)
        expected = {hf.hf_name(n): s for n, s in meta_shapes(self.config).items()}
        check_tensors({n: st.shapes[s] for n, s in source.items()}, expected,
                      where=lambda name: str(st.file_of.get(source.get(name, ""), path)),
                      config_source=str(config_file),
                      ignored=lambda name: name.endswith("rotary_emb.inv_freq"))
        self._source = source
        self.stored = _dtype_name(st.dtypes[source["model.embed_tokens.weight"]])

    def _name(self, name: str) -> str:
        return self._source[hf.hf_name(name)]

    def shape(self, name: str) -> tuple[int, ...]:
        """Stored shape of Meta tensor `name`."""
        return self.files.shapes[self._name(name)]

    def dtype(self, name: str) -> np.dtype:
        """Stored dtype of Meta tensor `name`."""
        return self.files.dtypes[self._name(name)]

    def row_map(self, name: str) -> np.ndarray | None:
        """Stored row of each Meta row: HF permutes q/k rows for rotate-half RoPE."""
        heads = {"attention.wq.weight": self.config.n_heads,
                 "attention.wk.weight": self.config.num_kv_heads}.get(_suffix(name))
        if heads is None:
            return None
        rows = self.shape(name)[0]
        return hf.unpermute_rotary(np.arange(rows)[:, None], heads)[:, 0]

    def block(self, name: str, index: tuple[slice, ...]) -> np.ndarray:
        """``stored[index]`` of Meta tensor `name`."""
        return self.files.block(self._name(name), index)


def _suffix(name: str) -> str:
    split = split_layer_key(name)
    return split[1] if split else name


class MetaSource:
    """A Meta checkpoint folder (one or more model-parallel .pth shards)."""

    def __init__(self, path: Path):
        self.path = path
        params_json = meta._read_params_json(path / meta.PARAMS_FILE)
        self.files = meta.shard_files(path)
        self.states = [meta._load_pth(f) for f in self.files]
        n = len(self.files)
        keys = set(self.states[0])
        for f, state in zip(self.files[1:], self.states[1:], strict=True):
            if set(state) != keys:
                diff = sorted(keys.symmetric_difference(state))
                raise ConversionError(f"inconsistent shards: {self.files[0].name} and {f.name} "
                                      f"hold different tensors (differing: {diff[:8]})")
        self.axis: dict[str, int | None] = {}
        self.shapes: dict[str, tuple[int, ...]] = {}
        for name in self.states[0]:
            shapes = [tuple(s[name].shape) for s in self.states]
            axis = meta.SPLIT_AXIS.get(_suffix(name))
            if name == "tok_embeddings.weight" and n > 1 and shapes[0][1] == params_json["dim"]:
                axis = 0  # Llama 3: VocabParallelEmbedding splits the vocab.
            if len(set(shapes)) != 1:
                raise ConversionError(f"inconsistent shards: tensor {name!r} has shapes {shapes} "
                                      f"in {[f.name for f in self.files]}")
            shape = list(shapes[0])
            if n > 1 and axis is not None and axis < len(shape):
                shape[axis] *= n
            else:
                axis = None
            self.axis[name], self.shapes[name] = axis, tuple(shape)
        vocab = params_json.get("vocab_size", -1)
        if vocab is None or vocab < 0:
            if "tok_embeddings.weight" not in self.shapes:
                raise ConversionError(f"{path / meta.PARAMS_FILE}: vocab_size={vocab} and no "
                                      "tok_embeddings.weight to take it from")
            vocab = self.shapes["tok_embeddings.weight"][0]
        try:
            self.config = meta.config_from_params_json(params_json, vocab)
        except ValueError as e:
            raise ConversionError(f"{path / meta.PARAMS_FILE}: {e}") from e
        where = self.files[0].name if n == 1 else f"{self.files[0].name}..{self.files[-1].name}"
        check_tensors(self.shapes, meta_shapes(self.config), where=lambda name: str(path / where),
                      config_source=str(path / meta.PARAMS_FILE),
                      ignored=lambda name: name in meta.IGNORED)
        emb = self.states[0]["tok_embeddings.weight"]
        self.stored = _dtype_name(torch_to_numpy(emb[:0]).dtype)

    def shape(self, name: str) -> tuple[int, ...]:
        """Merged shape of Meta tensor `name`."""
        return self.shapes[name]

    def dtype(self, name: str) -> np.dtype:
        """Stored dtype of Meta tensor `name`."""
        return torch_to_numpy(self.states[0][name].reshape(-1)[:0]).dtype

    def row_map(self, name: str) -> None:
        """Meta's rows are ours: no permutation."""
        del name

    def block(self, name: str, index: tuple[slice, ...]) -> np.ndarray:
        """``merged[index]`` of tensor `name`, read from the shard files it spans."""
        axis = self.axis[name]
        if axis is None:  # one file, or replicated in every shard: read the first
            out = np.array(torch_to_numpy(self.states[0][name][index]), order="C")
        else:
            part = self.shapes[name][axis] // len(self.files)
            lo, hi = index[axis].start, index[axis].stop
            pieces = []
            for j, state in enumerate(self.states):
                a, b = max(lo, j * part), min(hi, (j + 1) * part)
                if a >= b:
                    continue
                local = list(index)
                local[axis] = slice(a - j * part, b - j * part)
                pieces.append(np.array(torch_to_numpy(state[name][tuple(local)])))
            out = np.ascontiguousarray(np.concatenate(pieces, axis=axis))
        READ_STATS.bytes += out.nbytes
        READ_STATS.blocks += 1
        return out
