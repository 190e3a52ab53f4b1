"""Plain float64 NumPy references for jaxconv's ops, in the spirit of jax's `_src/lax_reference.py`.

Everything here is written straight from the definitions in the notes, with
loops over filter taps, windows and pixels, and shares no code with the rest
of jaxconv (not even argument checking), so a test that compares the two
compares two independent readings of the same formula:

    Z[m, h, w, o] = b[o] + Σ_{i, j, c} X_pad[m, h·s_H + i·d_H, w·s_W + j·d_W, g·Cg + c] · W[i, j, c, o]

where g = o // (n_C' / G) is the group of filter o and Cg = n_C / G.
Layout: x NHWC (m, n_H, n_W, n_C), w HWIO (f_H, f_W, n_C / G, n_C').
Every function returns float64 NumPy arrays. Arguments are assumed valid.

Tolerances per dtype live in `TOLERANCES`, in one place; `tol(dtype)` reads it.
"""

from __future__ import annotations

import math

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


def _batched(x):
    x = np.asarray(x, np.float64)
    return (x[None], True) if x.ndim == 3 else (x, False)


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
    x, single = _batched(x)
    w = np.asarray(w, np.float64)
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

    x (m, n_H, n_W, n_C), w (f_H, f_W, n_C/G, n_C'), dz (m, n_H', n_W', n_C') ->
    dx like x, dw like w, db (n_C',):

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


def conv_transpose2d(x, w, b=None, stride=1, padding=0, output_padding=0, dilation=1, groups=1):
    """The adjoint of `conv2d` with filter w: scatter each input pixel times the filter.

    x (m, n_H, n_W, n_C), w (f_H, f_W, n_C'/G, n_C) — the HWIO filter of the conv2d
    (n_C' -> n_C) that this transposes — -> (m, n_H', n_W', n_C') with
    n' = (n − 1)·s − p_lo − p_hi + d(f − 1) + output_padding + 1 (PyTorch's ConvTranspose2d):

    Y_pad[m, h·s_H + i·d_H, w·s_W + j·d_W, g·Cg + c] += Σ_o W[i, j, c, o] · X[m, h, w, o]

    then Y = Y_pad with p_lo rows/columns cropped at the top/left and p_hi at the bottom/right
    (output_padding extends the bottom/right by zero-initialised rows that can still receive
    scattered values, as in PyTorch). `padding` takes int, (p_h, p_w) or pairs of pairs.
    """
    x, single = _batched(x)
    w = np.asarray(w, np.float64)
    s, d, op = _pair(stride), _pair(dilation), _pair(output_padding)
    (t, bt), (l, r) = pads_of(padding, None, None, None)  # int, (p_h, p_w) or pairs; no strings
    f_H, f_W, Cg, n_C = w.shape
    Og = n_C // groups
    m, n_H, n_W, _ = x.shape
    full = [(n_H - 1) * s[0] + d[0] * (f_H - 1) + 1 + op[0], (n_W - 1) * s[1] + d[1] * (f_W - 1) + 1 + op[1]]
    y_pad = np.zeros((m, *full, Cg * groups))
    for g in range(groups):
        cout, cin = slice(g * Cg, (g + 1) * Cg), slice(g * Og, (g + 1) * Og)
        for h in range(n_H):
            for v in range(n_W):
                for i in range(f_H):
                    for j in range(f_W):
                        y_pad[:, h * s[0] + i * d[0], v * s[1] + j * d[1], cout] += x[:, h, v, cin] @ w[i, j, :, cin].T
    y = y_pad[:, t : full[0] - bt, l : full[1] - r, :]
    if b is not None:
        y = y + np.asarray(b, np.float64)
    return y[0] if single else y


def dense(x, w, b=None):
    """y[m, o] = Σ_i x[m, i] · w[i, o] + b[o]. x (m, n_in) or (n_in,), w (n_in, n_out) -> (m, n_out) or (n_out,)."""
    x, w = np.asarray(x, np.float64), np.asarray(w, np.float64)
    y = np.einsum("...i,io->...o", x, w)
    return y if b is None else y + np.asarray(b, np.float64)


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
    f = _pair(window)
    s = f if stride is None else _pair(stride)
    d = _pair(dilation)
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
    x, single = _batched(x)
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
    x, single = _batched(x)
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
    x, single = _batched(x)
    o = _pair(output_size)
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
    x, single = _batched(x)
    m, n_H, n_W, n_C = x.shape
    o = _pair(output_size)
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
# Activations (elementwise, any shape) and their derivatives, from the formulas.
# ---------------------------------------------------------------------------

_ERF = np.vectorize(math.erf, otypes=[np.float64])


def _f64(z):
    return np.asarray(z, np.float64)


def relu(z):
    """max(z, 0)."""
    return np.maximum(_f64(z), 0.0)


def leaky_relu(z, negative_slope=0.01):
    """z for z >= 0, negative_slope·z below."""
    z = _f64(z)
    return np.where(z >= 0, z, negative_slope * z)


def relu6(z):
    """min(max(z, 0), 6)."""
    return np.minimum(np.maximum(_f64(z), 0.0), 6.0)


def gelu(z, approximate=False):
    """z·Φ(z) = z·(1 + erf(z/√2))/2; approximate: z·(1 + tanh(√(2/π)(z + 0.044715 z³)))/2."""
    z = _f64(z)
    if approximate:
        return 0.5 * z * (1 + np.tanh(math.sqrt(2 / math.pi) * (z + 0.044715 * z**3)))
    return 0.5 * z * (1 + _ERF(z / math.sqrt(2)))


def elu(z, alpha=1.0):
    """z for z > 0, alpha·(eᶻ − 1) below."""
    z = _f64(z)
    return np.where(z > 0, z, alpha * np.expm1(np.minimum(z, 0)))


def softplus(z, beta=1.0, threshold=20.0):
    """log(1 + e^{βz})/β, and z itself where βz > threshold (PyTorch's rule)."""
    z = _f64(z)
    return np.where(beta * z > threshold, z, np.log1p(np.exp(np.minimum(beta * z, threshold))) / beta)


def sigmoid(z):
    """1/(1 + e^{−z})."""
    return 1 / (1 + np.exp(-_f64(z)))


def silu(z):
    """z·σ(z) (swish)."""
    z = _f64(z)
    return z * sigmoid(z)


def activation_grad(name, z, **kwargs):
    """The derivative of activation `name` at z, from its formula (PyTorch's choice at kinks).

    relu' = [z > 0]; leaky_relu' = 1 for z > 0 else slope (PyTorch: slope at 0);
    relu6' = [0 < z < 6]; elu' = 1 for z > 0 else α eᶻ; softplus' = σ(βz) (1 past the
    threshold); silu' = σ(z)(1 + z(1 − σ(z))); gelu' = Φ(z) + z φ(z), or the tanh form's.
    """
    z = _f64(z)
    if name == "relu":
        return (z > 0).astype(np.float64)
    if name == "leaky_relu":
        return np.where(z > 0, 1.0, kwargs.get("negative_slope", 0.01))
    if name == "relu6":
        return ((z > 0) & (z < 6)).astype(np.float64)
    if name == "elu":
        alpha = kwargs.get("alpha", 1.0)
        return np.where(z > 0, 1.0, alpha * np.exp(np.minimum(z, 0)))
    if name == "softplus":
        beta, threshold = kwargs.get("beta", 1.0), kwargs.get("threshold", 20.0)
        return np.where(beta * z > threshold, 1.0, sigmoid(beta * z))
    if name == "silu":
        s = sigmoid(z)
        return s * (1 + z * (1 - s))
    if name == "gelu":
        if kwargs.get("approximate", False):
            k = math.sqrt(2 / math.pi)
            u = k * (z + 0.044715 * z**3)
            return 0.5 * (1 + np.tanh(u)) + 0.5 * z * (1 - np.tanh(u) ** 2) * k * (1 + 3 * 0.044715 * z**2)
        return 0.5 * (1 + _ERF(z / math.sqrt(2))) + z * np.exp(-(z**2) / 2) / math.sqrt(2 * math.pi)
    raise ValueError(f"activation_grad: unknown activation {name!r}")


# ---------------------------------------------------------------------------
# Losses.
# ---------------------------------------------------------------------------


def log_softmax(z):
    """z_k − log Σ_j e^{z_j} along the last axis, shifted by the max for stability."""
    z = _f64(z)
    shifted = z - z.max(axis=-1, keepdims=True)
    return shifted - np.log(np.exp(shifted).sum(axis=-1, keepdims=True))


def softmax_cross_entropy(logits, labels):
    """L = −Σ_k y_k log softmax(logits)_k per example: logits (m, K); labels (m,) ints or (m, K) -> (m,)."""
    logp = log_softmax(logits)
    labels = np.asarray(labels)
    if np.issubdtype(labels.dtype, np.integer):
        labels = np.eye(logp.shape[-1])[labels]
    return -(labels * logp).sum(axis=-1)
