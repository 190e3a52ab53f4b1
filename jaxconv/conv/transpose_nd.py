"""Transposed convolution over N spatial axes: conv_transpose1d and conv_transpose3d (PyTorch's semantics).

As `transpose.py` in 2-D: the transposed op with filter w IS the input gradient
of the convolution with w (same stride, padding, dilation, groups). impl="hand"
computes it as `im2col_nd`'s hand-derived dX (col2im of x · Wᵀ); its own
backward, derived by hand: dx = conv(dy, w) (the map it transposes),
dW = P(dy)ᵀ · x (im2col's dW with input and output gradient swapped), db = Σ dy.
"""

from __future__ import annotations

from functools import partial

import jax
import jax.numpy as jnp
from jax import lax

from jaxconv import _args
from jaxconv._args import LAYOUTS
from jaxconv._args import check_rank_nd as check_rank
from jaxconv.conv import im2col_nd
from jaxconv.conv.geometry import bias_grad, check_filter, lax_sum_dtype
from jaxconv.conv.im2col_nd import PlanND, pad_input
from jaxconv.conv.nd import check_bias_and_dtype
from jaxconv.conv.shard import same_varying_axes

IMPLS = ("auto", "lax", "hand")


def transpose_geometry(x_shape, w_shape, *, stride=1, padding=0, output_padding=0, dilation=1, groups=1, op):
    """Check the arguments; return (plan, extra, out_shape).

    x_shape (m, *n, n_C); w_shape (*f, n_C'/groups, n_C). out_shape (m, *n', n_C') with
    n' = (n − 1)·s − p_lo − p_hi + d(f − 1) + output_padding + 1 per axis. plan: the convolution whose input
    gradient this is, on an input of n' − extra entries (its high padding less the output padding; extra =
    what output padding exceeds that padding by: entries no window reads, which stay 0 + b).
    """
    N = len(x_shape) - 2
    s = _args.ntuple(stride, "stride", op, n=N, minimum=1)
    d = _args.ntuple(dilation, "dilation", op, n=N, minimum=1)
    op_pad = _args.ntuple(output_padding, "output_padding", op, n=N, minimum=0)
    check_filter(x_shape, w_shape, groups, op, transposed=True)
    for axis, (o, s_i, d_i) in enumerate(zip(op_pad, s, d)):
        if o >= max(s_i, d_i):
            raise ValueError(
                f"{op}: `output_padding` (={op_pad}) must be smaller than the stride or the dilation along each axis, got {o} >= "
                f"max(stride, dilation) = {max(s_i, d_i)} along axis {axis}; it only picks among the output sizes that stride to n."
            )
    if isinstance(padding, str):
        raise ValueError(f"{op}: `padding` must be an int or one int or (lo, hi) pair per axis, got {padding!r}; 'SAME'/'VALID' name convolution outputs, not transposed ones.")
    n, f = tuple(x_shape[1:-1]), tuple(w_shape[:-2])
    pads = _args.padding_tuples(padding, op, n=n, f=f, s=s, d=d)
    n_out = tuple((n_i - 1) * s_i - lo - hi + d_i * (f_i - 1) + o + 1 for n_i, s_i, (lo, hi), d_i, f_i, o in zip(n, s, pads, d, f, op_pad))
    if min(n_out) < 1:
        raise ValueError(f"{op}: the output would be {n_out} entries, (n − 1)·s − p_lo − p_hi + d(f − 1) + output_padding + 1; use less padding.")
    extra = tuple(max(o - hi, 0) for o, (_, hi) in zip(op_pad, pads))
    core_pads = tuple((lo, hi - o + e) for (lo, hi), o, e in zip(pads, op_pad, extra))
    return PlanND(core_pads, s, d, groups), extra, (x_shape[0], *n_out, w_shape[-2] * groups)


def _core_shape(extra, out_shape):
    """out_shape without the `extra` entries no window reads, at the high end of each axis."""
    return (out_shape[0], *(n - e for n, e in zip(out_shape[1:-1], extra)), out_shape[-1])


def _forward(x, w, b, plan, extra, out_shape):
    """y = col2im(x · Wᵀ) (im2col's input gradient with dZ = x), zeros for `extra`, + b."""
    core = _core_shape(extra, out_shape)
    pad_shape = (core[0], *(n + lo + hi for n, (lo, hi) in zip(core[1:-1], plan.pads)), core[-1])
    y = im2col_nd.input_grad(x, w, plan, pad_shape, core)  # (m, *(n' − extra), n_C')
    y = jnp.pad(y, ((0, 0), *((0, e) for e in extra), (0, 0)))
    return y if b is None else y + b


@partial(jax.custom_vjp, nondiff_argnums=(3, 4, 5))
def hand(x, w, b, plan: PlanND, extra, out_shape):
    """Hand-rolled transposed convolution with its hand-derived backward: (m, *n, n_C) -> (m, *n', n_C')."""
    return _forward(x, w, b, plan, extra, out_shape)


def _fwd(x, w, b, plan, extra, out_shape):
    return _forward(x, w, b, plan, extra, out_shape), (x, w, b is not None)


def _bwd(plan, extra, out_shape, res, dy):
    """dx = conv(dy, w) (the map y is the transpose of); dW = P(dy)ᵀ · x; db = Σ dy."""
    x, w, has_bias = res
    core = dy[(slice(None), *(slice(0, n - e) for n, e in zip(out_shape[1:-1], extra)))]  # the extra entries hear from nothing
    dx = im2col_nd.forward(core, w, None, plan)[0]  # (m, *n, n_C)
    dw = im2col_nd.weight_grad(pad_input(core, plan.pads), x, w.shape, plan)  # (*f, n_C'/G, n_C)
    return dx, dw, bias_grad(dy) if has_bias else None


hand.defvjp(_fwd, _bwd)


def lax_transpose(x, w, b, plan: PlanND, extra):
    """The same on lax: conv_general_dilated of x dilated by s (lhs_dilation) with the flipped, in/out-swapped filter."""
    *f, n_Cg_out, n_C = w.shape
    G, N = plan.groups, len(f)
    w_t = w.reshape(*f, n_Cg_out, G, n_C // G)
    w_t = jnp.moveaxis(w_t, (N, N + 1, N + 2), (N + 2, N + 1, N)).reshape(*f, n_C // G, G * n_Cg_out)
    w_t = w_t[(slice(None, None, -1),) * N]  # every spatial axis reversed (rot180 in 2-D)
    pads = [(d_i * (f_i - 1) - lo, d_i * (f_i - 1) - hi + e) for (lo, hi), d_i, f_i, e in zip(plan.pads, plan.dilation, f, extra)]
    acc = lax_sum_dtype(x.dtype)  # float32 for bfloat16/float16
    y = lax.conv_general_dilated(
        x, w_t, window_strides=(1,) * N, padding=pads, lhs_dilation=plan.stride, rhs_dilation=plan.dilation,
        dimension_numbers=LAYOUTS[N], feature_group_count=G, preferred_element_type=acc,
    )
    y = y if b is None else y + b
    return y if acc is None else y.astype(x.dtype)


def conv_transpose(x, w, b=None, *, N, op, stride=1, padding=0, output_padding=0, dilation=1, groups=1, impl="auto"):
    """The transposed convolution over N spatial axes that conv_transpose1d and conv_transpose3d are."""
    if impl not in IMPLS:
        raise ValueError(f"{op}: unknown `impl` {impl!r}. It needs to be one of {list(IMPLS)}.")
    x, single = check_rank(x, N, op)
    w_shape = tuple(getattr(w, "shape", ()))
    kw = dict(stride=stride, padding=padding, output_padding=output_padding, dilation=dilation, groups=groups)
    plan, extra, out_shape = transpose_geometry(x.shape, w_shape, op=op, **kw)
    check_bias_and_dtype(op, x, w, b, out_shape[-1])
    if impl == "auto":  # on CPU, XLA's compiler aborts on some lhs-dilated convolutions (as in conv_transpose2d)
        impl = "lax" if jax.default_backend() != "cpu" or 0 in x.shape or 0 in w_shape else "hand"
    if impl == "lax":
        y = lax_transpose(x, w, b, plan, extra)
    else:
        y = hand(*same_varying_axes(x, w, b), plan, extra, out_shape)
    return y[0] if single else y


def conv_transpose1d(x, w, b=None, *, stride=1, padding=0, output_padding=0, dilation=1, groups=1, impl="auto"):
    """Transposed 1-D convolution: the input gradient of conv1d(·, w) with the same stride, padding, dilation, groups.

    PyTorch's ConvTranspose1d weight (n_C, n_C'/groups, f_W) is w.permute(2, 1, 0).

    Args:
      x: (m, n_W, n_C), or one example (n_W, n_C).
      w: (f_W, n_C' / groups, n_C), the WIO filter of the conv1d that maps n_C' channels to n_C.
      b: (n_C',) or None.
      stride, padding (int, (p,) or ((lo, hi),)), dilation: those of that conv1d.
      output_padding: extra entries at the end (< max(stride, dilation)).
      groups: as in conv1d.
      impl: "auto" (default: "lax" on GPU/TPU, "hand" on CPU, as conv_transpose2d), "lax" or "hand".

    Returns:
      (m, n_W', n_C') with n_W' = (n_W − 1)·s − p_lo − p_hi + d(f_W − 1) + output_padding + 1.

    >>> conv_transpose1d(jnp.ones((1, 5, 2)), jnp.ones((3, 4, 2)), stride=2, padding=1, output_padding=1).shape
    (1, 10, 4)
    """
    kw = dict(stride=stride, padding=padding, output_padding=output_padding, dilation=dilation, groups=groups, impl=impl)
    return conv_transpose(x, w, b, N=1, op="conv_transpose1d", **kw)


def conv_transpose3d(x, w, b=None, *, stride=1, padding=0, output_padding=0, dilation=1, groups=1, impl="auto"):
    """Transposed 3-D convolution: the input gradient of conv3d(·, w) with the same stride, padding, dilation, groups.

    PyTorch's ConvTranspose3d weight (n_C, n_C'/groups, f_D, f_H, f_W) is w.permute(4, 3, 0, 1, 2).

    Args:
      x: (m, n_D, n_H, n_W, n_C), or one example (n_D, n_H, n_W, n_C).
      w: (f_D, f_H, f_W, n_C' / groups, n_C), the DHWIO filter of the conv3d that maps n_C' channels to n_C.
      b: (n_C',) or None.
      stride, padding (int, (p_D, p_H, p_W) or three (lo, hi) pairs), dilation, output_padding, groups, impl:
        as in `conv_transpose1d`, per axis.

    Returns:
      (m, n_D', n_H', n_W', n_C') with n' = (n − 1)·s − p_lo − p_hi + d(f − 1) + output_padding + 1 per axis.

    >>> conv_transpose3d(jnp.ones((1, 2, 3, 3, 2)), jnp.ones((2, 2, 2, 4, 2)), stride=2).shape
    (1, 4, 6, 6, 4)
    """
    kw = dict(stride=stride, padding=padding, output_padding=output_padding, dilation=dilation, groups=groups, impl=impl)
    return conv_transpose(x, w, b, N=3, op="conv_transpose3d", **kw)
