"""Operands handed to XLA as buffers in memory, not as expressions it may recompute (CPU).

XLA:CPU fuses cheap elementwise producers (BatchNorm, ReLU, residual adds and their
gradients) into every consumer of their result. Where a consumer reads its operand many
times, or in a slow order, the chain is recomputed there: nine times in depthwise's tap
sums, and once per element of the slow transposes that XLA puts before lax's weight
gradient (x to (n_C, n_H, n_W, m), n_C major and the batch minor). A `lax.cond`'s operands
are buffers, so:

- `on_buffers(fn, operands, w)` runs fn as both branches of a cond on whether the filter w
  is finite (`guard.all_finite`, a value known only at run time; the branches are the same
  function, so the result is fn(*operands) either way). For reductions and dots, not for
  convolutions: XLA:CPU runs a convolution inside a cond's branch as a plain loop, many times
  slower. Benchmark: docs/benchmarks.md#cond-conv
- `as_buffers(arrays, w)` returns the arrays themselves out of such a cond, for a convolution
  outside it to read. Each branch multiplies by 1: XLA inlines a cond whose branches only pass
  their operands through (and fuses across it again); this one it keeps, and then folds the
  multiplication away inside it, so the branches copy nothing (tests/test_conv_buffers.py
  checks the compiled program still holds the cond).
- `lax_conv` is `lax.conv_general_dilated` whose gradient reads x and dZ through `as_buffers`.
"""

from __future__ import annotations

from functools import partial

import jax
import jax.numpy as jnp
from jax import lax
from jax.custom_derivatives import SymbolicZero

from jaxconv.conv.guard import all_finite


def on_buffers(fn, operands, w):
    """fn(*operands), its operands handed over as buffers. The filter w is small and replicated when the batch
    is sharded, and `all_finite` keeps the cond a cond under vmap (as a select it would run fn twice)."""
    return lax.cond(all_finite(w), fn, fn, *operands)


def as_buffers(arrays, w):
    """The arrays, unchanged, as buffers: the outputs of a cond on w's finiteness whose branches return them."""

    def keep(*a):
        return tuple(t * 1 for t in a)  # not the identity: XLA inlines a cond whose branches only return their operands

    return lax.cond(all_finite(w), keep, keep, *arrays)


@partial(jax.custom_jvp, nondiff_argnums=(2,))
def lax_conv(x, w, params):
    """`lax.conv_general_dilated(x, w, **dict(params))`, differentiated into the same convolutions JAX derives, with
    x and dZ read as buffers by the weight and input gradients. params: a tuple of (name, value) pairs (hashable).

    A custom JVP, so forward mode (jax.jvp, jax.hessian) still works: the tangent is conv(ẋ, w) + conv(x_buf, ẇ),
    x_buf = x as a buffer (`as_buffers`, computed with the forward pass), passed through one more such cond. Reverse
    mode transposes that cond into the backward, where it hands the cotangent dZ over as a buffer before both
    gradient convolutions read it. A zero tangent (x the input images) drops its term.
    """
    return lax.conv_general_dilated(x, w, **dict(params))


def _lax_conv_jvp(params, primals, tangents):
    x, w = primals
    tx, tw = tangents
    conv = partial(lax.conv_general_dilated, **dict(params))
    terms = []
    if not isinstance(tx, SymbolicZero):
        terms.append(conv(tx, w))  # transposed: dX from dZ and w
    if not isinstance(tw, SymbolicZero):
        (x_buf,) = as_buffers((x,), w)
        terms.append(conv(x_buf, tw))  # transposed: dW from x and dZ, both buffers
    z = conv(x, w)
    if not terms:  # neither x nor w carries a tangent
        return z, jnp.zeros_like(z)
    (t,) = as_buffers((sum(terms[1:], terms[0]),), w)  # linear; transposed, it buffers dZ
    return z, t


lax_conv.defjvp(_lax_conv_jvp, symbolic_zeros=True)
