"""RoPE scaling and tied embeddings in the checkpoint configs (HF config.json, Meta params.json).

Hugging Face: transformers 5.x writes ``rope_parameters`` (with ``rope_theta``
inside), older versions ``rope_scaling`` next to a top-level ``rope_theta``;
both spell the type ``rope_type`` (or the older ``type``). Like transformers,
``rope_scaling`` wins when both are present. Types read: "default", "linear",
"dynamic", "yarn", "llama3". HF's dynamic NTK scales from
``max_position_embeddings``, so for "dynamic" that key is our
``rope_original_max_seq_len`` and our ``max_seq_len`` is it times the factor;
for "yarn" and "llama3" the original length is
``original_max_position_embeddings``.

Meta: Llama 3.1+ ``params.json`` says ``use_scaled_rope: true``, which is
"llama3" scaling with the constants of Meta's reference code (factor 8, low /
high frequency factors 1 / 4, original context 8192). Meta's params.json has no
other scaling and no tie flag (its checkpoints always hold ``output.weight``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from llama_jax.errors import ConversionError
from llama_jax.model.config import LlamaConfig

# HF rope_type -> our rope_scaling_type.
HF_ROPE_TYPES: dict[str, str | None] = {
    "default": None, "linear": "linear", "dynamic": "dynamic", "yarn": "yarn", "llama3": "llama3"}
# Meta's reference `apply_scaling` constants (llama-models, Llama 3.1).
META_LLAMA3_ROPE = dict(rope_scaling_type="llama3", rope_scaling_factor=8.0,
                        rope_low_freq_factor=1.0, rope_high_freq_factor=4.0,
                        rope_original_max_seq_len=8192)


def _number(rope: dict[str, Any], key: str, file: Path, kind: str, default=None):
    value = rope.get(key, default)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ConversionError(f"{file}: RoPE scaling {key}={value!r} (rope_type {kind!r}) must "
                              "be a number")
    return float(value)


def rope_fields_from_hf(hf: dict[str, Any], file: Path) -> dict[str, Any]:
    """`LlamaConfig` RoPE fields (and max_seq_len) from a HF config.json dict."""
    key = "rope_scaling" if hf.get("rope_scaling") else "rope_parameters"
    rope = hf.get(key) or {}
    if not isinstance(rope, dict):
        raise ConversionError(f"{file}: {key} must be an object, got {rope!r}")
    theta = rope.get("rope_theta", hf.get("rope_theta",
                                          (hf.get("rope_parameters") or {}).get("rope_theta",
                                                                                10000.0)))
    max_pos = hf.get("max_position_embeddings", 2048)
    kind = rope.get("rope_type", rope.get("type", "default"))
    if kind not in HF_ROPE_TYPES:
        raise ConversionError(f"{file}: {key}.rope_type={kind!r} is not supported; supported "
                              f"RoPE types are {sorted(HF_ROPE_TYPES)}")
    fields: dict[str, Any] = dict(rope_theta=float(theta), max_seq_len=max_pos)
    ours = HF_ROPE_TYPES[kind]
    if ours is None:
        return fields
    orig = None
    if ours in ("yarn", "llama3"):
        orig = rope.get("original_max_position_embeddings",
                        hf.get("original_max_position_embeddings", max_pos))
    factor = _number(rope, "factor", file, kind)
    if factor is None and ours == "yarn" and orig:
        factor = max_pos / orig  # HF's YaRN fallback (DeepSeek-style configs).
    if factor is None:
        raise ConversionError(f"{file}: {key} of rope_type {kind!r} has no 'factor'; add the "
                              "scaling factor (>= 1)")
    if not factor >= 1:
        raise ConversionError(f"{file}: {key}.factor={factor} (rope_type {kind!r}) must be >= 1; "
                              "a RoPE scaling factor below 1 would shrink the context")
    fields.update(rope_scaling_type=ours, rope_scaling_factor=factor)
    if ours == "dynamic":
        # HF's dynamic NTK scales from max_position_embeddings.
        fields.update(rope_original_max_seq_len=max_pos, max_seq_len=int(max_pos * factor))
    elif orig is not None:
        fields["rope_original_max_seq_len"] = int(orig)
    if ours == "llama3":
        fields.update(rope_low_freq_factor=_number(rope, "low_freq_factor", file, kind, 1.0),
                      rope_high_freq_factor=_number(rope, "high_freq_factor", file, kind, 4.0))
    if ours == "yarn":
        # HF: `rope_parameters.get("beta_fast") or 32` (a null is the default too).
        fields.update(
            rope_beta_fast=_number(rope, "beta_fast", file, kind) or 32.0,
            rope_beta_slow=_number(rope, "beta_slow", file, kind) or 1.0,
            rope_attention_factor=_number(rope, "attention_factor", file, kind),
            rope_mscale=_number(rope, "mscale", file, kind),
            rope_mscale_all_dim=_number(rope, "mscale_all_dim", file, kind),
            rope_truncate=bool(rope.get("truncate", True)))
    return fields


def hf_rope_entries(config: LlamaConfig) -> dict[str, Any]:
    """config.json keys for `config`'s RoPE: rope_parameters (5.x), rope_scaling
    (older transformers, when scaled), rope_theta and max_position_embeddings."""
    kind = config.rope_scaling_type
    rope: dict[str, Any] = {"rope_type": kind or "default", "rope_theta": config.rope_theta}
    if kind is not None:
        rope["factor"] = float(config.rope_scaling_factor)
    if kind in ("yarn", "llama3"):
        rope["original_max_position_embeddings"] = config.rope_original_len
    if kind == "llama3":
        rope.update(low_freq_factor=config.rope_low_freq_factor,
                    high_freq_factor=config.rope_high_freq_factor)
    if kind == "yarn":
        rope.update(beta_fast=config.rope_beta_fast, beta_slow=config.rope_beta_slow,
                    truncate=config.rope_truncate)
        for name in ("attention_factor", "mscale", "mscale_all_dim"):
            value = getattr(config, f"rope_{name}")
            if value is not None:
                rope[name] = float(value)
    max_pos = config.rope_original_len if kind == "dynamic" else config.max_seq_len
    out = {"max_position_embeddings": max_pos, "rope_parameters": rope,
           "rope_theta": config.rope_theta}
    if kind is not None:
        out["rope_scaling"] = {k: v for k, v in rope.items() if k != "rope_theta"}
    return out


def rope_fields_from_meta(params: dict[str, Any]) -> dict[str, Any]:
    """`LlamaConfig` RoPE scaling fields from Meta's params.json (`use_scaled_rope`)."""
    return dict(META_LLAMA3_ROPE) if params.get("use_scaled_rope") else {}


def meta_rope_entries(config: LlamaConfig, where: str = "params.json") -> dict[str, Any]:
    """params.json keys for `config`'s RoPE scaling; ConversionError if Meta cannot say it."""
    if config.rope_scaling_type is None:
        return {}
    ours = {k: getattr(config, k) for k in META_LLAMA3_ROPE if k != "rope_original_max_seq_len"}
    ours["rope_original_max_seq_len"] = config.rope_original_len
    if ours != META_LLAMA3_ROPE:
        raise ConversionError(
            f"{where} can only express Meta's llama3 RoPE scaling ({META_LLAMA3_ROPE}, written "
            f"as use_scaled_rope=true); this model has {ours}: save it with format='hf'")
    return {"use_scaled_rope": True}
