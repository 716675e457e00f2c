"""Model configuration: a frozen, self-validating `LlamaConfig` and the presets.

The shapes of the paper's Table 2 (LLaMA 7B/13B/33B/65B) and a `tiny` preset
that trains on a laptop CPU in minutes. The feed-forward width follows Meta's
released code: ``hidden = int(2 * 4 * dim / 3)``, optionally scaled by
``ffn_dim_multiplier``, rounded up to a multiple of ``multiple_of``.

What the model is and how it runs are kept apart: the shape fields (and
``param_dtype``, the dtype the weights are stored in) are what a checkpoint
carries (`LlamaConfig.to_dict`); the `RUN_OPTIONS` (compute ``dtype``,
``attention_impl``, ``remat_policy``, ``scan_layers``, ``matmul``) are chosen by each
entry point (the train config's ``model.*`` keys, eval/generate flags,
`from_pretrained`'s ``config_overrides``) and are never read back from a
checkpoint. They stay `LlamaConfig` fields so that layers see one object.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax.numpy as jnp
from absl import logging

from llama_jax.kernels.matmul import MATMUL_IMPLS
from llama_jax.model.remat import REMAT_POLICIES

ATTENTION_IMPLS = ("xla", "cudnn", "pallas", "ring", "auto")
# RoPE scaling (`llama_jax.model.rope`): None is the paper's unscaled RoPE.
ROPE_SCALING_TYPES = (None, "linear", "dynamic", "yarn", "llama3")
DTYPES = ("float32", "bfloat16", "float16")
# How the model runs, not what it is: chosen per run, never saved with weights.
# (scan_layers is a parameter *layout*; `from_pretrained` converts between the
# scanned and unscanned trees, so it is a run choice too.)
RUN_OPTIONS = ("dtype", "attention_impl", "remat_policy", "scan_layers", "matmul")


def ffn_hidden_dim(
    dim: int, multiple_of: int = 256, ffn_dim_multiplier: float | None = None
) -> int:
    """SwiGLU hidden width by Meta's rule: 2/3 * 4d, scaled, rounded up."""
    hidden = int(2 * (4 * dim) / 3)
    if ffn_dim_multiplier is not None:
        hidden = int(ffn_dim_multiplier * hidden)
    return multiple_of * ((hidden + multiple_of - 1) // multiple_of)


@dataclasses.dataclass(frozen=True)
class LlamaConfig:
    """Shape and numerics of a LLaMA decoder.

    Attributes:
      dim: model width d.
      n_layers: number of decoder blocks.
      n_heads: query heads; head_dim = dim // n_heads.
      n_kv_heads: key/value heads (grouped-query attention); None means n_heads.
      vocab_size: vocabulary size (LLaMA: 32000).
      multiple_of: FFN width is rounded up to a multiple of this.
      ffn_dim_multiplier: optional scale on the FFN width (Llama 2 70B, Llama 3).
      hidden_dim: explicit FFN width; overrides the rule when set (HF's
        ``intermediate_size``).
      norm_eps: RMSNorm epsilon.
      rope_theta: RoPE base frequency.
      max_seq_len: longest context (RoPE table, KV cache default).
      rope_scaling_type: None (unscaled RoPE), "linear" (position interpolation),
        "dynamic" (dynamic NTK), "yarn" or "llama3"; see `llama_jax.model.rope`.
      rope_scaling_factor: the context-extension factor s (>= 1).
      rope_original_max_seq_len: the pre-extension context length that
        "dynamic", "yarn" and "llama3" scale from (None: `max_seq_len`).
      rope_low_freq_factor, rope_high_freq_factor: "llama3" wavelength bounds
        (Meta's 1 and 4).
      rope_beta_fast, rope_beta_slow: "yarn" ramp bounds in rotations (32, 1).
      rope_attention_factor: "yarn" scale on cos/sin; None derives it from the
        factor (and `rope_mscale` / `rope_mscale_all_dim` when both are set).
      rope_mscale, rope_mscale_all_dim: "yarn" (DeepSeek-style) mscale terms.
      rope_truncate: "yarn" rounds the ramp bounds outwards (HF's default).
      tie_embeddings: the LM head is the token embedding table (no `output`).
      param_dtype: storage dtype of parameters.

    Run options (`RUN_OPTIONS`; not saved, see `to_dict`):
      dtype: compute dtype of activations ("float32", "bfloat16", "float16").
      attention_impl: "xla", "cudnn", "pallas", "ring" or "auto" (see
        `llama_jax.model.attention.dot_product_attention`).
      remat_policy: a key of `llama_jax.model.remat.REMAT_POLICIES`.
      scan_layers: stack the blocks with `nn.scan` (one compiled block).
      matmul: "xla", "canonical" or "auto", how the linear layers and the
        ``xla`` attention path's dots differentiate (`llama_jax.kernels.matmul`;
        "auto" picks "canonical" on the CPU, "xla" elsewhere; same values).
    """

    dim: int = 4096
    n_layers: int = 32
    n_heads: int = 32
    n_kv_heads: int | None = None
    vocab_size: int = 32000
    multiple_of: int = 256
    ffn_dim_multiplier: float | None = None
    hidden_dim: int | None = None
    norm_eps: float = 1e-6
    rope_theta: float = 10000.0
    max_seq_len: int = 2048
    rope_scaling_type: str | None = None
    rope_scaling_factor: float = 1.0
    rope_original_max_seq_len: int | None = None
    rope_low_freq_factor: float = 1.0
    rope_high_freq_factor: float = 4.0
    rope_beta_fast: float = 32.0
    rope_beta_slow: float = 1.0
    rope_attention_factor: float | None = None
    rope_mscale: float | None = None
    rope_mscale_all_dim: float | None = None
    rope_truncate: bool = True
    tie_embeddings: bool = False
    dtype: str = "float32"
    param_dtype: str = "float32"
    attention_impl: str = "auto"
    remat_policy: str = "none"
    scan_layers: bool = True
    matmul: str = "auto"

    def __post_init__(self):
        def fail(msg):
            raise ValueError(f"LlamaConfig: {msg}")

        for name in ("dim", "n_layers", "n_heads", "vocab_size", "multiple_of",
                     "max_seq_len"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
                fail(f"{name}={value!r} must be a positive integer")
        if self.dim % self.n_heads:
            fail(f"dim={self.dim} is not divisible by n_heads={self.n_heads}; "
                 "choose n_heads that divides dim")
        if self.head_dim % 2:
            fail(f"head_dim={self.head_dim} must be even for rotary embeddings")
        kv = self.num_kv_heads
        if kv <= 0 or self.n_heads % kv:
            fail(f"n_heads={self.n_heads} must be a multiple of "
                 f"n_kv_heads={self.n_kv_heads}")
        if self.hidden_dim is not None and self.hidden_dim <= 0:
            fail(f"hidden_dim={self.hidden_dim} must be positive")
        if self.norm_eps <= 0 or self.rope_theta <= 0:
            fail("norm_eps and rope_theta must be positive")
        self._check_rope(fail)
        for name in ("dtype", "param_dtype"):
            if getattr(self, name) not in DTYPES:
                fail(f"{name}={getattr(self, name)!r} is not one of {DTYPES}")
        if self.attention_impl not in ATTENTION_IMPLS:
            fail(f"attention_impl={self.attention_impl!r} is not one of "
                 f"{ATTENTION_IMPLS}")
        if self.matmul not in MATMUL_IMPLS:
            fail(f"matmul={self.matmul!r} is not one of {MATMUL_IMPLS}")
        if self.remat_policy not in REMAT_POLICIES:
            fail(f"remat_policy={self.remat_policy!r} is not one of "
                 f"{sorted(REMAT_POLICIES)}")

    def _check_rope(self, fail):
        """Validate the RoPE scaling fields (`fail` raises a ValueError)."""
        kind = self.rope_scaling_type
        if kind not in ROPE_SCALING_TYPES:
            fail(f"rope_scaling_type={kind!r} is not one of {ROPE_SCALING_TYPES}")
        factor = self.rope_scaling_factor
        if isinstance(factor, bool) or not isinstance(factor, (int, float)) or not factor >= 1:
            fail(f"rope_scaling_factor={factor!r} must be a number >= 1 (1 means no "
                 "scaling; the context is extended by this factor)")
        if kind is None and factor != 1:
            fail(f"rope_scaling_factor={factor} needs a rope_scaling_type (one of "
                 f"{ROPE_SCALING_TYPES[1:]})")
        orig = self.rope_original_max_seq_len
        if orig is not None and (isinstance(orig, bool) or not isinstance(orig, int)
                                 or orig <= 0):
            fail(f"rope_original_max_seq_len={orig!r} must be a positive integer or None")
        if not 0 < self.rope_low_freq_factor < self.rope_high_freq_factor:
            fail(f"rope_low_freq_factor={self.rope_low_freq_factor} and rope_high_freq_factor="
                 f"{self.rope_high_freq_factor} must satisfy 0 < low < high")
        if not 0 < self.rope_beta_slow <= self.rope_beta_fast:
            fail(f"rope_beta_slow={self.rope_beta_slow} and rope_beta_fast="
                 f"{self.rope_beta_fast} must satisfy 0 < beta_slow <= beta_fast")
        if self.rope_attention_factor is not None and not self.rope_attention_factor > 0:
            fail(f"rope_attention_factor={self.rope_attention_factor} must be positive or None")

    @property
    def rope_original_len(self) -> int:
        """The context length RoPE scaling extends (`rope_original_max_seq_len`)."""
        return self.rope_original_max_seq_len or self.max_seq_len

    @property
    def head_dim(self) -> int:
        return self.dim // self.n_heads

    @property
    def num_kv_heads(self) -> int:
        return self.n_heads if self.n_kv_heads is None else self.n_kv_heads

    @property
    def ffn_dim(self) -> int:
        """The SwiGLU hidden width (explicit `hidden_dim` or Meta's rule)."""
        if self.hidden_dim is not None:
            return self.hidden_dim
        return ffn_hidden_dim(self.dim, self.multiple_of, self.ffn_dim_multiplier)

    @property
    def compute_dtype(self) -> Any:
        return jnp.dtype(self.dtype)

    @property
    def weight_dtype(self) -> Any:
        return jnp.dtype(self.param_dtype)

    def replace(self, **changes) -> LlamaConfig:
        """A copy with `changes` applied (validated again)."""
        return dataclasses.replace(self, **changes)

    def with_run_options(self, **options) -> LlamaConfig:
        """A copy with run options (`RUN_OPTIONS`) set; None values are skipped.

        Raises ValueError naming a key that is a shape field, not a run option.
        """
        shape = sorted(set(options) - set(RUN_OPTIONS))
        if shape:
            raise ValueError(f"LlamaConfig.with_run_options: {shape} are not run options; "
                             f"run options are {list(RUN_OPTIONS)} (use replace() for shape)")
        changes = {k: v for k, v in options.items() if v is not None}
        return self.replace(**changes) if changes else self

    def run_options(self) -> dict[str, Any]:
        """The run options of this config (`RUN_OPTIONS`) as a dict."""
        return {k: getattr(self, k) for k in RUN_OPTIONS}

    def to_dict(self) -> dict[str, Any]:
        """The model's shape (every field but `RUN_OPTIONS`; `param_dtype` included).

        This is what a checkpoint stores: how the model runs is chosen by
        whoever loads it.
        """
        d = dataclasses.asdict(self)
        return {k: v for k, v in d.items() if k not in RUN_OPTIONS}

    shape_dict = to_dict

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> LlamaConfig:
        """Build from a shape dict; unknown keys are an error naming them.

        Run options in `d` (files written before they were split off) are
        ignored, so old checkpoints load with the default run options; set
        them with `with_run_options` or `from_pretrained(config_overrides=...)`.
        """
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - names)
        if unknown:
            raise ValueError(f"LlamaConfig: unknown keys {unknown}; known keys "
                             f"are {sorted(names)}")
        ignored = {k: d[k] for k in RUN_OPTIONS if k in d}
        if ignored:
            logging.info(
                "LlamaConfig.from_dict: ignoring saved run options %s (chosen per run)", ignored)
        return cls(**{k: v for k, v in d.items() if k not in RUN_OPTIONS})


_PAPER = dict(vocab_size=32000, multiple_of=256, norm_eps=1e-6, max_seq_len=2048)

PRESETS: dict[str, LlamaConfig] = {
    # A CPU-trainable model for the embedded corpus (~6M parameters).
    "tiny": LlamaConfig(dim=256, n_layers=4, n_heads=8, vocab_size=4096,
                        multiple_of=32, norm_eps=1e-6, max_seq_len=256),
    # Table 2 of the paper.
    "llama_7b": LlamaConfig(dim=4096, n_layers=32, n_heads=32, **_PAPER),
    "llama_13b": LlamaConfig(dim=5120, n_layers=40, n_heads=40, **_PAPER),
    "llama_33b": LlamaConfig(dim=6656, n_layers=60, n_heads=52, **_PAPER),
    "llama_65b": LlamaConfig(dim=8192, n_layers=80, n_heads=64, **_PAPER),
}


def get_preset(name: str, **overrides) -> LlamaConfig:
    """The preset `name`, with optional field overrides."""
    if name not in PRESETS:
        raise ValueError(f"unknown preset {name!r}; choose one of {sorted(PRESETS)}")
    return PRESETS[name].replace(**overrides) if overrides else PRESETS[name]
