"""Non-finite inputs take im2col: the fast algorithms would spread NaN and Inf beyond their windows.

rows multiplies by a banded matrix whose zeros meet every pixel of a row
(0 · NaN = NaN, 0 · Inf = NaN), and taps computes products at positions it
later drops but shift-adds past them; both would mark outputs whose window
never saw the bad pixel. im2col's patches hold only window pixels, so it gives
the direct sum's (and lax's) NaN/Inf pattern. `guarded` runs the fast algorithm
when its inputs are finite and im2col otherwise, forward (x, w) and backward
(x, w, dZ), with `lax.cond`; the im2col branch runs over strided chunks of at
most 16 examples (`exact`, `exact_grads`; the whole batch when its patches are
small, which compiles faster: `_chunk_size`), so that it adds little to the
compiled step's memory and moves no data between the devices of a sharded
batch. It builds im2col's patches with one gather and differentiates it with
`jax.vjp` (`_im2col`): the same products as im2col.py's forward and
hand-derived backward, for a branch that every guarded step compiles and finite
data never runs, at a fraction of the compile time. Under `vmap` (per-example gradients, ensembles) the check is taken over
the whole batch (`_finite`'s batching rule), so the cond stays a cond instead
of a select that would run both algorithms: one non-finite example sends the
whole batch to im2col, which is exact for the finite ones too.
"""

from __future__ import annotations

import math
from functools import partial

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax
from jax.custom_batching import custom_vmap

from jaxconv import chunks
from jaxconv.conv.geometry import Plan, acc_dtype, bias_grad, out_size, pad_input, patch_elements
from jaxconv.conv import policy
from jaxconv.conv.shard import same_varying_axes


def all_finite(*arrays):
    """True when every entry is finite. A sum is non-finite if any term is (NaN, ±Inf, or an overflow, which
    only sends a finite input to im2col: still exact), and one reduction is the cheapest pass over the data.
    The answer is a branch's predicate, never differentiated (stop_gradient): without it, differentiating a
    backward that holds it (second-order gradients) failed in `_finite`'s custom vmap."""
    return _finite(sum(jnp.sum(lax.stop_gradient(a), dtype=jnp.float32) for a in arrays if a is not None))


@custom_vmap
def _finite(total):
    return jnp.isfinite(total)


@_finite.def_vmap
def _finite_batched(axis_size, in_batched, total):
    return jnp.all(jnp.isfinite(total)), False  # one answer for the whole batch: the cond stays a cond


def _chunk_size(x_shape, w_shape, plan: Plan):
    """Examples per chunk of the im2col branch: the whole batch while its patches (counted as float32)
    fit TUNED["guard_whole_batch_bytes"] (one chunk: XLA drops the loop, and the branch compiles in
    less time), else gcd(m, 16), a power of two: a whole number of examples per device on 1, 2,
    4, 8 or 16 devices."""
    m = x_shape[0]
    patch_bytes = 4 * patch_elements(x_shape, w_shape, plan.pads, plan.stride, plan.dilation)
    return m if patch_bytes <= policy.TUNED["guard_whole_batch_bytes"] else math.gcd(m, 16)


def _im2col(x, w, b, plan: Plan):
    """im2col's Z = P · W + b (one group, as rows and taps), its patches P made by one gather:

        P[m, h, w, i, j, c] = X_pad[m, h·s_H + i·d_H, w·s_W + j·d_W, c]

    the values of `im2col.patches` (f_H·f_W slices and a concatenate), but one op for XLA to
    compile: this branch is compiled into every guarded step and never runs on finite data, and
    the gather (and its autodiff, below) compiles in a fraction of the time the slices (and the
    hand-derived backward) take. Benchmark: docs/benchmarks.md#guard-gather
    """
    f_H, f_W = w.shape[:2]
    x_pad = pad_input(x, plan.pads)
    (s_H, s_W), (d_H, d_W) = plan.stride, plan.dilation
    n_H_out, n_W_out = out_size(x_pad.shape[1:3], (f_H, f_W), plan.stride, plan.dilation)
    rows = np.arange(n_H_out)[:, None] * s_H + np.arange(f_H)[None, :] * d_H  # (n_H', f_H)
    cols = np.arange(n_W_out)[:, None] * s_W + np.arange(f_W)[None, :] * d_W  # (n_W', f_W)
    P = x_pad[:, rows[:, None, :, None], cols[None, :, None, :], :]  # (m, n_H', n_W', f_H, f_W, n_C)
    z = jnp.einsum("mhwijc,ijco->mhwo", P, w, preferred_element_type=acc_dtype(x.dtype))
    if b is not None:
        z = z + b
    return z.astype(x.dtype)


def exact(x, w, b, plan: Plan):
    """im2col over strided chunks of at most 16 examples (`lax.map`), or over the whole batch while its patches
    are small (`_chunk_size`): the forward that non-finite inputs take.

    Chunks keep this branch's working memory to a few images' patches. Finite
    inputs never run it, but XLA sizes the step's temporary buffer for both
    branches of a cond; a whole-batch im2col there (LeNet-5 at batch 512) pushed
    that buffer past glibc's mmap threshold, and every step then page-faulted it
    in afresh, which slowed the step. Benchmark: docs/benchmarks.md#guard-chunk
    """
    z = lax.map(lambda x_c: _im2col(x_c, w, b, plan), chunks.split(x, _chunk_size(x.shape, w.shape, plan)))
    return chunks.merge(z)


def exact_grads(x, w, dZ, plan: Plan):
    """(dX, dW) of the gathered im2col over the chunks of `exact`, by `jax.vjp` (the gather's transpose adds each
    patch entry's gradient back to its own pixel only), dW summed over the chunks: the backward non-finite
    inputs take."""

    def chunk(dW, x_dZ):
        x_c, dZ_c = x_dZ  # (K, n_H, n_W, n_C), (K, n_H', n_W', n_C')
        dX_c, dW_c = jax.vjp(lambda x_c, w: _im2col(x_c, w, None, plan), x_c, w)[1](dZ_c)
        return dW + dW_c.astype(dW.dtype), dX_c

    K = _chunk_size(x.shape, w.shape, plan)
    zero = same_varying_axes(jnp.zeros(w.shape, acc_dtype(w.dtype)), w)[0]  # under shard_map, typed as varying as w
    dW, dX = lax.scan(chunk, zero, (chunks.split(x, K), chunks.split(dZ, K)))
    return chunks.merge(dX), dW.astype(w.dtype)


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
    db32 = bias_grad(dZ, dtype=acc_dtype(dZ.dtype))  # (n_C',), not yet rounded to dZ's dtype
    fast_grads = lambda: jax.vjp(lambda x, w: fast(x, w, None, plan), x, w)[1](dZ)  # the forward's value is unused: XLA drops it
    dX, dW = lax.cond(finite & all_finite(db32), fast_grads, lambda: exact_grads(x, w, dZ, plan))
    return dX, dW, db32.astype(dZ.dtype) if has_bias else None


guarded.defvjp(_fwd, _bwd)
