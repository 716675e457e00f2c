"""Linear-layer matmuls whose backward pass XLA's CPU back-end runs at full rate.

`mixed_dot(x, kernel, compute_dtype, out_dtype)` is ``x @ kernel`` over the
last axis of `x`: both operands cast to `compute_dtype`, the products summed
in float32 (``preferred_element_type``), the result cast to `out_dtype`. Its
forward is the plain dot; what it changes is the backward pass. Its
reference is `mixed_dot_reference` (plain `jnp.dot` in float32 of the cast
operands); `tests/test_matmul.py` checks values and gradients against it and
the model's logits and gradients against ``matmul="xla"``.

Why a custom VJP. jaxlib 0.10's CPU back-end hands a dot to YNNPACK only
when the dot is ``f32 x f32 -> f32`` or ``bf16 x bf16 -> f32`` (its bf16
kernels use the CPU's bf16 dot instructions), its left operand contracts its
last axis, and neither operand is a transpose folded into the dot
(``IsDotSupportedByYnn`` in XLA's ``backends/cpu/ynn_support.cc``); any other
dot runs in XLA's slower fallback, a bf16 one converted to f32 first. JAX's
own transpose of a dot breaks these rules: the cotangent dots of a bf16 dot
return bf16, and the weight gradient ``x^T @ g`` contracts the token axis,
the first axis of both operands. So the backward pass here writes the two
gradients itself:

- ``dx = g @ kernel^T``: contracts the last axis of both (a transposed right
  operand is fine), f32 accumulation;
- ``dkernel = x^T @ g``: `x` is transposed through a split of its leading
  axes (``[m1, m2, K] -> [K, m1, m2] -> [K, m]``), which XLA keeps as a copy
  (a plain 2-D transpose it folds back into the dot), so the dot is
  canonical. The gradient comes back in the kernel's dtype (the float32
  master weights) without a bf16 rounding.

`batched_dot_nt` and `batched_dot_nn` do the same for the two batched dots
of the ``xla`` attention path (`llama_jax.kernels.xla_attention`): scores
``q @ k^T`` and probabilities ``p @ v``, whose gradients contract the query
axis; `_swap_minor` is their kept transpose.

Measured on the 2-core AMD EPYC CI machine kind (avx512_bf16), a 2048 x 512 x
1408 dot with its two gradients: bf16 686-761 GFLOP/s against 375-395 through
JAX's transpose, f32 383. In the train step (benchmarks/train_step.py,
against the ``*_xla_matmul`` variants in the same run): 1.09-1.19x in f32
and 1.20-1.81x in bf16 on shapes (a), (b) and tiny (docs/performance.md).

`llama_jax.model.layers.Linear` and `xla_attention` use them when the run
option `LlamaConfig.matmul` resolves to ``"canonical"`` (``"auto"``: on the
CPU, where they were measured; elsewhere XLA's own dots are kept).
"""

from __future__ import annotations

import math
from functools import partial

import jax
import jax.numpy as jnp
from jax import lax

_F32 = jnp.float32
# The run option `LlamaConfig.matmul`: "auto" is "canonical" on the CPU, else "xla".
MATMUL_IMPLS = ("xla", "canonical", "auto")


def _dot_last(x: jax.Array, w: jax.Array) -> jax.Array:
    """[..., K] x [K, N] -> [..., N], f32 accumulation."""
    return lax.dot_general(x, w, (((x.ndim - 1,), (0,)), ((), ())),
                           preferred_element_type=_F32)


def _transpose_tokens(x: jax.Array) -> jax.Array:
    """[..., K] -> [K, m] (m = the product of the leading axes), as a kept copy.

    Goes through a 3-D transpose of split leading axes; a plain 2-D transpose
    would be folded into the following dot as a non-canonical contraction.
    """
    k = x.shape[-1]
    lead = x.shape[:-1]
    m = math.prod(lead)
    m2 = lead[-1] if len(lead) >= 2 else 1
    x3 = x.reshape(m // m2, m2, k)  # [m1, m2, K]
    return jnp.transpose(x3, (2, 0, 1)).reshape(k, m)  # [K, m]


@partial(jax.custom_vjp, nondiff_argnums=(2, 3))
def mixed_dot(x: jax.Array, kernel: jax.Array, compute_dtype, out_dtype) -> jax.Array:
    """``x [..., K] @ kernel [K, N] -> [..., N]`` in `compute_dtype`, f32 accumulation.

    Gradients: `x`'s in its own dtype, `kernel`'s in its own dtype (float32 for
    f32 master weights), both accumulated in float32.
    """
    y = _dot_last(x.astype(compute_dtype), kernel.astype(compute_dtype))  # [..., N] f32
    return y.astype(out_dtype)


def _mixed_dot_fwd(x, kernel, compute_dtype, out_dtype):
    xc = x.astype(compute_dtype)
    kc = kernel.astype(compute_dtype)
    y = _dot_last(xc, kc).astype(out_dtype)  # [..., N]
    # dtypes ride along as zero-size arrays (residuals must be arrays).
    return y, (xc, kc, jnp.zeros((0,), x.dtype), jnp.zeros((0,), kernel.dtype))


def _mixed_dot_bwd(compute_dtype, out_dtype, res, g):
    xc, kc, x_proto, k_proto = res
    gc = g.astype(compute_dtype)  # [..., N]
    dx = lax.dot_general(gc, kc, (((gc.ndim - 1,), (1,)), ((), ())),
                         preferred_element_type=_F32)  # [..., K]
    n = gc.shape[-1]
    dk = lax.dot_general(_transpose_tokens(xc), gc.reshape(-1, n),
                         (((1,), (0,)), ((), ())), preferred_element_type=_F32)  # [K, N]
    return dx.astype(x_proto.dtype), dk.astype(k_proto.dtype)


mixed_dot.defvjp(_mixed_dot_fwd, _mixed_dot_bwd)


def _smallest_factor(n: int) -> int:
    """The least divisor of `n` above 1 (n itself for a prime; 1 for 1)."""
    for f in range(2, math.isqrt(n) + 1):
        if n % f == 0:
            return f
    return n


def _swap_minor(x: jax.Array) -> jax.Array:
    """[..., m, n] -> [..., n, m] as a kept copy (the split of `_transpose_tokens`).

    ``m`` is split as ``[m / f, f]`` by its least factor `f`; a prime ``m``
    gives a plain transpose, which XLA may fold (correct, only slower).
    """
    *lead, m, n = x.shape
    f = _smallest_factor(m)
    r = len(lead)
    x5 = x.reshape(*lead, m // f, f, n)  # [..., m1, m2, n]
    return jnp.transpose(x5, (*range(r), r + 2, r, r + 1)).reshape(*lead, n, m)  # [..., n, m]


def _batched(a, b, contract_b: int, batch: int):
    """a [*B, m, k] with b [*B, n, k] (contract_b=-1) or [*B, k, n] (-2): f32 sums."""
    dims = (((a.ndim - 1,), (b.ndim + contract_b,)), (tuple(range(batch)), tuple(range(batch))))
    return lax.dot_general(a, b, dims, preferred_element_type=_F32)


@partial(jax.custom_vjp, nondiff_argnums=(2,))
def batched_dot_nt(a: jax.Array, b: jax.Array, out_dtype) -> jax.Array:
    """``a [*B, m, k] @ b [*B, n, k]^T -> [*B, m, n]``, f32 sums; gradients in canonical form.

    Attention's score dot. The operands share a dtype (the compute dtype); the
    cotangent is cast to it before the backward dots, as flash kernels do.
    """
    return _batched(a, b, -1, a.ndim - 2).astype(out_dtype)


def _nt_fwd(a, b, out_dtype):
    return batched_dot_nt(a, b, out_dtype), (a, b)


def _nt_bwd(out_dtype, res, g):
    a, b = res
    gc = g.astype(a.dtype)  # [*B, m, n]
    nb = a.ndim - 2
    da = _batched(gc, b, -2, nb)  # [*B, m, k]
    db = _batched(_swap_minor(gc), a, -2, nb)  # [*B, n, k]
    return da.astype(a.dtype), db.astype(b.dtype)


batched_dot_nt.defvjp(_nt_fwd, _nt_bwd)


@partial(jax.custom_vjp, nondiff_argnums=(2,))
def batched_dot_nn(a: jax.Array, b: jax.Array, out_dtype) -> jax.Array:
    """``a [*B, m, k] @ b [*B, k, n] -> [*B, m, n]``, f32 sums; gradients in canonical form.

    Attention's probabilities-times-values dot (`batched_dot_nt`'s conventions).
    """
    return _batched(a, b, -2, a.ndim - 2).astype(out_dtype)


def _nn_fwd(a, b, out_dtype):
    return batched_dot_nn(a, b, out_dtype), (a, b)


def _nn_bwd(out_dtype, res, g):
    a, b = res
    gc = g.astype(b.dtype)  # [*B, m, n]
    nb = a.ndim - 2
    da = _batched(gc, b, -1, nb)  # [*B, m, k]
    db = _batched(_swap_minor(a).astype(b.dtype), gc, -2, nb)  # [*B, k, n]
    return da.astype(a.dtype), db.astype(b.dtype)


batched_dot_nn.defvjp(_nn_fwd, _nn_bwd)


def mixed_dot_reference(x: jax.Array, kernel: jax.Array, compute_dtype,
                        out_dtype) -> jax.Array:
    """`mixed_dot` in plain jnp: the cast operands multiplied in float32."""
    xc = x.astype(compute_dtype).astype(_F32)
    kc = kernel.astype(compute_dtype).astype(_F32)
    return jnp.dot(xc, kc, precision=lax.Precision.HIGHEST).astype(out_dtype)


def resolve_matmul(impl: str) -> str:
    """The matmul `impl` names on this backend: "auto" is "canonical" on the CPU, else "xla"."""
    if impl == "auto":
        return "canonical" if jax.default_backend() == "cpu" else "xla"
    if impl not in MATMUL_IMPLS:
        raise ValueError(f"matmul={impl!r} is not one of {MATMUL_IMPLS}")
    return impl
