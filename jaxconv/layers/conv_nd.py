"""The 1-D and 3-D convolution layers: Conv1D, Conv3D, ConvTranspose1D, ConvTranspose3D.

Each is `conv_layer` / `conv_transpose_layer` (in `jaxconv.layers.conv`, the builders Conv2D and
ConvTranspose2D share) at its number of spatial axes; the arguments are Conv2D's and
ConvTranspose2D's, one value per spatial axis where they take a tuple. Channels last:
NWC (m, n_W, n_C) with WIO filters in 1-D, NDHWC (m, n_D, n_H, n_W, n_C) with DHWIO filters in 3-D.
"""

from __future__ import annotations

from jaxconv import initializers
from jaxconv.layers.conv import conv_layer, conv_transpose_layer
from jaxconv.layers.core import Layer


def Conv1D(n_filters: int, f, stride=1, padding=0, dilation=1, groups: int = 1, use_bias: bool = True, impl: str = "auto",
           w_init=initializers.he_normal, b_init=initializers.zeros, dtype=None, padding_mode: str = "zeros",
           compute_dtype=None) -> Layer:
    """1-D convolution layer of `n_filters` filters of size f (an int or (f_W,)); impl, padding_mode as in `conv1d`.

    params: {"w": (f_W, n_C / groups, n_filters), "b": (n_filters,)} ("b" only with use_bias), of `dtype`.
    x: (m, n_W, n_C) -> (m, n_W', n_filters) in `compute_dtype` (None: the common dtype of x and the params).

    >>> import jax
    >>> Conv1D(8, 3, padding=1).init(jax.random.key(0), (-1, 16, 2))[0]
    (-1, 16, 8)
    """
    return conv_layer(
        1, "Conv1D", n_filters, f, stride=stride, padding=padding, dilation=dilation, groups=groups, use_bias=use_bias,
        impl=impl, w_init=w_init, b_init=b_init, dtype=dtype, padding_mode=padding_mode, compute_dtype=compute_dtype,
    )


def Conv3D(n_filters: int, f, stride=1, padding=0, dilation=1, groups: int = 1, use_bias: bool = True, impl: str = "auto",
           w_init=initializers.he_normal, b_init=initializers.zeros, dtype=None, padding_mode: str = "zeros",
           compute_dtype=None) -> Layer:
    """3-D convolution layer of `n_filters` filters of size f (an int or (f_D, f_H, f_W)); impl, padding_mode as in `conv3d`.

    params: {"w": (f_D, f_H, f_W, n_C / groups, n_filters), "b": (n_filters,)} ("b" only with use_bias), of `dtype`.
    x: (m, n_D, n_H, n_W, n_C) -> (m, n_D', n_H', n_W', n_filters) in `compute_dtype`.

    >>> import jax
    >>> Conv3D(4, 3, stride=2, padding=1).init(jax.random.key(0), (-1, 8, 8, 8, 1))[0]
    (-1, 4, 4, 4, 4)
    """
    return conv_layer(
        3, "Conv3D", n_filters, f, stride=stride, padding=padding, dilation=dilation, groups=groups, use_bias=use_bias,
        impl=impl, w_init=w_init, b_init=b_init, dtype=dtype, padding_mode=padding_mode, compute_dtype=compute_dtype,
    )


def ConvTranspose1D(n_filters: int, f, stride=1, padding=0, output_padding=0, dilation=1, groups: int = 1,
                    use_bias: bool = True, impl: str = "auto", w_init=initializers.he_normal, b_init=initializers.zeros,
                    dtype=None, compute_dtype=None) -> Layer:
    """Transposed 1-D convolution layer with `n_filters` output channels (`conv_transpose1d`).

    params: {"w": (f_W, n_filters / groups, n_C), "b": (n_filters,)}: w is the WIO filter of the conv1d it
    transposes. x: (m, n_W, n_C) -> (m, n_W', n_filters), n_W' = (n_W − 1)·s − 2p + d(f_W − 1) + output_padding + 1.
    """
    return conv_transpose_layer(
        1, "ConvTranspose1D", n_filters, f, stride=stride, padding=padding, output_padding=output_padding,
        dilation=dilation, groups=groups, use_bias=use_bias, impl=impl, w_init=w_init, b_init=b_init, dtype=dtype,
        compute_dtype=compute_dtype,
    )


def ConvTranspose3D(n_filters: int, f, stride=1, padding=0, output_padding=0, dilation=1, groups: int = 1,
                    use_bias: bool = True, impl: str = "auto", w_init=initializers.he_normal, b_init=initializers.zeros,
                    dtype=None, compute_dtype=None) -> Layer:
    """Transposed 3-D convolution layer with `n_filters` output channels (`conv_transpose3d`).

    params: {"w": (f_D, f_H, f_W, n_filters / groups, n_C), "b": (n_filters,)}: w is the DHWIO filter of the
    conv3d it transposes. x: (m, n_D, n_H, n_W, n_C) -> (m, n_D', n_H', n_W', n_filters), sizes per axis as in 1-D.
    """
    return conv_transpose_layer(
        3, "ConvTranspose3D", n_filters, f, stride=stride, padding=padding, output_padding=output_padding,
        dilation=dilation, groups=groups, use_bias=use_bias, impl=impl, w_init=w_init, b_init=b_init, dtype=dtype,
        compute_dtype=compute_dtype,
    )
