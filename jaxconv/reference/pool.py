"""Float64 references of max, average and adaptive pooling, with PyTorch's options.

Windows are walked pixel by pixel; padding counts −∞ for max and 0 for average pooling.
Layout: x NHWC (m, n_H, n_W, n_C); the `*_nd` functions and the 1-D / 3-D names take
(m, *spatial, n_C) with any number of spatial axes (NWC, NDHWC).
"""

from __future__ import annotations

import itertools
import math

import numpy as np

from jaxconv.reference.common import batched, pads_of, pair

# ---------------------------------------------------------------------------
# Pooling, with PyTorch's options: the forward by windows, max-pool's backward with
# the first-maximum tie policy, avg-pool's backward spreading dY / divisor.
# ---------------------------------------------------------------------------


def pool_out_size(n, f, s, lo, hi, d=1, ceil_mode=False):
    """PyTorch's pooling output size along one axis.

    floor mode: ⌊(n + lo + hi − d(f−1) − 1)/s⌋ + 1; ceil mode: ⌈·⌉ + 1, less one if the
    last window would start past the real input (in the right padding).
    """
    span = n + lo + hi - d * (f - 1) - 1
    if not ceil_mode:
        return span // s + 1
    out = -(-span // s) + 1
    if (out - 1) * s >= n + lo:
        out -= 1
    return out


def _windows(x, window, stride, padding, dilation, ceil_mode):
    """Pooling setup: f, s, d, pads, (n_H', n_W') and, per axis, each window's pixel positions.

    positions[a][k] lists the unpadded coordinates of window k's taps along axis a:
    start + t·d − lo for t < f, with start = k·s (some fall in the padding: < 0 or >= n).
    """
    f = pair(window)
    s = f if stride is None else pair(stride)
    d = pair(dilation)
    pads = pads_of(padding, x.shape[1:3], f, s, d)
    n_out = tuple(pool_out_size(x.shape[1 + a], f[a], s[a], *pads[a], d[a], ceil_mode) for a in range(2))
    positions = [[[k * s[a] + t * d[a] - pads[a][0] for t in range(f[a])] for k in range(n_out[a])] for a in range(2)]
    return f, s, d, pads, n_out, positions


def max_pool(x, window=2, stride=None, padding=0, dilation=1, ceil_mode=False, return_indices=False):
    """max over each (dilated) window; padding and the ceil-mode overhang count as −∞.

    x (m, n_H, n_W, n_C) -> y (m, n_H', n_W', n_C), and with return_indices the flat index
    h·n_W + w (per example and channel, into the unpadded input) of each window's first
    maximum in row-major order, (m, n_H', n_W', n_C) int64.
    """
    x, single = batched(x)
    m, n_H, n_W, n_C = x.shape
    *_, n_out, (rows, cols) = _windows(x, window, stride, padding, dilation, ceil_mode)
    y = np.full((m, *n_out, n_C), -np.inf)
    idx = np.full((m, *n_out, n_C), -1, np.int64)
    for a in range(n_out[0]):
        for b in range(n_out[1]):
            for h in rows[a]:  # row-major: the first maximum wins, later ties do not replace it
                for w in cols[b]:
                    if 0 <= h < n_H and 0 <= w < n_W:
                        better = x[:, h, w, :] > y[:, a, b, :]
                        y[:, a, b, :] = np.where(better, x[:, h, w, :], y[:, a, b, :])
                        idx[:, a, b, :] = np.where(better, h * n_W + w, idx[:, a, b, :])
    if single:
        y, idx = y[0], idx[0]
    return (y, idx) if return_indices else y


def max_pool_vjp(x, dy, window=2, stride=None, padding=0, dilation=1, ceil_mode=False):
    """dX of max pooling: each window's dY goes to its FIRST maximum in row-major order.

    x (m, n_H, n_W, n_C), dy (m, n_H', n_W', n_C) -> dx (m, n_H, n_W, n_C). Overlapping
    windows add their contributions.
    """
    x = np.asarray(x, np.float64)
    _, idx = max_pool(x, window, stride, padding, dilation, ceil_mode, return_indices=True)
    return max_unpool(np.asarray(dy, np.float64), idx, x.shape)


def max_unpool(dy, idx, x_shape):
    """Scatter-add dy (m, n_H', n_W', n_C) to the flat indices idx (same shape) of x_shape (m, n_H, n_W, n_C)."""
    m, n_H, n_W, n_C = x_shape
    dx = np.zeros((m, n_H * n_W, n_C))
    for i in range(m):
        for c in range(n_C):
            np.add.at(dx[i, :, c], idx[i, ..., c].ravel(), dy[i, ..., c].ravel())
    return dx.reshape(x_shape)


def _avg_divisors(x_shape, window, stride, padding, count_include_pad, ceil_mode, divisor_override):
    """(n_H', n_W') divisors of average pooling, PyTorch's rule, and the per-axis window positions.

    divisor_override if given; else the window's pixels inside the padded input
    (count_include_pad; the ceil-mode overhang past the padding is not counted)
    or its real pixels only.
    """
    x = np.empty(x_shape)
    f, s, d, pads, n_out, positions = _windows(x, window, stride, padding, 1, ceil_mode)
    div = np.empty(n_out)
    for a in range(n_out[0]):
        for b in range(n_out[1]):
            if divisor_override:
                div[a, b] = divisor_override
                continue
            counts = []
            for axis, taps in ((0, positions[0][a]), (1, positions[1][b])):
                n, (lo, hi) = x_shape[1 + axis], pads[axis]
                inside = (lambda p: -lo <= p < n + hi) if count_include_pad else (lambda p: 0 <= p < n)
                counts.append(sum(1 for p in taps if inside(p)))
            div[a, b] = counts[0] * counts[1]
    return div, positions


def avg_pool(x, window=2, stride=None, padding=0, count_include_pad=True, ceil_mode=False, divisor_override=None):
    """Sum of each window's real pixels (padding counts 0) divided by the divisor of `_avg_divisors`.

    x (m, n_H, n_W, n_C) -> (m, n_H', n_W', n_C).
    """
    x, single = batched(x)
    m, n_H, n_W, n_C = x.shape
    div, (rows, cols) = _avg_divisors(x.shape, window, stride, padding, count_include_pad, ceil_mode, divisor_override)
    y = np.zeros((m, *div.shape, n_C))
    for a in range(div.shape[0]):
        for b in range(div.shape[1]):
            for h in rows[a]:
                for w in cols[b]:
                    if 0 <= h < n_H and 0 <= w < n_W:
                        y[:, a, b, :] += x[:, h, w, :]
            y[:, a, b, :] /= div[a, b]
    return y[0] if single else y


def avg_pool_vjp(x, dy, window=2, stride=None, padding=0, count_include_pad=True, ceil_mode=False, divisor_override=None):
    """dX of average pooling: each window adds dY / divisor to each of its real pixels.

    x (m, n_H, n_W, n_C), dy (m, n_H', n_W', n_C) -> dx (m, n_H, n_W, n_C).
    """
    x = np.asarray(x, np.float64)
    dy = np.asarray(dy, np.float64)
    n_H, n_W = x.shape[1:3]
    div, (rows, cols) = _avg_divisors(x.shape, window, stride, padding, count_include_pad, ceil_mode, divisor_override)
    dx = np.zeros_like(x)
    for a in range(div.shape[0]):
        for b in range(div.shape[1]):
            for h in rows[a]:
                for w in cols[b]:
                    if 0 <= h < n_H and 0 <= w < n_W:
                        dx[:, h, w, :] += dy[:, a, b, :] / div[a, b]
    return dx


def adaptive_windows(n, n_out):
    """PyTorch's adaptive windows along one axis: [⌊i·n/n_out⌋, ⌈(i+1)·n/n_out⌉) for i < n_out."""
    return [(math.floor(i * n / n_out), math.ceil((i + 1) * n / n_out)) for i in range(n_out)]


def adaptive_avg_pool(x, output_size):
    """Mean over each adaptive window. x (m, n_H, n_W, n_C) -> (m, n_H', n_W', n_C); output_size int or pair."""
    x, single = batched(x)
    o = pair(output_size)
    rows, cols = adaptive_windows(x.shape[1], o[0]), adaptive_windows(x.shape[2], o[1])
    y = np.empty((x.shape[0], *o, x.shape[3]))
    for a, (h0, h1) in enumerate(rows):
        for b, (w0, w1) in enumerate(cols):
            y[:, a, b, :] = x[:, h0:h1, w0:w1, :].mean(axis=(1, 2))
    return y[0] if single else y


def adaptive_max_pool(x, output_size, return_indices=False):
    """Max over each adaptive window, first maximum in row-major order for the index.

    x (m, n_H, n_W, n_C) -> (m, n_H', n_W', n_C) [and flat indices h·n_W + w, int64].
    """
    x, single = batched(x)
    m, n_H, n_W, n_C = x.shape
    o = pair(output_size)
    rows, cols = adaptive_windows(n_H, o[0]), adaptive_windows(n_W, o[1])
    y = np.empty((m, *o, n_C))
    idx = np.empty((m, *o, n_C), np.int64)
    for a, (h0, h1) in enumerate(rows):
        for b, (w0, w1) in enumerate(cols):
            win = x[:, h0:h1, w0:w1, :].transpose(0, 3, 1, 2).reshape(m, n_C, -1)  # row-major
            k = win.argmax(axis=-1)  # the first maximum
            y[:, a, b, :] = win.max(axis=-1)
            idx[:, a, b, :] = (h0 + k // (w1 - w0)) * n_W + w0 + k % (w1 - w0)
    if single:
        y, idx = y[0], idx[0]
    return (y, idx) if return_indices else y


def global_avg_pool(x):
    """Mean over n_H and n_W: (m, n_H, n_W, n_C) -> (m, n_C)."""
    return np.asarray(x, np.float64).mean(axis=(1, 2))


# ---------------------------------------------------------------------------
# Pools over any number k of spatial axes, x (m, *spatial, n_C): the same definitions,
# every window walked tap by tap with itertools.product (the last axis fastest: row-major).
# The 1-D (NWC) and 3-D (NDHWC) names fix k; an input of rank k + 1 is one example.
# ---------------------------------------------------------------------------


def _ktuple(v, k):
    return (v,) * k if isinstance(v, int) else tuple(v)


def _pads_nd(padding, n, f, s, d):
    """((lo, hi), ...) per spatial axis for p, one p per axis, one (lo, hi) per axis, "VALID" or "SAME"."""
    k = len(n)
    if isinstance(padding, str):
        if padding.upper() == "VALID":
            return ((0, 0),) * k
        totals = [max((-(-n[a] // s[a]) - 1) * s[a] + d[a] * (f[a] - 1) + 1 - n[a], 0) for a in range(k)]
        return tuple((t // 2, t - t // 2) for t in totals)
    if isinstance(padding, int):
        return ((padding, padding),) * k
    return tuple((p, p) if isinstance(p, int) else tuple(p) for p in padding)


def _batched_nd(x, k):
    x = np.asarray(x, np.float64)
    return (x[None], True) if x.ndim == k + 1 else (x, False)


def _windows_nd(x_shape, window, stride, padding, dilation, ceil_mode):
    """(n', pads, taps): taps[a][j] lists window j's coordinates along axis a, j·s + t·d − lo for t < f."""
    n = x_shape[1:-1]
    k = len(n)
    f = _ktuple(window, k)
    s = f if stride is None else _ktuple(stride, k)
    d = _ktuple(dilation, k)
    pads = _pads_nd(padding, n, f, s, d)
    n_out = tuple(pool_out_size(n[a], f[a], s[a], *pads[a], d[a], ceil_mode) for a in range(k))
    taps = [[[j * s[a] + t * d[a] - pads[a][0] for t in range(f[a])] for j in range(n_out[a])] for a in range(k)]
    return n_out, pads, taps


def max_pool_nd(x, k, window=2, stride=None, padding=0, dilation=1, ceil_mode=False, return_indices=False):
    """Max over each window of x (m, *spatial, n_C) with k spatial axes -> (m, *n', n_C) [and the flat
    row-major spatial index of each window's first maximum, int64]; padding and the ceil overhang count −∞."""
    x, single = _batched_nd(x, k)
    n = x.shape[1:-1]
    n_out, _, taps = _windows_nd(x.shape, window, stride, padding, dilation, ceil_mode)
    y = np.full((x.shape[0], *n_out, x.shape[-1]), -np.inf)
    idx = np.full(y.shape, -1, np.int64)
    for j in itertools.product(*(range(o) for o in n_out)):
        for p in itertools.product(*(taps[a][j[a]] for a in range(k))):  # row-major: the first maximum stays
            if all(0 <= p[a] < n[a] for a in range(k)):
                better = x[(slice(None), *p)] > y[(slice(None), *j)]
                y[(slice(None), *j)] = np.where(better, x[(slice(None), *p)], y[(slice(None), *j)])
                idx[(slice(None), *j)] = np.where(better, np.ravel_multi_index(p, n), idx[(slice(None), *j)])
    if single:
        y, idx = y[0], idx[0]
    return (y, idx) if return_indices else y


def max_pool_nd_vjp(x, dy, k, window=2, stride=None, padding=0, dilation=1, ceil_mode=False):
    """dX of `max_pool_nd` for batched x (m, *spatial, n_C): each window's dY added at its first maximum."""
    x, dy = np.asarray(x, np.float64), np.asarray(dy, np.float64)
    _, idx = max_pool_nd(x, k, window, stride, padding, dilation, ceil_mode, return_indices=True)
    m, n_C = x.shape[0], x.shape[-1]
    dx = np.zeros((m, math.prod(x.shape[1:-1]), n_C))
    for i in range(m):
        for c in range(n_C):
            np.add.at(dx[i, :, c], idx[i, ..., c].ravel(), dy[i, ..., c].ravel())
    return dx.reshape(x.shape)


def _avg_divisors_nd(x_shape, window, stride, padding, count_include_pad, ceil_mode, divisor_override):
    """(n' divisors, taps): divisor_override, or the window's taps inside the padded input
    (count_include_pad) or inside the real input, counted per axis and multiplied."""
    n = x_shape[1:-1]
    n_out, pads, taps = _windows_nd(x_shape, window, stride, padding, 1, ceil_mode)
    div = np.empty(n_out)
    for j in itertools.product(*(range(o) for o in n_out)):
        counts = [
            sum(1 for p in taps[a][j[a]] if (-pads[a][0] <= p < n[a] + pads[a][1] if count_include_pad else 0 <= p < n[a]))
            for a in range(len(n))
        ]
        div[j] = divisor_override if divisor_override else math.prod(counts)
    return div, taps


def avg_pool_nd(x, k, window=2, stride=None, padding=0, count_include_pad=True, ceil_mode=False, divisor_override=None):
    """Sum of each window's real pixels divided by `_avg_divisors_nd`: x (m, *spatial, n_C) -> (m, *n', n_C)."""
    x, single = _batched_nd(x, k)
    div, taps = _avg_divisors_nd(x.shape, window, stride, padding, count_include_pad, ceil_mode, divisor_override)
    n = x.shape[1:-1]
    y = np.zeros((x.shape[0], *div.shape, x.shape[-1]))
    for j in itertools.product(*(range(o) for o in div.shape)):
        for p in itertools.product(*(taps[a][j[a]] for a in range(k))):
            if all(0 <= p[a] < n[a] for a in range(k)):
                y[(slice(None), *j)] += x[(slice(None), *p)] / div[j]
    return y[0] if single else y


def avg_pool_nd_vjp(x, dy, k, window=2, stride=None, padding=0, count_include_pad=True, ceil_mode=False, divisor_override=None):
    """dX of `avg_pool_nd` for batched x (m, *spatial, n_C): each window adds dY / divisor to its real pixels."""
    x, dy = np.asarray(x, np.float64), np.asarray(dy, np.float64)
    div, taps = _avg_divisors_nd(x.shape, window, stride, padding, count_include_pad, ceil_mode, divisor_override)
    n = x.shape[1:-1]
    dx = np.zeros_like(x)
    for j in itertools.product(*(range(o) for o in div.shape)):
        for p in itertools.product(*(taps[a][j[a]] for a in range(k))):
            if all(0 <= p[a] < n[a] for a in range(k)):
                dx[(slice(None), *p)] += dy[(slice(None), *j)] / div[j]
    return dx


def adaptive_avg_pool_nd(x, k, output_size):
    """Mean over each adaptive window: x (m, *spatial, n_C) -> (m, *n', n_C); output_size an int or k (None keeps)."""
    x, single = _batched_nd(x, k)
    n = x.shape[1:-1]
    o = tuple(n[a] if v is None else v for a, v in enumerate(_ktuple(output_size, k)))
    wins = [adaptive_windows(n[a], o[a]) for a in range(k)]
    y = np.empty((x.shape[0], *o, x.shape[-1]))
    for j in itertools.product(*(range(v) for v in o)):
        block = x[(slice(None), *(slice(*wins[a][j[a]]) for a in range(k)))]
        y[(slice(None), *j)] = block.mean(axis=tuple(range(1, k + 1)))
    return y[0] if single else y


def adaptive_max_pool_nd(x, k, output_size, return_indices=False):
    """Max over each adaptive window, the index of its first maximum in row-major order (int64)."""
    x, single = _batched_nd(x, k)
    n = x.shape[1:-1]
    o = tuple(n[a] if v is None else v for a, v in enumerate(_ktuple(output_size, k)))
    wins = [adaptive_windows(n[a], o[a]) for a in range(k)]
    y = np.full((x.shape[0], *o, x.shape[-1]), -np.inf)
    idx = np.full(y.shape, -1, np.int64)
    for j in itertools.product(*(range(v) for v in o)):
        for p in itertools.product(*(range(*wins[a][j[a]]) for a in range(k))):
            better = x[(slice(None), *p)] > y[(slice(None), *j)]
            y[(slice(None), *j)] = np.where(better, x[(slice(None), *p)], y[(slice(None), *j)])
            idx[(slice(None), *j)] = np.where(better, np.ravel_multi_index(p, n), idx[(slice(None), *j)])
    if single:
        y, idx = y[0], idx[0]
    return (y, idx) if return_indices else y


def max_pool1d(x, *args, **kwargs):
    """`max_pool_nd` over (m, n_W, n_C)."""
    return max_pool_nd(x, 1, *args, **kwargs)


def max_pool3d(x, *args, **kwargs):
    """`max_pool_nd` over (m, n_D, n_H, n_W, n_C)."""
    return max_pool_nd(x, 3, *args, **kwargs)


def avg_pool1d(x, *args, **kwargs):
    """`avg_pool_nd` over (m, n_W, n_C)."""
    return avg_pool_nd(x, 1, *args, **kwargs)


def avg_pool3d(x, *args, **kwargs):
    """`avg_pool_nd` over (m, n_D, n_H, n_W, n_C)."""
    return avg_pool_nd(x, 3, *args, **kwargs)


def adaptive_avg_pool1d(x, output_size):
    """`adaptive_avg_pool_nd` over (m, n_W, n_C)."""
    return adaptive_avg_pool_nd(x, 1, output_size)


def adaptive_avg_pool3d(x, output_size):
    """`adaptive_avg_pool_nd` over (m, n_D, n_H, n_W, n_C)."""
    return adaptive_avg_pool_nd(x, 3, output_size)


def adaptive_max_pool1d(x, output_size, return_indices=False):
    """`adaptive_max_pool_nd` over (m, n_W, n_C)."""
    return adaptive_max_pool_nd(x, 1, output_size, return_indices)


def adaptive_max_pool3d(x, output_size, return_indices=False):
    """`adaptive_max_pool_nd` over (m, n_D, n_H, n_W, n_C)."""
    return adaptive_max_pool_nd(x, 3, output_size, return_indices)


def global_avg_pool1d(x):
    """Mean over n_W: (m, n_W, n_C) -> (m, n_C)."""
    x, single = _batched_nd(x, 1)
    return x.mean(axis=1)[0] if single else x.mean(axis=1)


def global_avg_pool3d(x):
    """Mean over n_D, n_H, n_W: (m, n_D, n_H, n_W, n_C) -> (m, n_C)."""
    x, single = _batched_nd(x, 3)
    return x.mean(axis=(1, 2, 3))[0] if single else x.mean(axis=(1, 2, 3))
