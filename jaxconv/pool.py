"""Pooling: max, average and global average, on NHWC activations.

Pooling has no parameters to learn: a window of f x f pixels slides with
stride s over each channel separately, so n_C is unchanged and
n' = ⌊(n + 2p − f)/s⌋ + 1 (PyTorch's options: `ceil_mode` rounds up instead,
dropping a last window that would start in the right padding; max pooling's
`dilation` d spaces the window's taps d apart, n' = ⌊(n + 2p − d(f−1) − 1)/s⌋ + 1).
Adaptive pooling picks the windows from the output size instead, with
PyTorch's rule: window i covers [⌊i·n/n'⌋, ⌈(i+1)·n/n'⌉).

Max-pool gradients go to the first maximum of each window in row-major order
(the tie policy of lax and PyTorch): where several pixels tie for the
maximum, only the first receives the gradient.

Max pooling has two paths with the same values and gradients: when the
windows tile the input (stride = window, no padding or dilation, the usual 2x2
pool; rows/columns past the last window in floor mode are sliced off first,
`tiles`) a reshape-and-max with a hand-written backward (`_tiled_max`; without
a gradient, the max of the window's strided slices, which XLA fuses with the
layer before); everywhere else `lax.reduce_window`. On CPU the tiled path's
gradient is several times faster than reduce_window's.
"""

from __future__ import annotations

from functools import partial

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from jaxconv import _args


def pool_geometry(x_shape, window, stride, padding, op, dilation=1, ceil_mode=False):
    """Check a pooling's arguments; return (f, s, pads, out_shape).

    x_shape (m, n_H, n_W, n_C) -> out_shape (m, n_H', n_W', n_C).
    """
    f = _args.pair(window, "window", op, minimum=1)
    s = f if stride is None else _args.pair(stride, "stride", op, minimum=1)
    d = _args.pair(dilation, "dilation", op, minimum=1)
    if not isinstance(ceil_mode, bool):
        raise TypeError(f"{op}: `ceil_mode` must be True or False, got {ceil_mode!r}.")
    m, n_H, n_W, n_C = x_shape
    pads = _args.padding_pairs(padding, op, n=(n_H, n_W), f=f, s=s, d=d)
    for axis, f_i, (lo, hi) in zip(("height", "width"), f, pads):
        if max(lo, hi) >= f_i:
            raise ValueError(
                f"{op}: padding ({lo}, {hi}) in {axis} must be smaller than the window (={f_i}): a window "
                f"of padding alone has no pixel to pool; use padding <= {f_i - 1}."
            )
    if not ceil_mode:
        n_out = _args.window_output_sizes(op, "window", (n_H, n_W), f, pads, s, d)
        return f, s, pads, (m, *n_out, n_C)
    n_out = []
    for axis, n_i, f_i, (lo, hi), s_i, d_i in zip(("height", "width"), (n_H, n_W), f, pads, s, d):
        out = -(-(n_i + lo + hi - d_i * (f_i - 1) - 1) // s_i) + 1  # ⌈(n + lo + hi − d(f−1) − 1)/s⌉ + 1
        if (out - 1) * s_i >= n_i + lo:
            out -= 1  # the last window would start in the right padding: PyTorch drops it
        if out < 1:
            raise ValueError(
                f"{op}: the window spans {d_i * (f_i - 1) + 1} pixels in {axis} (f={f_i}, d={d_i}), more than the "
                f"padded input of {n_i + lo + hi} allows even with ceil_mode=True; use a smaller window or more padding."
            )
        n_out.append(out)
    return f, s, pads, (m, *n_out, n_C)


def _window_pads(x_shape, f, s, pads, d, out_shape):
    """The padding for lax.reduce_window that yields out_shape: the high side grows by ceil mode's overhang.

    Unchanged (pads itself) whenever the last window ends inside the padded input,
    as always in floor mode.
    """
    result = []
    for n_i, f_i, s_i, d_i, (lo, hi), n_out in zip(x_shape[1:3], f, s, d, pads, out_shape[1:3]):
        end = (n_out - 1) * s_i + d_i * (f_i - 1) + 1  # the last window's end in padded coordinates
        result.append((lo, max(hi, end - n_i - lo)))
    return tuple(result)


def _reduce(x, init, computation, f, s, pads, d=(1, 1)):
    # init must be a Python scalar: JAX recognises (−∞, max) and (0, add) as
    # differentiable window reductions only for constants.
    return lax.reduce_window(
        x, init, computation, (1, *f, 1), (1, *s, 1), ((0, 0), *pads, (0, 0)), window_dilation=(1, *d, 1)
    )


def _argmax_indices(x, f, s, pads, d):
    """Flat index h·n_W + w of each window's first maximum in row-major order, (m, n_H', n_W', n_C) int32.

    One variadic reduce_window over (value, index) pairs: the larger value wins,
    a tie goes to the smaller index; padding is (−∞, n_H·n_W) so it never wins.
    """
    m, n_H, n_W, n_C = x.shape
    flat = jnp.broadcast_to(jnp.arange(n_H * n_W, dtype=jnp.int32).reshape(1, n_H, n_W, 1), x.shape)

    def first_max(a, b):
        (va, ia), (vb, ib) = a, b
        take_b = (vb > va) | ((vb == va) & (ib < ia))
        return jnp.where(take_b, vb, va), jnp.where(take_b, ib, ia)

    init = (jnp.array(-jnp.inf, x.dtype), jnp.array(n_H * n_W, jnp.int32))
    _, idx = lax.reduce_window(
        (lax.stop_gradient(x), flat), init, first_max, (1, *f, 1), (1, *s, 1), ((0, 0), *pads, (0, 0)),
        window_dilation=(1, *d, 1),
    )
    return idx


# ---------------------------------------------------------------------------
# Tiled max pooling (stride = window, no padding): forward and backward side by side.
# ---------------------------------------------------------------------------


def _tiles(x, f):
    """(m, n_H, n_W, n_C) -> (m, n_H/f_H, f_H, n_W/f_W, f_W, n_C): each window on axes 2 and 4."""
    m, n_H, n_W, n_C = x.shape
    return x.reshape(m, n_H // f[0], f[0], n_W // f[1], f[1], n_C)


@partial(jax.custom_vjp, nondiff_argnums=(1,))
def _tiled_max(x, f):
    """Without a gradient (evaluation, inference): the elementwise max of the f_H·f_W strided slices, which
    XLA fuses with the ops producing x, so the evaluation step is quicker than with the reduction below.
    With one (`_tiled_max_fwd`), the reduction over the tiles: the slices made the training step slower,
    and the backward reads the tiles anyway (docs/benchmarks.md#tiled-max-pool)."""
    y = None
    for i in range(f[0]):
        for j in range(f[1]):
            tap = x[:, i :: f[0], j :: f[1], :]  # (m, n_H/f_H, n_W/f_W, n_C): position (i, j) of every window
            y = tap if y is None else jnp.maximum(y, tap)
    return y


def _tiled_max_fwd(x, f):
    y = _tiles(x, f).max(axis=(2, 4))  # (m, n_H/f_H, n_W/f_W, n_C)
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


# ---------------------------------------------------------------------------
# Dilated max pooling: forward by (value, index) pairs, backward scatters dY to the indices.
# ---------------------------------------------------------------------------


@partial(jax.custom_vjp, nondiff_argnums=(1, 2, 3, 4))
def _dilated_max(x, f, s, pads, d):
    return _reduce(x, -jnp.inf, lax.max, f, s, pads, d)  # (m, n_H', n_W', n_C)


def _dilated_max_fwd(x, f, s, pads, d):
    return _dilated_max(x, f, s, pads, d), (x, _argmax_indices(x, f, s, pads, d))


def _dilated_max_bwd(f, s, pads, d, res, dY):
    """dX[m, k, c] = Σ over windows whose first maximum is pixel k = h·n_W + w of dY[m, h', w', c]."""
    x, idx = res  # idx (m, n_H', n_W', n_C): flat pixel index of each window's first maximum
    m, n_H, n_W, n_C = x.shape
    batch = np.arange(m).reshape(m, 1, 1, 1)
    channel = np.arange(n_C).reshape(1, 1, 1, n_C)
    flat = (batch * (n_H * n_W) + idx) * n_C + channel  # position in x.ravel()
    flat = jnp.where(idx < n_H * n_W, flat, x.size)  # a window of padding only (possible with dilation): dropped
    dX = jnp.zeros(x.size, dY.dtype).at[flat.ravel()].add(dY.ravel(), mode="drop")
    return (dX.reshape(x.shape),)


_dilated_max.defvjp(_dilated_max_fwd, _dilated_max_bwd)


def tiles(f, s, window_pads, d) -> bool:
    """Whether the windows tile the input: stride = window, no dilation, no padding or ceil-mode overhang
    (`_window_pads`). Rows/columns past the last window (floor mode, f not dividing n) are read by none."""
    return s == f and d == (1, 1) and window_pads == ((0, 0), (0, 0))


def max_pool(x, window=2, stride=None, padding=0, dilation=1, ceil_mode=False, return_indices=False):
    """Max pooling. Padding counts as −∞, so it never wins a window.

    Args:
      x: (m, n_H, n_W, n_C) or (n_H, n_W, n_C).
      window: f, an int or (f_H, f_W).
      stride: s, an int or (s_H, s_W); defaults to the window.
      padding: as for `conv2d` (int, pairs, "SAME", "VALID").
      dilation: d, an int or (d_H, d_W): the window's taps are d pixels apart.
      ceil_mode: round the output size up, as PyTorch's ceil_mode (the windows
        may then overhang the bottom/right, which counts as padding).
      return_indices: also return, for each output, the flat index h·n_W + w
        (into the unpadded input, per example and channel) of the window's
        first maximum, as PyTorch's return_indices.

    Returns:
      y (m, n_H', n_W', n_C), and with return_indices the indices, the same
      shape, int32. The gradient goes to the first maximum of each window.

    >>> x = jnp.array([[1., 3, 2, 1], [2, 9, 1, 1], [1, 3, 2, 3], [5, 6, 1, 2]])[:, :, None]
    >>> max_pool(x)[..., 0].tolist()
    [[9.0, 2.0], [6.0, 3.0]]
    >>> y, indices = max_pool(x, return_indices=True)
    >>> indices[..., 0].tolist()  # 9 is at (1, 1): 1·4 + 1
    [[5, 2], [13, 11]]
    """
    x, single = _args.check_rank(x, "max_pool")
    f, s, pads, out_shape = pool_geometry(x.shape, window, stride, padding, "max_pool", dilation, ceil_mode)
    d = _args.pair(dilation, "dilation", "max_pool", minimum=1)
    window_pads = _window_pads(x.shape, f, s, pads, d, out_shape)  # pads, grown by ceil mode's overhang
    if tiles(f, s, window_pads, d):
        # Same values and gradients as reduce_window, faster gradient. The rows/columns no window reads are
        # sliced off first (a no-op when f divides n), so a 35x35 input pooled to 17x17 takes this path too
        # rather than XLA's generic reduce-window and its slow gradient (docs/benchmarks.md#tiled-max-pool).
        y = _tiled_max(x[:, : out_shape[1] * f[0], : out_shape[2] * f[1]], f)
    elif d != (1, 1):
        y = _dilated_max(x, f, s, window_pads, d)  # lax has no VJP for a dilated max window
    else:
        y = _reduce(x, -jnp.inf, lax.max, f, s, window_pads, d)
    if not return_indices:
        return y[0] if single else y
    idx = _argmax_indices(x, f, s, window_pads, d)
    return (y[0], idx[0]) if single else (y, idx)


def avg_pool(x, window=2, stride=None, padding=0, count_include_pad=True, ceil_mode=False, divisor_override=None):
    """Average pooling.

    Args:
      x: (m, n_H, n_W, n_C) or (n_H, n_W, n_C).
      window, stride, padding, ceil_mode: as for `max_pool`.
      count_include_pad: divide every window by the number of its pixels inside
        the padded input (True; f_H·f_W except where ceil mode overhangs), or by
        the number of real, unpadded pixels in it (False).
      divisor_override: a nonzero int to divide every window's sum by instead.

    Returns:
      (m, n_H', n_W', n_C).

    >>> x = jnp.array([[1., 3, 2, 1], [2, 9, 1, 1], [1, 3, 2, 3], [5, 6, 1, 2]])[:, :, None]
    >>> avg_pool(x)[..., 0].tolist()
    [[3.75, 1.25], [3.75, 2.0]]
    """
    x, single = _args.check_rank(x, "avg_pool")
    _args.check_floating(x, "avg_pool")
    f, s, pads, out_shape = pool_geometry(x.shape, window, stride, padding, "avg_pool", 1, ceil_mode)
    if divisor_override is not None and (
        isinstance(divisor_override, bool) or not isinstance(divisor_override, int) or divisor_override == 0
    ):
        raise ValueError(
            f"avg_pool: `divisor_override` must be None or a nonzero int (as PyTorch), got {divisor_override!r}; "
            f"use None to divide by the window's pixel count."
        )
    if not ceil_mode and divisor_override is None:
        total = _reduce(x, 0.0, lax.add, f, s, pads)  # (m, n_H', n_W', n_C)
        if count_include_pad or pads == ((0, 0), (0, 0)):
            y = total / (f[0] * f[1])
        else:
            ones = jnp.ones((1, *x.shape[1:3], 1), x.dtype)
            y = total / _reduce(ones, 0.0, lax.add, f, s, pads)  # (1, n_H', n_W', 1) real pixels per window
        return y[0] if single else y
    total = _reduce(x, 0.0, lax.add, f, s, _window_pads(x.shape, f, s, pads, (1, 1), out_shape))
    if divisor_override is not None:
        y = total / divisor_override
    else:
        y = total / _divisors(x.shape, f, s, pads, out_shape, count_include_pad).astype(x.dtype)
    return y[0] if single else y


def _divisors(x_shape, f, s, pads, out_shape, count_include_pad):
    """PyTorch's avg-pool divisor per window, (1, n_H', n_W', 1), from shapes alone (a NumPy constant).

    Along each axis window k covers [k·s − lo, k·s − lo + f); counted are its
    pixels inside the padded input [−lo, n + hi) (count_include_pad) or inside
    the real input [0, n); the divisor is the product over the two axes.
    """
    counts = []
    for n_i, f_i, s_i, (lo, hi), n_out in zip(x_shape[1:3], f, s, pads, out_shape[1:3]):
        start = np.arange(n_out) * s_i - lo
        end = np.minimum(start + f_i, n_i + hi)
        counts.append(end - start if count_include_pad else np.minimum(end, n_i) - np.maximum(start, 0))
    return (counts[0][:, None] * counts[1][None, :])[None, :, :, None]


def global_avg_pool(x):
    """Mean over the spatial axes: (m, n_H, n_W, n_C) -> (m, n_C); (n_H, n_W, n_C) -> (n_C,)."""
    x, single = _args.check_rank(x, "global_avg_pool")
    y = x.mean(axis=(1, 2))
    return y[0] if single else y


# ---------------------------------------------------------------------------
# Adaptive pooling: the output size chooses the windows (PyTorch's rule).
# ---------------------------------------------------------------------------


def adaptive_windows(n, n_out):
    """(start, end) arrays of PyTorch's adaptive windows along one axis: [⌊i·n/n'⌋, ⌈(i+1)·n/n'⌉), i < n'."""
    i = np.arange(n_out)
    return (i * n) // n_out, -(-((i + 1) * n) // n_out)


def adaptive_output_size(x_shape, output_size, op):
    """(n_H', n_W') of adaptive pooling of an (m, n_H, n_W, n_C) input: output_size (an int, or a pair
    whose None entries keep the input's size) normalised and checked, errors naming `op`."""
    if output_size is None or isinstance(output_size, int):
        output_size = (output_size, output_size)
    if not isinstance(output_size, (tuple, list)) or len(output_size) != 2:
        raise TypeError(f"{op}: `output_size` must be an int or a pair (n_H', n_W') (None keeps that size), got {output_size!r}.")
    if 0 in x_shape[1:3]:
        raise ValueError(
            f"{op}: `x` must have n_H, n_W >= 1 to pool adaptively (as PyTorch), got (n_H, n_W) = {tuple(x_shape[1:3])}; "
            f"drop empty images before pooling."
        )
    sizes = tuple(n if o is None else o for n, o in zip(x_shape[1:3], output_size))
    return _args.pair(sizes, "output_size", op, minimum=1)


def adaptive_avg_pool(x, output_size):
    """Average pooling to a given output size, windows chosen by PyTorch's adaptive rule.

    Args:
      x: (m, n_H, n_W, n_C) or (n_H, n_W, n_C).
      output_size: n' an int or (n_H', n_W'); None in a pair keeps that axis's size.

    Returns:
      (m, n_H', n_W', n_C): y[i, j] = mean of x over rows [⌊i·n_H/n_H'⌋, ⌈(i+1)·n_H/n_H'⌉)
      and columns likewise. When n divides evenly this is avg_pool with f = s = n/n'.

    >>> adaptive_avg_pool(jnp.arange(5.0).reshape(1, 5, 1), (1, 3))[..., 0].tolist()  # windows [0,2) [1,4) [3,5)
    [[0.5, 2.0, 3.5]]
    """
    x, single = _args.check_rank(x, "adaptive_avg_pool")
    _args.check_floating(x, "adaptive_avg_pool")
    o = adaptive_output_size(x.shape, output_size, "adaptive_avg_pool")
    n = x.shape[1:3]
    if n[0] % o[0] == 0 and n[1] % o[1] == 0:
        f = (n[0] // o[0], n[1] // o[1])
        y = _reduce(x, 0.0, lax.add, f, f, ((0, 0), (0, 0))) / (f[0] * f[1])
    else:
        # A_H[i, h] = 1/len(window i) on window i, so y = A_H · x · A_Wᵀ: a mean along each axis in turn.
        a = []
        for n_i, o_i in zip(n, o):
            start, end = adaptive_windows(n_i, o_i)
            pos = np.arange(n_i)
            a.append(((pos >= start[:, None]) & (pos < end[:, None])) / (end - start)[:, None])  # (n', n)
        y = jnp.einsum("ih,mhwc,jw->mijc", a[0].astype(x.dtype), x, a[1].astype(x.dtype))
    return y[0] if single else y


def adaptive_max_axis(x, idx, axis, n_out):
    """First-maximum adaptive max along `axis` (any spatial axis) of x, carrying the flat indices idx alongside.

    Gathers each window's taps, padded to the longest window with −∞, and picks
    with argmax (the first maximum) and take_along_axis, so the gradient goes to
    exactly the picked pixel.
    """
    start, end = adaptive_windows(x.shape[axis], n_out)
    length = int((end - start).max())
    taps = start[:, None] + np.arange(length)  # (n', L)
    valid = taps < end[:, None]
    taps = np.minimum(taps, end[:, None] - 1)
    g = jnp.take(x, taps, axis=axis)  # axis replaced by (n', L)
    mask = valid.reshape((1,) * axis + valid.shape + (1,) * (x.ndim - axis - 1))
    if jnp.issubdtype(g.dtype, jnp.floating):
        low = -jnp.inf  # the identity of max
    else:
        low = False if g.dtype == jnp.bool_ else jnp.iinfo(g.dtype).min
    g = jnp.where(mask, g, jnp.array(low, g.dtype))
    k = jnp.expand_dims(jnp.argmax(g, axis=axis + 1), axis + 1)  # the first maximum in each window
    y = jnp.take_along_axis(g, k, axis=axis + 1).squeeze(axis + 1)
    idx = jnp.take_along_axis(jnp.take(idx, taps, axis=axis), k, axis=axis + 1).squeeze(axis + 1)
    return y, idx


def adaptive_max_pool(x, output_size, return_indices=False):
    """Max pooling to a given output size, windows chosen by PyTorch's adaptive rule.

    Args:
      x: (m, n_H, n_W, n_C) or (n_H, n_W, n_C).
      output_size: as for `adaptive_avg_pool`.
      return_indices: also return the flat index h·n_W + w of each window's first maximum.

    Returns:
      (m, n_H', n_W', n_C) [and the indices, int32]. The gradient goes to the
      first maximum of each window in row-major order.
    """
    x, single = _args.check_rank(x, "adaptive_max_pool")
    o = adaptive_output_size(x.shape, output_size, "adaptive_max_pool")
    n = x.shape[1:3]
    if n[0] % o[0] == 0 and n[1] % o[1] == 0:
        f = (n[0] // o[0], n[1] // o[1])
        return max_pool(x[0] if single else x, f, f, return_indices=return_indices)
    m, n_H, n_W, n_C = x.shape
    idx = jnp.broadcast_to(jnp.arange(n_H * n_W, dtype=jnp.int32).reshape(1, n_H, n_W, 1), x.shape)
    # Columns first, then rows: the row pass keeps the first row holding the maximum and the
    # column pass already kept the first column in that row: the first maximum in row-major order.
    y, idx = adaptive_max_axis(x, idx, 2, o[1])  # (m, n_H, n_W', n_C)
    y, idx = adaptive_max_axis(y, idx, 1, o[0])  # (m, n_H', n_W', n_C)
    if single:
        y, idx = y[0], idx[0]
    return (y, idx) if return_indices else y
