"""A fuzz of the public API: every generated call returns what lax/NumPy returns, or jaxconv's own error.

Each test draws arguments with hypothesis — shapes with 0-sized axes and single pixels, every
dtype (float16, bfloat16, float32, float64, int32, bool), wrong ranks, wrong kinds, out-of-range
values — and calls one public op. Two outcomes pass:

- a result: its shape and dtype equal what `lax`'s own op (or NumPy) gives for the same arguments;
- a ValueError or TypeError whose message starts with the op's name (`"conv2d: ..."`, a layer's
  `"Conv2D.init: ..."`), jaxconv's convention for an error that names the argument and the fix.

Anything else fails: a raw JAX/XLA/NumPy/Python error, an error of another kind, or a result of a
shape lax would not give. Most calls trace only (`jax.eval_shape` on abstract arrays), so a draw
costs no compilation; `test_conv2d_values_fuzz` computes a smaller sample and compares values
with the float64 reference. `derandomize=True`: the same draws on every run, so a failure
reproduces. CALLS counts the calls per op; `-s` prints the table at the end of the module.
"""

from __future__ import annotations

import collections
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from jax import lax

import jaxconv as jc
from jaxconv import reference as ref

CALLS: collections.Counter = collections.Counter()
def fuzz(max_examples: int):
    """hypothesis settings of every fuzz here: fixed draws (derandomize), no deadline (JAX traces), no database."""
    return settings(max_examples=max_examples, derandomize=True, deadline=None, database=None,
                    suppress_health_check=list(HealthCheck))

DTYPES = ("float16", "bfloat16", "float32", "float64", "int32", "bool")
FLOATS = ("float16", "bfloat16", "float32", "float64")
dtypes = st.sampled_from(DTYPES)
sizes = st.sampled_from((0, 1, 2, 3, 5))


def outcome(op: str, thunk):
    """("ok", result) or ("refused", error) for jaxconv's own errors; anything else fails the test."""
    CALLS[op] += 1
    try:
        return "ok", thunk()
    except (ValueError, TypeError) as e:
        message = str(e)
        assert message.startswith((f"{op}:", f"{op}.init:", f"{op}.apply:")), f"{op} raised a {type(e).__name__} that is not its own: {message!r}"
        assert "\n" not in message.strip(), f"{op}: a one-line message expected, got {message!r}"
        return "refused", e


def spec(shape, dtype):
    return jax.ShapeDtypeStruct(tuple(shape), jnp.dtype(dtype))


def lax_shape(thunk):
    """lax's own answer for the same arguments: a ShapeDtypeStruct, or None where lax refuses them."""
    try:
        return jax.eval_shape(thunk)
    except Exception:  # noqa: BLE001  (lax refuses with TypeError, ValueError or its own errors)
        return None


def assert_like(op, got, want):
    assert want is not None, f"{op} returned {got.shape} {got.dtype} where lax refuses the arguments"
    assert (got.shape, got.dtype) == (want.shape, want.dtype), f"{op}: {got.shape} {got.dtype}, lax {want.shape} {want.dtype}"


# --------------------------------------------------------------------------- convolutions

paddings = st.one_of(
    st.sampled_from((0, 1, 2, -1, "SAME", "VALID", "same", "full", None, 1.5, (1, 0), ((1, 0), (0, 2)), ((1,), (0, 1)))),
)
strides = st.sampled_from((1, 2, 3, 0, -1, (1, 2), (2, 1, 1), 1.0, "1"))
dilations = st.sampled_from((1, 2, 0, (1, 2), (2,)))


@st.composite
def conv_args(draw):
    m, n_H, n_W = draw(sizes), draw(sizes), draw(sizes)
    groups = draw(st.sampled_from((1, 1, 2, 0, 3)))
    n_C = draw(st.sampled_from((0, 1, 2, 4)))
    n_C_out = draw(st.sampled_from((0, 1, 2, 4)))
    f = draw(st.sampled_from((1, 2, 3)))
    rank = draw(st.sampled_from((4, 4, 4, 3, 2, 5)))
    x_shape = (m, n_H, n_W, n_C)[4 - rank:] if rank <= 4 else (1, m, n_H, n_W, n_C)
    w_shape = draw(st.sampled_from(((f, f, max(n_C // max(groups, 1), 0), n_C_out), (f, f, n_C, n_C_out), (f, n_C, n_C_out))))
    x_dtype = draw(dtypes)
    w_dtype = draw(st.sampled_from((x_dtype, x_dtype, x_dtype, *DTYPES)))
    b = draw(st.sampled_from(("none", "ok", "wrong")))
    b_shape = {"none": None, "ok": (n_C_out,), "wrong": (n_C_out + 1,)}[b]
    kw = dict(stride=draw(strides), padding=draw(paddings), dilation=draw(dilations), groups=groups)
    return x_shape, x_dtype, w_shape, w_dtype, b_shape, kw


def _lax_conv(x, w, b, kw):
    """lax.conv_general_dilated for jaxconv's argument forms (what jaxconv promises to match)."""
    if x.ndim == 3:
        return _lax_conv(x[None], w, b, kw)[0]
    s = (kw["stride"],) * 2 if isinstance(kw["stride"], int) else kw["stride"]
    d = (kw["dilation"],) * 2 if isinstance(kw["dilation"], int) else kw["dilation"]
    p = kw["padding"]
    if isinstance(p, int):
        p = ((p, p), (p, p))
    elif isinstance(p, tuple) and all(isinstance(v, int) for v in p):
        p = tuple((v, v) for v in p)
    z = lax.conv_general_dilated(x, w, s, p, rhs_dilation=d, dimension_numbers=jc.LAYOUT, feature_group_count=kw["groups"])
    return z if b is None else z + b


@fuzz(1500)
@given(conv_args(), st.sampled_from(("auto", "lax", "hand", "im2col", "rows", "taps", "bad")))
def test_conv2d_fuzz(args, impl):
    x_shape, x_dtype, w_shape, w_dtype, b_shape, kw = args
    x, w = spec(x_shape, x_dtype), spec(w_shape, w_dtype)
    b = None if b_shape is None else spec(b_shape, w_dtype)
    call = dict(kw, impl=impl) if impl in ("auto", "lax", "hand", "bad") else dict(kw, impl="hand", algorithm=impl)
    kind, got = outcome("conv2d", lambda: jax.eval_shape(lambda x, w, b: jc.conv2d(x, w, b, **call), x, w, b))
    if kind == "ok":
        assert_like("conv2d", got, lax_shape(lambda: jax.eval_shape(lambda x, w, b: _lax_conv(x, w, b, kw), x, w, b)))


@fuzz(600)
@given(conv_args(), st.sampled_from((0, 1, 2, -1)), st.sampled_from(("auto", "lax", "hand")))
def test_conv_transpose2d_fuzz(args, output_padding, impl):
    x_shape, x_dtype, w_shape, w_dtype, b_shape, kw = args
    x, w = spec(x_shape, x_dtype), spec(w_shape, w_dtype)
    b = None if b_shape is None else spec(b_shape, w_dtype)
    kind, got = outcome(
        "conv_transpose2d",
        lambda: jax.eval_shape(lambda x, w, b: jc.conv_transpose2d(x, w, b, output_padding=output_padding, impl=impl, **kw), x, w, b),
    )
    if kind == "ok":  # the output size rule of the notes, per spatial axis: n' = (n − 1)s − 2p + d(f − 1) + op + 1
        assert got.dtype == jnp.dtype(x_dtype) and got.shape[:-3] == tuple(x_shape[:-3])
        assert got.shape[-1] == w_shape[-2] * kw["groups"] and min(got.shape[-3:-1], default=1) >= 0


@pytest.mark.parametrize("impl", ["lax", "hand", "auto"])
def test_conv2d_empty_batch_and_zero_filters_give_lax_empty_arrays(impl):
    """m = 0 and n_C' = 0 return lax's empty arrays (issue #25: a ZeroDivisionError in the hand-rolled guard)."""
    for x_shape, w_shape in (((0, 5, 5, 2), (3, 3, 2, 4)), ((2, 5, 5, 2), (3, 3, 2, 0)), ((0, 5, 5, 2), (3, 3, 2, 0))):
        x, w = jnp.ones(x_shape, jnp.float32), jnp.ones(w_shape, jnp.float32)
        got = jc.conv2d(x, w, padding=1, impl=impl)
        want = lax.conv_general_dilated(x, w, (1, 1), ((1, 1), (1, 1)), dimension_numbers=jc.LAYOUT)
        assert got.shape == want.shape and got.dtype == want.dtype
        grads = jax.grad(lambda x, w: jc.conv2d(x, w, padding=1, impl=impl).sum(), (0, 1))(x, w)
        assert [g.shape for g in grads] == [x_shape, w_shape]
        assert all(bool(jnp.all(g == 0)) for g in grads)


def test_lenet5_apply_on_an_empty_batch():
    model = jc.models.lenet5(dtype=jnp.float32)
    _, params = model.init(jax.random.key(0), (-1, 32, 32, 1))
    logits = model.apply(params, jnp.zeros((0, 32, 32, 1), jnp.float32))
    assert logits.shape == (0, 10)


@fuzz(60)
@given(
    st.sampled_from(((2, 5, 5, 2), (1, 4, 6, 4), (2, 1, 1, 2))),
    st.sampled_from(((3, 3), (1, 1), (2, 3))),
    st.sampled_from((1, 2)),
    st.sampled_from((0, 1, "SAME")),
    st.sampled_from((1, 2)),
    st.sampled_from(("lax", "hand", "auto")),
)
def test_conv2d_values_fuzz(x_shape, f, s, p, d, impl):
    """Computed, not traced: values equal the float64 reference for every impl."""
    rng = np.random.default_rng(sum(x_shape) + f[0] + s + d)
    x = rng.normal(size=x_shape)
    w = rng.normal(size=(*f, x_shape[-1], 3))
    kind, got = outcome("conv2d", lambda: jc.conv2d(jnp.asarray(x), jnp.asarray(w), stride=s, padding=p, dilation=d, impl=impl))
    if kind == "ok":
        np.testing.assert_allclose(np.asarray(got), ref.conv2d(x, w, stride=s, padding=p, dilation=d), **ref.tol(np.float64))
    else:  # refused only where the dilated filter is larger than the padded image (PyTorch refuses it too)
        n_pad = [n + (0 if p == "SAME" else 2 * p) for n in x_shape[1:3]]
        assert any(n < d * (f_i - 1) + 1 for n, f_i in zip(n_pad, f)), got


# --------------------------------------------------------------------------- pools

windows = st.sampled_from((1, 2, 3, 0, -1, (2, 1), (2, 2, 2), 2.0))


@st.composite
def pool_args(draw):
    rank = draw(st.sampled_from((4, 4, 3, 2, 5)))
    shape = (draw(sizes), draw(sizes), draw(sizes), draw(st.sampled_from((0, 1, 3))))
    shape = shape[4 - rank:] if rank <= 4 else (1, *shape)
    return shape, draw(dtypes)


def _lax_pool(x, window, stride, padding, init, op):
    single = x.ndim == 3
    x = x[None] if single else x
    f = (window,) * 2 if isinstance(window, int) else tuple(window)
    s = f if stride is None else ((stride,) * 2 if isinstance(stride, int) else tuple(stride))
    p = ((padding, padding),) * 2 if isinstance(padding, int) else tuple((v, v) for v in padding)
    y = lax.reduce_window(x, init, op, (1, *f, 1), (1, *s, 1), ((0, 0), *p, (0, 0)))
    return y[0] if single else y


@fuzz(900)
@given(pool_args(), windows, st.sampled_from((None, 1, 2, 0, (1, 2))), st.sampled_from((0, 1, -1, (1, 0), 5)),
       st.sampled_from(("max_pool", "avg_pool")))
def test_pool_fuzz(args, window, stride, padding, op):
    shape, dtype = args
    x = spec(shape, dtype)
    fn = getattr(jc, op)
    kind, got = outcome(op, lambda: jax.eval_shape(lambda x: fn(x, window, stride, padding), x))
    if kind == "ok":
        if op == "max_pool":
            init = -jnp.inf if jnp.issubdtype(x.dtype, jnp.floating) else jnp.iinfo(x.dtype).min if x.dtype != bool else False
            want = lax_shape(lambda: jax.eval_shape(lambda x: _lax_pool(x, window, stride, padding, jnp.array(init, x.dtype), lax.max), x))
            assert_like(op, got, want)
        else:  # avg: lax's window sum has the same shape; the mean of ints or bools is a float in PyTorch too
            want = lax_shape(lambda: jax.eval_shape(lambda x: _lax_pool(x.astype(jnp.float32), window, stride, padding, 0.0, lax.add), x))
            assert want is not None and got.shape == want.shape, (got, want)


@fuzz(400)
@given(pool_args(), st.sampled_from((1, 2, 3, 0, -1, (1, 2), (2, 2, 2), None, 1.5)),
       st.sampled_from(("adaptive_avg_pool", "adaptive_max_pool", "global_avg_pool")))
def test_adaptive_and_global_pool_fuzz(args, output_size, op):
    shape, dtype = args
    x = spec(shape, dtype)
    fn = getattr(jc, op)
    call = (lambda x: fn(x)) if op == "global_avg_pool" else (lambda x: fn(x, output_size))
    kind, got = outcome(op, lambda: jax.eval_shape(call, x))
    if kind == "ok":
        n_C = shape[-1]
        if op == "global_avg_pool":
            assert got.shape == (*shape[:-3], n_C)
        else:
            out = (output_size,) * 2 if output_size is None or isinstance(output_size, int) else tuple(output_size)
            out = tuple(n if o is None else o for n, o in zip(shape[-3:-1], out))  # None keeps that axis
            assert got.shape == (*shape[:-3], *out, n_C)


# --------------------------------------------------------------------------- dense, flatten, activations, losses


@fuzz(400)
@given(st.sampled_from(((0, 3), (2, 3), (3,), (2, 2, 3), ())), st.sampled_from(((3, 4), (3, 0), (4, 3), (3,), (3, 4, 1))),
       st.sampled_from((None, (4,), (3,), (1, 4))), dtypes, dtypes)
def test_dense_fuzz(x_shape, w_shape, b_shape, x_dtype, w_dtype):
    x, w = spec(x_shape, x_dtype), spec(w_shape, w_dtype)
    b = None if b_shape is None else spec(b_shape, w_dtype)
    kind, got = outcome("dense", lambda: jax.eval_shape(lambda x, w, b: jc.dense(x, w, b), x, w, b))
    if kind == "ok":
        want = lax_shape(lambda: jax.eval_shape(lambda x, w, b: x @ w if b is None else x @ w + b, x, w, b))
        assert_like("dense", got, want)


@fuzz(200)
@given(st.sampled_from(((0, 2, 2, 3), (2, 1, 1, 1), (2, 3), (4,), (), (2, 0))), dtypes)
def test_flatten_fuzz(shape, dtype):
    kind, got = outcome("flatten", lambda: jax.eval_shape(jc.flatten, spec(shape, dtype)))
    if kind == "ok":
        assert got.shape == (shape[0], math.prod(shape[1:])) and got.dtype == jnp.dtype(dtype)


ACTIVATIONS = {  # name: the keyword arguments it takes, with values to draw
    "relu": {}, "relu6": {}, "sigmoid": {}, "tanh": {}, "silu": {}, "swish": {},
    "leaky_relu": {"negative_slope": (0.01, -1.0, 0, float("nan"), "a")},
    "gelu": {"approximate": (False, True, "tanh", 1)},
    "elu": {"alpha": (1.0, 0.0, -2.0, float("inf"), None)},
    "softplus": {"beta": (1.0, 2, 0.0, -1.0, "b"), "threshold": (20.0, 0.0, -5.0, None)},
    "softmax": {"axis": (-1, 0, 1, 5, -9, 1.0)},
    "log_softmax": {"axis": (-1, 0, 1, 5, -9, 1.0)},
}


@st.composite
def activation_call(draw):
    name = draw(st.sampled_from(sorted(ACTIVATIONS)))
    kw = {k: draw(st.sampled_from(v)) for k, v in ACTIVATIONS[name].items() if draw(st.booleans())}
    return name, kw


@fuzz(600)
@given(activation_call(), st.sampled_from(((0, 3), (2, 3), (3,), (), (2, 1, 1, 4))), dtypes)
def test_activation_fuzz(call, shape, dtype):
    name, kw = call
    op = "silu" if name == "swish" else name  # swish is silu under another name, and says so
    kind, got = outcome(op, lambda: jax.eval_shape(lambda z: getattr(jc, name)(z, **kw), spec(shape, dtype)))
    if kind == "ok":
        assert got.shape == tuple(shape)


@fuzz(500)
@given(st.sampled_from(((4, 10), (0, 10), (4,), (4, 1), (2, 3, 10), (4, 0))), dtypes,
       st.sampled_from(((4,), (0,), (4, 10), (3,), ())), st.sampled_from(("int32", "float32", "bool", "int8")),
       st.sampled_from(("softmax_cross_entropy", "accuracy", "cost")))
def test_loss_fuzz(logits_shape, logits_dtype, labels_shape, labels_dtype, op):
    logits, labels = spec(logits_shape, logits_dtype), spec(labels_shape, labels_dtype)
    fn = getattr(jc, op)
    thunk = (lambda: jax.eval_shape(fn, logits)) if op == "cost" else (lambda: jax.eval_shape(fn, logits, labels))
    kind, got = outcome(op, thunk)
    if kind == "ok":
        want = {"softmax_cross_entropy": logits_shape[:-1], "accuracy": (), "cost": ()}[op]
        assert got.shape == want and jnp.issubdtype(got.dtype, jnp.floating), (op, got)


@fuzz(300)
@given(*(st.sampled_from((0, 1, 2, 5, -1, 2.0, "3", None, True, 10**20)) for _ in range(5)))
def test_conv_output_size_fuzz(n, f, p, s, d):
    kind, got = outcome("conv_output_size", lambda: jc.conv_output_size(n, f, p, s, d))
    if kind == "ok":  # the notes' formula, with dilation
        assert got == (n + 2 * p - d * (f - 1) - 1) // s + 1 and got >= 1


# --------------------------------------------------------------------------- layers


LAYER_ARGS = {  # name: (values for each positional argument, {keyword: values})
    "Conv2D": (((4, 0, -1, 2.0, "4"), (3, 1, 0, (3, 2), (3, 3, 3))), {"stride": (1, 2, 0), "padding": (0, "SAME", -1, "x")}),
    "Dense": (((3, 0, -2, 1.5, None),), {"use_bias": (True, False, "yes")}),
    "MaxPool": (((2, 1, 0, -1, (2, 2), "2"),), {"stride": (None, 1, 0), "padding": (0, 1, -1)}),
    "BatchNorm": ((), {"momentum": (0.1, 0.0, 1.0, -0.5, 2.0, "a"), "eps": (1e-5, 0.0, -1.0, float("nan"))}),
    "Dropout": (((0.5, 0.0, 1.0, -0.1, 1.5, "a"),), {}),
}


@st.composite
def layer_call(draw):
    name = draw(st.sampled_from(sorted(LAYER_ARGS)))
    positional, keywords = LAYER_ARGS[name]
    args = tuple(draw(st.sampled_from(values)) for values in positional)
    kw = {k: draw(st.sampled_from(v)) for k, v in keywords.items() if draw(st.booleans())}
    return name, args, kw


@fuzz(500)
@given(layer_call(), st.sampled_from(((-1, 6, 6, 2), (2, 6, 6, 2), (0, 6, 6, 2), (-1, 1, 1, 1), (-1, 6), (6, 6, 2), (-1, 6, 6, 0), (-2, 6, 6, 2))),
       dtypes)
def test_layer_fuzz(call, input_shape, dtype):
    name, args, kw = call
    kind, layer = outcome(name, lambda: getattr(jc, name)(*args, **kw))
    if kind != "ok":
        return
    kind, params = outcome(name, lambda: jax.eval_shape(lambda k: layer.init(k, input_shape)[1], jax.random.key(0)))
    if kind != "ok":
        return
    out_shape, _ = layer.init_state(input_shape)  # init's output shape, as Python ints (eval_shape makes them arrays)
    concrete = tuple(2 if n == -1 else n for n in input_shape)
    state = layer.init_state(concrete)[1] if layer.kind == "bn" else None
    apply = (lambda p, x: layer.apply(p, x, state=state)) if state is not None else (lambda p, x: layer.apply(p, x))
    kind, y = outcome(name, lambda: jax.eval_shape(apply, params, spec(concrete, dtype)))
    if kind == "ok":
        y = y[0] if isinstance(y, tuple) else y
        assert y.shape == tuple(2 if n == -1 else n for n in out_shape), (name, y.shape, out_shape)


def test_fuzz_made_at_least_5000_calls(request, capsys):
    """Run after the fuzz tests above (pytest keeps file order): together they made >= 5,000 calls, counted per op."""
    fuzzers = [i for i in request.session.items if i.module is request.module and i.name.endswith("_fuzz")]
    with capsys.disabled():
        print("\nfuzz calls per op:", dict(sorted(CALLS.items())), "total", sum(CALLS.values()))
    if len(fuzzers) < sum(1 for name in dir(request.module) if name.startswith("test_") and name.endswith("_fuzz")):
        pytest.skip("only part of the fuzz was selected")
    assert sum(CALLS.values()) >= 5000, dict(CALLS)
