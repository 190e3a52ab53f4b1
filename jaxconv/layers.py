"""Layer constructors over the functional ops, and `serial` to compose them.

The layer contract (stated once, here):

    layer = Conv2D(6, 5)                       # a Layer(init, apply) NamedTuple
    out_shape, params = layer.init(key, input_shape)
    y = layer.apply(params, x, **kwargs)

- `input_shape` includes the batch axis, which may be -1: (m, n_H, n_W, n_C).
  Shapes are tuples of Python ints.
- `params` is a dict of arrays with readable keys ({"w": ..., "b": ...});
  a layer without parameters has {}. `serial` nests them by layer name:
  params["conv1"]["w"].
- `apply` is a pure function; it also takes one example without the batch
  axis, so `jax.vmap` over examples works.
"""

from __future__ import annotations

import math
from typing import Any, Callable, NamedTuple

import jax

from jaxconv import conv as _conv
from jaxconv import initializers, nn, pool

Params = Any  # a nested dict of arrays


class Layer(NamedTuple):
    """A layer: `init(key, input_shape) -> (output_shape, params)`, `apply(params, x, **kwargs) -> y`."""

    init: Callable
    apply: Callable

    @property
    def kind(self) -> str:
        """A short name of the layer type ('conv', 'dense', 'relu', ...), used for automatic names."""
        return getattr(self.init, "kind", "layer")

    @property
    def children(self) -> tuple:
        """The (name, Layer) pairs of a composite layer (`serial`); () otherwise."""
        return getattr(self.init, "children", ())


def _layer(kind, init, apply, children=()):
    init.kind, init.children = kind, tuple(children)
    return Layer(init, apply)


def _check_shape(op, input_shape, rank, what):
    shape = tuple(input_shape)
    if len(shape) != rank or not all(isinstance(n, int) for n in shape):
        raise ValueError(f"{op}: `input_shape` must be {what} (batch axis first, -1 allowed), got {input_shape!r}.")
    return shape


def _with_batch(shape):
    """Replace a -1 batch axis by 1 so the op's checks can run on concrete sizes."""
    return (1, *shape[1:]) if shape[0] == -1 else shape


def _check_params(op, params, keys):
    if not isinstance(params, dict) or set(params) != set(keys):
        found = sorted(params) if isinstance(params, dict) else type(params).__name__
        raise ValueError(
            f"{op}: params must be a dict with keys {sorted(keys)}, got {found}; "
            f"pass the params that this layer's init returned."
        )


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
    algorithm: str = "auto",
    padding_mode: str = "zeros",
) -> Layer:
    """Convolution layer of `n_filters` filters of size f (an int or (f_H, f_W)); impl, algorithm, padding_mode as in `conv2d`.

    params: {"w": (f_H, f_W, n_C / groups, n_filters), "b": (n_filters,)} ("b" only with use_bias).
    """
    op = "Conv2D"
    if isinstance(n_filters, bool) or not isinstance(n_filters, int) or n_filters < 1:
        raise ValueError(f"{op}: `n_filters` must be an int >= 1, got {n_filters!r}.")
    f = _conv._args.pair(f, "f", op, minimum=1)
    _conv.check_impl(impl, algorithm, op)
    _conv.check_padding_mode(padding_mode, op)
    options = dict(stride=stride, padding=padding, dilation=dilation, groups=groups)
    keys = ("w", "b") if use_bias else ("w",)

    def init(key, input_shape):
        shape = _check_shape(op, input_shape, 4, "(m, n_H, n_W, n_C)")
        n_C = shape[3]
        if n_C % groups:
            raise ValueError(f"{op}: `groups` (={groups}) must divide the input channels n_C (={n_C}).")
        w_shape = (*f, n_C // groups, n_filters)
        *_, out_shape = _conv.conv_geometry(_with_batch(shape), w_shape, op=op, **options)
        k_w, k_b = jax.random.split(key)
        params = {"w": w_init(k_w, w_shape)}
        if use_bias:
            params["b"] = b_init(k_b, (n_filters,))
        return (shape[0], *out_shape[1:]), params

    def apply(params, x, **kwargs):
        _check_params(op, params, keys)
        return _conv.conv2d(x, params["w"], params.get("b"), impl=impl, algorithm=algorithm, padding_mode=padding_mode, **options)

    return _layer("conv", init, apply)


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
) -> Layer:
    """Transposed convolution layer with `n_filters` output channels (`conv_transpose2d`).

    params: {"w": (f_H, f_W, n_filters / groups, n_C), "b": (n_filters,)} ("b" only with use_bias):
    w is the HWIO filter of the conv2d it transposes.
    """
    op = "ConvTranspose2D"
    if isinstance(n_filters, bool) or not isinstance(n_filters, int) or n_filters < 1:
        raise ValueError(f"{op}: `n_filters` must be an int >= 1, got {n_filters!r}.")
    f = _conv._args.pair(f, "f", op, minimum=1)
    if impl not in _conv.TRANSPOSE_IMPLS:
        raise ValueError(f"{op}: unknown `impl` {impl!r}. It needs to be one of {list(_conv.TRANSPOSE_IMPLS)}.")
    if n_filters % groups:
        raise ValueError(f"{op}: `groups` (={groups}) must divide `n_filters` (={n_filters}).")
    options = dict(stride=stride, padding=padding, output_padding=output_padding, dilation=dilation, groups=groups)
    keys = ("w", "b") if use_bias else ("w",)

    def init(key, input_shape):
        shape = _check_shape(op, input_shape, 4, "(m, n_H, n_W, n_C)")
        w_shape = (*f, n_filters // groups, shape[3])
        _, _, out_shape = _conv.transpose_geometry(_with_batch(shape), w_shape, op=op, **options)
        k_w, k_b = jax.random.split(key)
        params = {"w": w_init(k_w, w_shape)}
        if use_bias:
            params["b"] = b_init(k_b, (n_filters,))
        return (shape[0], *out_shape[1:]), params

    def apply(params, x, **kwargs):
        _check_params(op, params, keys)
        return _conv.conv_transpose2d(x, params["w"], params.get("b"), impl=impl, **options)

    return _layer("conv_transpose", init, apply)


def Dense(n_out: int, use_bias: bool = True, w_init=initializers.he_normal, b_init=initializers.zeros) -> Layer:
    """Fully connected layer. params: {"w": (n_in, n_out), "b": (n_out,)}."""
    op = "Dense"
    if isinstance(n_out, bool) or not isinstance(n_out, int) or n_out < 1:
        raise ValueError(f"{op}: `n_out` must be an int >= 1, got {n_out!r}.")
    keys = ("w", "b") if use_bias else ("w",)

    def init(key, input_shape):
        shape = tuple(input_shape)
        if len(shape) != 2:
            raise ValueError(
                f"{op}: `input_shape` must be (m, n_in), got {input_shape!r}; put Flatten() before Dense "
                f"to turn (m, n_H, n_W, n_C) activations into (m, n_H·n_W·n_C)."
            )
        k_w, k_b = jax.random.split(key)
        params = {"w": w_init(k_w, (shape[1], n_out))}
        if use_bias:
            params["b"] = b_init(k_b, (n_out,))
        return (shape[0], n_out), params

    def apply(params, x, **kwargs):
        _check_params(op, params, keys)
        return nn.dense(x, params["w"], params.get("b"))

    return _layer("fc", init, apply)


def _pool_layer(op, kind, fn, window, stride, padding, **extra):
    def init(key, input_shape):
        shape = _check_shape(op, input_shape, 4, "(m, n_H, n_W, n_C)")
        *_, out_shape = pool.pool_geometry(_with_batch(shape), window, stride, padding, op)
        return (shape[0], *out_shape[1:]), {}

    def apply(params, x, **kwargs):
        _check_params(op, params, ())
        return fn(x, window, stride, padding, **extra)

    return _layer(kind, init, apply)


def MaxPool(window=2, stride=None, padding=0) -> Layer:
    """Max pooling layer (no parameters); stride defaults to the window."""
    return _pool_layer("MaxPool", "pool", pool.max_pool, window, stride, padding)


def AvgPool(window=2, stride=None, padding=0, count_include_pad=True) -> Layer:
    """Average pooling layer (no parameters); stride defaults to the window."""
    return _pool_layer("AvgPool", "pool", pool.avg_pool, window, stride, padding, count_include_pad=count_include_pad)


def GlobalAvgPool() -> Layer:
    """(m, n_H, n_W, n_C) -> (m, n_C), the mean over space."""

    def init(key, input_shape):
        shape = _check_shape("GlobalAvgPool", input_shape, 4, "(m, n_H, n_W, n_C)")
        return (shape[0], shape[3]), {}

    def apply(params, x, **kwargs):
        _check_params("GlobalAvgPool", params, ())
        return pool.global_avg_pool(x)

    return _layer("gap", init, apply)


def Flatten() -> Layer:
    """(m, n_H, n_W, n_C) -> (m, n_H·n_W·n_C)."""

    def init(key, input_shape):
        shape = tuple(input_shape)
        return (shape[0], math.prod(shape[1:])), {}

    def apply(params, x, **kwargs):
        _check_params("Flatten", params, ())
        return nn.flatten(x)

    return _layer("flatten", init, apply)


def _elementwise(name, kind, fn) -> Callable[[], Layer]:
    def constructor() -> Layer:
        def init(key, input_shape):
            return tuple(input_shape), {}

        def apply(params, x, **kwargs):
            _check_params(name, params, ())
            return fn(x)

        return _layer(kind, init, apply)

    constructor.__name__ = constructor.__qualname__ = name
    constructor.__doc__ = f"Elementwise {kind} layer (no parameters)."
    return constructor


Relu = _elementwise("Relu", "relu", nn.relu)
Tanh = _elementwise("Tanh", "tanh", nn.tanh)
Sigmoid = _elementwise("Sigmoid", "sigmoid", nn.sigmoid)
Softmax = _elementwise("Softmax", "softmax", nn.softmax)
LogSoftmax = _elementwise("LogSoftmax", "log_softmax", nn.log_softmax)


def serial(*layers) -> Layer:
    """Compose layers in order. Each argument is a Layer or a (name, Layer) pair.

    Unnamed layers are named by kind and position among their kind: conv1,
    relu1, pool1, conv2, ..., so the names are stable as long as the layer
    list is. params = {name: that layer's params}.

    >>> net = serial(("conv1", Conv2D(6, 5)), Relu(), MaxPool(2), Flatten(), Dense(10))
    >>> shape, params = net.init(jax.random.key(0), (-1, 32, 32, 1))
    >>> shape, list(params)
    ((-1, 10), ['conv1', 'relu1', 'pool1', 'flatten1', 'fc1'])
    """
    named, counts = [], {}
    for item in layers:
        if isinstance(item, tuple) and len(item) == 2 and isinstance(item[0], str) and isinstance(item[1], Layer):
            name, layer = item
        elif isinstance(item, Layer):
            counts[item.kind] = counts.get(item.kind, 0) + 1
            name, layer = f"{item.kind}{counts[item.kind]}", item
        else:
            raise TypeError(f"serial: each argument must be a Layer or a (name, Layer) pair, got {item!r}.")
        named.append((name, layer))
    names = [name for name, _ in named]
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise ValueError(f"serial: layer names must be unique, got {duplicates} more than once; rename them.")

    def init(key, input_shape):
        keys = jax.random.split(key, len(named))
        shape, params = tuple(input_shape), {}
        for k, (name, layer) in zip(keys, named):
            shape, params[name] = layer.init(k, shape)
        return shape, params

    def apply(params, x, **kwargs):
        if not isinstance(params, dict) or set(params) != set(names):
            found = set(params) if isinstance(params, dict) else set()
            missing, unexpected = sorted(set(names) - found), sorted(found - set(names))
            raise ValueError(
                f"serial: params do not match the layers: missing {missing}, unexpected {unexpected} "
                f"(got {type(params).__name__}); pass the params that this model's init returned."
            )
        for name, layer in named:
            x = layer.apply(params[name], x, **kwargs)
        return x

    return _layer("serial", init, apply, named)
