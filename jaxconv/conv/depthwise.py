"""depthwise: shift-multiply-add for depthwise layers (groups = n_C, one filter per channel; any stride, dilation).

With one input channel per group, each output channel o = c·k + j (k = n_C'/n_C filters per
channel) sees input channel c only, and the convolution is f_H·f_W elementwise multiply-adds of
strided slices of X_pad:

    Z[m, h, w, o] = b[o] + Σ_{i, j} X_pad[m, h·s_H + i·d_H, w·s_W + j·d_W, c(o)] · W[i, j, 0, o]

No matmul (there is nothing to contract), no gathered patches; every product reads a pixel of its
window only, so NaN and Inf spread exactly as in the direct sum (no guard needed).
"""

from __future__ import annotations

from functools import partial

import jax
import jax.numpy as jnp
from jax import lax

from jaxconv.conv.geometry import Plan, acc_dtype, bias_grad, crop, out_size, pad_input, padded_size
from jaxconv.conv.buffers import on_buffers


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


def _tap_sums(x_pad, dZ, taps, n_out, s, d):
    """[Σ_{h, w} tap_ij(X_pad) ⊙ dZ for (i, j) in taps], each (m, n_C'): one variadic reduction over (h, w).

    One pass over X_pad and dZ computes every tap's products and keeps a running sum per tap
    and example, (m, n_C') apiece; the sum over m follows. One sum over (m, h, w) per tap, each
    of a strided slice, takes f_H·f_W passes and was slower (summing over X_pad's
    whole grid instead needs finite inputs). Benchmark: docs/benchmarks.md#depthwise-tap-sums
    """
    products = [_tap(x_pad, i, j, n_out, s, d) * dZ for i, j in taps]  # (m, n_H', n_W', n_C') each
    zeros = [jnp.zeros((), dZ.dtype)] * len(products)
    per_example = lax.reduce(products, zeros, lambda a, b: [p + q for p, q in zip(a, b)], (1, 2))
    return [t.sum(axis=0) for t in per_example]  # (n_C',) each


def backward(plan: Plan, res, dZ):
    """The transpose of `forward`, tap by tap. With P_ij = dZ placed back where tap_ij read it
    (rows i·d_H + h·s_H, columns j·d_W + w·s_W of X_pad's grid, zeros elsewhere: lax.pad with
    s − 1 interior zeros):

    - dW[i, j, 0] = Σ_{m, h, w} tap_ij(X_pad) ⊙ dZ                      (n_C', `_tap_sums`)
    - dX_pad += (dZ ⊙ W[i, j, 0]) placed like P_ij; dX = crop of dX_pad, summed over each channel's k filters.
    - db = Σ_{m, h, w} dZ.

    Every product reads a pixel of its tap's window only, so NaN and Inf reach exactly the
    entries of dW and dX the direct sum sends them to.
    """
    x, w, has_bias = res
    f_H, f_W, _, n_C_out = w.shape
    m, _, _, n_C = x.shape
    k = n_C_out // n_C
    s, d = plan.stride, plan.dilation
    acc = acc_dtype(x.dtype)
    n_H_pad, n_W_pad = padded_size(x.shape, plan.pads)
    n_out = dZ.shape[1:3]
    zero = jnp.zeros((), acc)
    span = ((n_out[0] - 1) * s[0] + 1, (n_out[1] - 1) * s[1] + 1)
    taps = [(i, j) for i in range(f_H) for j in range(f_W)]

    def placed(i, j, v):  # v (a multiple of dZ) placed as P_ij: (m, n_H_pad, n_W_pad, n_C'), a fusible pad
        top, left = i * d[0], j * d[1]
        rows, cols = (top, n_H_pad - top - span[0], s[0] - 1), (left, n_W_pad - left - span[1], s[1] - 1)
        return lax.pad(v, zero, ((0, 0, 0), rows, cols, (0, 0, 0)))

    def weight_grad(x, dZ):
        x_pad = _per_filter(pad_input(x, plan.pads), k).astype(acc)  # (m, n_H_pad, n_W_pad, n_C')
        return jnp.stack(_tap_sums(x_pad, dZ.astype(acc), taps, n_out, s, d)).reshape(w.shape).astype(w.dtype)

    # x and dZ are BatchNorm/ReLU6 chains in a network, and `_tap_sums` reads each once per tap: fused, XLA recomputed
    # the chains once per tap; as buffers they are computed once. The input gradient stays outside the cond: inside it,
    # the strided layer's backward was slower. Benchmark: docs/benchmarks.md#depthwise-buffers
    dW = on_buffers(weight_grad, (x, dZ), w)
    dZa = dZ.astype(acc)
    dX_pad = sum(placed(i, j, dZa * w[i, j, 0].astype(acc)) for i, j in taps)  # scaled before placing: fewer products
    if k > 1:
        dX_pad = dX_pad.reshape(m, n_H_pad, n_W_pad, n_C, k).sum(-1)
    dX = crop(dX_pad, plan.pads, x.shape).astype(x.dtype)
    db = bias_grad(dZ) if has_bias else None
    return dX, dW, db


conv.defvjp(_fwd, backward)
