"""Non-finite inputs take im2col: the fast algorithms would spread NaN and Inf beyond their windows.

rows multiplies by a banded matrix whose zeros meet every pixel of a row
(0 · NaN = NaN, 0 · Inf = NaN), and taps computes products at positions it
later drops but shift-adds past them; both would mark outputs whose window
never saw the bad pixel. im2col's patches hold only window pixels, so it gives
the direct sum's (and lax's) NaN/Inf pattern. `guarded` runs the fast algorithm
when its inputs are finite and im2col otherwise, forward (x, w) and backward
(x, w, dZ), with `lax.cond`; the im2col branch runs one image at a time
(`exact`, `exact_grads`) so that it adds little to the compiled step's memory. Under `vmap` (per-example gradients, ensembles) the
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
from jaxconv.conv.geometry import Plan, acc_dtype, pad_input


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


def _one_image(plan):
    return plan._replace(block=None)


def exact(x, w, b, plan: Plan):
    """im2col, one image at a time (`lax.map`): the forward that non-finite inputs take.

    One image at a time keeps this branch's working memory to one image's
    patches. Finite inputs never run it, but XLA sizes the step's temporary
    buffer for both branches of a cond; a whole-batch im2col there (LeNet-5 at
    batch 512) pushed that buffer past glibc's mmap threshold, and every step
    then page-faulted it in afresh (4,454 faults, 1.28x the unguarded step's time).
    """
    plan = _one_image(plan)
    return lax.map(lambda x_i: im2col.forward(x_i[None], w, b, plan)[0][0], x)


def exact_grads(x, w, dZ, plan: Plan):
    """(dX, dW) of im2col's hand-derived backward, one image at a time, dW summed over them: the backward non-finite inputs take."""
    plan = _one_image(plan)

    def one(dW, x_dZ):
        x_i, dZ_i = x_dZ[0][None], x_dZ[1][None]  # (1, n_H, n_W, n_C), (1, n_H', n_W', n_C')
        x_pad = pad_input(x_i, plan.pads)
        dX_i = im2col.input_grad(dZ_i, w, plan, x_pad.shape, x_i.shape)
        return dW + im2col.weight_grad(x_pad, dZ_i, w.shape, plan).astype(dW.dtype), dX_i[0]

    dW, dX = lax.scan(one, jnp.zeros(w.shape, acc_dtype(w.dtype)), (x, dZ))
    return dX, dW.astype(w.dtype)


@partial(jax.custom_vjp, nondiff_argnums=(3, 4))
def guarded(x, w, b, fast, plan: Plan):
    """fast(x, w, b, plan) when x and w are finite, else im2col: (m, n_H, n_W, n_C) -> (m, n_H', n_W', n_C')."""
    return _forward(x, w, b, fast, plan, all_finite(x, w))


def _forward(x, w, b, fast, plan, finite):
    return lax.cond(finite, lambda: fast(x, w, b, plan), lambda: exact(x, w, b, plan))


def _fwd(x, w, b, fast, plan):
    finite = all_finite(x, w)
    return _forward(x, w, b, fast, plan, finite), (x, w, b is not None, finite)


def _bwd(fast, plan, res, dZ):
    """The backward of the algorithm the inputs allow: fast's when x, w and dZ are finite, else im2col's.

    x and w were checked by the forward (its answer is a residual); dZ is checked
    through db = Σ dZ, which both algorithms share and so is summed outside the
    cond (a non-finite dZ makes it non-finite): no extra pass over dZ.
    """
    x, w, has_bias, finite = res
    db32 = dZ.sum(axis=(0, 1, 2), dtype=acc_dtype(dZ.dtype))  # (n_C',): db[o] = Σ_{m,h,w} dZ[m, h, w, o]
    fast_grads = lambda: jax.vjp(lambda x, w: fast(x, w, None, plan), x, w)[1](dZ)  # the forward's value is unused: XLA drops it
    dX, dW = lax.cond(finite & all_finite(db32), fast_grads, lambda: exact_grads(x, w, dZ, plan))
    return dX, dW, db32.astype(dZ.dtype) if has_bias else None


guarded.defvjp(_fwd, _bwd)
