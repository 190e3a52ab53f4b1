"""Combinators: layers made of layers (serial, parallel, residual) and the parameter-free
branching layers (identity, fan_out, fan_in_sum, fan_in_concat). The layer contract: `jaxconv.layers.core`.

A composite's params and state are dicts keyed by its children's names; child i gets the key
`jax.random.fold_in(key, i)`, at init and at apply.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from jaxconv.layers.core import Layer, call_layer, check_count, check_key, init_state_of, inside, make_layer, parameter_free


def _named(op, layers):
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


def _check_call(op, names, params, state, key):
    """A composite's apply arguments: params (and state) keyed by its layers' names, key a jax.random key."""
    _check_tree(op, params, names, "params")
    if state is not None:
        _check_tree(op, state, names, "state")
    if key is not None:
        check_key(op, key, "apply")


def _child_keys(key, n):
    """Child i's init key: fold_in(key, i), as in apply (one compiled shape for any n, unlike split)."""
    return [jax.random.fold_in(key, i) for i in range(n)]


def _chain_init(named, keys, shape):
    params = {}
    for k, (name, layer) in zip(keys, named):
        with inside(name):
            shape, params[name] = layer.init(k, shape)
    return shape, params


def _chain_init_state(named, shape):
    state = {}
    for name, layer in named:
        with inside(name):
            shape, state[name] = init_state_of(layer, shape)
    return shape, state


def _chain(named, params, x, state, key, train, kwargs, offset=0):
    """Run layers in order; returns (y, new_state) with new_state None when state is None."""
    new_state = None if state is None else {}
    for i, (name, layer) in enumerate(named):
        k = None if key is None else jax.random.fold_in(key, offset + i)
        with inside(name):
            x, s = call_layer(layer, params[name], x, None if state is None else state[name], k, train, kwargs)
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
        _check_call("serial", names, params, state, key)
        y, state = _chain(named, params, x, state, key, train, kwargs)
        return y if state is None else (y, state)

    return make_layer("serial", "serial", init, apply, named, init_state)


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
            with inside(name):
                shape, params[name] = layer.init(keys[i], tuple(shape))
            shapes.append(shape)
        return tuple(shapes), params

    def init_state(input_shapes):
        check_inputs(input_shapes, "`input_shape`")
        shapes, state = [], {}
        for (name, layer), shape in zip(named, input_shapes):
            with inside(name):
                shape, state[name] = init_state_of(layer, tuple(shape))
            shapes.append(shape)
        return tuple(shapes), state

    def apply(params, xs, *, state=None, key=None, train=False, **kwargs):
        _check_call(op, names, params, state, key)
        check_inputs(xs, "the input")
        ys, new_state = [], ({} if state is not None else None)
        for i, ((name, layer), x) in enumerate(zip(named, xs)):
            k = None if key is None else jax.random.fold_in(key, i)
            with inside(name):
                y, s = call_layer(layer, params[name], x, None if state is None else state[name], k, train, kwargs)
            ys.append(y)
            if state is not None:
                new_state[name] = s
        return tuple(ys) if state is None else (tuple(ys), new_state)

    return make_layer(op, "parallel", init, apply, named, init_state)


def identity() -> Layer:
    """y = x (any shape); the default shortcut of `residual`."""
    return parameter_free("identity", "identity", tuple, lambda x: x)


def fan_out(n: int) -> Layer:
    """x -> (x, x, ..., x), n copies, to feed `parallel` branches."""
    check_count("fan_out", "n", n)
    return parameter_free("fan_out", "fan_out", lambda shape: (tuple(shape),) * n, lambda x: (x,) * n)


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

    return parameter_free(op, "fan_in_sum", shape_fn, fn)


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

    return parameter_free(op, "fan_in_concat", shape_fn, fn)


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
        with inside("shortcut"):
            s_shape, params["shortcut"] = named[n_body][1].init(keys[n_body], shape)
        check_sum(y_shape, s_shape)
        y_shape, rest = _chain_init(named[n_body + 1 :], keys[n_body + 1 :], y_shape)
        return y_shape, {**params, **rest}

    def init_state(input_shape):
        shape = tuple(input_shape)
        y_shape, state = _chain_init_state(named[:n_body], shape)
        with inside("shortcut"):
            s_shape, state["shortcut"] = init_state_of(named[n_body][1], shape)
        check_sum(y_shape, s_shape)
        y_shape, rest = _chain_init_state(named[n_body + 1 :], y_shape)
        return y_shape, {**state, **rest}

    def apply(params, x, *, state=None, key=None, train=False, **kwargs):
        _check_call(op, names, params, state, key)
        y, new_state = _chain(named[:n_body], params, x, state, key, train, kwargs)
        k = None if key is None else jax.random.fold_in(key, n_body)
        with inside("shortcut"):
            s, s_state = call_layer(named[n_body][1], params["shortcut"], x, None if state is None else state["shortcut"], k, train, kwargs)
        check_sum(y.shape, s.shape)
        y, rest = _chain(named[n_body + 1 :], params, y + s, state, key, train, kwargs, offset=n_body + 1)
        if state is None:
            return y
        return y, {**new_state, "shortcut": s_state, **rest}

    return make_layer(op, "residual", init, apply, named, init_state)
