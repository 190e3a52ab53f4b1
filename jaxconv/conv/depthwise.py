"""depthwise: shift-multiply-add for depthwise layers (groups = n_C, one filter per channel; any stride, dilation).

With one input channel per group, each output channel o = c·k + j (k = n_C'/n_C filters per
channel) sees input channel c only, and the convolution is f_H·f_W elementwise multiply-adds of
strided slices of X_pad:

    Z[m, h, w, o] = b[o] + Σ_{i, j} X_pad[m, h·s_H + i·d_H, w·s_W + j·d_W, c(o)] · W[i, j, 0, o]

No matmul (there is nothing to contract), no gathered patches; every product reads a pixel of its
window only, so NaN and Inf spread exactly as in the direct sum (no guard needed) — except the
stride-1 weight gradient's fast form, which sums over the whole padded grid and so runs only for
finite inputs (`backward`).
"""

from __future__ import annotations

from functools import partial

import jax
import jax.numpy as jnp
from jax import lax

from jaxconv.conv.geometry import Plan, acc_dtype, crop, out_size, pad_input
from jaxconv.conv.guard import all_finite


def _tap(x_pad, i, j, n_out, s, d):
    """X_pad[:, h·s_H + i·d_H, w·s_W + j·d_W, :] for all output positions (h, w): (m, n_H', n_W', n_C)."""
    m, _, _, n_C = x_pad.shape
    start = (0, i * d[0], j * d[1], 0)
    limit = (m, start[1] + (n_out[0] - 1) * s[0] + 1, start[2] + (n_out[1] - 1) * s[1] + 1, n_C)
    return lax.slice(x_pad, start, limit, (1, s[0], s[1], 1))


def _per_filter(x, k):
    """x with each channel repeated for its k filters: (m, n_H, n_W, n_C) -> (m, n_H, n_W, n_C·k)."""
    return x if k == 1 else jnp.repeat(x, k, axis=-1)


def forward(x, w, b, plan: Plan):
    """Z = Σ_{i,j} tap_ij(X_pad) ⊙ W[i, j, 0] (+ b): x (m, n_H, n_W, n_C), w (f_H, f_W, 1, n_C') -> (m, n_H', n_W', n_C')."""
    f_H, f_W, _, n_C_out = w.shape
    k = n_C_out // x.shape[3]
    x_pad = _per_filter(pad_input(x, plan.pads), k)  # (m, n_H_pad, n_W_pad, n_C')
    n_out = out_size(x_pad.shape[1:3], (f_H, f_W), plan.stride, plan.dilation)
    acc = acc_dtype(x.dtype)
    z = None
    for i in range(f_H):
        for j in range(f_W):
            term = _tap(x_pad, i, j, n_out, plan.stride, plan.dilation).astype(acc) * w[i, j, 0].astype(acc)
            z = term if z is None else z + term
    z = z.astype(x.dtype)
    return z if b is None else z + b


@partial(jax.custom_vjp, nondiff_argnums=(3,))
def conv(x, w, b, plan: Plan):
    """Depthwise convolution (groups = n_C) with its hand-derived backward (`backward`).

    x: (m, n_H, n_W, n_C); w: (f_H, f_W, 1, n_C'), n_C' a multiple of n_C; b: (n_C',) or None.
    Returns (m, n_H', n_W', n_C').
    """
    return forward(x, w, b, plan)


def _fwd(x, w, b, plan):
    return forward(x, w, b, plan), (x, w, b is not None)


def backward(plan: Plan, res, dZ):
    """The transpose of `forward`, tap by tap. With P_ij = dZ placed back where tap_ij read it
    (rows i·d_H + h·s_H, columns j·d_W + w·s_W of X_pad's grid, zeros elsewhere: lax.pad with
    s − 1 interior zeros):

    - dW[i, j, 0] = Σ_{m, h, w} tap_ij(X_pad) ⊙ dZ = Σ over X_pad's grid of X_pad ⊙ P_ij   (n_C',)
    - dX_pad += (dZ ⊙ W[i, j, 0]) placed like P_ij; dX = crop of dX_pad, summed over each channel's k filters.
    - db = Σ_{m, h, w} dZ.

    With stride 1, dW sums over the whole grid rather than over the tap's slice when X is
    finite: the same products plus zeros, and XLA:CPU reduces two aligned arrays faster than
    a slice (forward+backward of the (128, 32, 32, 32) layer: 71.9 -> 20.5 ms; of (128, 16, 16,
    144): 72.7 -> 25.5). With a NaN or Inf in X, 0 · NaN would mark dW entries whose taps never
    read it, so then (`lax.cond`) dW sums the tap's slice, exactly. Strided layers always sum
    the slice: there P_ij is mostly interior zeros (stride 2: 105.7 ms against 73.3).
    """
    x, w, has_bias = res
    f_H, f_W, _, n_C_out = w.shape
    m, _, _, n_C = x.shape
    k = n_C_out // n_C
    s, d = plan.stride, plan.dilation
    acc = acc_dtype(x.dtype)
    x_pad = _per_filter(pad_input(x, plan.pads), k)
    n_H_pad, n_W_pad = x_pad.shape[1:3]
    n_out = dZ.shape[1:3]
    dZa = dZ.astype(acc)
    dX_pad = None
    zero = jnp.zeros((), acc)
    x_acc = x_pad.astype(acc)
    span = ((n_out[0] - 1) * s[0] + 1, (n_out[1] - 1) * s[1] + 1)

    def placed(i, j, v):  # v (dZ or a multiple of it) placed as P_ij: (m, n_H_pad, n_W_pad, n_C'), a fusible pad
        top, left = i * d[0], j * d[1]
        rows, cols = (top, n_H_pad - top - span[0], s[0] - 1), (left, n_W_pad - left - span[1], s[1] - 1)
        return lax.pad(v, zero, ((0, 0, 0), rows, cols, (0, 0, 0)))

    taps = [(i, j) for i in range(f_H) for j in range(f_W)]
    sliced = lambda i, j: jnp.sum(_tap(x_acc, i, j, n_out, s, d) * dZa, axis=(0, 1, 2))  # noqa: E731  (n_C',)
    dW = []
    for i, j in taps:
        if s != (1, 1):  # with a stride, P_ij is mostly interior zeros: the slice costs less than the whole grid
            dW.append(sliced(i, j))
        term = placed(i, j, dZa * w[i, j, 0].astype(acc))  # scaled before placing: fewer products with a stride
        dX_pad = term if dX_pad is None else dX_pad + term
    if s == (1, 1):
        grid = lambda: [jnp.sum(x_acc * placed(i, j, dZa), axis=(0, 1, 2)) for i, j in taps]  # noqa: E731
        dW = lax.cond(all_finite(x), grid, lambda: [sliced(i, j) for i, j in taps])
    if k > 1:
        dX_pad = dX_pad.reshape(m, n_H_pad, n_W_pad, n_C, k).sum(-1)
    dX = crop(dX_pad, plan.pads, x.shape).astype(x.dtype)
    dW = jnp.stack(dW).reshape(w.shape).astype(w.dtype)
    db = dZ.sum(axis=(0, 1, 2), dtype=acc).astype(dZ.dtype) if has_bias else None
    return dX, dW, db


conv.defvjp(_fwd, backward)
