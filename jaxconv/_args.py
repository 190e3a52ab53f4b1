"""Argument normalisation and checks shared by the functional ops.

Every public op normalises its arguments once, here, and checks them before
XLA sees them, so a mistake is reported in the notes' terms (n, f, p, s, d)
with the fix, instead of as an XLA shape error or a silently empty array.
"""

from __future__ import annotations

import math
from typing import Sequence, Union

# The one fixed layout of jaxconv: activations NHWC, filters HWIO.
LAYOUT = ("NHWC", "HWIO", "NHWC")

IntPair = Union[int, Sequence[int]]
Padding = Union[int, str, Sequence]


def pair(value, name: str, op: str, *, minimum: int) -> tuple[int, int]:
    """Turn an int or an (h, w) pair into a tuple of two Python ints >= minimum."""
    given = value  # reported as the user wrote it (0, not (0, 0))
    if isinstance(value, bool):
        raise TypeError(f"{op}: `{name}` must be an int or a pair of ints (h, w), got {value!r}.")
    if isinstance(value, int) or (hasattr(value, "__index__") and not isinstance(value, (tuple, list))):
        value = (int(value), int(value))
    if not isinstance(value, (tuple, list)) or len(value) != 2:
        raise TypeError(f"{op}: `{name}` must be an int or a pair of ints (h, w), got {value!r}.")
    try:
        h, w = (int(v.__index__()) for v in value)
    except (AttributeError, TypeError):
        raise TypeError(f"{op}: `{name}` must be an int or a pair of ints (h, w), got {value!r}.") from None
    if h < minimum or w < minimum:
        raise ValueError(f"{op}: `{name}` must be >= {minimum}, got {given!r}; use {name}={minimum} or larger.")
    return h, w


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
    if isinstance(padding, int):
        pads = ((padding, padding), (padding, padding))
    elif isinstance(padding, (tuple, list)) and len(padding) == 2:
        if all(isinstance(p, int) and not isinstance(p, bool) for p in padding):
            pads = ((padding[0], padding[0]), (padding[1], padding[1]))
        elif all(
            isinstance(p, (tuple, list)) and len(p) == 2 and all(isinstance(q, int) and not isinstance(q, bool) for q in p)
            for p in padding
        ):
            pads = (tuple(padding[0]), tuple(padding[1]))
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
    """Output (n_H, n_W) of a window of size f sliding over n padded by pads.

    Raises when the (dilated) window is larger than the padded input: lax would
    silently return an empty array.
    """
    sizes = []
    for axis, n_i, f_i, (lo, hi), s_i, d_i in zip(("height", "width"), n, f, pads, s, d):
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
