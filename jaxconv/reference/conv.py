"""Float64 references of the 2-D convolution, its adjoint (backward) and the transposed convolution.

Z[m, h, w, o] = b[o] + Σ_{i, j, c} X_pad[m, h·s_H + i·d_H, w·s_W + j·d_W, g·Cg + c] · W[i, j, c, o]

where g = o // (n_C' / G) is the group of filter o and Cg = n_C / G, written tap by tap.
Layout: x NHWC (m, n_H, n_W, n_C), w HWIO (f_H, f_W, n_C / G, n_C').
"""

from __future__ import annotations

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
