"""Convolution over N spatial axes: conv1d (sequences) and conv3d (volumes, video), two ways.

Layout (`jaxconv.LAYOUTS`), channels last as in 2-D: x is (m, *n, n_C) — NWC
(m, n_W, n_C) in 1-D, NDHWC (m, n_D, n_H, n_W, n_C) in 3-D — the filter is
(*f, n_C / groups, n_C') — WIO, DHWIO — and the bias (n_C',). Per spatial axis
the output has ⌊(n + p_lo + p_hi − d(f − 1) − 1)/s⌋ + 1 entries, the notes' formula.

impl="lax" runs `lax.conv_general_dilated`; impl="hand" runs the notes' im2col
forward and its hand-derived backward written once for N axes (`im2col_nd`);
impl="hand_autodiff" the same forward, differentiated by JAX; impl="auto" picks
(`resolve_impl`). The 2-D op, `conv2d`, keeps its own file and fast algorithms.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jax import lax

from jaxconv import _args
from jaxconv import compile as compiling
from jaxconv._args import LAYOUTS, SPATIAL_AXES
from jaxconv._args import check_rank_nd as check_rank
from jaxconv.conv import buffers, im2col_nd, policy
from jaxconv.conv.geometry import PADDING_MODES, check_filter, lax_sum_dtype
from jaxconv.conv.im2col_nd import PlanND
from jaxconv.conv.shard import same_varying_axes

IMPLS = ("auto", "lax", "hand", "hand_autodiff")

def conv_geometry(x_shape, w_shape, *, stride=1, padding=0, dilation=1, groups=1, op):
    """Check a convolution's arguments; return (PlanND, out_shape (m, *n', n_C'))."""
    N = len(x_shape) - 2
    s = _args.ntuple(stride, "stride", op, n=N, minimum=1)
    d = _args.ntuple(dilation, "dilation", op, n=N, minimum=1)
    check_filter(x_shape, w_shape, groups, op)
    n, f = tuple(x_shape[1:-1]), tuple(w_shape[:-2])
    pads = _args.padding_tuples(padding, op, n=n, f=f, s=s, d=d)
    n_out = _args.window_output_sizes(op, "filter", n, f, pads, s, d)
    return PlanND(tuple(pads), s, d, groups), (x_shape[0], *n_out, w_shape[-1])


def check_bias_and_dtype(op, x, w, b, n_C_out):
    """b (n_C',) or None; x and w of one dtype."""
    if b is not None and tuple(getattr(b, "shape", ())) != (n_C_out,):
        raise ValueError(f"{op}: `b` must have shape (n_C',) = ({n_C_out},) to match the filter, got {tuple(getattr(b, 'shape', ()))}; pass one bias per output channel, or b=None.")
    if x.dtype != w.dtype:
        raise TypeError(f"{op}: `x` ({x.dtype}) and `w` ({w.dtype}) must have the same dtype; cast one with .astype().")


def pad_mode(x, pads, padding_mode, op):
    """x (m, *n, n_C) padded by pads ((lo, hi), ...) with one of PyTorch's non-zero padding modes (jnp.pad)."""
    for size, (lo, hi), axis in zip(x.shape[1:-1], pads, SPATIAL_AXES[x.ndim - 2]):
        if padding_mode == "reflect" and max(lo, hi) >= size:
            raise ValueError(f"{op}: padding_mode='reflect' needs padding smaller than the input, got padding ({lo}, {hi}) on a {axis} of {size}; use less padding or padding_mode='replicate'.")
        if padding_mode == "circular" and max(lo, hi) > size:
            raise ValueError(f"{op}: padding_mode='circular' needs padding at most the input size, got padding ({lo}, {hi}) on a {axis} of {size}; use less padding.")
    return jnp.pad(x, ((0, 0), *pads, (0, 0)), mode=PADDING_MODES[padding_mode])


def resolve_impl(impl, x_shape, w_shape):
    """The impl a convolution runs: impl itself, or for impl="auto" "hand" on CPU for a 3-D layer of at most
    policy.TUNED["nd_hand_max_channels"] input channels (a volume's first layer: grey, RGB), where XLA's CPU
    convolution is slowest, forward and backward; "lax" elsewhere: 1-D, wider 3-D layers, GPU and TPU."""
    if impl != "auto":
        return impl
    small = len(x_shape) == 5 and x_shape[-1] <= policy.TUNED["nd_hand_max_channels"]
    return "hand" if small and jax.default_backend() == "cpu" else "lax"


def conv(x, w, b=None, *, N, op, stride=1, padding=0, dilation=1, groups=1, impl="auto", padding_mode="zeros"):
    """The convolution over N spatial axes that conv1d and conv3d are (see their docstrings)."""
    if impl not in IMPLS:
        raise ValueError(f"{op}: unknown `impl` {impl!r}. It needs to be one of {list(IMPLS)}.")
    if padding_mode not in PADDING_MODES:
        raise ValueError(f"{op}: unknown `padding_mode` {padding_mode!r}. It needs to be one of {list(PADDING_MODES)}.")
    x, single = check_rank(x, N, op)
    w_shape = tuple(getattr(w, "shape", ()))
    plan, out_shape = conv_geometry(x.shape, w_shape, stride=stride, padding=padding, dilation=dilation, groups=groups, op=op)
    check_bias_and_dtype(op, x, w, b, out_shape[-1])
    if padding_mode != "zeros":
        x = pad_mode(x, plan.pads, padding_mode, op)  # (m, *(n + lo + hi), n_C)
        plan = plan._replace(pads=((0, 0),) * N)
    impl = "lax" if 0 in x.shape or 0 in w_shape else resolve_impl(impl, x.shape, w_shape)  # empty: lax's empty (or bias-only) result
    if impl == "lax":
        z = lax_conv(x, w, b, plan)
    elif impl == "hand":
        z = im2col_nd.conv(*same_varying_axes(x, w, b), plan)
    else:  # hand_autodiff: JAX differentiates im2col's forward
        z = im2col_nd.forward(x, w, b, plan)[0]
    return z[0] if single else z


def lax_conv(x, w, b, plan: PlanND):
    """The convolution on lax.conv_general_dilated (float32 sums for bfloat16/float16); on CPU its gradient reads
    x and dZ as buffers (`buffers.lax_conv`), as conv2d's impl="lax"."""
    acc = lax_sum_dtype(x.dtype)
    params = (
        ("window_strides", plan.stride), ("padding", plan.pads), ("rhs_dilation", plan.dilation),
        ("dimension_numbers", LAYOUTS[x.ndim - 2]), ("feature_group_count", plan.groups), ("preferred_element_type", acc),
    )
    z = buffers.lax_conv(x, w, params) if compiling.lax_grad_on_buffers() else lax.conv_general_dilated(x, w, **dict(params))
    if b is not None:
        z = z + b
    return z if acc is None else z.astype(x.dtype)  # rounded once, after the sum and the bias


def conv1d(x, w, b=None, *, stride=1, padding=0, dilation=1, groups=1, impl="auto", padding_mode="zeros"):
    """1-D convolution (cross-correlation) of NWC sequences with a WIO filter.

    Args:
      x: (m, n_W, n_C), or one example (n_W, n_C).
      w: (f_W, n_C / groups, n_C').
      b: (n_C',) or None.
      stride: s, an int or (s_W,).
      padding: p, (p_W,), ((lo, hi),), "VALID" or "SAME" (output ⌈n/s⌉; an odd total puts the extra at the end).
      dilation: d, an int or (d_W,): filter taps d entries apart.
      groups: split the channels into this many independent convolutions.
      impl: "auto" (default: `resolve_impl`), "lax" (lax.conv_general_dilated), "hand" (the notes' im2col
        forward and hand-derived backward, `im2col_nd`) or "hand_autodiff" (that forward, JAX autodiff).
      padding_mode: "zeros" (default), "reflect", "replicate" or "circular", PyTorch's modes.

    Returns:
      (m, n_W', n_C') with n_W' = ⌊(n_W + p_lo + p_hi − d(f_W − 1) − 1)/s⌋ + 1 (or (n_W', n_C') for one example).

    >>> conv1d(jnp.ones((2, 10, 3)), jnp.ones((3, 3, 4)), stride=2, padding=1).shape
    (2, 5, 4)
    """
    kw = dict(stride=stride, padding=padding, dilation=dilation, groups=groups, impl=impl, padding_mode=padding_mode)
    return conv(x, w, b, N=1, op="conv1d", **kw)


def conv3d(x, w, b=None, *, stride=1, padding=0, dilation=1, groups=1, impl="auto", padding_mode="zeros"):
    """3-D convolution (cross-correlation) of NDHWC volumes with a DHWIO filter.

    Args:
      x: (m, n_D, n_H, n_W, n_C), or one example (n_D, n_H, n_W, n_C).
      w: (f_D, f_H, f_W, n_C / groups, n_C').
      b: (n_C',) or None.
      stride: s, an int or (s_D, s_H, s_W).
      padding: p, (p_D, p_H, p_W), ((lo, hi), (lo, hi), (lo, hi)), "VALID" or "SAME".
      dilation: d, an int or (d_D, d_H, d_W).
      groups, impl, padding_mode: as in `conv1d`.

    Returns:
      (m, n_D', n_H', n_W', n_C') with n' = ⌊(n + p_lo + p_hi − d(f − 1) − 1)/s⌋ + 1 per axis
      (or (n_D', n_H', n_W', n_C') for one example).

    >>> conv3d(jnp.ones((1, 4, 6, 6, 2)), jnp.ones((3, 3, 3, 2, 8)), padding="SAME").shape
    (1, 4, 6, 6, 8)
    """
    kw = dict(stride=stride, padding=padding, dilation=dilation, groups=groups, impl=impl, padding_mode=padding_mode)
    return conv(x, w, b, N=3, op="conv3d", **kw)
