"""Tolerances and argument normalisation shared by the float64 references.

The normalisation here is independent of `jaxconv._args`: the references share no code
with the library they check.
"""

from __future__ import annotations

import numpy as np

# Tolerances for comparing a jaxconv result with a float64 reference (or two
# implementations with each other), keyed by the dtype of the jaxconv computation.
TOLERANCES = {
    # float32: sums of up to a few hundred products of O(1) numbers; 1 ulp is 6e-8
    # relative, accumulated error stays well below 1e-5 of the result's scale.
    np.dtype(np.float32): {
        "forward": dict(rtol=2e-5, atol=2e-5),
        # Loosened 5x: gradients sum over m·n_H'·n_W' terms (dW) or over the
        # overlapping windows (dX).
        "grad": dict(rtol=1e-4, atol=1e-4),
    },
    np.dtype(np.float64): {
        "forward": dict(rtol=1e-12, atol=1e-12),
        "grad": dict(rtol=1e-11, atol=1e-11),  # loosened 10x, as for float32
    },
}


def tol(dtype, grad=False):
    """The tolerance dict for `np.testing.assert_allclose` for a computation in `dtype`."""
    return TOLERANCES[np.dtype(dtype)]["grad" if grad else "forward"]


# ---------------------------------------------------------------------------
# Argument normalisation (independent of jaxconv._args).
# ---------------------------------------------------------------------------


def pair(v):
    """(v, v) for an int, the tuple of v otherwise."""
    return (v, v) if isinstance(v, int) else tuple(v)


def pads_of(padding, n, f, s, d=(1, 1)):
    """((top, bottom), (left, right)) for every padding form.

    "SAME": output ⌈n/s⌉, total padding max((n'−1)s + d(f−1) + 1 − n, 0), the odd
    extra row/column at the bottom/right (TensorFlow / lax convention).
    """
    if isinstance(padding, str):
        if padding.upper() == "VALID":
            return ((0, 0), (0, 0))
        assert padding.upper() == "SAME", padding
        out = []
        for n_i, f_i, s_i, d_i in zip(n, f, s, d):
            n_out = -(-n_i // s_i)
            total = max((n_out - 1) * s_i + d_i * (f_i - 1) + 1 - n_i, 0)
            out.append((total // 2, total - total // 2))
        return tuple(out)
    if isinstance(padding, int):
        return ((padding, padding), (padding, padding))
    a, b = padding
    if isinstance(a, int):
        return ((a, a), (b, b))
    return (tuple(a), tuple(b))


def pad(x, pads, value):
    """x (m, n_H, n_W, n_C) padded by ((top, bottom), (left, right)) with `value`."""
    (t, b), (l, r) = pads
    return np.pad(x, ((0, 0), (t, b), (l, r), (0, 0)), constant_values=value)


def out_size(n_pad, f, s, d=1):
    """⌊(n_pad − d(f−1) − 1)/s⌋ + 1, n_pad the padded size."""
    return (n_pad - d * (f - 1) - 1) // s + 1


def batched(x):
    """(x as float64 with a batch axis, whether one was added): rank 3 is one example (n_H, n_W, n_C)."""
    x = np.asarray(x, np.float64)
    return (x[None], True) if x.ndim == 3 else (x, False)
