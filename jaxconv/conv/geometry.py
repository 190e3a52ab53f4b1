"""A convolution's geometry, and what every algorithm shares.

Argument checks, output sizes, padding and cropping; the dtype products are
summed in (`acc_dtype`, `lax_sum_dtype`); the bias gradient (`bias_grad`).
`Plan` is the one hashable description every hand-rolled algorithm takes as
its last (non-differentiated) argument: `algorithm(x, w, b, plan)`.
"""

from __future__ import annotations

from typing import NamedTuple, Optional, Tuple

import jax.numpy as jnp
from jax import lax

from jaxconv import _args

Pair = Tuple[int, int]

# PyTorch's padding modes, by their names there, and jnp.pad's name for each (None: lax's zero padding).
PADDING_MODES = {"zeros": None, "reflect": "reflect", "replicate": "edge", "circular": "wrap"}


class Plan(NamedTuple):
    """How to run one convolution: its geometry and the algorithm's tile size.

    pads: ((top, bottom), (left, right)); stride: (s_H, s_W); dilation: (d_H, d_W);
    groups: G; block: the rows algorithm's output columns per block (B) or the taps
    algorithm's images per chunk (c), None for im2col.
    """

    pads: Tuple[Pair, Pair]
    stride: Pair = (1, 1)
    dilation: Pair = (1, 1)
    groups: int = 1
    block: Optional[int] = None


def check_groups(groups, n_C, op):
    """`groups` an int >= 1 that divides the input channels n_C (conv2d and conv_transpose2d alike)."""
    if isinstance(groups, bool) or not isinstance(groups, int) or groups < 1:
        raise ValueError(f"{op}: `groups` must be an int >= 1, got {groups!r}.")
    if n_C % groups:
        raise ValueError(f"{op}: `groups` (={groups}) must divide the input channels n_C (={n_C}); pick groups among the divisors of {n_C}.")


def check_filter(x_shape, w_shape, groups, op, *, transposed=False):
    """The filter against x (m, *n, n_C) and `groups`, in any number of spatial axes N.

    A convolution's w is (*f, n_C / groups, n_C') (HWIO in 2-D): x's channels meet its axis -2, in
    groups. A transposed convolution's w (`transposed`) is the filter of the convolution it transposes,
    (*f, n_C' / groups, n_C): x's channels meet its last axis.
    """
    N = len(x_shape) - 2
    if len(w_shape) != N + 2:
        raise ValueError(f"{op}: `w` must have shape {_args.w_form(N, transposed)} ({_args.LAYOUTS[N][1]}), got shape {tuple(w_shape)}.")
    n_C, (n_Cg, n_C_out) = x_shape[-1], w_shape[-2:]
    if transposed and n_C_out != n_C:
        raise ValueError(
            f"{op}: input channels n_C (={n_C}) must equal the filter's last axis (={n_C_out}): w is the filter "
            f"{_args.w_form(N, True)} of the convolution that maps n_C' channels to n_C; give w {n_C} as its last axis."
        )
    check_groups(groups, n_C, op)
    if transposed:
        return
    if n_C_out % groups:
        raise ValueError(
            f"{op}: `groups` (={groups}) must divide the filter's output channels n_C' (={n_C_out}); "
            f"use a number of filters that is a multiple of groups."
        )
    if n_Cg * groups != n_C:
        raise ValueError(
            f"{op}: input channels n_C (={n_C}) must equal the filter's n_C_in (={n_Cg}) * groups (={groups}) = {n_Cg * groups}; "
            f"give the filter {n_C // groups} input channels (axis -2) or change the input."
        )


def conv_geometry(x_shape, w_shape, *, stride=1, padding=0, dilation=1, groups=1, op="conv2d"):
    """Check a convolution's arguments and return (pads, s, d, groups, out_shape).

    x_shape: (m, n_H, n_W, n_C); w_shape: (f_H, f_W, n_C / groups, n_C').
    """
    s = _args.pair(stride, "stride", op, minimum=1)
    d = _args.pair(dilation, "dilation", op, minimum=1)
    check_filter(x_shape, w_shape, groups, op)
    m, n_H, n_W, _ = x_shape
    f_H, f_W, _, n_C_out = w_shape
    pads = _args.padding_pairs(padding, op, n=(n_H, n_W), f=(f_H, f_W), s=s, d=d)
    n_out = _args.window_output_sizes(op, "filter", (n_H, n_W), (f_H, f_W), pads, s, d)
    return pads, s, d, groups, (m, *n_out, n_C_out)


def out_size(n_pad, f, s, d):
    """(n_H', n_W') of a valid correlation of an (n_H_pad, n_W_pad) input: ⌊(n_pad − d(f − 1) − 1)/s⌋ + 1."""
    return tuple((n - d_i * (f_i - 1) - 1) // s_i + 1 for n, f_i, s_i, d_i in zip(n_pad, f, s, d))


def patch_elements(x_shape, w_shape, pads, s, d) -> int:
    """Entries of im2col's patch matrix P, m·n_H'·n_W'·f_H·f_W·n_C (n_C per group, w_shape[2]; m >= 1)."""
    n_out = out_size(padded_size(x_shape, pads), w_shape[:2], s, d)
    return max(int(x_shape[0]), 1) * n_out[0] * n_out[1] * w_shape[0] * w_shape[1] * w_shape[2]


def padded_size(x_shape, pads):
    """(n_H_pad, n_W_pad) of an (m, n_H, n_W, n_C) input with padding ((top, bottom), (left, right))."""
    return x_shape[1] + pads[0][0] + pads[0][1], x_shape[2] + pads[1][0] + pads[1][1]


def pad_input(x, pads):
    """X_pad: x with zero rows and columns around it, (m, n_H + p_top + p_bottom, n_W + p_left + p_right, n_C)."""
    return jnp.pad(x, ((0, 0), pads[0], pads[1], (0, 0)))


def crop(dX_pad, pads, x_shape):
    """The inverse of `pad_input` for gradients: dX = dX_pad without its padding, (m, n_H, n_W, n_C)."""
    (top, _), (left, _) = pads
    return dX_pad[:, top : top + x_shape[1], left : left + x_shape[2], :]


def place(a, at, step, shape):
    """An array of `shape` (m, H, W, C), zero but for a[:, h, w] at row at[0] + h·step[0], column at[1] + w·step[1].

    The transpose of the strided slice X[:, at[0] :: step[0], at[1] :: step[1]]: col2im adds each
    tap's gradient back with it. A pad (step − 1 zeros between pixels), where `.at[...].add`
    would be a scatter: the same sums, faster to compile and to run on CPU. Benchmark: docs/benchmarks.md#col2im-pad
    """
    m, n_H, n_W, n_C = a.shape
    config = [(0, 0, 0), (at[0], shape[1] - at[0] - step[0] * (n_H - 1) - 1, step[0] - 1)]
    config += [(at[1], shape[2] - at[1] - step[1] * (n_W - 1) - 1, step[1] - 1), (0, 0, 0)]
    return lax.pad(a, jnp.zeros((), a.dtype), config)


def acc_dtype(dtype):
    """The dtype products are summed in: float32 for bfloat16 and float16 inputs (8 and 11 bits of mantissa; the
    sum is cast back), else the input's."""
    return jnp.float32 if jnp.dtype(dtype) in (jnp.dtype(jnp.bfloat16), jnp.dtype(jnp.float16)) else jnp.dtype(dtype)


def bias_grad(dZ, dtype=None):
    """db[o] = Σ_{m,h,w} dZ[m, h, w, o]: dZ (m, n_H', n_W', n_C') -> (n_C',), summed in `acc_dtype`, cast to `dtype`
    (default dZ's). The bias gradient of every convolution here, of any number of spatial axes (all but the last)."""
    return dZ.sum(axis=tuple(range(dZ.ndim - 1)), dtype=acc_dtype(dZ.dtype)).astype(dtype or dZ.dtype)


def lax_sum_dtype(dtype):
    """`preferred_element_type` for products of `dtype` (lax's convolution, `nn.dense`'s matmul): float32 for
    bfloat16/float16 (`acc_dtype`), else None (the input's own, unchanged HLO)."""
    acc = acc_dtype(dtype)
    return None if acc == jnp.dtype(dtype) else acc
