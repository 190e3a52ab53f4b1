"""Pooling over any number of spatial axes, channels last: the core of the 1-D and 3-D pools.

`jaxconv.pool` holds the 2-D pools and their explanation; the same definitions hold per axis
here, for x (m, *spatial, n_C): NWC (m, n_W, n_C) for sequences, NDHWC (m, n_D, n_H, n_W, n_C)
for volumes. Along each spatial axis a window of f taps, d apart, slides with stride s over the
input padded by (lo, hi): n' = ⌊(n + lo + hi − d(f−1) − 1)/s⌋ + 1, or ⌈·⌉ + 1 with ceil_mode
(less one where the last window would start in the high padding, as PyTorch). Padding may be
at most half the window, f // 2, as PyTorch requires. Adaptive pools pick window i along an
axis as [⌊i·n/n'⌋, ⌈(i+1)·n/n'⌉). Indices (`return_indices`) are PyTorch's: the flat index of
the pixel in the unpadded input of one example and channel, row-major over the spatial axes
(w in 1-D; (d·n_H + h)·n_W + w in 3-D). Max-pool gradients go to each window's first maximum
in that row-major order, as in lax and PyTorch.

Max pooling takes one of three paths with the same values and gradients, as `jaxconv.pool`'s:
windows that tile the input (stride = window, no padding, dilation or ceil overhang) reshape
and reduce, with a hand-written backward (`_tiled_max`); dilated windows reduce with
lax.reduce_window and scatter the gradient to the argmax indices (`_dilated_max`, lax has
no gradient for a dilated max window); every other window is plain lax.reduce_window.
"""

from __future__ import annotations

import math
from functools import partial

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from jaxconv import _args
from jaxconv.pool import adaptive_max_axis, adaptive_windows



# ---------------------------------------------------------------------------
# Arguments: normalised once, checked before XLA sees them.
# ---------------------------------------------------------------------------


def check_rank_nd(x, k, op):
    """Return (x with a batch axis, whether one was added) for a pool over k spatial axes; x must be real."""
    _args.check_rank_nd(x, k, op)
    x = jnp.asarray(x)
    if x.dtype == jnp.bool_ or not (jnp.issubdtype(x.dtype, jnp.floating) or jnp.issubdtype(x.dtype, jnp.integer)):
        raise TypeError(f"{op}: `x` must be a real array (floating or integer), got dtype {x.dtype}; cast it first, e.g. x.astype(jnp.float32).")
    return (x[None], True) if x.ndim == k + 1 else (x, False)


def pool_geometry_nd(x_shape, window, stride, padding, op, dilation=1, ceil_mode=False):
    """Check a pool's arguments for x (m, *spatial, n_C); return (f, s, d, pads, out_shape), each per axis."""
    k = len(x_shape) - 2
    f = _args.ntuple(window, "window", op, n=k, minimum=1)
    s = f if stride is None else _args.ntuple(stride, "stride", op, n=k, minimum=1)
    d = _args.ntuple(dilation, "dilation", op, n=k, minimum=1)
    if not isinstance(ceil_mode, bool):
        raise TypeError(f"{op}: `ceil_mode` must be True or False, got {ceil_mode!r}.")
    spatial = tuple(x_shape[1:-1])
    pads = _args.padding_tuples(padding, op, n=spatial, f=f, s=s, d=d)
    n_out = []
    for axis, n_i, f_i, (lo, hi), s_i, d_i in zip(_args.SPATIAL_AXES.get(k, range(k)), spatial, f, pads, s, d):
        if max(lo, hi) > f_i // 2:
            raise ValueError(
                f"{op}: padding ({lo}, {hi}) in {axis} must be at most half the window (f={f_i}), as PyTorch's; "
                f"use padding <= {f_i // 2} or a larger window."
            )
        span = n_i + lo + hi - d_i * (f_i - 1) - 1  # room left for the window to slide
        out = (-(-span // s_i) if ceil_mode else span // s_i) + 1
        if ceil_mode and (out - 1) * s_i >= n_i + lo:
            out -= 1  # the last window would start in the high padding: PyTorch drops it
        if span < 0 or out < 1:
            raise ValueError(
                f"{op}: the window spans {d_i * (f_i - 1) + 1} pixels in {axis} (f={f_i}, d={d_i}) but the padded "
                f"input has only {n_i + lo + hi} (n={n_i}, padding=({lo}, {hi})); use a smaller window or dilation, "
                f"or more padding."
            )
        n_out.append(out)
    return f, s, d, pads, (x_shape[0], *n_out, x_shape[-1])


def window_pads_nd(x_shape, f, s, d, pads, out_shape):
    """The padding for lax.reduce_window that yields out_shape: the high side grows by ceil mode's overhang."""
    result = []
    for n_i, f_i, s_i, d_i, (lo, hi), n_out in zip(x_shape[1:-1], f, s, d, pads, out_shape[1:-1]):
        end = (n_out - 1) * s_i + d_i * (f_i - 1) + 1  # the last window's end in padded coordinates
        result.append((lo, max(hi, end - n_i - lo)))
    return tuple(result)


def lowest(dtype):
    """The identity of max for `dtype`: −∞ (a Python float, which reduce_window can differentiate), or the
    smallest integer as a NumPy scalar of `dtype` (a Python int would be int64 with x64 on)."""
    return -math.inf if jnp.issubdtype(dtype, jnp.floating) else np.array(np.iinfo(dtype).min, dtype)[()]


def _reduce(x, init, computation, f, s, pads, d=None):
    # init is a Python scalar: JAX differentiates (−∞, max) and (0, add) window reductions only for constants.
    d = d or (1,) * len(f)
    return lax.reduce_window(x, init, computation, (1, *f, 1), (1, *s, 1), ((0, 0), *pads, (0, 0)), window_dilation=(1, *d, 1))


def _argmax_indices(x, f, s, pads, d):
    """Flat spatial index of each window's first maximum in row-major order, (m, *n', n_C) int32.

    One variadic reduce_window over (value, index) pairs: the larger value wins, a tie goes
    to the smaller index; padding is (lowest, Π n) so it never wins.
    """
    size = math.prod(x.shape[1:-1])
    flat = jnp.broadcast_to(jnp.arange(size, dtype=jnp.int32).reshape(1, *x.shape[1:-1], 1), x.shape)

    def first_max(a, b):
        (va, ia), (vb, ib) = a, b
        take_b = (vb > va) | ((vb == va) & (ib < ia))
        return jnp.where(take_b, vb, va), jnp.where(take_b, ib, ia)

    init = (jnp.array(lowest(x.dtype), x.dtype), jnp.array(size, jnp.int32))
    _, idx = lax.reduce_window(
        (lax.stop_gradient(x), flat), init, first_max, (1, *f, 1), (1, *s, 1), ((0, 0), *pads, (0, 0)),
        window_dilation=(1, *d, 1),
    )
    return idx


# ---------------------------------------------------------------------------
# Tiled max pooling (stride = window, no padding): forward and backward side by side.
# ---------------------------------------------------------------------------


def _tiles(x, f):
    """(m, n_1, ..., n_k, n_C) -> (m, n_1/f_1, f_1, ..., n_k/f_k, f_k, n_C): window taps on axes 2, 4, ..., 2k."""
    shape = [x.shape[0]]
    for n_i, f_i in zip(x.shape[1:-1], f):
        shape += [n_i // f_i, f_i]
    return x.reshape(*shape, x.shape[-1])


def _tap_axes(k):
    return tuple(range(2, 2 * k + 1, 2))


@partial(jax.custom_vjp, nondiff_argnums=(1,))
def _tiled_max(x, f):
    """Without a gradient: the elementwise max of the window's Π f strided slices, which XLA fuses with the
    layer before (as `jaxconv.pool`'s 2-D tiled max); with one, `_tiled_max_fwd`'s reduction over the tiles."""
    y = None
    for offsets in np.ndindex(*f):
        tap = x[(slice(None), *(slice(o, None, f_i) for o, f_i in zip(offsets, f)), slice(None))]  # (m, *n', n_C)
        y = tap if y is None else jnp.maximum(y, tap)
    return y


def _tiled_max_fwd(x, f):
    y = _tiles(x, f).max(axis=_tap_axes(len(f)))  # (m, *n', n_C)
    return y, (x, y)


def _tiled_max_bwd(f, res, dY):
    """dX[window] = dY at the first maximum of the window in row-major order, 0 elsewhere.

    Numbers the Π f positions of every window row-major, finds the first position holding the
    window's maximum, k* = min {k : X[k] = Y}, and sends dY there (jnp.max's own gradient would
    split dY among ties).
    """
    x, y = res
    k_axes = _tap_axes(len(f))
    tiles = _tiles(x, f)  # (m, n'_1, f_1, ..., n'_k, f_k, n_C)
    at = lambda a: jnp.expand_dims(a, k_axes)  # (m, *n', n_C) -> broadcast over the window  # noqa: E731
    shape = [1] * tiles.ndim
    for axis, f_i in zip(k_axes, f):
        shape[axis] = f_i
    k = np.arange(math.prod(f), dtype=np.int32).reshape(shape)  # position in the window, row-major
    first = jnp.min(jnp.where(tiles == at(y), k, math.prod(f)), axis=k_axes)  # (m, *n', n_C): k*
    dX = jnp.where(k == at(first), at(dY), jnp.zeros((), dY.dtype))
    return (dX.reshape(x.shape),)


_tiled_max.defvjp(_tiled_max_fwd, _tiled_max_bwd)


# ---------------------------------------------------------------------------
# Dilated max pooling: forward by reduce_window, backward scatters dY to the argmax indices.
# ---------------------------------------------------------------------------


@partial(jax.custom_vjp, nondiff_argnums=(1, 2, 3, 4))
def _dilated_max(x, f, s, pads, d):
    return _reduce(x, lowest(x.dtype), lax.max, f, s, pads, d)  # (m, *n', n_C)


def _dilated_max_fwd(x, f, s, pads, d):
    return _dilated_max(x, f, s, pads, d), (x, _argmax_indices(x, f, s, pads, d))


def _dilated_max_bwd(f, s, pads, d, res, dY):
    """dX[m, p, c] = Σ over windows whose first maximum is pixel p (flat spatial index) of dY[m, window, c]."""
    x, idx = res  # (m, *n', n_C): flat spatial index of each window's first maximum
    m, size, n_C = x.shape[0], math.prod(x.shape[1:-1]), x.shape[-1]
    batch = np.arange(m).reshape((m,) + (1,) * (idx.ndim - 1))
    channel = np.arange(n_C)
    flat = (batch * size + idx) * n_C + channel  # position in x.ravel()
    flat = jnp.where(idx < size, flat, x.size)  # a window of padding only (possible with dilation): dropped
    dX = jnp.zeros(x.size, dY.dtype).at[flat.ravel()].add(dY.ravel(), mode="drop")
    return (dX.reshape(x.shape),)


_dilated_max.defvjp(_dilated_max_fwd, _dilated_max_bwd)


def _window_slice(x, out_shape, f):
    """x without the trailing pixels of each axis that no tiled window reads (floor mode, f not dividing n)."""
    return x[(slice(None), *(slice(0, o * f_i) for o, f_i in zip(out_shape[1:-1], f)), slice(None))]


def _check_flag(op, name, value):
    if not isinstance(value, bool):
        raise TypeError(f"{op}: `{name}` must be True or False, got {value!r}.")


# ---------------------------------------------------------------------------
# The N-D pools; the public 1-D and 3-D names below fix k and the op's name.
# ---------------------------------------------------------------------------


def _max_pool(op, k, x, window, stride, padding, dilation, ceil_mode, return_indices):
    x, single = check_rank_nd(x, k, op)
    f, s, d, pads, out_shape = pool_geometry_nd(x.shape, window, stride, padding, op, dilation, ceil_mode)
    _check_flag(op, "return_indices", return_indices)
    window_pads = window_pads_nd(x.shape, f, s, d, pads, out_shape)  # pads, grown by ceil mode's overhang
    if s == f and d == (1,) * k and window_pads == ((0, 0),) * k:
        y = _tiled_max(_window_slice(x, out_shape, f), f)  # same values and gradient as reduce_window, faster
    elif d != (1,) * k:
        y = _dilated_max(x, f, s, window_pads, d)  # lax has no gradient for a dilated max window
    else:
        y = _reduce(x, lowest(x.dtype), lax.max, f, s, window_pads)
    if not return_indices:
        return y[0] if single else y
    idx = _argmax_indices(x, f, s, window_pads, d)
    return (y[0], idx[0]) if single else (y, idx)


def _avg_pool(op, k, x, window, stride, padding, count_include_pad, ceil_mode, divisor_override):
    x, single = check_rank_nd(x, k, op)
    _args.check_floating(x, op)
    f, s, d, pads, out_shape = pool_geometry_nd(x.shape, window, stride, padding, op, 1, ceil_mode)
    _check_flag(op, "count_include_pad", count_include_pad)
    if divisor_override is not None and (not _args.is_integer(divisor_override) or int(divisor_override) == 0):
        raise ValueError(
            f"{op}: `divisor_override` must be None or a nonzero int (as PyTorch), got {divisor_override!r}; "
            f"use None to divide by the window's pixel count."
        )
    total = _reduce(x, 0.0, lax.add, f, s, window_pads_nd(x.shape, f, s, d, pads, out_shape))  # (m, *n', n_C)
    if divisor_override is not None:
        y = total / int(divisor_override)
    else:
        divisor = avg_divisors(x.shape, f, s, pads, out_shape, count_include_pad)  # (1, *n', 1)
        same = divisor.min() == divisor.max()  # every window whole: one number, as lax's own average would divide
        y = total / (int(divisor.min()) if same else jnp.asarray(divisor, x.dtype))
    return y[0] if single else y


def avg_divisors(x_shape, f, s, pads, out_shape, count_include_pad):
    """PyTorch's avg-pool divisor per window, (1, *n', 1), from shapes alone (a NumPy constant).

    Along each axis window j covers [j·s − lo, j·s − lo + f); counted are its pixels inside the
    padded input [−lo, n + hi) (count_include_pad) or inside the real input [0, n); the divisor
    is the product over the axes.
    """
    divisor = np.ones((1,) * len(x_shape))
    for axis, (n_i, f_i, s_i, (lo, hi), n_out) in enumerate(zip(x_shape[1:-1], f, s, pads, out_shape[1:-1]), start=1):
        start = np.arange(n_out) * s_i - lo
        end = np.minimum(start + f_i, n_i + hi)
        count = end - start if count_include_pad else np.minimum(end, n_i) - np.maximum(start, 0)
        divisor = divisor * count.reshape([-1 if a == axis else 1 for a in range(len(x_shape))])
    return divisor


def adaptive_sizes(x_shape, output_size, op):
    """(n'_1, ..., n'_k) of adaptive pooling of x (m, *spatial, n_C): an int, or one per axis (None keeps the axis)."""
    k = len(x_shape) - 2
    sizes = (output_size,) * k if output_size is None or _args.is_integer(output_size) else output_size
    if not isinstance(sizes, (tuple, list)) or len(sizes) != k:
        raise TypeError(f"{op}: `output_size` must be an int or {k} of them, one per spatial axis (None keeps that size), got {output_size!r}.")
    if 0 in x_shape[1:-1]:
        raise ValueError(f"{op}: `x` must have every spatial size >= 1 to pool adaptively (as PyTorch), got shape {tuple(x_shape)}; drop empty inputs before pooling.")
    sizes = tuple(n if o is None else o for n, o in zip(x_shape[1:-1], sizes))
    return _args.ntuple(sizes, "output_size", op, n=k, minimum=1)


def _adaptive_avg_pool(op, k, x, output_size):
    x, single = check_rank_nd(x, k, op)
    _args.check_floating(x, op)
    o = adaptive_sizes(x.shape, output_size, op)
    n = x.shape[1:-1]
    if all(n_i % o_i == 0 for n_i, o_i in zip(n, o)):
        f = tuple(n_i // o_i for n_i, o_i in zip(n, o))
        y = _reduce(x, 0.0, lax.add, f, f, ((0, 0),) * k) / math.prod(f)
    else:
        y = x
        for axis, (n_i, o_i) in enumerate(zip(n, o), start=1):
            # A[i, p] = 1/len(window i) on window i: the mean along this axis is A · x.
            start, end = adaptive_windows(n_i, o_i)
            pos = np.arange(n_i)
            a = ((pos >= start[:, None]) & (pos < end[:, None])) / (end - start)[:, None]  # (n', n)
            y = jnp.moveaxis(jnp.tensordot(jnp.asarray(a, x.dtype), y, axes=(1, axis), precision=lax.Precision.HIGHEST), 0, axis)
    return y[0] if single else y


def _adaptive_max_pool(op, k, x, output_size, return_indices):
    x, single = check_rank_nd(x, k, op)
    o = adaptive_sizes(x.shape, output_size, op)
    _check_flag(op, "return_indices", return_indices)
    n = x.shape[1:-1]
    if all(n_i % o_i == 0 for n_i, o_i in zip(n, o)):
        f = tuple(n_i // o_i for n_i, o_i in zip(n, o))
        out = _max_pool(op, k, x, f, f, 0, 1, False, return_indices)
    else:
        idx = jnp.broadcast_to(jnp.arange(math.prod(n), dtype=jnp.int32).reshape(1, *n, 1), x.shape)
        y = x
        # Last axis first: each pass keeps the first maximum along its axis among the earlier passes'
        # picks, so the result is the first maximum in row-major order.
        for axis in range(k, 0, -1):
            y, idx = adaptive_max_axis(y, idx, axis, o[axis - 1])
        out = (y, idx) if return_indices else y
    if not single:
        return out
    return (out[0][0], out[1][0]) if return_indices else out[0]


def _global_avg_pool(op, k, x):
    x, single = check_rank_nd(x, k, op)
    _args.check_floating(x, op)
    y = x.mean(axis=tuple(range(1, k + 1)))  # (m, n_C)
    return y[0] if single else y


# ---------------------------------------------------------------------------
# Public names: 1-D on (m, n_W, n_C), 3-D on (m, n_D, n_H, n_W, n_C); the options are `jaxconv.pool`'s.
# ---------------------------------------------------------------------------


def max_pool1d(x, window=2, stride=None, padding=0, dilation=1, ceil_mode=False, return_indices=False):
    """Max pooling along one spatial axis (PyTorch's `F.max_pool1d`, channels last).

    Args:
      x: (m, n_W, n_C) or (n_W, n_C).
      window, stride, padding, dilation, ceil_mode, return_indices: as for `jaxconv.max_pool`, each an int
        or a 1-tuple (padding also ((lo, hi),), "SAME" or "VALID"); padding at most window // 2.

    Returns:
      y (m, n_W', n_C), and with return_indices the index w of each window's first maximum, int32.

    >>> max_pool1d(jnp.array([1., 3, 2, 5, 4, 0])[:, None])[:, 0].tolist()
    [3.0, 5.0, 4.0]
    """
    return _max_pool("max_pool1d", 1, x, window, stride, padding, dilation, ceil_mode, return_indices)


def max_pool3d(x, window=2, stride=None, padding=0, dilation=1, ceil_mode=False, return_indices=False):
    """Max pooling over depth, height and width (PyTorch's `F.max_pool3d`, channels last).

    Args:
      x: (m, n_D, n_H, n_W, n_C) or (n_D, n_H, n_W, n_C).
      window, stride, padding, dilation, ceil_mode, return_indices: as for `jaxconv.max_pool`, each an int
        or a 3-tuple (f_D, f_H, f_W); padding at most window // 2 per axis.

    Returns:
      y (m, n_D', n_H', n_W', n_C), and with return_indices the flat index (d·n_H + h)·n_W + w of each
      window's first maximum, int32.

    >>> max_pool3d(jnp.arange(8.0).reshape(2, 2, 2, 1), return_indices=True)[1].ravel().tolist()
    [7]
    """
    return _max_pool("max_pool3d", 3, x, window, stride, padding, dilation, ceil_mode, return_indices)


def avg_pool1d(x, window=2, stride=None, padding=0, count_include_pad=True, ceil_mode=False, divisor_override=None):
    """Average pooling along one spatial axis (PyTorch's `F.avg_pool1d`, channels last; floating x).

    Args:
      x: (m, n_W, n_C) or (n_W, n_C).
      window, stride, padding, count_include_pad, ceil_mode, divisor_override: as for `jaxconv.avg_pool`.

    Returns:
      (m, n_W', n_C).

    >>> avg_pool1d(jnp.array([1., 3, 2, 6])[:, None])[:, 0].tolist()
    [2.0, 4.0]
    """
    return _avg_pool("avg_pool1d", 1, x, window, stride, padding, count_include_pad, ceil_mode, divisor_override)


def avg_pool3d(x, window=2, stride=None, padding=0, count_include_pad=True, ceil_mode=False, divisor_override=None):
    """Average pooling over depth, height and width (PyTorch's `F.avg_pool3d`, channels last; floating x).

    Args:
      x: (m, n_D, n_H, n_W, n_C) or (n_D, n_H, n_W, n_C).
      window, stride, padding, count_include_pad, ceil_mode, divisor_override: as for `jaxconv.avg_pool`,
        each an int or a 3-tuple.

    Returns:
      (m, n_D', n_H', n_W', n_C).
    """
    return _avg_pool("avg_pool3d", 3, x, window, stride, padding, count_include_pad, ceil_mode, divisor_override)


def adaptive_avg_pool1d(x, output_size):
    """Average pooling to n_W' outputs, window i = [⌊i·n_W/n_W'⌋, ⌈(i+1)·n_W/n_W'⌉) (PyTorch's rule).

    x (m, n_W, n_C) or (n_W, n_C), floating; output_size an int (None keeps n_W) -> (m, n_W', n_C).

    >>> adaptive_avg_pool1d(jnp.arange(5.0)[:, None], 3)[:, 0].tolist()  # windows [0,2) [1,4) [3,5)
    [0.5, 2.0, 3.5]
    """
    return _adaptive_avg_pool("adaptive_avg_pool1d", 1, x, output_size)


def adaptive_avg_pool3d(x, output_size):
    """Average pooling to (n_D', n_H', n_W') outputs, windows by PyTorch's adaptive rule along each axis.

    x (m, n_D, n_H, n_W, n_C) or without m, floating; output_size an int or 3 (None keeps that axis)
    -> (m, n_D', n_H', n_W', n_C).
    """
    return _adaptive_avg_pool("adaptive_avg_pool3d", 3, x, output_size)


def adaptive_max_pool1d(x, output_size, return_indices=False):
    """Max pooling to n_W' outputs, windows by PyTorch's adaptive rule (see `adaptive_avg_pool1d`).

    x (m, n_W, n_C) or (n_W, n_C) -> (m, n_W', n_C) [and the index w of each window's first maximum, int32].
    """
    return _adaptive_max_pool("adaptive_max_pool1d", 1, x, output_size, return_indices)


def adaptive_max_pool3d(x, output_size, return_indices=False):
    """Max pooling to (n_D', n_H', n_W') outputs, windows by PyTorch's adaptive rule along each axis.

    x (m, n_D, n_H, n_W, n_C) or without m -> (m, n_D', n_H', n_W', n_C) [and the flat index
    (d·n_H + h)·n_W + w of each window's first maximum in row-major order, int32].
    """
    return _adaptive_max_pool("adaptive_max_pool3d", 3, x, output_size, return_indices)


def global_avg_pool1d(x):
    """Mean over n_W: (m, n_W, n_C) -> (m, n_C); (n_W, n_C) -> (n_C,). Floating x."""
    return _global_avg_pool("global_avg_pool1d", 1, x)


def global_avg_pool3d(x):
    """Mean over n_D, n_H, n_W: (m, n_D, n_H, n_W, n_C) -> (m, n_C); without m -> (n_C,). Floating x."""
    return _global_avg_pool("global_avg_pool3d", 3, x)
