"""The config a load ends with: stored dtype, the `dtype` argument, config overrides.

Shared by `from_pretrained`'s host path and its mesh path
(`llama_jax.convert.sharded_read`), so both settle the config the same way.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from llama_jax.errors import ConversionError
from llama_jax.model.config import LlamaConfig


def resolve_config(config: LlamaConfig, stored: str | None, np_dtype: np.dtype | None,
                   config_overrides: Mapping[str, Any] | None,
                   path: str | Path) -> tuple[LlamaConfig, dict[str, Any]]:
    """(final config, the overrides applied) for a checkpoint whose params are `stored`.

    `stored` is the token embedding's dtype name (None if unsupported);
    `np_dtype` the requested cast. Raises `ConversionError` when `np_dtype`
    and an override of ``param_dtype`` disagree or an override is invalid.
    """
    if stored is not None and stored != config.param_dtype:
        config = config.replace(param_dtype=stored)
    overrides = dict(config_overrides or {})
    if np_dtype is not None:
        if overrides.get("param_dtype", np_dtype.name) != np_dtype.name:
            raise ConversionError(f"dtype={np_dtype.name!r} conflicts with config_overrides "
                                  f"param_dtype={overrides['param_dtype']!r}")
        overrides["param_dtype"] = np_dtype.name
    scaled = overrides.get("rope_scaling_type", config.rope_scaling_type) is not None
    if ("max_seq_len" in overrides and scaled and config.rope_original_max_seq_len is None):
        # A longer context (at run time, or extended by scaling) keeps the length
        # the checkpoint was trained at as the scaling's original one.
        overrides.setdefault("rope_original_max_seq_len", config.max_seq_len)
    try:
        config = config.replace(**overrides)
    except (TypeError, ValueError) as e:
        raise ConversionError(f"config_overrides={dict(config_overrides or {})} for {path}: "
                              f"{e}") from e
    return config, overrides
