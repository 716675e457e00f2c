"""The two layouts of the decoder layers' params: scanned and unscanned.

Scanned (``config.scan_layers=True``): one ``layers`` subtree whose leaves
have a leading ``[n_layers]`` axis, run by a `nn.scan`. Unscanned:
``layers_0``, ``layers_1``, ... subtrees, run one after another. Checkpoint
conversion, serving and generation move params between the two.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

import jax
import numpy as np

from llama_jax.errors import ConversionError

_UNSCANNED = re.compile(r"^layers_(\d+)$")


def is_scanned(params: Mapping[str, Any]) -> bool:
    """True for the `layers` (stacked) layout, False for `layers_0`, `layers_1`, ..."""
    return "layers" in params


def stack_layers(params: Mapping[str, Any]) -> dict[str, Any]:
    """`layers_0`, `layers_1`, ... -> one `layers` subtree with a leading axis.

    A tree that is already stacked is returned as a shallow copy. Works on
    numpy and jax arrays (jax arrays are stacked with `jnp.stack`).
    """
    if is_scanned(params):
        return dict(params)
    indices = sorted(int(m.group(1)) for k in params if (m := _UNSCANNED.match(k)))
    if not indices:
        raise ConversionError("params have neither 'layers' nor 'layers_0', ... subtrees; "
                              f"top-level keys are {sorted(params)}")
    if indices != list(range(len(indices))):
        raise ConversionError(f"unscanned layers are not numbered 0..{len(indices) - 1}: "
                              f"found {indices}")
    blocks = [params[f"layers_{i}"] for i in indices]

    def stack(*xs):
        if any(isinstance(x, jax.Array) for x in xs):
            return jax.numpy.stack(xs)  # [layers, ...]
        return np.stack(xs)  # [layers, ...]

    out = {k: v for k, v in params.items() if not _UNSCANNED.match(k)}
    out["layers"] = jax.tree_util.tree_map(stack, *blocks)
    return out


def unstack_layers(params: Mapping[str, Any]) -> dict[str, Any]:
    """One stacked `layers` subtree -> `layers_0`, `layers_1`, ... (views, no copy)."""
    if not is_scanned(params):
        return dict(params)
    layers = params["layers"]
    n = jax.tree_util.tree_leaves(layers)[0].shape[0]
    out = {k: v for k, v in params.items() if k != "layers"}
    for i in range(n):
        out[f"layers_{i}"] = jax.tree_util.tree_map(lambda x, i=i: x[i], layers)
    return out


def to_layout(params: Mapping[str, Any], scan_layers: bool) -> dict[str, Any]:
    """`params` in the scanned (`scan_layers=True`) or unscanned layout."""
    return stack_layers(params) if scan_layers else unstack_layers(params)
