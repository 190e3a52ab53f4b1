"""Transposed convolution: conv2d's input gradient, as an op of its own.

conv2d(u, w) with stride s, padding p, dilation d maps u (m, n_H', n_W', n_C')
to (m, n_H, n_W, n_C); conv_transpose2d(x, w) maps x (m, n_H, n_W, n_C) back to
(m, n_H', n_W', n_C') by the transpose of that linear map: exactly the dX the
backward of im2col computes from dZ = x (col2im of x · Wᵀ). Its own backward,
derived by hand: dx = conv2d(dy, w) (the map itself), dw = P(dy)ᵀ · x (im2col's
dW with the roles of input and output gradient swapped), db = Σ dy.
"""

from __future__ import annotations

from functools import partial

import jax
import jax.numpy as jnp
from jax import lax

from jaxconv import _args
from jaxconv._args import LAYOUT
from jaxconv.conv import im2col
from jaxconv.conv.geometry import Plan, bias_grad, check_filter, lax_sum_dtype, pad_input


def transpose_geometry(x_shape, w_shape, *, stride=1, padding=0, output_padding=0, dilation=1, groups=1, op="conv_transpose2d"):
    """Check the arguments; return (plan, extra, out_shape).

    x_shape: (m, n_H, n_W, n_C); w_shape: (f_H, f_W, n_C'/groups, n_C). out_shape: (m, n_H', n_W', n_C') with
    n' = (n − 1)·s − p_top − p_bottom + d(f − 1) + output_padding + 1. plan: the conv2d whose input gradient
    this is, on an input of n' − extra rows/columns (its bottom/right padding less the output padding,
    extra = what output padding exceeds that padding by: rows no window reads, which stay 0 + b).
    """
    s = _args.pair(stride, "stride", op, minimum=1)
    d = _args.pair(dilation, "dilation", op, minimum=1)
    op_pad = _args.pair(output_padding, "output_padding", op, minimum=0)
    check_filter(x_shape, w_shape, groups, op, transposed=True)
    m, n_H, n_W, _ = x_shape
    f_H, f_W, n_Cg_out, _ = w_shape
    for axis, (o, s_i, d_i) in enumerate(zip(op_pad, s, d)):
        if o >= max(s_i, d_i):
            raise ValueError(
                f"{op}: `output_padding` (={op_pad}) must be smaller than the stride or the dilation along each axis, "
                f"got {o} >= max(stride, dilation) = {max(s_i, d_i)} along axis {axis}; it only picks among the output sizes that stride to n."
            )
    if isinstance(padding, str):
        raise ValueError(f"{op}: `padding` must be an int, a pair (p_H, p_W) or ((top, bottom), (left, right)), got {padding!r}; 'SAME'/'VALID' name conv2d outputs, not transposed ones.")
    pads = _args.padding_pairs(padding, op, n=(n_H, n_W), f=(f_H, f_W), s=s, d=d)
    n_out = [(n - 1) * s_i - lo - hi + d_i * (f_i - 1) + o + 1 for n, s_i, (lo, hi), d_i, f_i, o in zip((n_H, n_W), s, pads, d, (f_H, f_W), op_pad)]
    if min(n_out) < 1:
        raise ValueError(f"{op}: the output would be {tuple(n_out)} pixels, (n − 1)·s − p_top − p_bottom + d(f − 1) + output_padding + 1; use less padding.")
    extra = tuple(max(o - hi, 0) for o, (_, hi) in zip(op_pad, pads))
    core_pads = tuple((lo, hi - o + e) for (lo, hi), o, e in zip(pads, op_pad, extra))
    plan = Plan(core_pads, s, d, groups)
    return plan, extra, (m, *n_out, n_Cg_out * groups)


def _core_shape(m, extra, out_shape):
    """(m, n_H' − extra_H, n_W' − extra_W, n_C'): the output without the `extra` rows and columns no window reads."""
    return (m, out_shape[1] - extra[0], out_shape[2] - extra[1], out_shape[3])


def _forward(x, w, b, plan, extra, out_shape):
    """y = col2im(x · Wᵀ) (im2col's input gradient with dZ = x), zero rows/columns for `extra`, + b."""
    core = _core_shape(x.shape[0], extra, out_shape)
    pad_shape = (core[0], core[1] + sum(plan.pads[0]), core[2] + sum(plan.pads[1]), core[3])
    y = im2col.input_grad(x, w, plan, pad_shape, core)  # (m, n_H' − extra_H, n_W' − extra_W, n_C')
    y = jnp.pad(y, ((0, 0), (0, extra[0]), (0, extra[1]), (0, 0)))
    return y if b is None else y + b


@partial(jax.custom_vjp, nondiff_argnums=(3, 4, 5))
def hand(x, w, b, plan: Plan, extra, out_shape):
    """Hand-rolled transposed convolution with its hand-derived backward: (m, n_H, n_W, n_C) -> (m, n_H', n_W', n_C')."""
    return _forward(x, w, b, plan, extra, out_shape)


def _fwd(x, w, b, plan, extra, out_shape):
    return _forward(x, w, b, plan, extra, out_shape), (x, w, b is not None)


def _bwd(plan, extra, out_shape, res, dy):
    """dx = conv2d(dy, w) (the map y is the transpose of); dW = P(dy)ᵀ · x; db = Σ dy."""
    x, w, has_bias = res
    core = dy[:, : out_shape[1] - extra[0], : out_shape[2] - extra[1]]  # the extra rows hear from nothing
    dy_pad = pad_input(core, plan.pads)
    dx = im2col.forward(core, w, None, plan)[0]  # (m, n_H, n_W, n_C)
    dw = im2col.weight_grad(dy_pad, x, w.shape, plan)  # (f_H, f_W, n_C'/G, n_C)
    db = bias_grad(dy) if has_bias else None
    return dx, dw, db


hand.defvjp(_fwd, _bwd)


def lax_transpose(x, w, b, plan: Plan, extra, out_shape):
    """The same on lax: conv_general_dilated of x dilated by s (lhs_dilation) with the flipped, in/out-swapped filter."""
    f_H, f_W, n_Cg_out, n_C = w.shape
    G = plan.groups
    w_t = w.reshape(f_H, f_W, n_Cg_out, G, n_C // G).transpose(0, 1, 4, 3, 2).reshape(f_H, f_W, n_C // G, G * n_Cg_out)
    w_t = w_t[::-1, ::-1]  # rot180
    pads = [(d_i * (f_i - 1) - lo, d_i * (f_i - 1) - hi + e) for (lo, hi), d_i, f_i, e in zip(plan.pads, plan.dilation, (f_H, f_W), extra)]
    acc = lax_sum_dtype(x.dtype)  # float32 for bfloat16/float16
    y = lax.conv_general_dilated(
        x, w_t, window_strides=(1, 1), padding=pads, lhs_dilation=plan.stride, rhs_dilation=plan.dilation,
        dimension_numbers=LAYOUT, feature_group_count=G, preferred_element_type=acc,
    )
    y = y if b is None else y + b
    return y if acc is None else y.astype(x.dtype)
