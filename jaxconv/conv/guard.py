"""Non-finite inputs take im2col: the fast algorithms would spread NaN and Inf beyond their windows.

rows multiplies by a banded matrix whose zeros meet every pixel of a row
(0 · NaN = NaN, 0 · Inf = NaN), and taps computes products at positions it
later drops but shift-adds past them; both would mark outputs whose window
never saw the bad pixel. im2col's patches hold only window pixels, so it gives
the direct sum's (and lax's) NaN/Inf pattern. `guarded` runs the fast algorithm
when its inputs are finite and im2col otherwise, forward (x, w) and backward
(x, w, dZ), with `lax.cond`. Under `vmap` (per-example gradients, ensembles) the
check is taken over the whole batch (`_finite`'s batching rule), so the cond stays a
cond instead of a select that would run both algorithms: one non-finite example
sends the whole batch to im2col, which is exact for the finite ones too.
"""

from __future__ import annotations

from functools import partial

import jax
import jax.numpy as jnp
from jax import lax
from jax.custom_batching import custom_vmap

from jaxconv.conv import im2col
from jaxconv.conv.geometry import Plan


def all_finite(*arrays):
    """True when every entry is finite. A sum is non-finite if any term is (NaN, ±Inf, or an overflow, which
    only sends a finite input to im2col: still exact), and one reduction is the cheapest pass over the data."""
    return _finite(sum(jnp.sum(a, dtype=jnp.float32) for a in arrays if a is not None))


@custom_vmap
def _finite(total):
    return jnp.isfinite(total)


@_finite.def_vmap
def _finite_batched(axis_size, in_batched, total):
    return jnp.all(jnp.isfinite(total)), False  # one answer for the whole batch: the cond stays a cond


@partial(jax.custom_vjp, nondiff_argnums=(3, 4))
def guarded(x, w, b, fast, plan: Plan):
    """fast(x, w, b, plan) when x and w are finite, else im2col: (m, n_H, n_W, n_C) -> (m, n_H', n_W', n_C')."""
    return _forward(x, w, b, fast, plan, all_finite(x, w))


def _im2col_plan(plan):
    return plan._replace(block=None)


def _forward(x, w, b, fast, plan, finite):
    return lax.cond(finite, lambda: fast(x, w, b, plan), lambda: im2col.conv(x, w, b, _im2col_plan(plan)))


def _fwd(x, w, b, fast, plan):
    finite = all_finite(x, w)
    return _forward(x, w, b, fast, plan, finite), (x, w, b, finite)


def _bwd(fast, plan, res, dZ):
    """The backward of the algorithm the inputs allow: fast's when x, w and dZ are finite, else im2col's.

    x and w were checked by the forward (its answer is a residual): only dZ is summed here.
    """
    x, w, b, finite = res

    def vjp(conv, plan):  # the forward's value is unused, and XLA drops it
        return lambda: jax.vjp(lambda x, w, b: conv(x, w, b, plan), x, w, b)[1](dZ)

    return lax.cond(finite & all_finite(dZ), vjp(fast, plan), vjp(im2col.conv, _im2col_plan(plan)))


guarded.defvjp(_fwd, _bwd)
