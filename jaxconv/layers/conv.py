"""The layers with weights: Conv2D, ConvTranspose2D and Dense (the layer contract: `jaxconv.layers.core`)."""

from __future__ import annotations

import jax

from jaxconv import initializers, nn
from jaxconv._args import pair
from jaxconv.conv import TRANSPOSE_IMPLS, check_impl, check_padding_mode, conv2d, conv_geometry, conv_transpose2d, transpose_geometry
from jaxconv.layers.core import Layer, check_count, check_params, check_shape, make_layer, with_batch
from jaxconv.layers.dtypes import check_dtypes, to_compute


def _draw(initializer, key, shape, dtype):
    """initializer(key, shape[, dtype]): a dtype only when the layer was given one (2-argument initialisers work)."""
    return initializer(key, shape) if dtype is None else initializer(key, shape, dtype)


def _weights(key, w_shape, n_out, use_bias, w_init, b_init, dtype):
    """{"w": w_init's (w_shape), "b": b_init's (n_out,)} ("b" only with use_bias), of `dtype`."""
    k_w, k_b = jax.random.split(key)
    params = {"w": _draw(w_init, k_w, w_shape, dtype)}
    if use_bias:
        params["b"] = _draw(b_init, k_b, (n_out,), dtype)
    return params


def Conv2D(
    n_filters: int,
    f,
    stride=1,
    padding=0,
    dilation=1,
    groups: int = 1,
    use_bias: bool = True,
    impl: str = "auto",
    w_init=initializers.he_normal,
    b_init=initializers.zeros,
    dtype=None,
    algorithm: str = "auto",
    padding_mode: str = "zeros",
    compute_dtype=None,
) -> Layer:
    """Convolution layer of `n_filters` filters of size f (an int or (f_H, f_W)); impl, algorithm, padding_mode as in `conv2d`.

    params: {"w": (f_H, f_W, n_C / groups, n_filters), "b": (n_filters,)} ("b" only with use_bias),
    of `dtype` (None: JAX's default float dtype). x: (m, n_H, n_W, n_C) -> (m, n_H', n_W', n_filters)
    in `compute_dtype` (None: the common dtype of x and the params); see `jaxconv.layers.dtypes`.
    """
    op = "Conv2D"
    dtype, compute_dtype = check_dtypes(op, dtype, compute_dtype)
    check_count(op, "n_filters", n_filters)
    f = pair(f, "f", op, minimum=1)
    check_impl(impl, algorithm, op)
    check_padding_mode(padding_mode, op)
    options = dict(stride=stride, padding=padding, dilation=dilation, groups=groups)
    keys = ("w", "b") if use_bias else ("w",)

    def init(key, input_shape):
        shape = check_shape(op, input_shape, 4, "(m, n_H, n_W, n_C)")
        n_C = shape[3]
        if n_C % groups:
            raise ValueError(f"{op}: `groups` (={groups}) must divide the input channels n_C (={n_C}).")
        w_shape = (*f, n_C // groups, n_filters)
        *_, out_shape = conv_geometry(with_batch(shape), w_shape, op=op, **options)
        return (shape[0], *out_shape[1:]), _weights(key, w_shape, n_filters, use_bias, w_init, b_init, dtype)

    def apply(params, x, **kwargs):
        check_params(op, params, keys)
        x, w, b = to_compute(compute_dtype, x, params["w"], params.get("b"))
        return conv2d(x, w, b, impl=impl, algorithm=algorithm, padding_mode=padding_mode, **options)

    return make_layer(op, "conv", init, apply)


def ConvTranspose2D(
    n_filters: int,
    f,
    stride=1,
    padding=0,
    output_padding=0,
    dilation=1,
    groups: int = 1,
    use_bias: bool = True,
    impl: str = "auto",
    w_init=initializers.he_normal,
    b_init=initializers.zeros,
    dtype=None,
    compute_dtype=None,
) -> Layer:
    """Transposed convolution layer with `n_filters` output channels (`conv_transpose2d`).

    params: {"w": (f_H, f_W, n_filters / groups, n_C), "b": (n_filters,)} ("b" only with use_bias):
    w is the HWIO filter of the conv2d it transposes; of `dtype` (None: JAX's default float dtype).
    x: (m, n_H, n_W, n_C) -> (m, n_H', n_W', n_filters) in `compute_dtype` (None: the common dtype).
    """
    op = "ConvTranspose2D"
    dtype, compute_dtype = check_dtypes(op, dtype, compute_dtype)
    check_count(op, "n_filters", n_filters)
    f = pair(f, "f", op, minimum=1)
    if impl not in TRANSPOSE_IMPLS:
        raise ValueError(f"{op}: unknown `impl` {impl!r}. It needs to be one of {list(TRANSPOSE_IMPLS)}.")
    if n_filters % groups:
        raise ValueError(f"{op}: `groups` (={groups}) must divide `n_filters` (={n_filters}).")
    options = dict(stride=stride, padding=padding, output_padding=output_padding, dilation=dilation, groups=groups)
    keys = ("w", "b") if use_bias else ("w",)

    def init(key, input_shape):
        shape = check_shape(op, input_shape, 4, "(m, n_H, n_W, n_C)")
        w_shape = (*f, n_filters // groups, shape[3])
        _, _, out_shape = transpose_geometry(with_batch(shape), w_shape, op=op, **options)
        return (shape[0], *out_shape[1:]), _weights(key, w_shape, n_filters, use_bias, w_init, b_init, dtype)

    def apply(params, x, **kwargs):
        check_params(op, params, keys)
        x, w, b = to_compute(compute_dtype, x, params["w"], params.get("b"))
        return conv_transpose2d(x, w, b, impl=impl, **options)

    return make_layer(op, "conv_transpose", init, apply)


def Dense(n_out: int, use_bias: bool = True, w_init=initializers.he_normal, b_init=initializers.zeros, dtype=None,
          compute_dtype=None) -> Layer:
    """Fully connected layer. params: {"w": (n_in, n_out), "b": (n_out,)} of `dtype` (None: JAX's default float).

    x: (m, n_in) -> (m, n_out) in `compute_dtype` (None: the common dtype of x and the params).
    """
    op = "Dense"
    dtype, compute_dtype = check_dtypes(op, dtype, compute_dtype)
    check_count(op, "n_out", n_out)
    keys = ("w", "b") if use_bias else ("w",)

    def init(key, input_shape):
        shape = tuple(input_shape)
        if len(shape) != 2:
            raise ValueError(
                f"{op}: `input_shape` must be (m, n_in), got {input_shape!r}; put Flatten() before Dense "
                f"to turn (m, n_H, n_W, n_C) activations into (m, n_H·n_W·n_C)."
            )
        return (shape[0], n_out), _weights(key, (shape[1], n_out), n_out, use_bias, w_init, b_init, dtype)

    def apply(params, x, **kwargs):
        check_params(op, params, keys)
        return nn.dense(*to_compute(compute_dtype, x, params["w"], params.get("b")))

    return make_layer(op, "fc", init, apply)
