"""Argument normalisation and checks shared by the functional ops.

Every public op normalises its arguments once, here, and checks them before
XLA sees them, so a mistake is reported in the notes' terms (n, f, p, s, d)
with the fix, instead of as an XLA shape error or a silently empty array.
"""

from __future__ import annotations

import math
from typing import Sequence, Union

import jax.numpy as jnp

# The one fixed layout of jaxconv: activations NHWC, filters HWIO.
LAYOUT = ("NHWC", "HWIO", "NHWC")
# The same, channels last, for one and three spatial axes: NWC/WIO (sequences), NDHWC/DHWIO (volumes, video).
LAYOUT_1D = ("NWC", "WIO", "NWC")
LAYOUT_3D = ("NDHWC", "DHWIO", "NDHWC")
# The layout of each number of spatial axes.
LAYOUTS = {1: LAYOUT_1D, 2: LAYOUT, 3: LAYOUT_3D}
# The names of the spatial axes of each number of them, as errors name them.
SPATIAL_AXES = {1: ("width",), 2: ("height", "width"), 3: ("depth", "height", "width")}

# The notation of each number of spatial axes, as shapes in docstrings and errors spell it.
AXIS_LETTERS = {1: ("W",), 2: ("H", "W"), 3: ("D", "H", "W")}


def x_form(N: int) -> str:
    """x's shape in the notes' notation: '(m, n_D, n_H, n_W, n_C)' for N = 3."""
    return "(m, " + ", ".join(f"n_{a}" for a in AXIS_LETTERS[N]) + ", n_C)"


def w_form(N: int, transposed: bool = False) -> str:
    """The filter's shape: '(f_D, f_H, f_W, n_C / groups, n_C')' for N = 3; a transposed op's filter maps n_C' to n_C."""
    f = ", ".join(f"f_{a}" for a in AXIS_LETTERS[N])
    return f"({f}, n_C' / groups, n_C)" if transposed else f"({f}, n_C / groups, n_C')"


def check_rank_nd(x, N: int, op: str):
    """(x with a batch axis, whether one was added): x has rank N + 2, or N + 1 for one example (channels last)."""
    ndim = getattr(x, "ndim", None)
    if ndim not in (N + 1, N + 2):
        raise ValueError(
            f"{op}: `x` must have shape {x_form(N)} or one example without m ({LAYOUTS[N][0]}), got shape "
            f"{getattr(x, 'shape', None)}; reshape it to {LAYOUTS[N][0]} (add a channel axis of size 1 for one channel)."
        )
    return (x[None], True) if ndim == N + 1 else (x, False)


IntPair = Union[int, Sequence[int]]
Padding = Union[int, str, Sequence]


def is_integer(value) -> bool:
    """True for Python, NumPy and JAX integer scalars (anything with `__index__`), False for bools and floats."""
    if isinstance(value, (bool, tuple, list, str, bytes)):
        return False
    dtype = getattr(value, "dtype", None)
    if dtype is not None:  # NumPy / JAX scalars: integer dtypes only (bool_ is not one)
        return getattr(value, "ndim", 0) == 0 and getattr(dtype, "kind", None) in ("i", "u")
    return hasattr(value, "__index__")


def integer(value, name: str, op: str, *, minimum: int | None = None) -> int:
    """`value` as a Python int, checked against `minimum`: the one integer validator of jaxconv.

    Accepts Python ints and NumPy/JAX integer scalars (np.int64(1), jnp.int32(2));
    refuses bools and floats with a TypeError, values below `minimum` with a ValueError.
    """
    if not is_integer(value):
        raise TypeError(f"{op}: `{name}` must be an int, got {value!r} of type {type(value).__name__}.")
    value = int(value.__index__())
    if minimum is not None and value < minimum:
        raise ValueError(f"{op}: `{name}` must be >= {minimum}, got {value}; pass {name}={minimum} or more.")
    return value


def pair(value, name: str, op: str, *, minimum: int) -> tuple[int, int]:
    """Turn an int or an (h, w) pair into a tuple of two Python ints >= minimum."""
    given = value  # reported as the user wrote it (0, not (0, 0))
    if isinstance(value, bool):
        raise TypeError(f"{op}: `{name}` must be an int or a pair of ints (h, w), got {value!r}.")
    if is_integer(value):
        value = (int(value.__index__()), int(value.__index__()))
    if not isinstance(value, (tuple, list)) or len(value) != 2:
        raise TypeError(f"{op}: `{name}` must be an int or a pair of ints (h, w), got {value!r}.")
    try:
        if not all(is_integer(v) for v in value):
            raise TypeError
        h, w = (int(v.__index__()) for v in value)
    except (AttributeError, TypeError):
        raise TypeError(f"{op}: `{name}` must be an int or a pair of ints (h, w), got {value!r}.") from None
    if h < minimum or w < minimum:
        raise ValueError(f"{op}: `{name}` must be >= {minimum}, got {given!r}; use {name}={minimum} or larger.")
    return h, w


def ntuple(value, name: str, op: str, *, n: int, minimum: int) -> tuple[int, ...]:
    """Turn an int or a tuple of `n` ints (one per spatial axis) into a tuple of n Python ints >= minimum."""
    given = value
    form = "an int" if n == 1 else f"an int or a tuple of {n} ints (one per spatial axis)"
    if is_integer(value):
        value = (int(value.__index__()),) * n
    if not isinstance(value, (tuple, list)) or len(value) != n or not all(is_integer(v) for v in value):
        raise TypeError(f"{op}: `{name}` must be {form}, got {given!r}.")
    value = tuple(int(v.__index__()) for v in value)
    if min(value) < minimum:
        raise ValueError(f"{op}: `{name}` must be >= {minimum}, got {given!r}; use {name}={minimum} or larger.")
    return value


def padding_tuples(padding: Padding, op: str, *, n: tuple, f: tuple, s: tuple, d: tuple) -> tuple:
    """Normalise any padding form over len(n) spatial axes to ((lo, hi), ...), one pair per axis.

    Forms: p, one int per axis (p_1, ..., p_N), one (lo, hi) pair per axis, "VALID", "SAME" (as
    `padding_pairs`: output ⌈n/s⌉, an odd extra at the high end). With one axis, (lo, hi) is
    written ((lo, hi),).
    """
    N = len(n)
    if isinstance(padding, str):
        return ((0, 0),) * N if padding.upper() == "VALID" else padding_pairs(padding, op, n=n, f=f, s=s, d=d)
    pads = None
    if is_integer(padding):
        pads = ((int(padding.__index__()),) * 2,) * N
    elif isinstance(padding, (tuple, list)) and len(padding) == N:
        if all(is_integer(p) for p in padding):
            pads = tuple((int(p.__index__()),) * 2 for p in padding)
        elif all(isinstance(p, (tuple, list)) and len(p) == 2 and all(is_integer(q) for q in p) for p in padding):
            pads = tuple(tuple(int(q.__index__()) for q in p) for p in padding)
    if pads is None:
        per_axis = "(p,) or ((lo, hi),)" if N == 1 else f"{N} ints (p_1, ..., p_{N}) or {N} pairs ((lo, hi), ...)"
        raise TypeError(f"{op}: `padding` must be an int, {per_axis}, 'SAME' or 'VALID', got {padding!r}.")
    if any(p < 0 for pp in pads for p in pp):
        raise ValueError(f"{op}: `padding` must be non-negative, got {padding!r}; crop the input instead of padding it negatively.")
    return pads


def check_labels(labels, num_classes: int, op: str, *, name: str = "labels", fix: str = "") -> None:
    """Refuse integer class labels outside [0, num_classes) when they are concrete (not jit tracers).

    Inside `jax.jit` labels are tracers whose values are unknown, and nothing is
    checked (an out-of-range label there gives a wrong loss, not an error); wrap
    the function in `jax.experimental.checkify` to check them in compiled code.
    """
    import jax
    import numpy as np

    if isinstance(labels, jax.core.Tracer):  # inside jit/vmap/grad: the values exist only at run time
        return
    values = np.asarray(labels)
    if values.size == 0 or values.dtype.kind not in "iu":
        return
    low, high = int(values.min()), int(values.max())
    if low < 0 or high >= num_classes:
        bad = values[(values < 0) | (values >= num_classes)].ravel()
        where = int(np.flatnonzero((values.ravel() < 0) | (values.ravel() >= num_classes))[0])
        raise ValueError(
            f"{op}: `{name}` must be class indices in [0, {num_classes}), got {bad.size} outside it "
            f"(range [{low}, {high}], first {int(bad[0])} at index {where}); "
            f"{fix or f'map the labels to 0..{num_classes - 1} or give the model {high + 1} classes'}."
        )


def padding_pairs(
    padding: Padding,
    op: str,
    *,
    n: tuple[int, int],
    f: tuple[int, int],
    s: tuple[int, int],
    d: tuple[int, int] = (1, 1),
) -> tuple[tuple[int, int], tuple[int, int]]:
    """Normalise any padding form to ((top, bottom), (left, right)).

    Forms: p, (p_h, p_w), ((top, bottom), (left, right)), "VALID", "SAME".
    "SAME" gives an output of ceil(n / s) and puts an odd extra row or column at
    the bottom or right, as lax and TensorFlow do.
    """
    if isinstance(padding, str):
        mode = padding.upper()
        if mode == "VALID":
            return (0, 0), (0, 0)
        if mode == "SAME":
            out = []
            for n_i, f_i, s_i, d_i in zip(n, f, s, d):
                n_out = -(-n_i // s_i)
                total = max((n_out - 1) * s_i + d_i * (f_i - 1) + 1 - n_i, 0)
                out.append((total // 2, total - total // 2))
            return tuple(out)  # type: ignore[return-value]
        raise ValueError(
            f"{op}: unknown `padding` string {padding!r}. It needs to be one of ['SAME', 'VALID'], "
            f"an int, a pair (p_h, p_w) or ((top, bottom), (left, right))."
        )
    if isinstance(padding, bool):
        raise TypeError(f"{op}: `padding` must be an int, a pair, a pair of pairs or 'SAME'/'VALID', got {padding!r}.")
    if is_integer(padding):  # also np.int64(1), jnp.int32(1), as `stride` accepts
        p = int(padding.__index__())
        pads = ((p, p), (p, p))
    elif isinstance(padding, (tuple, list)) and len(padding) == 2:
        if all(is_integer(p) for p in padding):
            pads = tuple((int(p.__index__()), int(p.__index__())) for p in padding)
        elif all(isinstance(p, (tuple, list)) and len(p) == 2 and all(is_integer(q) for q in p) for p in padding):
            pads = tuple(tuple(int(q.__index__()) for q in p) for p in padding)
        else:
            raise TypeError(
                f"{op}: `padding` must be an int, (p_h, p_w), ((top, bottom), (left, right)), 'SAME' or 'VALID', "
                f"got {padding!r}."
            )
    else:
        raise TypeError(
            f"{op}: `padding` must be an int, (p_h, p_w), ((top, bottom), (left, right)), 'SAME' or 'VALID', "
            f"got {padding!r}."
        )
    if any(p < 0 for pp in pads for p in pp):
        raise ValueError(f"{op}: `padding` must be non-negative, got {padding!r}; crop the input instead of padding it negatively.")
    return pads  # type: ignore[return-value]


def window_output_sizes(
    op: str,
    what: str,
    n: tuple[int, int],
    f: tuple[int, int],
    pads: tuple[tuple[int, int], tuple[int, int]],
    s: tuple[int, int],
    d: tuple[int, int] = (1, 1),
) -> tuple[int, int]:
    """Output (n_H, n_W) of a window of size f sliding over n padded by pads (any number of axes: one per entry of n).

    Raises when the (dilated) window is larger than the padded input: lax would
    silently return an empty array.
    """
    sizes = []
    for axis, n_i, f_i, (lo, hi), s_i, d_i in zip(SPATIAL_AXES.get(len(n), [f"axis {a}" for a in range(len(n))]), n, f, pads, s, d):
        span = d_i * (f_i - 1) + 1
        if span > n_i + lo + hi:
            raise ValueError(
                f"{op}: the {what} spans {span} pixels in {axis} (f={f_i}, d={d_i}) but the padded input has only "
                f"{n_i + lo + hi} (n={n_i}, padding=({lo}, {hi})); use a smaller {what}, more padding or padding='SAME'."
            )
        sizes.append((n_i + lo + hi - span) // s_i + 1)
    return tuple(sizes)  # type: ignore[return-value]


def check_rank(x, op: str, name: str = "x"):
    """Return (x with a batch axis, whether one was added). Accepts rank 3 or 4."""
    ndim = getattr(x, "ndim", None)
    if ndim not in (3, 4):
        shape = getattr(x, "shape", None)
        raise ValueError(
            f"{op}: `{name}` must have shape (m, n_H, n_W, n_C) or (n_H, n_W, n_C) (NHWC), got shape {shape}; "
            f"reshape it to NHWC (add a channel axis of size 1 for grey images)."
        )
    if ndim == 3:
        return x[None], True
    return x, False


def check_floating(x, op: str, name: str = "x"):
    """Refuse a non-floating `x` (ints, bools) for ops whose result is a mean or a normalisation."""
    dtype = getattr(x, "dtype", None)
    if dtype is None or not jnp.issubdtype(dtype, jnp.floating):
        raise TypeError(
            f"{op}: `{name}` must be a floating-point array (float16, bfloat16, float32 or float64), got {dtype}; "
            f"cast it first, e.g. x.astype(jnp.float32)."
        )


def conv_output_size(n: int, f: int, p: int = 0, s: int = 1, d: int = 1) -> int:
    """Output size of a convolution or pooling along one axis: ⌊(n + 2p − d(f−1) − 1)/s⌋ + 1.

    With d = 1 this is the notes' ⌊(n + 2p − f)/s⌋ + 1.

    >>> conv_output_size(6, 3)        # the notes' 6x6 image, 3x3 filter
    4
    >>> conv_output_size(7, 3, s=2)   # the strided 7x7 example
    3
    """
    for name, value, minimum in (("n", n, 1), ("f", f, 1), ("p", p, 0), ("s", s, 1), ("d", d, 1)):
        if isinstance(value, bool) or not isinstance(value, int):
            raise TypeError(f"conv_output_size: `{name}` must be an int, got {value!r}.")
        if value < minimum:
            raise ValueError(f"conv_output_size: `{name}` must be >= {minimum}, got {value}.")
    out = math.floor((n + 2 * p - d * (f - 1) - 1) / s) + 1
    if out < 1:
        raise ValueError(
            f"conv_output_size: n={n}, f={f}, p={p}, s={s}, d={d} gives an output size of {out} < 1: "
            f"the (dilated) filter of span {d * (f - 1) + 1} does not fit in the padded input of {n + 2 * p}; "
            f"use a smaller f or d, or more padding p."
        )
    return out
