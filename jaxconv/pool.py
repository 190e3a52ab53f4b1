"""Pooling: max, average and global average, on NHWC activations.

Pooling has no parameters to learn: a window of f x f pixels slides with
stride s over each channel separately, so n_C is unchanged and
n' = ⌊(n + 2p − f)/s⌋ + 1.

Max-pool gradients go to the first maximum of each window in row-major order
(the tie policy of lax and PyTorch): where several pixels tie for the
maximum, only the first receives the gradient.

Max pooling has two paths with the same values and gradients: when the
windows tile the input exactly (stride = window, no padding, sizes divisible
by the window, the usual 2x2 pool) a reshape-and-max with a hand-written
backward (`_tiled_max`); everywhere else `lax.reduce_window`. On CPU the
tiled path's gradient is several times faster than reduce_window's.
"""

from __future__ import annotations

from functools import partial

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from jaxconv import _args


def pool_geometry(x_shape, window, stride, padding, op):
    """Check a pooling's arguments; return (f, s, pads, out_shape)."""
    f = _args.pair(window, "window", op, minimum=1)
    s = f if stride is None else _args.pair(stride, "stride", op, minimum=1)
    m, n_H, n_W, n_C = x_shape
    pads = _args.padding_pairs(padding, op, n=(n_H, n_W), f=f, s=s)
    for axis, f_i, (lo, hi) in zip(("height", "width"), f, pads):
        if max(lo, hi) >= f_i:
            raise ValueError(
                f"{op}: padding ({lo}, {hi}) in {axis} must be smaller than the window (={f_i}): a window "
                f"of padding alone has no pixel to pool; use padding <= {f_i - 1}."
            )
    n_out = _args.window_output_sizes(op, "window", (n_H, n_W), f, pads, s)
    return f, s, pads, (m, *n_out, n_C)


def _reduce(x, init, computation, f, s, pads):
    # init must be a Python scalar: JAX recognises (−∞, max) and (0, add) as
    # differentiable window reductions only for constants.
    return lax.reduce_window(x, init, computation, (1, *f, 1), (1, *s, 1), ((0, 0), *pads, (0, 0)))


# ---------------------------------------------------------------------------
# Tiled max pooling (stride = window, no padding): forward and backward side by side.
# ---------------------------------------------------------------------------


def _tiles(x, f):
    """(m, n_H, n_W, n_C) -> (m, n_H/f_H, f_H, n_W/f_W, f_W, n_C): each window on axes 2 and 4."""
    m, n_H, n_W, n_C = x.shape
    return x.reshape(m, n_H // f[0], f[0], n_W // f[1], f[1], n_C)


@partial(jax.custom_vjp, nondiff_argnums=(1,))
def _tiled_max(x, f):
    return _tiles(x, f).max(axis=(2, 4))  # (m, n_H/f_H, n_W/f_W, n_C)


def _tiled_max_fwd(x, f):
    y = _tiled_max(x, f)
    return y, (x, y)


def _tiled_max_bwd(f, res, dY):
    """dX[window] = dY at the first maximum of the window in row-major order, 0 elsewhere.

    Numbers the f_H·f_W positions of every window in row-major order,
    k = i·f_W + j, finds the first position holding the window's maximum,
    k* = min {k : X[k] = Y}, and sends dY there: the tie policy of
    lax.reduce_window and PyTorch (jnp.max's own gradient would split dY among
    the ties instead). Two fusable passes over the tiles, no stacking.
    """
    x, y = res
    tiles = _tiles(x, f)  # (m, n_H', f_H, n_W', f_W, n_C)
    at = lambda a: a[:, :, None, :, None, :]  # (m, n_H', n_W', n_C) -> broadcast over the window  # noqa: E731
    k = np.arange(f[0] * f[1], dtype=np.int32).reshape(1, 1, f[0], 1, f[1], 1)  # position in the window, row-major
    first = jnp.min(jnp.where(tiles == at(y), k, f[0] * f[1]), axis=(2, 4))  # (m, n_H', n_W', n_C): k*
    dX = jnp.where(k == at(first), at(dY), jnp.zeros((), dY.dtype))  # (m, n_H', f_H, n_W', f_W, n_C)
    return (dX.reshape(x.shape),)


_tiled_max.defvjp(_tiled_max_fwd, _tiled_max_bwd)


def tiles_exactly(x_shape, f, s, pads) -> bool:
    """Whether the windows tile the input: stride = window, no padding, n_H and n_W divisible by f."""
    return s == f and pads == ((0, 0), (0, 0)) and x_shape[1] % f[0] == 0 and x_shape[2] % f[1] == 0


def max_pool(x, window=2, stride=None, padding=0):
    """Max pooling. Padding counts as −∞, so it never wins a window.

    Args:
      x: (m, n_H, n_W, n_C) or (n_H, n_W, n_C).
      window: f, an int or (f_H, f_W).
      stride: s, an int or (s_H, s_W); defaults to the window.
      padding: as for `conv2d` (int, pairs, "SAME", "VALID").

    Returns:
      (m, n_H', n_W', n_C). The gradient goes to the first maximum of each window.

    >>> x = jnp.array([[1., 3, 2, 1], [2, 9, 1, 1], [1, 3, 2, 3], [5, 6, 1, 2]])[:, :, None]
    >>> max_pool(x)[..., 0].tolist()
    [[9.0, 2.0], [6.0, 3.0]]
    """
    x, single = _args.check_rank(x, "max_pool")
    f, s, pads, _ = pool_geometry(x.shape, window, stride, padding, "max_pool")
    if tiles_exactly(x.shape, f, s, pads):
        y = _tiled_max(x, f)  # same values and gradients, faster gradient
    else:
        y = _reduce(x, -jnp.inf, lax.max, f, s, pads)
    return y[0] if single else y


def avg_pool(x, window=2, stride=None, padding=0, count_include_pad=True):
    """Average pooling.

    Args:
      x: (m, n_H, n_W, n_C) or (n_H, n_W, n_C).
      window, stride, padding: as for `max_pool`.
      count_include_pad: divide every window by f_H·f_W (True), or by the
        number of real, unpadded pixels in it (False).

    Returns:
      (m, n_H', n_W', n_C).

    >>> x = jnp.array([[1., 3, 2, 1], [2, 9, 1, 1], [1, 3, 2, 3], [5, 6, 1, 2]])[:, :, None]
    >>> avg_pool(x)[..., 0].tolist()
    [[3.75, 1.25], [3.75, 2.0]]
    """
    x, single = _args.check_rank(x, "avg_pool")
    f, s, pads, _ = pool_geometry(x.shape, window, stride, padding, "avg_pool")
    total = _reduce(x, 0.0, lax.add, f, s, pads)  # (m, n_H', n_W', n_C)
    if count_include_pad or pads == ((0, 0), (0, 0)):
        y = total / (f[0] * f[1])
    else:
        ones = jnp.ones((1, *x.shape[1:3], 1), x.dtype)
        y = total / _reduce(ones, 0.0, lax.add, f, s, pads)  # (1, n_H', n_W', 1) real pixels per window
    return y[0] if single else y


def global_avg_pool(x):
    """Mean over the spatial axes: (m, n_H, n_W, n_C) -> (m, n_C); (n_H, n_W, n_C) -> (n_C,)."""
    x, single = _args.check_rank(x, "global_avg_pool")
    y = x.mean(axis=(1, 2))
    return y[0] if single else y
