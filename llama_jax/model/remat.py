"""Remat (activation checkpointing) policies: one table from name to policy.

Layers tag the values they produce with `jax.ad_checkpoint.checkpoint_name`
(``wq`` ... ``w3`` for the linear layers' outputs, ``attention`` for the
attention output); a policy names which tags the backward pass keeps. The
paper's selective checkpointing ("save the outputs of the linear layers,
recompute the rest") is ``save_linear``. `LlamaConfig` validates
``remat_policy`` against this table and `llama_jax.model.llama` applies it
with `nn.remat` around each block.
"""

from __future__ import annotations

from typing import Any

import jax

LINEAR_NAMES = ("wq", "wk", "wv", "wo", "w1", "w2", "w3")

_cp = jax.checkpoint_policies

# Remat policy name -> `jax.checkpoint` policy. `None` means no remat at all.
REMAT_POLICIES: dict[str, Any] = {
    "none": None,
    # Save nothing: recompute the whole block in the backward pass.
    "full": _cp.nothing_saveable,
    # The paper's selective checkpointing: keep linear-layer outputs,
    # recompute norms, activations and attention.
    "save_linear": _cp.save_only_these_names(*LINEAR_NAMES),
    # Also keep the attention output so a flash kernel is not re-run.
    "save_linear_and_attention": _cp.save_only_these_names(
        *LINEAR_NAMES, "attention"),
    # Keep every matmul result (XLA's dots), whatever produced it.
    "save_dots": _cp.dots_with_no_batch_dims_saveable,
    # Like save_linear, but the saved values live in pinned host memory.
    "offload_linear": _cp.save_and_offload_only_these_names(
        names_which_can_be_saved=(),
        names_which_can_be_offloaded=LINEAR_NAMES,
        offload_src="device",
        offload_dst="pinned_host",
    ),
}
