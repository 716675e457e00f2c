"""The paper's optimizer: AdamW, warm-up + cosine schedule, global-norm clipping.

LLaMA (Section 2.3): AdamW with beta1 = 0.9, beta2 = 0.95, weight decay 0.1,
gradient clipping at 1.0, a cosine schedule that ends at 10% of the peak
learning rate after 2,000 warm-up steps. The chain is

    clip_by_global_norm(clip_norm) -> adamw(schedule, b1, b2, eps, wd, mask)

Weight decay is decoupled and scaled by the learning rate, as in PyTorch's
`torch.optim.AdamW` (``p -= lr * (adam_update + wd * p)``). Which parameters
decay is `decay_mask`'s choice (see `DECAY_MASKS` and docs/training.md).

Optimizer state lives in the parameters' dtype: keep ``param_dtype='float32'``
(the default) for f32 master weights and moments while ``dtype='bfloat16'``
runs the matmuls in bf16.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

from llama_jax.sharding import path_str

# Which parameters weight decay applies to.
DECAY_MASKS = (
    # Matrices only: per-layer ndim >= 2 (attention/FFN kernels, the token
    # embedding and the output head); norm scales do not decay. The default.
    "matrices",
    # Matrices except the token embedding table.
    "matrices_no_embed",
    # Every parameter, norm scales included (plain torch AdamW over
    # model.parameters()).
    "all",
    # No weight decay at all.
    "none",
)


def lr_schedule(peak_lr: float, warmup_steps: int, total_steps: int,
                min_lr_ratio: float = 0.1) -> optax.Schedule:
    """Linear warm-up to `peak_lr`, then cosine decay to `min_lr_ratio * peak_lr`.

    The schedule takes optax's update count ``c`` (0 for the first update) and
    uses ``t = c + 1``, the number of updates including this one:

    - ``t <= warmup_steps``: ``peak * t / warmup_steps`` (the last warm-up step
      is at the peak; the first update is not wasted at lr 0);
    - after: ``min + (peak - min) * (1 + cos(pi * p)) / 2`` with
      ``p = (t - warmup) / (total - warmup)`` clipped to [0, 1], so the final
      step (``t = total_steps``) runs at exactly ``min_lr_ratio * peak``.

    Args:
      peak_lr: the peak learning rate (Table 2: 3e-4 for 7B/13B, 1.5e-4 for
        33B/65B).
      warmup_steps: linear warm-up length (the paper: 2000); 0 for none.
      total_steps: the run's number of optimizer updates.
      min_lr_ratio: final learning rate as a fraction of the peak (paper: 0.1).
    """
    if peak_lr <= 0 or not math.isfinite(peak_lr):
        raise ValueError(f"optimizer.lr={peak_lr} must be a positive number")
    if warmup_steps < 0:
        raise ValueError(f"optimizer.warmup_steps={warmup_steps} must be >= 0")
    if total_steps <= 0:
        raise ValueError(f"train.steps={total_steps} must be positive")
    if not 0.0 <= min_lr_ratio <= 1.0:
        raise ValueError(f"optimizer.min_lr_ratio={min_lr_ratio} must be in [0, 1]")

    def schedule(count):
        return _schedule_value(jnp, count, peak_lr, warmup_steps, total_steps, min_lr_ratio)

    return schedule


def lr_at(count: int, peak_lr: float, warmup_steps: int, total_steps: int,
          min_lr_ratio: float = 0.1) -> float:
    """`lr_schedule`'s value at update `count`, computed on the host (numpy, float32)."""
    return float(_schedule_value(np, count, peak_lr, warmup_steps, total_steps, min_lr_ratio))


def _schedule_value(xp, count, peak_lr, warmup_steps, total_steps, min_lr_ratio):
    """The schedule formula with array module `xp` (jnp on device, np on host)."""
    min_lr = peak_lr * min_lr_ratio
    decay_steps = max(total_steps - warmup_steps, 1)
    t = xp.asarray(count, xp.float32) + xp.float32(1.0)
    warm = xp.float32(peak_lr) * t / xp.float32(max(warmup_steps, 1))
    progress = xp.clip((t - xp.float32(warmup_steps)) / xp.float32(decay_steps), 0.0, 1.0)
    cosine = xp.float32(min_lr) + xp.float32(peak_lr - min_lr) * xp.float32(0.5) * (
        xp.float32(1.0) + xp.cos(xp.float32(np.pi) * progress))
    return xp.where(t <= warmup_steps, warm, cosine).astype(xp.float32)


def schedule_count(opt_state: Any) -> jax.Array | None:
    """The update count the learning-rate schedule will see next: the ``count``
    of the chain's `optax.ScaleByScheduleState` (None if it has none).

    Unlike the train state's step it does not advance over updates that
    ``optax.apply_if_finite`` skipped, so ``lr_at(schedule_count(...))`` is the
    learning rate actually used.
    """
    found = [x for x in jax.tree.leaves(
        opt_state, is_leaf=lambda x: isinstance(x, optax.ScaleByScheduleState))
        if isinstance(x, optax.ScaleByScheduleState)]
    return found[0].count if found else None


def decay_mask(params: Any, choice: str = "matrices") -> Any:
    """A pytree of bools like `params`: True where weight decay applies.

    With ``scan_layers=True`` the blocks' parameters carry a leading ``layers``
    axis; the rank that matters is the per-layer rank, so a norm scale
    ``[layers, dim]`` counts as a vector and does not decay.
    """
    if choice not in DECAY_MASKS:
        raise ValueError(f"optimizer.decay_mask={choice!r} is not one of {DECAY_MASKS}")

    def leaf_mask(path, leaf):
        names = path_str(path).split("/")
        stacked = bool(names) and names[0] == "layers"
        per_layer_ndim = leaf.ndim - (1 if stacked else 0)
        if choice == "all":
            return True
        if choice == "none":
            return False
        if choice == "matrices_no_embed" and "tok_embeddings" in names:
            return False
        return per_layer_ndim >= 2

    return jax.tree_util.tree_map_with_path(leaf_mask, params)


def make_optimizer(
    *,
    peak_lr: float,
    total_steps: int,
    warmup_steps: int = 2000,
    min_lr_ratio: float = 0.1,
    b1: float = 0.9,
    b2: float = 0.95,
    eps: float = 1e-8,
    weight_decay: float = 0.1,
    clip_norm: float | None = 1.0,
    mask: str = "matrices",
    skip_nonfinite: bool = False,
    max_consecutive_skips: int = 20,
) -> optax.GradientTransformation:
    """The LLaMA optimizer chain (see the module docstring).

    Args:
      peak_lr, total_steps, warmup_steps, min_lr_ratio: the schedule
        (`lr_schedule`).
      b1, b2, eps: Adam moments (paper: 0.9, 0.95; eps 1e-8 as in PyTorch).
      weight_decay: decoupled decay coefficient (paper: 0.1).
      clip_norm: global-norm clipping threshold (paper: 1.0); None or <= 0
        turns clipping off.
      mask: one of `DECAY_MASKS`.
      skip_nonfinite: wrap the chain in `optax.apply_if_finite` so an update
        whose gradients hold a NaN/Inf is skipped (parameters and moments
        unchanged) -- ``train.on_nonfinite='skip'``.
      max_consecutive_skips: after this many skipped updates in a row
        apply_if_finite gives up; the trainer stops before that happens.
    """
    if not 0.0 <= b1 < 1.0 or not 0.0 <= b2 < 1.0:
        raise ValueError(f"optimizer.b1={b1} and optimizer.b2={b2} must be in [0, 1)")
    if eps <= 0:
        raise ValueError(f"optimizer.eps={eps} must be positive")
    if weight_decay < 0:
        raise ValueError(f"optimizer.weight_decay={weight_decay} must be >= 0")
    schedule = lr_schedule(peak_lr, warmup_steps, total_steps, min_lr_ratio)
    mask_fn: Callable[[Any], Any] = lambda params: decay_mask(params, mask)
    parts = []
    if clip_norm is not None and clip_norm > 0:
        parts.append(optax.clip_by_global_norm(clip_norm))
    parts.append(optax.adamw(schedule, b1=b1, b2=b2, eps=eps,
                             weight_decay=weight_decay, mask=mask_fn))
    tx = optax.chain(*parts)
    if skip_nonfinite:
        tx = optax.apply_if_finite(tx, max_consecutive_errors=max_consecutive_skips)
    return tx


def optimizer_from_config(opt_cfg: Any, total_steps: int, *, skip_nonfinite: bool = False,
                          max_consecutive_skips: int = 20) -> optax.GradientTransformation:
    """`make_optimizer` from the config's ``optimizer`` section (read at the edge)."""
    return make_optimizer(
        peak_lr=float(opt_cfg.lr), total_steps=int(total_steps),
        warmup_steps=int(opt_cfg.warmup_steps), min_lr_ratio=float(opt_cfg.min_lr_ratio),
        b1=float(opt_cfg.b1), b2=float(opt_cfg.b2), eps=float(opt_cfg.eps),
        weight_decay=float(opt_cfg.weight_decay), clip_norm=float(opt_cfg.clip_norm),
        mask=str(opt_cfg.decay_mask), skip_nonfinite=skip_nonfinite,
        max_consecutive_skips=max_consecutive_skips)
