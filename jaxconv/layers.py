"""Layer constructors over the functional ops, and combinators to compose them.

The layer contract (stated once, here):

    layer = Conv2D(6, 5)                       # a Layer NamedTuple
    out_shape, params = layer.init(key, input_shape)
    out_shape, state = layer.init_state(input_shape)
    y = layer.apply(params, x)                             # stateless use
    y, state = layer.apply(params, x, state=state, key=key, train=True)

- `input_shape` includes the batch axis, which may be -1: (m, n_H, n_W, n_C).
  Shapes are tuples of Python ints. `key` is a `jax.random` key (not an int).
- `params` is a dict of arrays with readable keys ({"w": ..., "b": ...});
  a layer without parameters has {}. Composites nest them by layer name:
  params["conv1"]["w"], params["stage2"]["block1"]["conv_a"]["w"].
- `state` is what a layer carries between calls (BatchNorm's running "mean"
  and "var"), a dict nested exactly like params ({} for stateless layers).
  It goes in and comes out: when `state` is given, apply returns (y, new_state).
- `train` selects the mode: train=True, BatchNorm normalises with the batch's
  statistics (and updates the running ones when `state` is given) and Dropout
  drops with `key` (required); train=False (the default), BatchNorm uses the
  running statistics (`state` required) and Dropout is the identity.
  Composites give child i the key `jax.random.fold_in(key, i)`.
- `apply` is a pure function; it also takes one example without the batch
  axis, so `jax.vmap` over examples works (BatchNorm: in eval mode only).
- dtypes: params follow JAX's default float dtype (float32; float64 with
  jax_enable_x64) unless a layer's `dtype=` says otherwise. Layers promote a
  mixed input/params pair to their common dtype (`jnp.result_type`, as Flax
  does); the pure functions (`conv2d`) stay strict and raise instead.
  `compute_dtype=` (Conv2D, ConvTranspose2D, Dense, BatchNorm; Flax's `dtype`) is the mixed
  precision policy: apply casts the input and the params to it and returns its
  dtype, while the params (and so the gradients and the optimizer) keep
  `dtype`. Convolutions and Dense sum products in float32 for bfloat16/float16;
  BatchNorm computes its statistics and normalises in float32 and keeps float32
  running statistics. None (the default) is the promotion above.
"""

from __future__ import annotations

import contextlib
import math
from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp

from jaxconv import conv as _conv
from jaxconv import initializers, nn, pool

Params = Any  # a nested dict of arrays


class Layer(NamedTuple):
    """A layer: init(key, input_shape), apply(params, x, *, state, key, train), its kind, children and init_state.

    kind: a short name of the layer type ('conv', 'dense', 'relu', ...), used for automatic names.
    children: the (name, Layer) pairs of a composite layer (`serial`, `parallel`, `residual`); () otherwise.
    init_state(input_shape) -> (output_shape, state); None for a layer written outside jaxconv
    with a plain apply(params, x), which composites then treat as stateless.
    """

    init: Callable
    apply: Callable
    kind: str = "layer"
    children: tuple = ()
    init_state: Callable | None = None


def _check_key(op, key):
    is_key = isinstance(key, jax.Array) and (
        jax.dtypes.issubdtype(key.dtype, jax.dtypes.prng_key) or (key.dtype == jnp.uint32 and key.shape == (2,))
    )
    if not is_key:
        raise TypeError(
            f"{op}.init: `key` must be a jax.random key, got {type(key).__name__} {key!r}; "
            f"pass jax.random.key({key!r}) instead of the bare seed."
            if isinstance(key, int)
            else f"{op}.init: `key` must be a jax.random key, got {type(key).__name__}; make one with jax.random.key(seed)."
        )


def _compiled_init(op, init):
    """init with its key checked; called eagerly, the whole init runs as one compiled program.

    Eagerly, every jax.random draw of a new shape compiles on its own (LeNet-5's init took
    7-11 s). Here the built-in initialisers share one draw per dtype (`initializers.DrawPool`)
    from `initializers.init_key(key)`, a generator that compiles in milliseconds.
    """

    def checked(key, input_shape):
        _check_key(op, key)
        if initializers.in_pooled_init():  # inside an outer layer's init: its passes cover this one
            return init(key, input_shape)
        key = initializers.init_key(key)
        with initializers.pooled(initializers.DrawPool()) as counts:  # pass 1, traced only: count the draws
            jax.eval_shape(lambda k: init(k, input_shape)[1], key)
        with initializers.pooled(initializers.DrawPool(counts.sizes, key)):  # pass 2: slice one draw per dtype
            out_shape, params = init(key, input_shape)
        # Eagerly the leaves are numpy arrays: put them on the device (no compiling); under an
        # outer jit / eval_shape they are traced values, and the same values as eagerly.
        return out_shape, params if isinstance(key, jax.core.Tracer) else _device_put_in_order(params)

    return checked


def _device_put_in_order(params):
    """jax.device_put of a nested dict of arrays, keeping each dict's key order (pytree flattening sorts
    keys, and params read best in layer order: conv1, relu1, pool1, ...)."""
    leaves = []

    def collect(node):
        if isinstance(node, dict):
            for child in node.values():
                collect(child)
        else:
            leaves.append(node)

    collect(params)
    on_device = iter(jax.device_put(leaves))

    def rebuild(node):
        return {k: rebuild(v) for k, v in node.items()} if isinstance(node, dict) else next(on_device)

    return rebuild(params)


def _shape_only_init_state(init):
    """init_state of a stateless layer: the output shape from tracing init (no FLOPs), state {}."""

    def init_state(input_shape):
        box = {}

        def params_only(k):
            box["shape"], params = init(k, input_shape)
            return params

        jax.eval_shape(params_only, jax.random.key(0))
        return box["shape"], {}

    return init_state


def _stateless_apply(op, apply):
    def wrapped(params, x, *, state=None, key=None, train=False, **kwargs):
        y = apply(params, x, **kwargs)
        if state is None:
            return y
        if state != {}:
            raise ValueError(f"{op}: this layer has no state, so `state` must be {{}}, got {_keys(state)}; pass the state that init_state returned.")
        return y, {}

    return wrapped


def _keys(tree):
    return sorted(tree) if isinstance(tree, dict) else type(tree).__name__


def _layer(kind, init, apply, children=(), init_state=None):
    """A Layer from a leaf's init and apply(params, x, **kwargs); a stateless leaf gets the state protocol here."""
    op = init.__qualname__.split(".")[0]
    if init_state is None:  # a stateless leaf
        init_state, apply = _shape_only_init_state(init), _stateless_apply(op, apply)
    return Layer(_compiled_init(op, init), apply, kind, tuple(children), init_state)


@contextlib.contextmanager
def _inside(name):
    """Re-raise a ValueError/TypeError from a child with the child's path appended: (in layer `stage2/block1/bn_a`)."""
    try:
        yield
    except (ValueError, TypeError) as e:
        path = [name, *getattr(e, "_jaxconv_path", [])]
        message = getattr(e, "_jaxconv_message", str(e))
        e._jaxconv_path, e._jaxconv_message = path, message
        e.args = (f"{message} (in layer `{'/'.join(path)}`)",)
        raise


def _init_state(layer, input_shape):
    if layer.init_state is None:  # a Layer(init, apply) written by hand: stateless
        return _shape_only_init_state(layer.init)(input_shape)
    return layer.init_state(input_shape)


def _call(layer, params, x, state, key, train, kwargs):
    """Apply a child; returns (y, new_state), new_state None when state is None."""
    if layer.init_state is None:
        return layer.apply(params, x, **kwargs), (None if state is None else {})
    if state is None:
        return layer.apply(params, x, key=key, train=train, **kwargs), None
    return layer.apply(params, x, state=state, key=key, train=train, **kwargs)


def _draw(initializer, key, shape, dtype):
    """initializer(key, shape[, dtype]): a dtype only when the layer was given one (2-argument initialisers work)."""
    return initializer(key, shape) if dtype is None else initializer(key, shape, jnp.dtype(dtype))


def _promote(x, *arrays):
    """x and the params cast to their common dtype (the layers' mixed-dtype policy)."""
    dtype = jnp.result_type(x, *[a for a in arrays if a is not None])
    return [None if a is None else jnp.asarray(a).astype(dtype) for a in (x, *arrays)]


FLOAT_DTYPES = ("float32", "bfloat16", "float16", "float64")  # what `dtype=` and `compute_dtype=` accept


def _check_dtype(op, name, dtype):
    """`dtype` as a numpy dtype (None stays None); a float dtype by name, type or dtype, else an error naming the choices."""
    if dtype is None:
        return None
    if not isinstance(dtype, (str, type, jnp.dtype)):
        raise TypeError(f"{op}: `{name}` must be a dtype or its name, got {type(dtype).__name__} {dtype!r}; pass one of {list(FLOAT_DTYPES)} or None.")
    try:
        dt = jnp.dtype(dtype)
    except TypeError:
        dt = None
    if dt is None or dt.name not in FLOAT_DTYPES:
        example = "bfloat16" if name == "compute_dtype" else "float32"
        raise ValueError(f"{op}: unknown `{name}` {dtype!r}. It needs to be one of {list(FLOAT_DTYPES)} or None (e.g. {name}=\"{example}\").")
    return dt


def _to_compute(compute_dtype, x, *arrays):
    """x and the params in the compute dtype; with compute_dtype None, promoted to their common dtype."""
    if compute_dtype is None:
        return _promote(x, *arrays)
    return [None if a is None else jnp.asarray(a).astype(compute_dtype) for a in (x, *arrays)]


def _check_shape(op, input_shape, rank, what):
    shape = tuple(input_shape)
    if len(shape) != rank or not all(isinstance(n, int) for n in shape):
        raise ValueError(f"{op}: `input_shape` must be {what} (batch axis first, -1 allowed), got {input_shape!r}.")
    return shape


def _with_batch(shape):
    """Replace a -1 batch axis by 1 so the op's checks can run on concrete sizes."""
    return (1, *shape[1:]) if shape[0] == -1 else shape


def _check_params(op, params, keys, what="params", fix="pass the params that this layer's init returned"):
    if not isinstance(params, dict) or set(params) != set(keys):
        found = sorted(params) if isinstance(params, dict) else type(params).__name__
        raise ValueError(f"{op}: {what} must be a dict with keys {sorted(keys)}, got {found}; {fix}.")


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
    in `compute_dtype` (None: the common dtype of x and the params); see the module's dtype notes.
    """
    op = "Conv2D"
    dtype, compute_dtype = _check_dtype(op, "dtype", dtype), _check_dtype(op, "compute_dtype", compute_dtype)
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
        params = {"w": _draw(w_init, k_w, w_shape, dtype)}
        if use_bias:
            params["b"] = _draw(b_init, k_b, (n_filters,), dtype)
        return (shape[0], *out_shape[1:]), params

    def apply(params, x, **kwargs):
        _check_params(op, params, keys)
        x, w, b = _to_compute(compute_dtype, x, params["w"], params.get("b"))
        return _conv.conv2d(x, w, b, impl=impl, algorithm=algorithm, padding_mode=padding_mode, **options)

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
    dtype=None,
    compute_dtype=None,
) -> Layer:
    """Transposed convolution layer with `n_filters` output channels (`conv_transpose2d`).

    params: {"w": (f_H, f_W, n_filters / groups, n_C), "b": (n_filters,)} ("b" only with use_bias):
    w is the HWIO filter of the conv2d it transposes; of `dtype` (None: JAX's default float dtype).
    x: (m, n_H, n_W, n_C) -> (m, n_H', n_W', n_filters) in `compute_dtype` (None: the common dtype).
    """
    op = "ConvTranspose2D"
    dtype, compute_dtype = _check_dtype(op, "dtype", dtype), _check_dtype(op, "compute_dtype", compute_dtype)
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
        params = {"w": _draw(w_init, k_w, w_shape, dtype)}
        if use_bias:
            params["b"] = _draw(b_init, k_b, (n_filters,), dtype)
        return (shape[0], *out_shape[1:]), params

    def apply(params, x, **kwargs):
        _check_params(op, params, keys)
        x, w, b = _to_compute(compute_dtype, x, params["w"], params.get("b"))
        return _conv.conv_transpose2d(x, w, b, impl=impl, **options)

    return _layer("conv_transpose", init, apply)


def Dense(n_out: int, use_bias: bool = True, w_init=initializers.he_normal, b_init=initializers.zeros, dtype=None,
          compute_dtype=None) -> Layer:
    """Fully connected layer. params: {"w": (n_in, n_out), "b": (n_out,)} of `dtype` (None: JAX's default float).

    x: (m, n_in) -> (m, n_out) in `compute_dtype` (None: the common dtype of x and the params).
    """
    op = "Dense"
    dtype, compute_dtype = _check_dtype(op, "dtype", dtype), _check_dtype(op, "compute_dtype", compute_dtype)
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
        params = {"w": _draw(w_init, k_w, (shape[1], n_out), dtype)}
        if use_bias:
            params["b"] = _draw(b_init, k_b, (n_out,), dtype)
        return (shape[0], n_out), params

    def apply(params, x, **kwargs):
        _check_params(op, params, keys)
        return nn.dense(*_to_compute(compute_dtype, x, params["w"], params.get("b")))

    return _layer("fc", init, apply)


def _pool_layer(op, kind, fn, window, stride, padding, geometry=None, **extra):
    geometry = geometry or {}  # the options that change the output shape: dilation, ceil_mode

    def init(key, input_shape):
        shape = _check_shape(op, input_shape, 4, "(m, n_H, n_W, n_C)")
        *_, out_shape = pool.pool_geometry(_with_batch(shape), window, stride, padding, op, **geometry)
        return (shape[0], *out_shape[1:]), {}

    def apply(params, x, **kwargs):
        _check_params(op, params, ())
        return fn(x, window, stride, padding, **geometry, **extra)

    init.__qualname__ = f"{op}.<locals>.init"  # the op name in error messages
    return _layer(kind, init, apply)


def MaxPool(window=2, stride=None, padding=0, dilation=1, ceil_mode=False) -> Layer:
    """Max pooling layer (no parameters); stride defaults to the window. Options as for `pool.max_pool`."""
    return _pool_layer("MaxPool", "pool", pool.max_pool, window, stride, padding, dict(dilation=dilation, ceil_mode=ceil_mode))


def AvgPool(window=2, stride=None, padding=0, count_include_pad=True, ceil_mode=False, divisor_override=None) -> Layer:
    """Average pooling layer (no parameters); stride defaults to the window. Options as for `pool.avg_pool`."""
    return _pool_layer(
        "AvgPool", "pool", pool.avg_pool, window, stride, padding, dict(ceil_mode=ceil_mode),
        count_include_pad=count_include_pad, divisor_override=divisor_override,
    )


def _adaptive_layer(op, fn, output_size) -> Layer:
    def init(key, input_shape):
        shape = _check_shape(op, input_shape, 4, "(m, n_H, n_W, n_C)")
        n_out = pool._adaptive_sizes(shape, output_size, op)
        return (shape[0], *n_out, shape[3]), {}

    def apply(params, x, **kwargs):
        _check_params(op, params, ())
        return fn(x, output_size)

    return _layer("pool", init, apply)


def AdaptiveAvgPool(output_size) -> Layer:
    """(m, n_H, n_W, n_C) -> (m, n_H', n_W', n_C) by averaging PyTorch's adaptive windows; see `pool.adaptive_avg_pool`."""
    return _adaptive_layer("AdaptiveAvgPool", pool.adaptive_avg_pool, output_size)


def AdaptiveMaxPool(output_size) -> Layer:
    """(m, n_H, n_W, n_C) -> (m, n_H', n_W', n_C), the max of PyTorch's adaptive windows; see `pool.adaptive_max_pool`."""
    return _adaptive_layer("AdaptiveMaxPool", pool.adaptive_max_pool, output_size)


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

        init.__qualname__ = f"{name}.<locals>.init"  # the op name in error messages
        return _layer(kind, init, apply)

    constructor.__name__ = constructor.__qualname__ = name
    constructor.__doc__ = f"Elementwise {kind} layer (no parameters)."
    return constructor


def _activation(name, kind, fn) -> Callable[..., Layer]:
    """A layer constructor for an activation with options, e.g. LeakyRelu(negative_slope=0.2)."""

    def constructor(*args, **options) -> Layer:
        fn(jax.numpy.zeros(()), *args, **options)  # checks the options now, at construction

        def init(key, input_shape):
            return tuple(input_shape), {}

        def apply(params, x, **kwargs):
            _check_params(name, params, ())
            return fn(x, *args, **options)

        return _layer(kind, init, apply)

    constructor.__name__ = constructor.__qualname__ = name
    constructor.__doc__ = f"Elementwise {kind} layer (no parameters); options as for `jaxconv.nn.{fn.__name__}`."
    return constructor


Relu = _elementwise("Relu", "relu", nn.relu)
LeakyRelu = _activation("LeakyRelu", "leaky_relu", nn.leaky_relu)
Relu6 = _elementwise("Relu6", "relu6", nn.relu6)
Gelu = _activation("Gelu", "gelu", nn.gelu)
Elu = _activation("Elu", "elu", nn.elu)
Softplus = _activation("Softplus", "softplus", nn.softplus)
Silu = _elementwise("Silu", "silu", nn.silu)
Tanh = _elementwise("Tanh", "tanh", nn.tanh)
Sigmoid = _elementwise("Sigmoid", "sigmoid", nn.sigmoid)
Softmax = _elementwise("Softmax", "softmax", nn.softmax)
LogSoftmax = _elementwise("LogSoftmax", "log_softmax", nn.log_softmax)


def BatchNorm(momentum: float = 0.1, eps: float = 1e-5, dtype=None, compute_dtype=None) -> Layer:
    """Batch normalisation over every axis but the channels: (m, n_H, n_W, n_C) or (m, n).

    y = gamma · (x − μ) / sqrt(σ² + eps) + beta, with μ, σ² the batch's mean and (biased)
    variance per channel in train mode, the running ones in eval mode (PyTorch's semantics).
    params: {"gamma": (n_C,) ones, "beta": (n_C,) zeros}; state: {"mean": (n_C,) zeros,
    "var": (n_C,) ones}, updated in train mode as new = (1 − momentum)·old + momentum·batch,
    with the batch's UNBIASED variance (·N/(N−1), N = values per channel) as PyTorch does.
    params and state are of `dtype` (None: JAX's default float). With `compute_dtype` (e.g.
    bfloat16) the output is of that dtype, but the statistics and the normalisation are computed
    in float32 at least (bfloat16 keeps 8 bits of mantissa: a mean over a batch, and x − μ, would
    lose most of theirs), and the running statistics stay in `dtype`.
    """
    op = "BatchNorm"
    dtype, compute_dtype = _check_dtype(op, "dtype", dtype), _check_dtype(op, "compute_dtype", compute_dtype)
    # the dtype statistics are computed in: the compute dtype, widened to float32 at least
    stat_dtype = None if compute_dtype is None else jnp.promote_types(compute_dtype, jnp.float32)
    if isinstance(momentum, bool) or not isinstance(momentum, (int, float)) or not 0 <= momentum <= 1:
        raise ValueError(f"{op}: `momentum` must be a number in [0, 1], got {momentum!r}.")
    if isinstance(eps, bool) or not isinstance(eps, (int, float)) or eps <= 0:
        raise ValueError(f"{op}: `eps` must be a number > 0, got {eps!r}.")

    def channels(input_shape):
        shape = tuple(input_shape)
        if len(shape) not in (2, 4) or not all(isinstance(n, int) for n in shape):
            raise ValueError(f"{op}: `input_shape` must be (m, n_H, n_W, n_C) or (m, n) (batch axis first, -1 allowed), got {input_shape!r}.")
        return shape, shape[-1]

    def init(key, input_shape):
        shape, n_C = channels(input_shape)
        dt = initializers._float(dtype)
        return shape, {"gamma": initializers.ones(key, (n_C,), dt), "beta": initializers.zeros(key, (n_C,), dt)}

    def init_state(input_shape):
        shape, n_C = channels(input_shape)
        dt = initializers._float(dtype)
        return shape, {"mean": jnp.zeros((n_C,), dt), "var": jnp.ones((n_C,), dt)}

    def apply(params, x, *, state=None, key=None, train=False, **kwargs):
        _check_params(op, params, ("gamma", "beta"))
        if state is not None:
            _check_params(op, state, ("mean", "var"), what="state", fix="pass the state that init_state returned")
        if stat_dtype is not None:
            x = jnp.asarray(x).astype(stat_dtype)  # statistics and normalisation in float32 (or wider)
        if train:  # statistics over every axis but n_C
            n = math.prod(x.shape[:-1])  # values per channel
            if n < 2:
                raise ValueError(f"{op}: train mode needs more than 1 value per channel to estimate a variance, got x of shape {x.shape}; use a batch of m >= 2 or train=False.")
            y, mean, var = nn.batch_norm(*_to_compute(stat_dtype, x, params["gamma"], params["beta"]), eps)
            if state is not None:
                batch_mean, batch_var = jax.lax.stop_gradient(mean), jax.lax.stop_gradient(var) * (n / (n - 1))
                state = {
                    "mean": ((1 - momentum) * state["mean"] + momentum * batch_mean).astype(state["mean"].dtype),
                    "var": ((1 - momentum) * state["var"] + momentum * batch_var).astype(state["var"].dtype),
                }
        else:
            if state is None:
                raise ValueError(
                    f"{op}: eval mode (train=False) normalises with the running statistics, but no `state` was given; "
                    f"pass state= (from init_state, updated by training steps), or train=True for batch statistics."
                )
            mean, var = state["mean"], state["var"]
            x, gamma, beta, mean, var = _to_compute(stat_dtype, x, params["gamma"], params["beta"], mean, var)
            y = (x - mean) * jax.lax.rsqrt(var + eps) * gamma + beta
        if compute_dtype is not None:
            y = y.astype(compute_dtype)  # the next layer's input, in the compute dtype
        return y if state is None else (y, state)

    return _layer("bn", init, apply, init_state=init_state)


def Dropout(rate: float) -> Layer:
    """Inverted dropout: in train mode each value is zeroed with probability `rate`, the rest scaled by 1/(1 − rate).

    Needs `key` in train mode; the identity in eval mode. No params, state {}. Any shape.
    """
    op = "Dropout"
    if isinstance(rate, bool) or not isinstance(rate, (int, float)) or not 0 <= rate < 1:
        raise ValueError(f"{op}: `rate` must be a number in [0, 1), got {rate!r}.")

    def init(key, input_shape):
        return tuple(input_shape), {}

    def init_state(input_shape):
        return tuple(input_shape), {}

    def apply(params, x, *, state=None, key=None, train=False, **kwargs):
        _check_params(op, params, ())
        if train and rate > 0:
            if key is None:
                raise ValueError(f"{op}: train mode drops values at random and needs a `key`; pass key=jax.random.key(step) to apply (or train=False).")
            keep = jax.random.bernoulli(key, 1 - rate, x.shape)
            x = jnp.where(keep, x / (1 - rate), jnp.zeros((), x.dtype))
        return x if state is None else (x, {})

    return _layer("dropout", init, apply, init_state=init_state)


# ----------------------------------------------------------------------------- combinators


def _named(op, layers, names_by="kind"):
    """(name, Layer) pairs: explicit (name, Layer) pairs kept, bare layers named kind + position (conv1, relu1, ...)."""
    named, counts = [], {}
    for item in layers:
        if isinstance(item, tuple) and len(item) == 2 and isinstance(item[0], str) and isinstance(item[1], Layer):
            name, layer = item
        elif isinstance(item, Layer):
            counts[item.kind] = counts.get(item.kind, 0) + 1
            name, layer = f"{item.kind}{counts[item.kind]}", item
        else:
            raise TypeError(f"{op}: each argument must be a Layer or a (name, Layer) pair, got {item!r}.")
        named.append((name, layer))
    names = [name for name, _ in named]
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise ValueError(f"{op}: layer names must be unique, got {duplicates} more than once; rename them.")
    return named


def _check_tree(op, tree, names, what):
    if not isinstance(tree, dict) or set(tree) != set(names):
        found = set(tree) if isinstance(tree, dict) else set()
        missing, unexpected = sorted(set(names) - found), sorted(found - set(names))
        raise ValueError(
            f"{op}: {what} do not match the layers: missing {missing}, unexpected {unexpected} "
            f"(got {type(tree).__name__}); pass the {what} that this model's {'init' if what == 'params' else 'init_state'} returned."
        )


def _child_keys(key, n):
    """Child i's init key: fold_in(key, i), as in apply (one compiled shape for any n, unlike split)."""
    return [jax.random.fold_in(key, i) for i in range(n)]


def _chain_init(named, keys, shape):
    params = {}
    for k, (name, layer) in zip(keys, named):
        with _inside(name):
            shape, params[name] = layer.init(k, shape)
    return shape, params


def _chain_init_state(named, shape):
    state = {}
    for name, layer in named:
        with _inside(name):
            shape, state[name] = _init_state(layer, shape)
    return shape, state


def _chain(named, params, x, state, key, train, kwargs, offset=0):
    """Run layers in order; returns (y, new_state) with new_state None when state is None."""
    new_state = None if state is None else {}
    for i, (name, layer) in enumerate(named):
        k = None if key is None else jax.random.fold_in(key, offset + i)
        with _inside(name):
            x, s = _call(layer, params[name], x, None if state is None else state[name], k, train, kwargs)
        if state is not None:
            new_state[name] = s
    return x, new_state


def serial(*layers) -> Layer:
    """Compose layers in order. Each argument is a Layer or a (name, Layer) pair.

    Unnamed layers are named by kind and position among their kind: conv1,
    relu1, pool1, conv2, ..., so the names are stable as long as the layer
    list is. params = {name: that layer's params}; state likewise.

    >>> net = serial(("conv1", Conv2D(6, 5)), Relu(), MaxPool(2), Flatten(), Dense(10))
    >>> shape, params = net.init(jax.random.key(0), (-1, 32, 32, 1))
    >>> shape, list(params)
    ((-1, 10), ['conv1', 'relu1', 'pool1', 'flatten1', 'fc1'])
    """
    named = _named("serial", layers)
    names = [name for name, _ in named]

    def init(key, input_shape):
        return _chain_init(named, _child_keys(key, len(named)), tuple(input_shape))

    def init_state(input_shape):
        return _chain_init_state(named, tuple(input_shape))

    def apply(params, x, *, state=None, key=None, train=False, **kwargs):
        _check_tree("serial", params, names, "params")
        if state is not None:
            _check_tree("serial", state, names, "state")
        y, state = _chain(named, params, x, state, key, train, kwargs)
        return y if state is None else (y, state)

    return _layer("serial", init, apply, named, init_state)


def parallel(*layers) -> Layer:
    """Apply the i-th layer to the i-th input: a tuple of n inputs -> a tuple of n outputs (stax's `parallel`).

    Each argument is a Layer or a (name, Layer) pair, named as in `serial`.
    input_shape: a tuple of n shapes; params = {name: that branch's params}; state likewise.
    Use after `fan_out(n)` to run branches on one input, then `fan_in_sum()` or `fan_in_concat()`.
    """
    op = "parallel"
    named = _named(op, layers)
    names = [name for name, _ in named]

    def check_inputs(xs, what):
        if not isinstance(xs, (tuple, list)) or len(xs) != len(named):
            raise ValueError(f"{op}: {what} must be a tuple of {len(named)} (one per branch {names}), got {xs!r:.80}; put fan_out({len(named)}) before parallel.")

    def init(key, input_shapes):
        check_inputs(input_shapes, "`input_shape`")
        shapes, params, keys = [], {}, _child_keys(key, len(named))
        for i, ((name, layer), shape) in enumerate(zip(named, input_shapes)):
            with _inside(name):
                shape, params[name] = layer.init(keys[i], tuple(shape))
            shapes.append(shape)
        return tuple(shapes), params

    def init_state(input_shapes):
        check_inputs(input_shapes, "`input_shape`")
        shapes, state = [], {}
        for (name, layer), shape in zip(named, input_shapes):
            with _inside(name):
                shape, state[name] = _init_state(layer, tuple(shape))
            shapes.append(shape)
        return tuple(shapes), state

    def apply(params, xs, *, state=None, key=None, train=False, **kwargs):
        _check_tree(op, params, names, "params")
        if state is not None:
            _check_tree(op, state, names, "state")
        check_inputs(xs, "the input")
        ys, new_state = [], ({} if state is not None else None)
        for i, ((name, layer), x) in enumerate(zip(named, xs)):
            k = None if key is None else jax.random.fold_in(key, i)
            with _inside(name):
                y, s = _call(layer, params[name], x, None if state is None else state[name], k, train, kwargs)
            ys.append(y)
            if state is not None:
                new_state[name] = s
        return tuple(ys) if state is None else (tuple(ys), new_state)

    return _layer("parallel", init, apply, named, init_state)


def _combinator(kind, shape_fn, fn, op):
    """A parameter-free, stateless layer whose output shape is shape_fn(input_shape) and output fn(x)."""

    def init(key, input_shape):
        return shape_fn(input_shape), {}

    def apply(params, x, **kwargs):
        _check_params(op, params, ())
        return fn(x)

    init.__qualname__ = f"{op}.<locals>.init"
    return _layer(kind, init, apply)


def identity() -> Layer:
    """y = x (any shape); the default shortcut of `residual`."""
    return _combinator("identity", tuple, lambda x: x, "identity")


def fan_out(n: int) -> Layer:
    """x -> (x, x, ..., x), n copies, to feed `parallel` branches."""
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ValueError(f"fan_out: `n` must be an int >= 1, got {n!r}.")
    return _combinator("fan_out", lambda shape: (tuple(shape),) * n, lambda x: (x,) * n, "fan_out")


def _shape_of(x):
    return tuple(x) if isinstance(x, (tuple, list)) else tuple(x.shape)


def _check_branches(op, xs, axis=None):
    """Branch shapes must agree (on every axis but `axis`); returns them as tuples."""
    if not isinstance(xs, (tuple, list)) or not xs:
        raise ValueError(f"{op}: the input must be a tuple of branch outputs (from parallel), got {type(xs).__name__}; put fan_out(n) and parallel(...) before {op}.")
    shapes = [_shape_of(x) for x in xs]
    rank = len(shapes[0])
    if any(len(s) != rank for s in shapes):
        raise ValueError(f"{op}: branch outputs must have the same rank, got shapes {shapes}.")
    def strip(s):
        return s if axis is None else s[: axis % rank] + s[axis % rank + 1 :]
    if any(strip(s) != strip(shapes[0]) for s in shapes):
        if axis is None:
            raise ValueError(f"{op}: branch outputs must have one shape to be summed, got shapes {shapes}; give the branches the same stride and number of filters (e.g. a 1x1 Conv2D projection as the shortcut).")
        raise ValueError(f"{op}: branch outputs must agree on every axis but {axis} to be concatenated, got shapes {shapes}; give the branches the same stride and padding (same spatial size n_H, n_W).")
    return shapes


def fan_in_sum() -> Layer:
    """(x_1, ..., x_n) -> x_1 + ... + x_n; every x_i of one shape."""
    op = "fan_in_sum"

    def shape_fn(input_shapes):
        return _check_branches(op, input_shapes)[0]

    def fn(xs):
        _check_branches(op, xs)
        return sum(xs[1:], xs[0])

    return _combinator("fan_in_sum", shape_fn, fn, op)


def fan_in_concat(axis: int = -1) -> Layer:
    """(x_1, ..., x_n) -> their concatenation along `axis` (default the channels n_C of NHWC)."""
    op = "fan_in_concat"
    if isinstance(axis, bool) or not isinstance(axis, int):
        raise TypeError(f"{op}: `axis` must be an int, got {type(axis).__name__}.")

    def shape_fn(input_shapes):
        shapes = _check_branches(op, input_shapes, axis)
        out = list(shapes[0])
        out[axis] = sum(s[axis] for s in shapes)
        return tuple(out)

    def fn(xs):
        _check_branches(op, xs, axis)
        return jnp.concatenate(xs, axis=axis)

    return _combinator("fan_in_concat", shape_fn, fn, op)


def residual(block: Layer, shortcut: Layer | None = None, activation: Layer | None = None) -> Layer:
    """y = activation(block(x) + shortcut(x)), a residual block (He et al. 2016); shortcut defaults to `identity()`.

    params = {**the block's params, "shortcut": the shortcut's params, <activation's name>: {}}: when
    `block` is a `serial`, its layers sit directly in the residual's params
    (params["conv_a"], params["bn_a"], ...), so paths stay short. state likewise.
    x: (m, n_H, n_W, n_C) -> block(x) and shortcut(x) of one shape.
    """
    op = "residual"
    if not isinstance(block, Layer):
        raise TypeError(f"{op}: `block` must be a Layer, got {type(block).__name__}.")
    body = list(block.children) if block.kind == "serial" else [("block", block)]
    tail = [("shortcut", shortcut if shortcut is not None else identity())]
    if activation is not None:
        tail.append((activation.kind, activation))
    named = _named(op, body + tail)
    names = [name for name, _ in named]
    n_body = len(body)

    def check_sum(a, b):
        if tuple(a) != tuple(b):
            raise ValueError(
                f"{op}: the block's output shape {tuple(a)} differs from the shortcut's {tuple(b)}, so they cannot be added; "
                f"pass a shortcut that matches it, e.g. serial(Conv2D(n_C', 1, stride=s), BatchNorm())."
            )

    def init(key, input_shape):
        shape, keys = tuple(input_shape), _child_keys(key, len(named))
        y_shape, params = _chain_init(named[:n_body], keys, shape)
        with _inside("shortcut"):
            s_shape, params["shortcut"] = named[n_body][1].init(keys[n_body], shape)
        check_sum(y_shape, s_shape)
        y_shape, rest = _chain_init(named[n_body + 1 :], keys[n_body + 1 :], y_shape)
        return y_shape, {**params, **rest}

    def init_state(input_shape):
        shape = tuple(input_shape)
        y_shape, state = _chain_init_state(named[:n_body], shape)
        with _inside("shortcut"):
            s_shape, state["shortcut"] = _init_state(named[n_body][1], shape)
        check_sum(y_shape, s_shape)
        y_shape, rest = _chain_init_state(named[n_body + 1 :], y_shape)
        return y_shape, {**state, **rest}

    def apply(params, x, *, state=None, key=None, train=False, **kwargs):
        _check_tree(op, params, names, "params")
        if state is not None:
            _check_tree(op, state, names, "state")
        y, new_state = _chain(named[:n_body], params, x, state, key, train, kwargs)
        k = None if key is None else jax.random.fold_in(key, n_body)
        with _inside("shortcut"):
            s, s_state = _call(named[n_body][1], params["shortcut"], x, None if state is None else state["shortcut"], k, train, kwargs)
        check_sum(y.shape, s.shape)
        y, rest = _chain(named[n_body + 1 :], params, y + s, state, key, train, kwargs, offset=n_body + 1)
        if state is None:
            return y
        return y, {**new_state, "shortcut": s_state, **rest}

    return _layer("residual", init, apply, named, init_state)
