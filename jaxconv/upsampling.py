"""Up-sampling as plain functions: interpolation (PyTorch's `F.interpolate`) and pixel (un)shuffle, channels last.

`upsample` resizes the spatial axes of x (m, *spatial, n_C) one axis at a time. Along an axis
of n inputs and n' outputs, with scale = 1 / scale_factor when a scale factor is given and
n / n' when a size is (PyTorch's rule), output index i reads

    nearest:        x[min(⌊i · scale⌋, n − 1)]           (PyTorch's legacy 'nearest')
    nearest-exact:  x[min(⌊(i + ½) · scale⌋, n − 1)]     (pixel centres; scikit-image, PIL)
    linear:         (1 − λ)·x[i₀] + λ·x[i₁],  i₀ = min(⌊t⌋, n − 1), i₁ = min(i₀ + 1, n − 1), λ = t − i₀,
                    t = i · (n − 1)/(n' − 1) with align_corners=True (corners on corners),
                    t = max((i + ½) · scale − ½, 0) with align_corners=False (pixel centres; the default)

"bilinear" and "trilinear" are "linear" along 2 and 3 axes. The indices and weights depend on
the shapes only, so they are computed once, at trace time, in float64; the interpolation is
two gathers and a weighted sum per axis.

`pixel_shuffle` (depth to space) and `pixel_unshuffle` (its inverse) reorder values without
arithmetic: (m, n_H, n_W, n_C·r²) <-> (m, n_H·r, n_W·r, n_C), ordered as PyTorch's after its
channels are moved last.
"""

from __future__ import annotations

import math

import jax.numpy as jnp
import numpy as np

# Interpolation modes and the number of spatial axes each needs (None: any).
MODES = {"nearest": None, "nearest-exact": None, "linear": 1, "bilinear": 2, "trilinear": 3}


def _per_axis(op, name, value, k, check):
    """`value` (one for all axes, or a tuple/list of k) as a k-tuple, each checked by `check`."""
    values = tuple(value) if isinstance(value, (tuple, list)) else (value,) * k
    if len(values) != k:
        raise ValueError(f"{op}: `{name}` must be one value or {k} (one per spatial axis of x), got {value!r}.")
    for v in values:
        check(v)
    return values


def _output_sizes(op, spatial, size, scale_factor):
    """(n'_1, ..., n'_k) from exactly one of `size` and `scale_factor` (n' = ⌊n · scale_factor⌋)."""
    if (size is None) == (scale_factor is None):
        given = "both" if size is not None else "neither"
        raise ValueError(f"{op}: give exactly one of `size` and `scale_factor`, got {given}; e.g. scale_factor=2 or size=(n_H', n_W').")
    k = len(spatial)
    if size is not None:

        def check(v):
            if isinstance(v, bool) or not isinstance(v, (int, np.integer)):
                raise TypeError(f"{op}: `size` must be ints, one for all axes or one per spatial axis, got {size!r}.")
            if v < 1:
                raise ValueError(f"{op}: `size` must be >= 1 along every axis, got {size!r}.")

        return tuple(int(v) for v in _per_axis(op, "size", size, k, check)), (None,) * k

    def check(v):
        if isinstance(v, bool) or not isinstance(v, (int, float)):
            raise TypeError(f"{op}: `scale_factor` must be numbers, one for all axes or one per spatial axis, got {scale_factor!r}.")
        if not v > 0:
            raise ValueError(f"{op}: `scale_factor` must be > 0 along every axis, got {scale_factor!r}.")

    factors = tuple(float(v) for v in _per_axis(op, "scale_factor", scale_factor, k, check))
    sizes = tuple(math.floor(float(n) * f) for n, f in zip(spatial, factors))
    if min(sizes) < 1:
        raise ValueError(f"{op}: `scale_factor` {scale_factor!r} shrinks spatial sizes {tuple(spatial)} to {sizes}; every output size must be >= 1.")
    return sizes, factors


def source_indices(n, n_out, scale_factor=None, mode="nearest", align_corners=False):
    """The sources of each output index along one axis: (i₀ (n',), i₁ (n',), λ (n',)) NumPy arrays.

    Output i is (1 − λ)·x[i₀] + λ·x[i₁]; for the nearest modes i₁ = i₀ and λ = 0.
    scale_factor: the axis' scale factor, or None when the output size n' was given.
    """
    i = np.arange(n_out)
    if mode in ("nearest", "nearest-exact"):
        if scale_factor is None:  # exact integer arithmetic: ⌊i·n/n'⌋, ⌊(2i + 1)·n/(2n')⌋
            i0 = i * n // n_out if mode == "nearest" else (2 * i + 1) * n // (2 * n_out)
        else:
            i0 = np.floor((i if mode == "nearest" else i + 0.5) / scale_factor).astype(np.int64)
        i0 = np.minimum(i0, n - 1)
        return i0, i0, np.zeros(n_out)
    scale = n / n_out if scale_factor is None else 1.0 / scale_factor
    if align_corners:
        t = i * ((n - 1) / (n_out - 1)) if n_out > 1 else np.zeros(n_out)
    else:
        t = np.maximum((i + 0.5) * scale - 0.5, 0.0)
    i0 = np.minimum(np.floor(t).astype(np.int64), n - 1)
    return i0, np.minimum(i0 + 1, n - 1), np.clip(t - i0, 0.0, 1.0)


def _check_mode(op, mode, align_corners, x):
    """The checks of mode, align_corners and x's dtype, before any shape is looked at."""
    if mode not in MODES:
        raise ValueError(f"{op}: unknown `mode` {mode!r}. It needs to be one of {list(MODES)}.")
    if align_corners is not None and not isinstance(align_corners, bool):
        raise TypeError(f"{op}: `align_corners` must be None, True or False, got {align_corners!r}.")
    if MODES[mode] is None and align_corners is not None:
        raise ValueError(f"{op}: `align_corners` only applies to the interpolating modes 'linear', 'bilinear', 'trilinear', got mode={mode!r}; leave align_corners=None.")
    if MODES[mode] is not None and not jnp.issubdtype(x.dtype, jnp.floating):
        raise TypeError(f"{op}: mode={mode!r} interpolates and needs a floating-point `x`, got dtype {x.dtype}; cast it (x.astype(jnp.float32)) or use mode='nearest'.")


def upsample(x, *, scale_factor=None, size=None, mode="nearest", align_corners=None, batched=True):
    """Resize the spatial axes of x by nearest or linear interpolation (PyTorch's `F.interpolate`).

    Args:
      x: (m, *spatial, n_C), channels last: (m, n_W, n_C), (m, n_H, n_W, n_C) or (m, n_D, n_H, n_W, n_C);
        batched=False: one example (*spatial, n_C).
      scale_factor: a number > 0, or one per spatial axis: n' = ⌊n · scale_factor⌋.
      size: the output sizes n', an int or one per spatial axis. Exactly one of size, scale_factor.
      mode: "nearest" (any dtype), "nearest-exact", or "linear" / "bilinear" / "trilinear" for
        1 / 2 / 3 spatial axes (floating dtypes).
      align_corners: the linear modes' sampling rule (None means False, as in PyTorch).

    Returns:
      (m, *spatial', n_C) of x's dtype; bfloat16/float16 are interpolated in float32.

    >>> upsample(jnp.array([[[1.0], [2.0]]]), scale_factor=2).ravel().tolist()
    [1.0, 1.0, 2.0, 2.0]
    """
    op = "upsample"
    x = jnp.asarray(x)
    _check_mode(op, mode, align_corners, x)
    if not isinstance(batched, bool):
        raise TypeError(f"{op}: `batched` must be True (x has the batch axis first) or False (one example), got {batched!r}.")
    xb = x if batched else x[None]  # (m, *spatial, n_C)
    k = xb.ndim - 2
    need = MODES[mode]
    if k < 1 or (need is not None and k != need):
        want = "at least one spatial axis" if need is None else f"{need} spatial " + ("axis" if need == 1 else "axes")
        raise ValueError(f"{op}: mode={mode!r} needs x of shape (m, *spatial, n_C) with {want} (batched=False: without m), got shape {x.shape}; add the missing axes or pick the mode for {max(k, 1)}-D inputs.")
    sizes, factors = _output_sizes(op, xb.shape[1:-1], size, scale_factor)
    dtype = x.dtype if need is None else jnp.promote_types(x.dtype, jnp.float32)
    y = xb.astype(dtype)
    for axis, (n, n_out, f) in enumerate(zip(xb.shape[1:-1], sizes, factors), start=1):
        i0, i1, lam = source_indices(n, n_out, f, mode, bool(align_corners))
        y0 = jnp.take(y, i0, axis=axis, mode="clip")  # (m, ..., n', ..., n_C)
        if need is None:
            y = y0
            continue
        lam = jnp.asarray(lam, dtype).reshape([-1 if a == axis else 1 for a in range(y.ndim)])
        y = (1 - lam) * y0 + lam * jnp.take(y, i1, axis=axis, mode="clip")
    y = y.astype(x.dtype)
    return y if batched else y[0]


def _check_factor(op, r, name):
    if isinstance(r, bool) or not isinstance(r, (int, np.integer)):
        raise TypeError(f"{op}: `{name}` must be an int, got {r!r} of type {type(r).__name__}.")
    if r < 1:
        raise ValueError(f"{op}: `{name}` must be >= 1, got {r}.")
    return int(r)


def pixel_shuffle(x, r):
    """Depth to space: y[..., h·r + i, w·r + j, c] = x[..., h, w, c·r² + i·r + j] (PyTorch's `pixel_shuffle`, channels last).

    Args:
      x: (m, n_H, n_W, n_C·r²), or any leading axes (one example: (n_H, n_W, n_C·r²)).
      r: the upscale factor, an int >= 1.

    Returns:
      (m, n_H·r, n_W·r, n_C), of x's dtype.
    """
    op = "pixel_shuffle"
    x = jnp.asarray(x)
    r = _check_factor(op, r, "r")
    if x.ndim < 3:
        raise ValueError(f"{op}: `x` must have shape (m, n_H, n_W, n_C·r²) or (n_H, n_W, n_C·r²), got shape {x.shape}.")
    *lead, n_H, n_W, n_Cr = x.shape
    if n_Cr % (r * r):
        raise ValueError(f"{op}: the channels of x (={n_Cr}) must be divisible by r² (={r * r}) for r={r}; give x n_C·{r * r} channels.")
    n_C = n_Cr // (r * r)
    L = len(lead)
    y = x.reshape(*lead, n_H, n_W, n_C, r, r)  # (..., h, w, c, i, j)
    y = y.transpose(*range(L), L, L + 3, L + 1, L + 4, L + 2)  # (..., h, i, w, j, c)
    return y.reshape(*lead, n_H * r, n_W * r, n_C)


def pixel_unshuffle(x, r):
    """Space to depth, the inverse of `pixel_shuffle`: y[..., h, w, c·r² + i·r + j] = x[..., h·r + i, w·r + j, c].

    Args:
      x: (m, n_H·r, n_W·r, n_C), or any leading axes (one example: (n_H·r, n_W·r, n_C)).
      r: the downscale factor, an int >= 1 that divides n_H·r and n_W·r.

    Returns:
      (m, n_H, n_W, n_C·r²), of x's dtype.
    """
    op = "pixel_unshuffle"
    x = jnp.asarray(x)
    r = _check_factor(op, r, "r")
    if x.ndim < 3:
        raise ValueError(f"{op}: `x` must have shape (m, n_H·r, n_W·r, n_C) or (n_H·r, n_W·r, n_C), got shape {x.shape}.")
    *lead, n_Hr, n_Wr, n_C = x.shape
    if n_Hr % r or n_Wr % r:
        raise ValueError(f"{op}: r={r} must divide the height and width of x (={n_Hr}, {n_Wr}); crop or pad x to multiples of {r}.")
    n_H, n_W = n_Hr // r, n_Wr // r
    L = len(lead)
    y = x.reshape(*lead, n_H, r, n_W, r, n_C)  # (..., h, i, w, j, c)
    y = y.transpose(*range(L), L, L + 2, L + 4, L + 1, L + 3)  # (..., h, w, c, i, j)
    return y.reshape(*lead, n_H, n_W, n_C * r * r)
