"""LoRA on export: adapters merged into the weights they adapt.

A LoRA training run checkpoints only its adapters (`llama_jax.model.lora`)
and records in its meta the rank, alpha, targets and the base checkpoint it
trained on. `from_pretrained` of such a workdir loads that base and returns
``W + (alpha/rank) A B`` for every adapted kernel, so every reader (export,
eval, generate) sees the finetuned model; `save_pretrained(..., adapters=,
lora=)` merges adapters handed to it the same way before writing.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import jax
import numpy as np

from llama_jax.convert.common import ConversionError, stack_layers
from llama_jax.model.config import LlamaConfig
from llama_jax.model.lora import LoraConfig, merge


def lora_config(saved: Mapping[str, Any]) -> LoraConfig:
    """The `LoraConfig` of a run's meta record."""
    return LoraConfig(rank=int(saved["rank"]), alpha=float(saved["alpha"]),
                      targets=tuple(saved["targets"]))


def merge_adapters(params: Mapping[str, Any], adapters: Mapping[str, Any],
                   lora: LoraConfig) -> dict[str, Any]:
    """Host params with the adapters merged (both in either layout; result scanned)."""
    merged = merge(stack_layers(params), stack_layers(adapters), lora)
    return jax.tree.map(np.asarray, merged)


def merge_saved_lora(saved: Mapping[str, Any], adapters: Mapping[str, Any], config: LlamaConfig,
                     load: Callable[..., tuple[LlamaConfig, dict]]) -> tuple[LlamaConfig, dict]:
    """(config, merged params) of a LoRA run: its base (read by `load`) plus `adapters`."""
    base_path = saved.get("base")
    if not base_path:
        raise ConversionError("this LoRA checkpoint does not record its base checkpoint; "
                              "load the base with from_pretrained and pass the adapters to "
                              "save_pretrained(..., adapters=..., lora=...)")
    try:
        base_config, base = load(base_path, dtype=config.param_dtype)
    except (ConversionError, FileNotFoundError) as e:
        raise ConversionError(f"the LoRA run's base checkpoint {base_path}: {e}") from e
    return base_config.replace(scan_layers=True), merge_adapters(base, adapters, lora_config(saved))
