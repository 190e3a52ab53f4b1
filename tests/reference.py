"""Plain float64 numpy references for the tests (in the spirit of jax's `_src/lax_reference.py`).

Everything here is written straight from the definitions in the notes, with
loops over filter taps and windows, and shares no code with jaxconv:

    Z[m, h, w, o] = b[o] + Σ_{i, j, c} X_pad[m, h·s_H + i·d_H, w·s_W + j·d_W, g·Cg + c] · W[i, j, c, o]

where g = o // (n_C' / G) is the group of filter o and Cg = n_C / G.
Layout: x NHWC (m, n_H, n_W, n_C), w HWIO (f_H, f_W, n_C / G, n_C').

Tolerances per dtype live in TOL, in one place.
"""

from __future__ import annotations

import numpy as np

# Tolerances for comparing a jaxconv result with a float64 reference (or two impls
# with each other), keyed by the dtype of the jaxconv computation.
TOL = {
    # float32: sums of up to a few hundred products of O(1) numbers; 1 ulp is 6e-8
    # relative, accumulated error stays well below 1e-5 of the result's scale.
    "float32": dict(rtol=2e-5, atol=2e-5),
    # Gradients in float32 sum over m·n_H'·n_W' terms (dW) or over the
    # overlapping windows (dX): loosened 5x relative to the forward.
    "float32_grad": dict(rtol=1e-4, atol=1e-4),
    "float64": dict(rtol=1e-12, atol=1e-12),
    "float64_grad": dict(rtol=1e-11, atol=1e-11),
}


def tol(dtype, grad=False):
    """The tolerance dict for `np.testing.assert_allclose` for a computation in `dtype`."""
    name = np.dtype(dtype).name
    return TOL[name + ("_grad" if grad else "")]


# ---------------------------------------------------------------------------
# Argument normalisation (independent of jaxconv._args).
# ---------------------------------------------------------------------------


def _pair(v):
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


def _pad(x, pads, value):
    (t, b), (l, r) = pads
    return np.pad(x, ((0, 0), (t, b), (l, r), (0, 0)), constant_values=value)


def out_size(n_pad, f, s, d=1):
    """⌊(n_pad − d(f−1) − 1)/s⌋ + 1, n_pad the padded size."""
    return (n_pad - d * (f - 1) - 1) // s + 1


# ---------------------------------------------------------------------------
# Convolution: forward and its adjoint (backward), from the definition.
# ---------------------------------------------------------------------------


def _conv_setup(x, w, stride, padding, dilation):
    s, d = _pair(stride), _pair(dilation)
    f = w.shape[:2]
    pads = pads_of(padding, x.shape[1:3], f, s, d)
    x_pad = _pad(np.asarray(x, np.float64), pads, 0.0)
    n_out = tuple(out_size(x_pad.shape[1 + a], f[a], s[a], d[a]) for a in range(2))
    return s, d, pads, x_pad, n_out


def _tap(i, j, s, d, n_out):
    """Index of the rows/columns X_pad[h·s_H + i·d_H, w·s_W + j·d_W] for all h, w."""
    rows = slice(i * d[0], i * d[0] + s[0] * (n_out[0] - 1) + 1, s[0])
    cols = slice(j * d[1], j * d[1] + s[1] * (n_out[1] - 1) + 1, s[1])
    return rows, cols


def conv2d(x, w, b=None, stride=1, padding=0, dilation=1, groups=1):
    """Z = X_pad ⋆ W + b in float64. x (m, n_H, n_W, n_C), w (f_H, f_W, n_C/G, n_C') -> (m, n_H', n_W', n_C')."""
    x = np.asarray(x, np.float64)
    w = np.asarray(w, np.float64)
    single = x.ndim == 3
    if single:
        x = x[None]
    s, d, _, x_pad, n_out = _conv_setup(x, w, stride, padding, dilation)
    f_H, f_W, Cg, n_C_out = w.shape
    Og = n_C_out // groups
    z = np.zeros((x.shape[0], *n_out, n_C_out))
    for g in range(groups):
        cin, cout = slice(g * Cg, (g + 1) * Cg), slice(g * Og, (g + 1) * Og)
        for i in range(f_H):
            for j in range(f_W):
                rows, cols = _tap(i, j, s, d, n_out)
                patch = x_pad[:, rows, cols, cin]  # (m, n_H', n_W', Cg)
                z[..., cout] += np.einsum("mhwc,co->mhwo", patch, w[i, j, :, cout])
    if b is not None:
        z += np.asarray(b, np.float64)
    return z[0] if single else z


def conv2d_vjp(x, w, dz, stride=1, padding=0, dilation=1, groups=1):
    """(dX, dW, db) of Σ Z·dZ, the adjoint of `conv2d` written tap by tap.

    dW[i, j, c, o] = Σ_{m,h,w} X_pad[m, h·s_H + i·d_H, w·s_W + j·d_W, g·Cg + c] · dZ[m, h, w, o]
    dX_pad[m, h·s_H + i·d_H, w·s_W + j·d_W, g·Cg + c] += Σ_o W[i, j, c, o] · dZ[m, h, w, o]
    db[o] = Σ_{m,h,w} dZ[m, h, w, o]
    """
    x = np.asarray(x, np.float64)
    w = np.asarray(w, np.float64)
    dz = np.asarray(dz, np.float64)
    s, d, pads, x_pad, n_out = _conv_setup(x, w, stride, padding, dilation)
    f_H, f_W, Cg, n_C_out = w.shape
    Og = n_C_out // groups
    dx_pad = np.zeros_like(x_pad)
    dw = np.zeros_like(w)
    for g in range(groups):
        cin, cout = slice(g * Cg, (g + 1) * Cg), slice(g * Og, (g + 1) * Og)
        for i in range(f_H):
            for j in range(f_W):
                rows, cols = _tap(i, j, s, d, n_out)
                dw[i, j, :, cout] = np.einsum("mhwc,mhwo->co", x_pad[:, rows, cols, cin], dz[..., cout])
                dx_pad[:, rows, cols, cin] += np.einsum("mhwo,co->mhwc", dz[..., cout], w[i, j, :, cout])
    (t, _), (l, _) = pads
    dx = dx_pad[:, t : t + x.shape[1], l : l + x.shape[2], :]
    return dx, dw, dz.sum(axis=(0, 1, 2))


# ---------------------------------------------------------------------------
# Pooling: forward, and the max-pool backward with the first-max tie policy.
# ---------------------------------------------------------------------------


def _windows(x, window, stride, padding, value):
    """Pooling setup: (f, s, pads, X_pad, (n_H', n_W')) with X_pad padded by `value`; stride defaults to f."""
    f = _pair(window)
    s = f if stride is None else _pair(stride)
    pads = pads_of(padding, x.shape[1:3], f, s)
    x_pad = _pad(np.asarray(x, np.float64), pads, value)
    n_out = tuple(out_size(x_pad.shape[1 + a], f[a], s[a]) for a in range(2))
    return f, s, pads, x_pad, n_out


def max_pool(x, window=2, stride=None, padding=0):
    """max over each f_H x f_W window; padding counts as −∞. (m, n_H, n_W, n_C) -> (m, n_H', n_W', n_C)."""
    f, s, _, x_pad, n_out = _windows(x, window, stride, padding, -np.inf)
    y = np.empty((x.shape[0], *n_out, x.shape[3]))
    for h in range(n_out[0]):
        for w in range(n_out[1]):
            y[:, h, w, :] = x_pad[:, h * s[0] : h * s[0] + f[0], w * s[1] : w * s[1] + f[1], :].max(axis=(1, 2))
    return y


def avg_pool(x, window=2, stride=None, padding=0, count_include_pad=True):
    """Mean over each window: divided by f_H·f_W (count_include_pad) or by the number of real pixels."""
    f, s, pads, x_pad, n_out = _windows(x, window, stride, padding, 0.0)
    real = _pad(np.ones((1, *x.shape[1:3], 1)), pads, 0.0)  # 1 on real pixels, 0 on padding
    y = np.empty((x.shape[0], *n_out, x.shape[3]))
    for h in range(n_out[0]):
        for w in range(n_out[1]):
            rows, cols = slice(h * s[0], h * s[0] + f[0]), slice(w * s[1], w * s[1] + f[1])
            total = x_pad[:, rows, cols, :].sum(axis=(1, 2))
            count = f[0] * f[1] if count_include_pad else real[0, rows, cols, 0].sum()
            y[:, h, w, :] = total / count
    return y


def max_pool_vjp(x, dy, window=2, stride=None, padding=0):
    """dX of max pooling: each window's dY goes to its FIRST maximum in row-major order.

    x (m, n_H, n_W, n_C), dy (m, n_H', n_W', n_C) -> dx (m, n_H, n_W, n_C). Overlapping
    windows add their contributions.
    """
    f, s, pads, x_pad, n_out = _windows(x, window, stride, padding, -np.inf)
    dy = np.asarray(dy, np.float64)
    m, _, _, n_C = x.shape
    dx_pad = np.zeros_like(x_pad)
    mm, cc = np.meshgrid(np.arange(m), np.arange(n_C), indexing="ij")  # (m, n_C)
    for h in range(n_out[0]):
        for w in range(n_out[1]):
            win = x_pad[:, h * s[0] : h * s[0] + f[0], w * s[1] : w * s[1] + f[1], :]  # (m, f_H, f_W, n_C)
            flat = win.transpose(0, 3, 1, 2).reshape(m, n_C, f[0] * f[1])  # row-major within the window
            k = flat.argmax(axis=-1)  # np.argmax returns the first maximum
            i, j = k // f[1], k % f[1]
            np.add.at(dx_pad, (mm, h * s[0] + i, w * s[1] + j, cc), dy[:, h, w, :])
    (t, _), (l, _) = pads
    return dx_pad[:, t : t + x.shape[1], l : l + x.shape[2], :]


def avg_pool_vjp(x, dy, window=2, stride=None, padding=0, count_include_pad=True):
    """dX of average pooling: each window spreads dY / count evenly over its real pixels."""
    f, s, pads, x_pad, n_out = _windows(x, window, stride, padding, 0.0)
    real = _pad(np.ones((1, *x.shape[1:3], 1)), pads, 0.0)
    dy = np.asarray(dy, np.float64)
    dx_pad = np.zeros_like(x_pad)
    for h in range(n_out[0]):
        for w in range(n_out[1]):
            rows, cols = slice(h * s[0], h * s[0] + f[0]), slice(w * s[1], w * s[1] + f[1])
            count = f[0] * f[1] if count_include_pad else real[0, rows, cols, 0].sum()
            dx_pad[:, rows, cols, :] += dy[:, h, w, None, None, :] / count
    (t, _), (l, _) = pads
    return dx_pad[:, t : t + x.shape[1], l : l + x.shape[2], :]


def global_avg_pool(x):
    """Mean over n_H and n_W: (m, n_H, n_W, n_C) -> (m, n_C)."""
    return np.asarray(x, np.float64).mean(axis=(1, 2))
