"""Float64 references of the convolution, its adjoint (backward) and the transposed convolution: 2-D, and N-D.

Z[m, h, w, o] = b[o] + Σ_{i, j, c} X_pad[m, h·s_H + i·d_H, w·s_W + j·d_W, g·Cg + c] · W[i, j, c, o]

where g = o // (n_C' / G) is the group of filter o and Cg = n_C / G, written tap by tap.
Layout: x NHWC (m, n_H, n_W, n_C), w HWIO (f_H, f_W, n_C / G, n_C').
"""

from __future__ import annotations

import itertools

import numpy as np

from jaxconv.reference.common import batched, out_size, pad, pads_of, pair

# ---------------------------------------------------------------------------
# Convolution: forward and its adjoint (backward), from the definition.
# ---------------------------------------------------------------------------


def _conv_setup(x, w, stride, padding, dilation):
    s, d = pair(stride), pair(dilation)
    f = w.shape[:2]
    pads = pads_of(padding, x.shape[1:3], f, s, d)
    x_pad = pad(np.asarray(x, np.float64), pads, 0.0)
    n_out = tuple(out_size(x_pad.shape[1 + a], f[a], s[a], d[a]) for a in range(2))
    return s, d, pads, x_pad, n_out


def _tap(i, j, s, d, n_out):
    """Index of the rows/columns X_pad[h·s_H + i·d_H, w·s_W + j·d_W] for all h, w."""
    rows = slice(i * d[0], i * d[0] + s[0] * (n_out[0] - 1) + 1, s[0])
    cols = slice(j * d[1], j * d[1] + s[1] * (n_out[1] - 1) + 1, s[1])
    return rows, cols


def conv2d(x, w, b=None, stride=1, padding=0, dilation=1, groups=1):
    """Z = X_pad ⋆ W + b in float64. x (m, n_H, n_W, n_C), w (f_H, f_W, n_C/G, n_C') -> (m, n_H', n_W', n_C')."""
    x, single = batched(x)
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
    x, single = batched(x)
    w = np.asarray(w, np.float64)
    s, d, op = pair(stride), pair(dilation), pair(output_padding)
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


# ---------------------------------------------------------------------------
# Any number of spatial axes (1-D sequences NWC, 3-D volumes NDHWC): the same
# definitions with the spatial index a vector, r = (r_1, ..., r_N), and the
# filter tap one too, k = (k_1, ..., k_N), looped over with itertools.product.
# ---------------------------------------------------------------------------


def _ntuple(v, N):
    """(v,)·N for an int, the tuple of v otherwise."""
    return (v,) * N if isinstance(v, int) else tuple(v)


def pads_nd(padding, n, f, s, d):
    """((lo, hi), ...) per spatial axis for padding int, N ints, N (lo, hi) pairs, 'SAME' or 'VALID'."""
    N = len(f)
    if isinstance(padding, str):
        if padding.upper() == "VALID":
            return ((0, 0),) * N
        assert padding.upper() == "SAME", padding
        totals = [max((-(-n_i // s_i) - 1) * s_i + d_i * (f_i - 1) + 1 - n_i, 0) for n_i, f_i, s_i, d_i in zip(n, f, s, d)]
        return tuple((t // 2, t - t // 2) for t in totals)
    if isinstance(padding, int):
        return ((padding, padding),) * N
    return tuple((p, p) if isinstance(p, int) else tuple(p) for p in padding)


def _tap_nd(k, s, d, n_out):
    """Index of X_pad[r·s + k·d] for every output position r, axis by axis."""
    return tuple(slice(k_i * d_i, k_i * d_i + s_i * (n_i - 1) + 1, s_i) for k_i, s_i, d_i, n_i in zip(k, s, d, n_out))


def _setup_nd(x, w, stride, padding, dilation):
    N = w.ndim - 2
    s, d, f = _ntuple(stride, N), _ntuple(dilation, N), w.shape[:N]
    pads = pads_nd(padding, x.shape[1:-1], f, s, d)
    x_pad = np.pad(np.asarray(x, np.float64), ((0, 0), *pads, (0, 0)))
    n_out = tuple(out_size(x_pad.shape[1 + a], f[a], s[a], d[a]) for a in range(N))
    return s, d, pads, x_pad, n_out


def conv_nd(x, w, b=None, stride=1, padding=0, dilation=1, groups=1):
    """Z[m, r, o] = b[o] + Σ_{k, c} X_pad[m, r·s + k·d, g·Cg + c] · W[k, c, o] in float64, any N spatial axes.

    x (m, *n, n_C) or one example (*n, n_C), w (*f, n_C/G, n_C') -> (m, *n', n_C').
    """
    w = np.asarray(w, np.float64)
    x = np.asarray(x, np.float64)
    single = x.ndim == w.ndim - 1
    x = x[None] if single else x
    s, d, _, x_pad, n_out = _setup_nd(x, w, stride, padding, dilation)
    *f, Cg, n_C_out = w.shape
    Og = n_C_out // groups
    z = np.zeros((x.shape[0], *n_out, n_C_out))
    for g in range(groups):
        cin, cout = slice(g * Cg, (g + 1) * Cg), slice(g * Og, (g + 1) * Og)
        for k in itertools.product(*(range(f_i) for f_i in f)):
            patch = x_pad[(slice(None), *_tap_nd(k, s, d, n_out), cin)]  # (m, *n', Cg)
            z[..., cout] += np.tensordot(patch, w[k][:, cout], axes=1)
    if b is not None:
        z += np.asarray(b, np.float64)
    return z[0] if single else z


def conv_nd_vjp(x, w, dz, stride=1, padding=0, dilation=1, groups=1):
    """(dX, dW, db) of Σ Z·dZ for `conv_nd`, tap by tap:

    dW[k, c, o] = Σ_{m,r} X_pad[m, r·s + k·d, g·Cg + c] · dZ[m, r, o]
    dX_pad[m, r·s + k·d, g·Cg + c] += Σ_o W[k, c, o] · dZ[m, r, o]
    db[o] = Σ_{m,r} dZ[m, r, o]
    """
    x, w, dz = (np.asarray(a, np.float64) for a in (x, w, dz))
    s, d, pads, x_pad, n_out = _setup_nd(x, w, stride, padding, dilation)
    *f, Cg, n_C_out = w.shape
    Og = n_C_out // groups
    dx_pad, dw = np.zeros_like(x_pad), np.zeros_like(w)
    sum_axes = list(range(x.ndim - 1))
    for g in range(groups):
        cin, cout = slice(g * Cg, (g + 1) * Cg), slice(g * Og, (g + 1) * Og)
        for k in itertools.product(*(range(f_i) for f_i in f)):
            at = (slice(None), *_tap_nd(k, s, d, n_out), cin)
            dw[k][:, cout] = np.tensordot(x_pad[at], dz[..., cout], axes=(sum_axes, sum_axes))
            dx_pad[at] += np.tensordot(dz[..., cout], w[k][:, cout].T, axes=1)
    dx = dx_pad[(slice(None), *(slice(lo, lo + n) for (lo, _), n in zip(pads, x.shape[1:-1])))]
    return dx, dw, dz.sum(axis=tuple(sum_axes))


def conv_transpose_nd(x, w, b=None, stride=1, padding=0, output_padding=0, dilation=1, groups=1):
    """The adjoint of `conv_nd` with filter w, PyTorch's ConvTranspose1d/3d: scatter each input entry times the filter.

    x (m, *n, n_C) or one example, w (*f, n_C'/G, n_C) -> (m, *n', n_C') with
    n' = (n − 1)·s − p_lo − p_hi + d(f − 1) + output_padding + 1 per axis:

    Y_pad[m, r·s + k·d, g·Cg + c] += Σ_o W[k, c, o] · X[m, r, o]

    then Y = Y_pad with p_lo cropped at the start and p_hi at the end of each axis.
    `padding` takes int, N ints or N (lo, hi) pairs.
    """
    w = np.asarray(w, np.float64)
    x = np.asarray(x, np.float64)
    single = x.ndim == w.ndim - 1
    x = x[None] if single else x
    N = w.ndim - 2
    s, d, op = _ntuple(stride, N), _ntuple(dilation, N), _ntuple(output_padding, N)
    pads = pads_nd(padding, None, w.shape[:N], s, d)
    *f, Cg, n_C = w.shape
    Og = n_C // groups
    full = [(n_i - 1) * s_i + d_i * (f_i - 1) + 1 + o for n_i, s_i, d_i, f_i, o in zip(x.shape[1:-1], s, d, f, op)]
    y_pad = np.zeros((x.shape[0], *full, Cg * groups))
    for g in range(groups):
        cout, cin = slice(g * Cg, (g + 1) * Cg), slice(g * Og, (g + 1) * Og)
        for r in itertools.product(*(range(n_i) for n_i in x.shape[1:-1])):
            for k in itertools.product(*(range(f_i) for f_i in f)):
                at = tuple(r_i * s_i + k_i * d_i for r_i, s_i, k_i, d_i in zip(r, s, k, d))
                y_pad[(slice(None), *at, cout)] += x[(slice(None), *r, cin)] @ w[k][:, cin].T
    y = y_pad[(slice(None), *(slice(lo, n - hi) for (lo, hi), n in zip(pads, full)))]
    if b is not None:
        y = y + np.asarray(b, np.float64)
    return y[0] if single else y
