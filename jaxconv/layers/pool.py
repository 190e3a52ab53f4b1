"""The layers without parameters that change the shape: pooling in 1-, 2- and 3-D, GlobalAvgPool and Flatten.

One builder per family, parameterised by the number of spatial axes N (`_window_pool`, `_adaptive_pool`,
`_global_pool`); the 2-D layers (MaxPool, AvgPool, ...) read (m, n_H, n_W, n_C), the 1-D ones
(MaxPool1D, ...) NWC (m, n_W, n_C), the 3-D ones (MaxPool3D, ...) NDHWC (m, n_D, n_H, n_W, n_C).
"""

from __future__ import annotations

import math

from jaxconv import nn, pool, pool_nd
from jaxconv._args import x_form
from jaxconv.layers.core import Layer, check_shape, parameter_free, with_batch

# The shape checks of each number of spatial axes: 2-D keeps `jaxconv.pool`'s, 1-D and 3-D share `pool_nd`'s.
POOL_GEOMETRY = {1: pool_nd.pool_geometry_nd, 2: pool.pool_geometry, 3: pool_nd.pool_geometry_nd}
ADAPTIVE_SIZES = {1: pool_nd.adaptive_sizes, 2: pool.adaptive_output_size, 3: pool_nd.adaptive_sizes}


def _window_pool(op, N, fn, window, stride, padding, geometry, **extra) -> Layer:
    """A pooling layer over windows; `geometry` holds the options that change the output shape (dilation, ceil_mode)."""

    def output_shape(input_shape):
        shape = check_shape(op, input_shape, N + 2, x_form(N))
        *_, out_shape = POOL_GEOMETRY[N](with_batch(shape), window, stride, padding, op, **geometry)
        return (shape[0], *out_shape[1:])

    return parameter_free(op, "pool", output_shape, lambda x: fn(x, window, stride, padding, **geometry, **extra))


def _max_pool(op, N, fn, window, stride, padding, dilation, ceil_mode) -> Layer:
    return _window_pool(op, N, fn, window, stride, padding, dict(dilation=dilation, ceil_mode=ceil_mode))


def _avg_pool(op, N, fn, window, stride, padding, count_include_pad, ceil_mode, divisor_override) -> Layer:
    return _window_pool(op, N, fn, window, stride, padding, dict(ceil_mode=ceil_mode),
                        count_include_pad=count_include_pad, divisor_override=divisor_override)


def _adaptive_pool(op, N, fn, output_size) -> Layer:
    def output_shape(input_shape):
        shape = check_shape(op, input_shape, N + 2, x_form(N))
        return (shape[0], *ADAPTIVE_SIZES[N](shape, output_size, op), shape[-1])

    return parameter_free(op, "pool", output_shape, lambda x: fn(x, output_size))


def _global_pool(op, N, fn) -> Layer:
    def output_shape(input_shape):
        shape = check_shape(op, input_shape, N + 2, x_form(N))
        return (shape[0], shape[-1])

    return parameter_free(op, "gap", output_shape, fn)


# ----------------------------------------------------------------------------- 2-D: (m, n_H, n_W, n_C)


def MaxPool(window=2, stride=None, padding=0, dilation=1, ceil_mode=False) -> Layer:
    """Max pooling layer (no parameters); stride defaults to the window. Options as for `pool.max_pool`."""
    return _max_pool("MaxPool", 2, pool.max_pool, window, stride, padding, dilation, ceil_mode)


def AvgPool(window=2, stride=None, padding=0, count_include_pad=True, ceil_mode=False, divisor_override=None) -> Layer:
    """Average pooling layer (no parameters); stride defaults to the window. Options as for `pool.avg_pool`."""
    return _avg_pool("AvgPool", 2, pool.avg_pool, window, stride, padding, count_include_pad, ceil_mode, divisor_override)


def AdaptiveAvgPool(output_size) -> Layer:
    """(m, n_H, n_W, n_C) -> (m, n_H', n_W', n_C) by averaging PyTorch's adaptive windows; see `pool.adaptive_avg_pool`."""
    return _adaptive_pool("AdaptiveAvgPool", 2, pool.adaptive_avg_pool, output_size)


def AdaptiveMaxPool(output_size) -> Layer:
    """(m, n_H, n_W, n_C) -> (m, n_H', n_W', n_C), the max of PyTorch's adaptive windows; see `pool.adaptive_max_pool`."""
    return _adaptive_pool("AdaptiveMaxPool", 2, pool.adaptive_max_pool, output_size)


def GlobalAvgPool() -> Layer:
    """(m, n_H, n_W, n_C) -> (m, n_C), the mean over space."""
    return _global_pool("GlobalAvgPool", 2, pool.global_avg_pool)


# ----------------------------------------------------------------------------- 1-D: (m, n_W, n_C)


def MaxPool1D(window=2, stride=None, padding=0, dilation=1, ceil_mode=False) -> Layer:
    """Max pooling along n_W (no parameters); stride defaults to the window. Options as for `max_pool1d`."""
    return _max_pool("MaxPool1D", 1, pool_nd.max_pool1d, window, stride, padding, dilation, ceil_mode)


def AvgPool1D(window=2, stride=None, padding=0, count_include_pad=True, ceil_mode=False, divisor_override=None) -> Layer:
    """Average pooling along n_W (no parameters); stride defaults to the window. Options as for `avg_pool1d`."""
    return _avg_pool("AvgPool1D", 1, pool_nd.avg_pool1d, window, stride, padding, count_include_pad, ceil_mode, divisor_override)


def AdaptiveAvgPool1D(output_size) -> Layer:
    """(m, n_W, n_C) -> (m, n_W', n_C) by averaging PyTorch's adaptive windows; see `adaptive_avg_pool1d`."""
    return _adaptive_pool("AdaptiveAvgPool1D", 1, pool_nd.adaptive_avg_pool1d, output_size)


def AdaptiveMaxPool1D(output_size) -> Layer:
    """(m, n_W, n_C) -> (m, n_W', n_C), the max of PyTorch's adaptive windows; see `adaptive_max_pool1d`."""
    return _adaptive_pool("AdaptiveMaxPool1D", 1, pool_nd.adaptive_max_pool1d, output_size)


def GlobalAvgPool1D() -> Layer:
    """(m, n_W, n_C) -> (m, n_C), the mean over the sequence."""
    return _global_pool("GlobalAvgPool1D", 1, pool_nd.global_avg_pool1d)


# ----------------------------------------------------------------------------- 3-D: (m, n_D, n_H, n_W, n_C)


def MaxPool3D(window=2, stride=None, padding=0, dilation=1, ceil_mode=False) -> Layer:
    """Max pooling over (n_D, n_H, n_W) (no parameters); stride defaults to the window. Options as for `max_pool3d`."""
    return _max_pool("MaxPool3D", 3, pool_nd.max_pool3d, window, stride, padding, dilation, ceil_mode)


def AvgPool3D(window=2, stride=None, padding=0, count_include_pad=True, ceil_mode=False, divisor_override=None) -> Layer:
    """Average pooling over (n_D, n_H, n_W) (no parameters); stride defaults to the window. Options as for `avg_pool3d`."""
    return _avg_pool("AvgPool3D", 3, pool_nd.avg_pool3d, window, stride, padding, count_include_pad, ceil_mode, divisor_override)


def AdaptiveAvgPool3D(output_size) -> Layer:
    """(m, n_D, n_H, n_W, n_C) -> (m, n_D', n_H', n_W', n_C) by averaging adaptive windows; see `adaptive_avg_pool3d`."""
    return _adaptive_pool("AdaptiveAvgPool3D", 3, pool_nd.adaptive_avg_pool3d, output_size)


def AdaptiveMaxPool3D(output_size) -> Layer:
    """(m, n_D, n_H, n_W, n_C) -> (m, n_D', n_H', n_W', n_C), the max of adaptive windows; see `adaptive_max_pool3d`."""
    return _adaptive_pool("AdaptiveMaxPool3D", 3, pool_nd.adaptive_max_pool3d, output_size)


def GlobalAvgPool3D() -> Layer:
    """(m, n_D, n_H, n_W, n_C) -> (m, n_C), the mean over the volume."""
    return _global_pool("GlobalAvgPool3D", 3, pool_nd.global_avg_pool3d)


def Flatten(spatial_dims: int | None = None) -> Layer:
    """(m, *spatial, n_C) -> (m, prod(spatial)·n_C), keeping the batch axis.

    spatial_dims: the number of spatial axes (1 for sequences, 2 for images, 3 for volumes).
    None, the default, is 2: apply then also takes one image (n_H, n_W, n_C) without the batch axis,
    as `jaxconv.flatten` does. A batch of sequences (m, n_W, n_C) has the same rank as one image,
    so for 1-D inputs pass spatial_dims=1 (init refuses a rank-3 input shape without it).
    """
    op = "Flatten"
    if spatial_dims is not None and (isinstance(spatial_dims, bool) or spatial_dims not in (1, 2, 3)):
        raise ValueError(f"{op}: `spatial_dims` must be 1, 2, 3 or None, got {spatial_dims!r}.")

    def output_shape(input_shape):
        shape = tuple(input_shape)
        if spatial_dims is None and len(shape) == 3:
            raise ValueError(
                f"{op}.init: input_shape {shape} is a batch of sequences (m, n_W, n_C), which apply could not tell "
                f"from one image (n_H, n_W, n_C); build the layer as Flatten(spatial_dims=1)."
            )
        if spatial_dims is not None and len(shape) != spatial_dims + 2:
            raise ValueError(f"{op}.init: input_shape {shape} must have {spatial_dims} spatial axes (rank {spatial_dims + 2}).")
        return (shape[0], math.prod(shape[1:]))

    def flatten(x):
        if spatial_dims is None:
            return nn.flatten(x)
        batched = x.ndim == spatial_dims + 2  # else one example without its batch axis
        return x.reshape(x.shape[0], math.prod(x.shape[1:])) if batched else x.reshape(math.prod(x.shape))

    return parameter_free(op, "flatten", output_shape, flatten)
