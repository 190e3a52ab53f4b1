"""Float64 references of interpolation (PyTorch's `F.interpolate`) and pixel (un)shuffle, channels last.

Interpolation is separable: along each spatial axis, output index i reads the input at a
few source indices with weights, and the output is the sum over every combination of the
axes' sources of the product of their weights. Along an axis of n inputs and n' outputs,
with scale = 1 / scale_factor when a scale factor is given and n / n' when a size is:

    nearest:        src = min(⌊i · scale⌋, n − 1), weight 1 (PyTorch's legacy 'nearest')
    nearest-exact:  src = min(⌊(i + ½) · scale⌋, n − 1), weight 1
    linear, align_corners=True:   t = i · (n − 1)/(n' − 1)  (0 when n' = 1)
    linear, align_corners=False:  t = max((i + ½) · scale − ½, 0)
                    i₀ = min(⌊t⌋, n − 1), i₁ = min(i₀ + 1, n − 1), λ = t − i₀: (i₀, 1 − λ), (i₁, λ)

The scales are exact fractions here (`fractions.Fraction` of the float scale factor).
Written with loops over output positions, independently of `jaxconv.upsampling`.
"""

from __future__ import annotations

import itertools
import math
from fractions import Fraction

import numpy as np


def output_size(n, size=None, scale_factor=None):
    """n' along one axis: `size`, or ⌊n · scale_factor⌋ (PyTorch's rule, in float64)."""
    return size if size is not None else math.floor(float(n) * scale_factor)


def _sources(i, n, n_out, scale_factor, mode, align_corners):
    """[(source index, weight), ...] of output index i along one axis."""
    scale = 1 / Fraction(scale_factor) if scale_factor is not None else Fraction(n, n_out)
    if mode == "nearest":
        return [(min(math.floor(i * scale), n - 1), 1.0)]
    if mode == "nearest-exact":
        return [(min(math.floor((i + Fraction(1, 2)) * scale), n - 1), 1.0)]
    if align_corners:
        t = Fraction(i * (n - 1), n_out - 1) if n_out > 1 else Fraction(0)
    else:
        t = max((i + Fraction(1, 2)) * scale - Fraction(1, 2), Fraction(0))
    i0 = min(math.floor(t), n - 1)
    lam = float(min(max(t - i0, 0), 1))
    return [(i0, 1.0 - lam), (min(i0 + 1, n - 1), lam)]


def interpolate(x, size=None, scale_factor=None, mode="nearest", align_corners=None):
    """x (m, *spatial, n_C) -> (m, *spatial', n_C); size / scale_factor: one per spatial axis (or one for all).

    mode: "nearest", "nearest-exact", or "linear" / "bilinear" / "trilinear" (all the same rule here).
    """
    x = np.asarray(x, np.float64)
    k = x.ndim - 2
    sizes = [size] * k if size is None or isinstance(size, int) else list(size)
    factors = [scale_factor] * k if scale_factor is None or not isinstance(scale_factor, (tuple, list)) else list(scale_factor)
    n_out = [output_size(n, s, f) for n, s, f in zip(x.shape[1:-1], sizes, factors)]
    per_axis = [
        [_sources(i, n, o, f if sizes[a] is None else None, mode, align_corners) for i in range(o)]
        for a, (n, o, f) in enumerate(zip(x.shape[1:-1], n_out, factors))
    ]
    y = np.zeros((x.shape[0], *n_out, x.shape[-1]))
    for out_pos in itertools.product(*(range(o) for o in n_out)):
        for combo in itertools.product(*(per_axis[a][i] for a, i in enumerate(out_pos))):
            weight = math.prod(w for _, w in combo)
            y[(slice(None), *out_pos)] += weight * x[(slice(None), *(src for src, _ in combo))]
    return y


def pixel_shuffle(x, r):
    """Depth to space: y[..., h·r + i, w·r + j, c] = x[..., h, w, c·r² + i·r + j].

    x (..., n_H, n_W, n_C·r²) -> (..., n_H·r, n_W·r, n_C): PyTorch's pixel_shuffle with NCHW <-> NHWC.
    """
    x = np.asarray(x, np.float64)
    *lead, n_H, n_W, n_Cr = x.shape
    n_C = n_Cr // (r * r)
    y = np.empty((*lead, n_H * r, n_W * r, n_C))
    for h, w, c, i, j in itertools.product(range(n_H), range(n_W), range(n_C), range(r), range(r)):
        y[..., h * r + i, w * r + j, c] = x[..., h, w, c * r * r + i * r + j]
    return y


def pixel_unshuffle(y, r):
    """Space to depth, the inverse of `pixel_shuffle`: x[..., h, w, c·r² + i·r + j] = y[..., h·r + i, w·r + j, c].

    y (..., n_H·r, n_W·r, n_C) -> (..., n_H, n_W, n_C·r²).
    """
    y = np.asarray(y, np.float64)
    *lead, n_Hr, n_Wr, n_C = y.shape
    n_H, n_W = n_Hr // r, n_Wr // r
    x = np.empty((*lead, n_H, n_W, n_C * r * r))
    for h, w, c, i, j in itertools.product(range(n_H), range(n_W), range(n_C), range(r), range(r)):
        x[..., h, w, c * r * r + i * r + j] = y[..., h * r + i, w * r + j, c]
    return x
