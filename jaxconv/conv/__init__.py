"""2-D convolution, two ways: on `lax.conv_general_dilated`, and hand-rolled.

Layout (`LAYOUT`): x is NHWC (m, n_H, n_W, n_C), the filter is HWIO
(f_H, f_W, n_C / groups, n_C'), the bias is (n_C',). Convolution here is
cross-correlation, as in the notes and in lax:

    Z[m, h, w, o] = b[o] + Σ_{i, j, c} X_pad[m, h·s_H + i·d_H, w·s_W + j·d_W, c] · W[i, j, c, o]

The package, file by file:
- `im2col.py`: the notes' algorithm (any stride, dilation, groups), forward and
  hand-derived backward, each formula beside the line that computes it;
- `rows.py`, `taps.py`: the fast CPU algorithms (stride 1, one group), each
  forward above its hand-derived backward;
- `policy.py`: which impl and algorithm a layer gets, every tuned threshold in
  one table (`TUNED`);
- `guard.py`: inputs with NaN or Inf take im2col, which spreads them exactly
  as the direct sum (and lax) does;
- `geometry.py`: argument checks, sizes, padding; `shard.py`: the shard_map shim.
Every hand-rolled algorithm is a custom VJP `algorithm.conv(x, w, b, plan)`.
"""

from __future__ import annotations

from jax import lax

from jaxconv import _args
from jaxconv._args import LAYOUT, conv_output_size
from jaxconv.conv import im2col, policy, rows, taps
from jaxconv.conv.guard import guarded
from jaxconv.conv.geometry import Plan, conv_geometry
from jaxconv.conv.policy import ALGORITHMS, TUNED, hand_algorithm, resolve_impl, rows_block, taps_chunk
from jaxconv.conv.shard import same_varying_axes

IMPLS = ("auto", "lax", "hand", "hand_autodiff")
_HAND = {"im2col": im2col.conv, "rows": rows.conv, "taps": taps.conv}

__all__ = [
    "ALGORITHMS",
    "IMPLS",
    "LAYOUT",
    "Plan",
    "TUNED",
    "conv2d",
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


def conv2d(x, w, b=None, *, stride=1, padding=0, dilation=1, groups=1, impl="auto", algorithm="auto"):
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
      impl: "auto" (default: "lax" on GPU/TPU; on CPU "hand" where its rows or
        taps algorithm beats XLA's convolution and "lax" elsewhere; see
        `policy.resolve_impl`), "lax" (lax.conv_general_dilated), "hand"
        (hand-rolled forward and hand-derived backward, no lax convolution) or
        "hand_autodiff" (hand-rolled im2col forward, JAX autodiff). All give
        the same values and gradients up to float rounding.
      algorithm: the hand-rolled algorithm, for impl="hand" (or "auto", which it
        then makes hand-rolled): "auto" (default: chosen per layer by
        `policy.hand_algorithm`), "im2col" (the notes' patches times filter; any
        geometry), "rows" (banded filter matrix; stride 1, dilation 1, one group)
        or "taps" (shift-add of tap products; stride 1, one group).

    Returns:
      (m, n_H', n_W', n_C') with n' = ⌊(n + 2p − d(f−1) − 1)/s⌋ + 1
      (or (n_H', n_W', n_C') for one example).

    >>> x = jnp.ones((1, 6, 6, 1)); w = jnp.ones((3, 3, 1, 2))
    >>> conv2d(x, w, padding="SAME", impl="hand", algorithm="im2col").shape
    (1, 6, 6, 2)
    """
    check_impl(impl, algorithm)
    x, single = _args.check_rank(x, "conv2d")
    w_shape = tuple(getattr(w, "shape", ()))
    pads, s, d, groups, out_shape = conv_geometry(
        x.shape, w_shape, stride=stride, padding=padding, dilation=dilation, groups=groups
    )
    if b is not None and tuple(getattr(b, "shape", ())) != (w_shape[3],):
        raise ValueError(
            f"conv2d: `b` must have shape (n_C',) = ({w_shape[3]},) to match the filter, got {tuple(getattr(b, 'shape', ()))}; "
            f"pass one bias per filter, or b=None."
        )
    if x.dtype != w.dtype:
        raise TypeError(f"conv2d: `x` ({x.dtype}) and `w` ({w.dtype}) must have the same dtype; cast one with .astype().")
    geom = (pads, s, d, groups)
    if algorithm != "auto":
        why = policy.applicable(algorithm, w_shape, geom)
        if why is not None:
            raise ValueError(
                f"conv2d: `algorithm` {algorithm!r} needs {why}; use algorithm='im2col' (any geometry) or 'auto'."
            )
        impl = "hand" if impl == "auto" else impl
    impl = resolve_impl(impl, x.shape, w_shape, geom)
    if impl == "lax":
        z = lax.conv_general_dilated(
            x, w, window_strides=s, padding=pads, rhs_dilation=d, dimension_numbers=LAYOUT, feature_group_count=groups
        )
        if b is not None:
            z = z + b
    elif impl == "hand":
        x, w, b = same_varying_axes(x, w, b)
        if algorithm == "auto":
            algorithm = hand_algorithm(x.shape, w_shape, geom)
        plan = policy.plan(algorithm, x.shape, w_shape, geom)
        z = im2col.conv(x, w, b, plan) if algorithm == "im2col" else guarded(x, w, b, _HAND[algorithm], plan)
    else:
        z = im2col.forward(x, w, b, Plan(*geom))[0]
    return z[0] if single else z
