"""The up-sampling layers (no parameters): Upsample (interpolation), PixelShuffle and PixelUnshuffle.

Each predicts its output shape at init by tracing its function on the input shape, so a
size that does not tile or a mode that does not fit the input's rank fails at init, with
the function's message.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from jaxconv.layers.core import Layer, check_count, parameter_free, with_batch
from jaxconv.layers.norm import check_spatial_dims, is_batched
from jaxconv.upsampling import MODES, pixel_shuffle, pixel_unshuffle, upsample


def _traced_shape(fn, input_shape):
    """fn's output shape on input_shape (m may be -1: traced with m = 1, given back as -1)."""
    shape = tuple(input_shape)
    y = jax.eval_shape(fn, jax.ShapeDtypeStruct(with_batch(shape), jnp.float32))
    return (shape[0], *y.shape[1:])


def Upsample(scale_factor=None, size=None, mode: str = "nearest", align_corners=None, spatial_dims=None) -> Layer:
    """Resize the spatial axes (PyTorch's `nn.Upsample`; see `jaxconv.upsample` for the modes and `align_corners`).

    x (m, *spatial, n_C) -> (m, *spatial', n_C) with n' = ⌊n · scale_factor⌋ or n' = size; any
    number of spatial axes ("bilinear" needs 2, "trilinear" 3). No params. x must carry the batch
    axis unless the layer is built with `spatial_dims` (then x of rank spatial_dims + 1 is one example).
    """
    op = "Upsample"
    check_spatial_dims(op, spatial_dims)
    options = dict(scale_factor=scale_factor, size=size, mode=mode, align_corners=align_corners)
    if mode not in MODES:
        raise ValueError(f"{op}: unknown `mode` {mode!r}. It needs to be one of {list(MODES)}.")

    def output_shape(input_shape):
        shape = tuple(input_shape)
        if spatial_dims is not None and len(shape) != spatial_dims + 2:
            raise ValueError(f"{op}: the layer was built with spatial_dims={spatial_dims}, so `input_shape` must have {spatial_dims + 2} axes (m, *spatial, n_C), got {input_shape!r}.")
        return _traced_shape(lambda x: upsample(x, **options), shape)

    def fn(x):
        return upsample(x, **options, batched=is_batched(op, x, spatial_dims))

    return parameter_free(op, "upsample", output_shape, fn)


def PixelShuffle(r: int) -> Layer:
    """Depth to space (PyTorch's `nn.PixelShuffle`, see `jaxconv.pixel_shuffle`): (m, n_H, n_W, n_C·r²) -> (m, n_H·r, n_W·r, n_C).

    No params; one example (n_H, n_W, n_C·r²) works too.
    """
    check_count("PixelShuffle", "r", r)
    return parameter_free("PixelShuffle", "pixel_shuffle", lambda s: _traced_shape(lambda x: pixel_shuffle(x, r), s), lambda x: pixel_shuffle(x, r))


def PixelUnshuffle(r: int) -> Layer:
    """Space to depth, the inverse of PixelShuffle (PyTorch's `nn.PixelUnshuffle`): (m, n_H·r, n_W·r, n_C) -> (m, n_H, n_W, n_C·r²).

    No params; one example (n_H·r, n_W·r, n_C) works too.
    """
    check_count("PixelUnshuffle", "r", r)
    return parameter_free("PixelUnshuffle", "pixel_unshuffle", lambda s: _traced_shape(lambda x: pixel_unshuffle(x, r), s), lambda x: pixel_unshuffle(x, r))
