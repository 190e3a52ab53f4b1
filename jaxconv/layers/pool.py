"""The layers without parameters that change the shape: pooling, GlobalAvgPool and Flatten."""

from __future__ import annotations

import math

from jaxconv import nn, pool
from jaxconv.layers.core import Layer, check_shape, parameter_free, with_batch

_NHWC = "(m, n_H, n_W, n_C)"


def _window_pool(op, fn, window, stride, padding, geometry, **extra) -> Layer:
    """A pooling layer over windows; `geometry` holds the options that change the output shape (dilation, ceil_mode)."""

    def output_shape(input_shape):
        shape = check_shape(op, input_shape, 4, _NHWC)
        *_, out_shape = pool.pool_geometry(with_batch(shape), window, stride, padding, op, **geometry)
        return (shape[0], *out_shape[1:])

    return parameter_free(op, "pool", output_shape, lambda x: fn(x, window, stride, padding, **geometry, **extra))


def MaxPool(window=2, stride=None, padding=0, dilation=1, ceil_mode=False) -> Layer:
    """Max pooling layer (no parameters); stride defaults to the window. Options as for `pool.max_pool`."""
    return _window_pool("MaxPool", pool.max_pool, window, stride, padding, dict(dilation=dilation, ceil_mode=ceil_mode))


def AvgPool(window=2, stride=None, padding=0, count_include_pad=True, ceil_mode=False, divisor_override=None) -> Layer:
    """Average pooling layer (no parameters); stride defaults to the window. Options as for `pool.avg_pool`."""
    return _window_pool(
        "AvgPool", pool.avg_pool, window, stride, padding, dict(ceil_mode=ceil_mode),
        count_include_pad=count_include_pad, divisor_override=divisor_override,
    )


def _adaptive_pool(op, fn, output_size) -> Layer:
    def output_shape(input_shape):
        shape = check_shape(op, input_shape, 4, _NHWC)
        return (shape[0], *pool.adaptive_output_size(shape, output_size, op), shape[3])

    return parameter_free(op, "pool", output_shape, lambda x: fn(x, output_size))


def AdaptiveAvgPool(output_size) -> Layer:
    """(m, n_H, n_W, n_C) -> (m, n_H', n_W', n_C) by averaging PyTorch's adaptive windows; see `pool.adaptive_avg_pool`."""
    return _adaptive_pool("AdaptiveAvgPool", pool.adaptive_avg_pool, output_size)


def AdaptiveMaxPool(output_size) -> Layer:
    """(m, n_H, n_W, n_C) -> (m, n_H', n_W', n_C), the max of PyTorch's adaptive windows; see `pool.adaptive_max_pool`."""
    return _adaptive_pool("AdaptiveMaxPool", pool.adaptive_max_pool, output_size)


def GlobalAvgPool() -> Layer:
    """(m, n_H, n_W, n_C) -> (m, n_C), the mean over space."""
    op = "GlobalAvgPool"

    def output_shape(input_shape):
        shape = check_shape(op, input_shape, 4, _NHWC)
        return (shape[0], shape[3])

    return parameter_free(op, "gap", output_shape, pool.global_avg_pool)


def Flatten() -> Layer:
    """(m, n_H, n_W, n_C) -> (m, n_H·n_W·n_C)."""

    def output_shape(input_shape):
        shape = tuple(input_shape)
        return (shape[0], math.prod(shape[1:]))

    return parameter_free("Flatten", "flatten", output_shape, nn.flatten)
