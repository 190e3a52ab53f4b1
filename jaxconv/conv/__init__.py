"""Convolution, two ways: on `lax.conv_general_dilated`, and hand-rolled (2-D here; 1-D and 3-D in `nd.py`).

Layout (`LAYOUT`): x is NHWC (m, n_H, n_W, n_C), the filter is HWIO
(f_H, f_W, n_C / groups, n_C'), the bias is (n_C',). Convolution here is
cross-correlation, as in the notes and in lax:

    Z[m, h, w, o] = b[o] + Σ_{i, j, c} X_pad[m, h·s_H + i·d_H, w·s_W + j·d_W, c] · W[i, j, c, o]

The package, file by file:
- `im2col.py`: the notes' algorithm (any stride, dilation, groups), forward and
  hand-derived backward, each formula beside the line that computes it;
- `rows.py`, `taps.py`: the fast CPU algorithms (stride 1, one group), each
  forward above its hand-derived backward;
- `depthwise.py` (groups = n_C: shift-multiply-add over the taps) and
  `pointwise.py` (1x1, any stride: subsample + one matmul), likewise;
- `policy.py`: which impl and algorithm a layer gets, every tuned threshold in
  one table (`TUNED`);
- `guard.py`: inputs with NaN or Inf take im2col, which spreads them exactly
  as the direct sum (and lax) does;
- `buffers.py`: operands handed to XLA:CPU as buffers, not recomputed chains
  (depthwise's weight gradient, and `lax_conv`: lax's convolution whose
  gradient reads x and dZ as buffers, what impl="lax" runs on CPU);
- `geometry.py`: argument checks, sizes, padding; `shard.py`: the shard_map shim;
- `nd.py`, `im2col_nd.py`, `transpose_nd.py`: conv1d and conv3d (NWC/WIO,
  NDHWC/DHWIO) and their transposes, on lax or on the notes' im2col written
  once for N spatial axes; `conv_nd` and `conv_transpose_nd` pick the op by
  the filter's rank.
Every hand-rolled algorithm is a custom VJP `algorithm.conv(x, w, b, plan)`.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jax import lax

from jaxconv import _args
from jaxconv import compile as compiling
from jaxconv._args import LAYOUT, conv_output_size
from jaxconv.conv import buffers, depthwise, im2col, pointwise, policy, rows, taps, transpose
from jaxconv.conv.geometry import PADDING_MODES, Plan, conv_geometry, lax_sum_dtype
from jaxconv.conv.guard import guarded
from jaxconv.conv.policy import ALGORITHMS, TUNED, hand_algorithm, resolve_impl, rows_block, taps_chunk
from jaxconv.conv.shard import same_varying_axes
from jaxconv.conv.nd import conv1d, conv3d
from jaxconv.conv.transpose import transpose_geometry
from jaxconv.conv.transpose_nd import conv_transpose1d, conv_transpose3d

IMPLS = ("auto", "lax", "hand", "hand_autodiff")
TRANSPOSE_IMPLS = ("auto", "lax", "hand")
_HAND = {"im2col": im2col.conv, "rows": rows.conv, "taps": taps.conv}
_EXACT = {"im2col": im2col.conv, "depthwise": depthwise.conv, "pointwise": pointwise.conv}  # read window pixels only: no NaN guard

__all__ = [
    "ALGORITHMS",
    "IMPLS",
    "LAYOUT",
    "Plan",
    "TUNED",
    "PADDING_MODES",
    "TRANSPOSE_IMPLS",
    "conv1d",
    "conv2d",
    "conv3d",
    "conv_nd",
    "conv_transpose1d",
    "conv_transpose2d",
    "conv_transpose3d",
    "conv_transpose_nd",
    "conv_geometry",
    "conv_output_size",
    "hand_algorithm",
    "resolve_impl",
    "rows_block",
    "taps_chunk",
]


def check_impl(impl, algorithm, op="conv2d"):
    """Check `impl` and `algorithm` by themselves (before any shape is known); raise naming the fix."""
    if impl not in IMPLS:
        raise ValueError(f"{op}: unknown `impl` {impl!r}. It needs to be one of {list(IMPLS)}.")
    if algorithm not in ALGORITHMS:
        raise ValueError(f"{op}: unknown `algorithm` {algorithm!r}. It needs to be one of {list(ALGORITHMS)}.")
    if algorithm != "auto" and impl == "lax":
        raise ValueError(
            f"{op}: `algorithm` ({algorithm!r}) chooses among the hand-rolled algorithms, but impl='lax' has none; "
            f"use impl='hand' with it, or leave algorithm='auto'."
        )
    if algorithm not in ("auto", "im2col") and impl == "hand_autodiff":
        raise ValueError(
            f"{op}: impl='hand_autodiff' differentiates the im2col forward only, got `algorithm` {algorithm!r}; "
            f"use impl='hand' for {algorithm!r}, or algorithm='im2col'."
        )


def check_padding_mode(padding_mode, op="conv2d"):
    """Check `padding_mode` by itself; raise naming the allowed values."""
    if padding_mode not in PADDING_MODES:
        raise ValueError(f"{op}: unknown `padding_mode` {padding_mode!r}. It needs to be one of {list(PADDING_MODES)}.")


def pad_mode(x, pads, padding_mode, op="conv2d"):
    """x padded by ((top, bottom), (left, right)) with PyTorch's non-zero padding modes: (m, n_H + p_H, n_W + p_W, n_C)."""
    n = x.shape[1:3]
    for size, (lo, hi), axis in zip(n, pads, ("height", "width")):
        if padding_mode == "reflect" and max(lo, hi) >= size:
            raise ValueError(
                f"{op}: padding_mode='reflect' needs padding smaller than the input, got padding ({lo}, {hi}) on a {axis} of {size}; "
                f"use less padding or padding_mode='replicate'."
            )
        if padding_mode == "circular" and max(lo, hi) > size:
            raise ValueError(
                f"{op}: padding_mode='circular' needs padding at most the input size, got padding ({lo}, {hi}) on a {axis} of {size}; "
                f"use less padding."
            )
    return jnp.pad(x, ((0, 0), *pads, (0, 0)), mode=PADDING_MODES[padding_mode])


def _check_bias_and_dtype(op, x, w, b, n_C_out, per):
    """b (n_C',) or None, and x and w of one dtype: the checks conv2d and conv_transpose2d share."""
    if b is not None and tuple(getattr(b, "shape", ())) != (n_C_out,):
        raise ValueError(
            f"{op}: `b` must have shape (n_C',) = ({n_C_out},) to match the filter, got {tuple(getattr(b, 'shape', ()))}; "
            f"pass one bias per {per}, or b=None."
        )
    if x.dtype != w.dtype:
        raise TypeError(f"{op}: `x` ({x.dtype}) and `w` ({w.dtype}) must have the same dtype; cast one with .astype().")


def conv2d(x, w, b=None, *, stride=1, padding=0, dilation=1, groups=1, impl="auto", algorithm="auto", padding_mode="zeros"):
    """2-D convolution (cross-correlation) of NHWC activations with an HWIO filter.

    Args:
      x: (m, n_H, n_W, n_C), or one example (n_H, n_W, n_C).
      w: (f_H, f_W, n_C / groups, n_C').
      b: (n_C',) or None.
      stride: s, an int or (s_H, s_W).
      padding: p, (p_H, p_W), ((top, bottom), (left, right)), "VALID" or "SAME"
        (output ⌈n/s⌉; an odd total puts the extra row/column at the bottom/right).
      dilation: d, an int or (d_H, d_W): filter taps d pixels apart.
      groups: split the channels into this many independent convolutions.
      impl: "auto" (default: "lax" on GPU/TPU; on CPU "hand" where one of its
        algorithms beats XLA's convolution (rows, depthwise, pointwise; taps and
        im2col too on a jaxlib without jaxconv's compiler options) and "lax"
        elsewhere; see `policy.resolve_impl`), "lax" (lax.conv_general_dilated;
        on CPU its gradient reads x and dZ as buffers, `buffers.lax_conv`), "hand"
        (hand-rolled forward and hand-derived backward, no lax convolution) or
        "hand_autodiff" (hand-rolled im2col forward, JAX autodiff). All give
        the same values and gradients up to float rounding.
      algorithm: the hand-rolled algorithm, for impl="hand" (or "auto", which it
        then makes hand-rolled): "auto" (default: chosen per layer by
        `policy.hand_algorithm`), "im2col" (the notes' patches times filter; any
        geometry), "rows" (banded filter matrix; stride 1, dilation 1, one group),
        "taps" (shift-add of tap products; stride 1, one group), "depthwise"
        (shift-multiply-add per channel; groups = n_C, any stride and dilation)
        or "pointwise" (subsample + matmul; 1x1 filters, one group, any stride).
      padding_mode: what the padding holds, PyTorch's modes: "zeros" (default),
        "reflect" (mirror without the edge; padding < n), "replicate" (the
        edge pixel repeated) or "circular" (wrap around; padding <= n).

    Returns:
      (m, n_H', n_W', n_C') with n' = ⌊(n + 2p − d(f−1) − 1)/s⌋ + 1
      (or (n_H', n_W', n_C') for one example).

    >>> x = jnp.ones((1, 6, 6, 1)); w = jnp.ones((3, 3, 1, 2))
    >>> conv2d(x, w, padding="SAME", impl="hand", algorithm="im2col").shape
    (1, 6, 6, 2)
    """
    check_impl(impl, algorithm)
    check_padding_mode(padding_mode)
    x, single = _args.check_rank(x, "conv2d")
    w_shape = tuple(getattr(w, "shape", ()))
    pads, s, d, groups, _ = conv_geometry(x.shape, w_shape, stride=stride, padding=padding, dilation=dilation, groups=groups)
    _check_bias_and_dtype("conv2d", x, w, b, w_shape[3], "filter")
    if padding_mode != "zeros":
        x = pad_mode(x, pads, padding_mode)  # (m, n_H + p_top + p_bottom, n_W + p_left + p_right, n_C)
        pads = ((0, 0), (0, 0))
    geom = (pads, s, d, groups)
    if algorithm != "auto":
        why = policy.applicable(algorithm, w_shape, geom)
        if why is not None:
            raise ValueError(f"conv2d: `algorithm` {algorithm!r} needs {why}; use algorithm='im2col' (any geometry) or 'auto'.")
        impl = "hand" if impl == "auto" else impl
    if 0 in x.shape or 0 in w_shape:  # an empty batch, image or filter bank: lax's empty (or bias-only) result
        impl = "lax"
    impl = resolve_impl(impl, x.shape, w_shape, geom)
    if impl == "lax":
        z = _lax_conv2d(x, w, b, geom)
    elif impl == "hand":
        z = _hand_conv2d(x, w, b, geom, algorithm)
    else:  # hand_autodiff: JAX differentiates im2col's forward
        z = im2col.forward(x, w, b, Plan(*geom))[0]
    return z[0] if single else z


def _lax_conv2d(x, w, b, geom):
    """conv2d on lax.conv_general_dilated; on CPU its gradient reads x and dZ as buffers (`buffers.lax_conv`)."""
    pads, s, d, groups = geom
    acc = lax_sum_dtype(x.dtype)  # float32 for bfloat16/float16, as the hand-rolled algorithms sum
    params = (
        ("window_strides", s), ("padding", pads), ("rhs_dilation", d), ("dimension_numbers", LAYOUT),
        ("feature_group_count", groups), ("preferred_element_type", acc),
    )
    if compiling.lax_grad_on_buffers():
        z = buffers.lax_conv(x, w, params)  # the same convolutions; the gradient reads x and dZ as buffers
    else:
        z = lax.conv_general_dilated(x, w, **dict(params))
    if b is not None:
        z = z + b
    return z if acc is None else z.astype(x.dtype)  # rounded once, after the sum and the bias


def _hand_conv2d(x, w, b, geom, algorithm):
    """conv2d on a hand-rolled `algorithm` ("auto": `policy.hand_algorithm`'s choice); rows and taps behind the NaN guard."""
    x, w, b = same_varying_axes(x, w, b)
    if algorithm == "auto":
        algorithm = hand_algorithm(x.shape, w.shape, geom)
    plan = policy.plan(algorithm, x.shape, w.shape, geom)
    return _EXACT[algorithm](x, w, b, plan) if algorithm in _EXACT else guarded(x, w, b, _HAND[algorithm], plan)


def conv_transpose2d(x, w, b=None, *, stride=1, padding=0, output_padding=0, dilation=1, groups=1, impl="auto"):
    """Transposed 2-D convolution: the input gradient of conv2d(·, w) with the same stride, padding, dilation, groups.

    conv2d maps n_C' channels to n_C with the HWIO filter w; conv_transpose2d maps
    n_C back to n_C' with the same w, and IS that conv2d's gradient with respect to
    its input (impl="hand" computes it as im2col's hand-derived dX, col2im of x · Wᵀ).
    PyTorch's ConvTranspose2d weight (n_C, n_C'/groups, f_H, f_W) is w.permute(2, 3, 1, 0).

    Args:
      x: (m, n_H, n_W, n_C), or one example (n_H, n_W, n_C).
      w: (f_H, f_W, n_C' / groups, n_C).
      b: (n_C',) or None.
      stride, padding (int, (p_H, p_W) or ((top, bottom), (left, right))), dilation: those of the conv2d.
      output_padding: extra rows/columns at the bottom/right (< max(stride, dilation)), which picks
        among the output sizes that conv2d strides back to n.
      groups: as in conv2d.
      impl: "auto" (default: "lax" on GPU/TPU, "hand" on CPU, where jaxlib 0.10.2's compiler aborts
        the process on some lhs-dilated convolutions), "lax" (lax.conv_general_dilated with
        lhs_dilation) or "hand" (col2im, hand-derived backward; never calls a lax convolution).

    Returns:
      (m, n_H', n_W', n_C') with n' = (n − 1)·s − p_top − p_bottom + d(f − 1) + output_padding + 1.

    >>> x = jnp.ones((1, 3, 3, 2)); w = jnp.ones((3, 3, 4, 2))
    >>> conv_transpose2d(x, w, stride=2, padding=1, output_padding=1).shape
    (1, 6, 6, 4)
    """
    op = "conv_transpose2d"
    if impl not in TRANSPOSE_IMPLS:
        raise ValueError(f"{op}: unknown `impl` {impl!r}. It needs to be one of {list(TRANSPOSE_IMPLS)}.")
    x, single = _args.check_rank(x, op)
    w_shape = tuple(getattr(w, "shape", ()))
    plan, extra, out_shape = transpose_geometry(
        x.shape, w_shape, stride=stride, padding=padding, output_padding=output_padding, dilation=dilation, groups=groups
    )
    _check_bias_and_dtype(op, x, w, b, out_shape[3], "output channel")
    if impl == "auto":  # on CPU, XLA's compiler aborts on some lhs-dilated convolutions (docs/convolutions.md, known issue)
        impl = "lax" if jax.default_backend() != "cpu" else "hand"
    if impl == "lax":
        y = transpose.lax_transpose(x, w, b, plan, extra, out_shape)
    else:
        x, w, b = same_varying_axes(x, w, b)
        y = transpose.hand(x, w, b, plan, extra, out_shape)
    return y[0] if single else y


def _spatial_rank(w, op):
    """N, the number of spatial axes, from the filter's rank N + 2 (1, 2 or 3)."""
    N = getattr(w, "ndim", 0) - 2
    if N not in (1, 2, 3):
        raise ValueError(
            f"{op}: `w` must be a filter of rank 3 (WIO), 4 (HWIO) or 5 (DHWIO), got shape {getattr(w, 'shape', None)}; "
            f"its rank picks conv1d, conv2d or conv3d."
        )
    return N


def conv_nd(x, w, b=None, **kwargs):
    """conv1d, conv2d or conv3d, picked by the filter's rank: w (*f, n_C / groups, n_C') with 1, 2 or 3 spatial axes.

    x: (m, *n, n_C) or one example (*n, n_C); keyword arguments as the op it picks takes them
    (`algorithm` only for 2-D). Returns (m, *n', n_C').

    >>> conv_nd(jnp.ones((2, 8, 3)), jnp.ones((3, 3, 5))).shape
    (2, 6, 5)
    """
    return {1: conv1d, 2: conv2d, 3: conv3d}[_spatial_rank(w, "conv_nd")](x, w, b, **kwargs)


def conv_transpose_nd(x, w, b=None, **kwargs):
    """conv_transpose1d, conv_transpose2d or conv_transpose3d, picked by the filter's rank: w (*f, n_C' / groups, n_C).

    >>> conv_transpose_nd(jnp.ones((2, 4, 3)), jnp.ones((3, 5, 3)), stride=2).shape
    (2, 9, 5)
    """
    return {1: conv_transpose1d, 2: conv_transpose2d, 3: conv_transpose3d}[_spatial_rank(w, "conv_transpose_nd")](x, w, b, **kwargs)
