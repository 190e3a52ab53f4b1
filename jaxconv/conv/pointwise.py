"""pointwise: 1x1 convolutions (one group, any stride and padding) as subsample + one matmul.

A 1x1 filter reads one pixel per output: Z[m, h, w] = X_pad[m, h·s_H, w·s_W] · W[0, 0] + b,
so the convolution is the strided subsample of X_pad (the pixels a stride skips are never
read) times the (n_C, n_C') matrix. The backward is two matmuls and the subsample transposed
(zeros between the strided pixels). Only window pixels are read: NaN and Inf spread exactly.
"""

from __future__ import annotations

from functools import partial

import jax
import jax.numpy as jnp
from jax import lax

from jaxconv.conv.geometry import Plan, acc_dtype, bias_grad, crop, out_size, pad_input


def _subsample(x_pad, n_out, s):
    """X_pad[:, h·s_H, w·s_W, :] for every output position: (m, n_H', n_W', n_C)."""
    m, _, _, n_C = x_pad.shape
    limit = (m, (n_out[0] - 1) * s[0] + 1, (n_out[1] - 1) * s[1] + 1, n_C)
    return lax.slice(x_pad, (0, 0, 0, 0), limit, (1, s[0], s[1], 1))


def forward(x, w, b, plan: Plan):
    """Z = subsample(X_pad) · W[0, 0] (+ b): x (m, n_H, n_W, n_C), w (1, 1, n_C, n_C') -> (m, n_H', n_W', n_C')."""
    x_pad = pad_input(x, plan.pads)
    n_out = out_size(x_pad.shape[1:3], (1, 1), plan.stride, (1, 1))
    xs = _subsample(x_pad, n_out, plan.stride)  # (m, n_H', n_W', n_C)
    z = jnp.dot(xs, w[0, 0], preferred_element_type=acc_dtype(x.dtype)).astype(x.dtype)
    return z if b is None else z + b


@partial(jax.custom_vjp, nondiff_argnums=(3,))
def conv(x, w, b, plan: Plan):
    """1x1 convolution (one group, any stride/padding) with its hand-derived backward (`backward`).

    x: (m, n_H, n_W, n_C); w: (1, 1, n_C, n_C'); b: (n_C',) or None. Returns (m, n_H', n_W', n_C').
    """
    return forward(x, w, b, plan)


def _fwd(x, w, b, plan):
    return forward(x, w, b, plan), (x, w, b is not None)


def backward(plan: Plan, res, dZ):
    """dW = Xsᵀ · dZ; dXs = dZ · Wᵀ placed back at the strided pixels (s − 1 zeros between), cropped; db = Σ dZ.

    Xs = subsample(X_pad) flattened to (m·n_H'·n_W', n_C); dZ flattened alike to (·, n_C').
    """
    x, w, has_bias = res
    s = plan.stride
    acc = acc_dtype(x.dtype)
    x_pad = pad_input(x, plan.pads)
    n_H_pad, n_W_pad = x_pad.shape[1:3]
    n_out = dZ.shape[1:3]
    xs = _subsample(x_pad, n_out, s)
    n_C, n_C_out = w.shape[2:]
    dW = jnp.dot(xs.reshape(-1, n_C).T, dZ.reshape(-1, n_C_out), preferred_element_type=acc).reshape(w.shape)
    dXs = jnp.dot(dZ, w[0, 0].T, preferred_element_type=acc)  # (m, n_H', n_W', n_C)
    span = ((n_out[0] - 1) * s[0] + 1, (n_out[1] - 1) * s[1] + 1)
    dX_pad = lax.pad(dXs, jnp.zeros((), acc), ((0, 0, 0), (0, n_H_pad - span[0], s[0] - 1), (0, n_W_pad - span[1], s[1] - 1), (0, 0, 0)))
    dX = crop(dX_pad, plan.pads, x.shape).astype(x.dtype)
    db = bias_grad(dZ) if has_bias else None
    return dX, dW.astype(w.dtype), db


conv.defvjp(_fwd, backward)
