"""The layer contract, the `Layer` type, and the machinery every layer shares.

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
- dtypes: see `jaxconv.layers.dtypes` (params in JAX's default float dtype
  unless `dtype=` says otherwise; mixed inputs promoted; `compute_dtype=` for
  mixed precision).

This module holds what every layer module builds on: `make_layer` (a Layer from
a leaf's init and apply, with the key check, the one-program init and the state
protocol added), `parameter_free` (every layer without parameters or state),
`call_layer` and `init_state_of` (how a composite or a tool calls any layer),
and the argument checks the layers share.
"""

from __future__ import annotations

import contextlib
from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp

from jaxconv import initializers

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


# ----------------------------------------------------------------------------- building a Layer


def make_layer(op, kind, init, apply, children=(), init_state=None) -> Layer:
    """A Layer named `op` in errors, from init(key, input_shape) and apply(params, x, **kwargs).

    init is wrapped to check its key and to run as one compiled program. A leaf without
    `init_state` is stateless: it gets an init_state that traces init for the output shape,
    and an apply that takes (and returns) the empty state.
    """
    if init_state is None:
        init_state, apply = _shape_only_init_state(init), _stateless_apply(op, apply)
    return Layer(_compiled_init(op, init), apply, kind, tuple(children), init_state)


def parameter_free(op, kind, output_shape, fn) -> Layer:
    """A stateless layer without parameters: init gives (output_shape(input_shape), {}), apply gives fn(x).

    Every pooling, activation, reshaping and branching layer is one of these; `op` names it in
    errors. output_shape may raise to reject an input shape at init.
    """

    def init(key, input_shape):
        return output_shape(input_shape), {}

    def apply(params, x, **kwargs):
        check_params(op, params, ())
        return fn(x)

    return make_layer(op, kind, init, apply)


def check_key(op, key, method="init"):
    """A TypeError unless `key` is a jax.random key (typed, or legacy uint32 (2,) data); `method` names the call."""
    is_key = isinstance(key, jax.Array) and (
        jax.dtypes.issubdtype(key.dtype, jax.dtypes.prng_key) or (key.dtype == jnp.uint32 and key.shape == (2,))
    )
    if not is_key:
        raise TypeError(
            f"{op}.{method}: `key` must be a jax.random key, got {type(key).__name__} {key!r}; "
            f"pass jax.random.key({key!r}) instead of the bare seed."
            if isinstance(key, int)
            else f"{op}.{method}: `key` must be a jax.random key, got {type(key).__name__}; make one with jax.random.key(seed)."
        )


def _check_input_shape(op, input_shape):
    """input_shape: a tuple of ints, the batch axis -1 (any) or >= 0, every other axis >= 1 (or a tuple of
    such shapes, one per branch, for the layers after a fan-out)."""
    shape = tuple(input_shape) if isinstance(input_shape, (tuple, list)) else None
    if shape and all(isinstance(s, (tuple, list)) for s in shape):
        for branch in shape:
            _check_input_shape(op, branch)
        return
    if not shape or not all(isinstance(n, int) and not isinstance(n, bool) for n in shape):
        raise ValueError(f"{op}.init: `input_shape` must be a tuple of ints with the batch axis first, got {input_shape!r}.")
    if shape[0] < -1 or any(n < 1 for n in shape[1:]):
        raise ValueError(
            f"{op}.init: `input_shape` {shape} must have a batch axis of -1 (any size) or >= 0 and every other axis "
            f">= 1; pass e.g. (-1, 28, 28, 1)."
        )


def _compiled_init(op, init):
    """init with its key checked; called eagerly, the whole init runs as one compiled program.

    Eagerly, every jax.random draw of a new shape would compile on its own, which makes a model's
    init slow. Here the built-in initialisers share one draw per dtype (`initializers.DrawPool`)
    from `initializers.init_key(key)`, a generator that is quick to compile.
    """

    def checked(key, input_shape):
        check_key(op, key)
        _check_input_shape(op, input_shape)
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


# ----------------------------------------------------------------------------- calling any layer


def init_state_of(layer, input_shape):
    """(output_shape, state) of any layer; a Layer(init, apply) written by hand is stateless ({})."""
    if layer.init_state is None:
        return _shape_only_init_state(layer.init)(input_shape)
    return layer.init_state(input_shape)


def call_layer(layer, params, x, state, key, train, kwargs):
    """Apply any layer, whichever protocol its apply follows; returns (y, new_state), new_state None when state is None."""
    if layer.init_state is None:  # a plain apply(params, x) written outside jaxconv
        return layer.apply(params, x, **kwargs), (None if state is None else {})
    if state is None:
        return layer.apply(params, x, key=key, train=train, **kwargs), None
    return layer.apply(params, x, state=state, key=key, train=train, **kwargs)


@contextlib.contextmanager
def inside(name):
    """Re-raise a ValueError/TypeError from a child with the child's path appended: (in layer `stage2/block1/bn_a`)."""
    try:
        yield
    except (ValueError, TypeError) as e:
        path = [name, *getattr(e, "_jaxconv_path", [])]
        message = getattr(e, "_jaxconv_message", str(e))
        e._jaxconv_path, e._jaxconv_message = path, message
        e.args = (f"{message} (in layer `{'/'.join(path)}`)",)
        raise


# ----------------------------------------------------------------------------- shared checks


def check_shape(op, input_shape, rank, what):
    """input_shape as a tuple of `rank` ints (what: its form in words, e.g. "(m, n_H, n_W, n_C)"), else a ValueError."""
    shape = tuple(input_shape)
    if len(shape) != rank or not all(isinstance(n, int) for n in shape):
        raise ValueError(f"{op}: `input_shape` must be {what} (batch axis first, -1 allowed), got {input_shape!r}.")
    return shape


def with_batch(shape):
    """Replace a -1 batch axis by 1 so the op's checks can run on concrete sizes."""
    return (1, *shape[1:]) if shape[0] == -1 else shape


def check_params(op, params, keys, what="params", fix="pass the params that this layer's init returned"):
    """params must be a dict with exactly `keys`; else a ValueError naming the keys expected and found."""
    if not isinstance(params, dict) or set(params) != set(keys):
        found = sorted(params) if isinstance(params, dict) else type(params).__name__
        raise ValueError(f"{op}: {what} must be a dict with keys {sorted(keys)}, got {found}; {fix}.")


def check_count(op, name, n):
    """n must be an int >= 1 (a number of filters or outputs); bools are rejected."""
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ValueError(f"{op}: `{name}` must be an int >= 1, got {n!r}.")
