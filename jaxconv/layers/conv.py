"""The layers with weights: Conv1D/2D/3D, ConvTranspose1D/2D/3D and Dense (the layer contract: `jaxconv.layers.core`).

One builder per family, parameterised by the number of spatial axes N: `conv_layer` and
`conv_transpose_layer`. Conv2D and ConvTranspose2D live here; the 1-D and 3-D layers in `conv_nd`.
"""

from __future__ import annotations

import jax

from jaxconv import _args, initializers, nn
from jaxconv.conv import (
    TRANSPOSE_IMPLS,
    check_impl,
    check_padding_mode,
    conv1d,
    conv2d,
    conv3d,
    conv_geometry,
    conv_transpose1d,
    conv_transpose2d,
    conv_transpose3d,
    nd,
    transpose_geometry,
    transpose_nd,
)
from jaxconv.layers.core import Layer, check_count, check_params, check_shape, make_layer, with_batch
from jaxconv.layers.dtypes import check_dtypes, to_compute

# The op and its shape check for each number of spatial axes N; 2-D keeps its own (conv2d has the fast algorithms).
CONV_OPS = {1: (conv1d, nd.conv_geometry), 2: (conv2d, conv_geometry), 3: (conv3d, nd.conv_geometry)}
TRANSPOSE_OPS = {
    1: (conv_transpose1d, transpose_nd.transpose_geometry),
    2: (conv_transpose2d, transpose_geometry),
    3: (conv_transpose3d, transpose_nd.transpose_geometry),
}


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


def _filter_size(f, N, op):
    """f as N ints >= 1: (f_H, f_W) in 2-D (its error speaks of a pair), (f_W,) or (f_D, f_H, f_W) otherwise."""
    return _args.pair(f, "f", op, minimum=1) if N == 2 else _args.ntuple(f, "f", op, n=N, minimum=1)


def conv_layer(N, op, n_filters, f, *, stride=1, padding=0, dilation=1, groups=1, use_bias=True, impl="auto",
               w_init=initializers.he_normal, b_init=initializers.zeros, dtype=None, algorithm="auto",
               padding_mode="zeros", compute_dtype=None) -> Layer:
    """A convolution layer over N spatial axes, named `op` in errors: what Conv1D, Conv2D and Conv3D build.

    params: {"w": (*f, n_C / groups, n_filters), "b": (n_filters,)}; x: (m, *n, n_C) -> (m, *n', n_filters)
    by conv1d, conv2d or conv3d. `algorithm` is conv2d's (N = 2 only; "auto" otherwise).
    He initialisation's fan-in is f_1·…·f_N·n_C/groups, the filter's size without its output axis.
    """
    dtype, compute_dtype = check_dtypes(op, dtype, compute_dtype)
    check_count(op, "n_filters", n_filters)
    f = _filter_size(f, N, op)
    check_impl(impl, algorithm, op)
    check_padding_mode(padding_mode, op)
    conv_fn, geometry = CONV_OPS[N]
    options = dict(stride=stride, padding=padding, dilation=dilation, groups=groups)
    call = dict(options, impl=impl, padding_mode=padding_mode, **({"algorithm": algorithm} if N == 2 else {}))
    keys = ("w", "b") if use_bias else ("w",)

    def init(key, input_shape):
        shape = check_shape(op, input_shape, N + 2, _args.x_form(N))
        n_C = shape[-1]
        if n_C % groups:
            raise ValueError(f"{op}: `groups` (={groups}) must divide the input channels n_C (={n_C}).")
        w_shape = (*f, n_C // groups, n_filters)
        *_, out_shape = geometry(with_batch(shape), w_shape, op=op, **options)
        return (shape[0], *out_shape[1:]), _weights(key, w_shape, n_filters, use_bias, w_init, b_init, dtype)

    def apply(params, x, **kwargs):
        check_params(op, params, keys)
        x, w, b = to_compute(compute_dtype, x, params["w"], params.get("b"))
        return conv_fn(x, w, b, **call)

    return make_layer(op, "conv", init, apply)


def conv_transpose_layer(N, op, n_filters, f, *, stride=1, padding=0, output_padding=0, dilation=1, groups=1,
                         use_bias=True, impl="auto", w_init=initializers.he_normal, b_init=initializers.zeros,
                         dtype=None, compute_dtype=None) -> Layer:
    """A transposed convolution layer over N spatial axes, named `op` in errors: what ConvTranspose1D/2D/3D build.

    params: {"w": (*f, n_filters / groups, n_C), "b": (n_filters,)}: w is the filter of the convolution
    it transposes. x: (m, *n, n_C) -> (m, *n', n_filters) by conv_transpose1d, 2d or 3d.
    """
    dtype, compute_dtype = check_dtypes(op, dtype, compute_dtype)
    check_count(op, "n_filters", n_filters)
    f = _filter_size(f, N, op)
    if impl not in TRANSPOSE_IMPLS:
        raise ValueError(f"{op}: unknown `impl` {impl!r}. It needs to be one of {list(TRANSPOSE_IMPLS)}.")
    if n_filters % groups:
        raise ValueError(f"{op}: `groups` (={groups}) must divide `n_filters` (={n_filters}).")
    conv_fn, geometry = TRANSPOSE_OPS[N]
    options = dict(stride=stride, padding=padding, output_padding=output_padding, dilation=dilation, groups=groups)
    keys = ("w", "b") if use_bias else ("w",)

    def init(key, input_shape):
        shape = check_shape(op, input_shape, N + 2, _args.x_form(N))
        w_shape = (*f, n_filters // groups, shape[-1])
        *_, out_shape = geometry(with_batch(shape), w_shape, op=op, **options)
        return (shape[0], *out_shape[1:]), _weights(key, w_shape, n_filters, use_bias, w_init, b_init, dtype)

    def apply(params, x, **kwargs):
        check_params(op, params, keys)
        x, w, b = to_compute(compute_dtype, x, params["w"], params.get("b"))
        return conv_fn(x, w, b, impl=impl, **options)

    return make_layer(op, "conv_transpose", init, apply)


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
    return conv_layer(
        2, "Conv2D", n_filters, f, stride=stride, padding=padding, dilation=dilation, groups=groups, use_bias=use_bias,
        impl=impl, w_init=w_init, b_init=b_init, dtype=dtype, algorithm=algorithm, padding_mode=padding_mode,
        compute_dtype=compute_dtype,
    )


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
    return conv_transpose_layer(
        2, "ConvTranspose2D", n_filters, f, stride=stride, padding=padding, output_padding=output_padding,
        dilation=dilation, groups=groups, use_bias=use_bias, impl=impl, w_init=w_init, b_init=b_init, dtype=dtype,
        compute_dtype=compute_dtype,
    )


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
