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
  convolutions: XLA:CPU runs a convolution inside a cond's branch as a plain loop, ~40x slower
  (ResNet-20's step: 17.8 s against 0.44).
- `as_buffers(arrays, w)` returns the arrays themselves out of such a cond, for a convolution
  outside it to read. Each branch multiplies by 1: XLA inlines a cond whose branches only pass
  their operands through (and fuses across it again), then folds the multiplication away, so
  the branches copy nothing.
- `lax_conv` is `lax.conv_general_dilated` whose backward reads x and dZ through `as_buffers`.
"""

from __future__ import annotations

from functools import partial

import jax
from jax import lax

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


@partial(jax.custom_vjp, nondiff_argnums=(2,))
def lax_conv(x, w, params):
    """`lax.conv_general_dilated(x, w, **dict(params))`; its gradient is JAX's own (the same convolutions), computed
    from x and dZ as buffers (`as_buffers`). params: a tuple of (name, value) pairs, hashable."""
    return lax.conv_general_dilated(x, w, **dict(params))


def _lax_conv_fwd(x, w, params):
    return lax_conv(x, w, params), (x, w)


def _lax_conv_bwd(params, res, dZ):
    x, w = res
    x, dZ = as_buffers((x, dZ), w)
    return jax.vjp(lambda x, w: lax.conv_general_dilated(x, w, **dict(params)), x, w)[1](dZ)


lax_conv.defvjp(_lax_conv_fwd, _lax_conv_bwd)
