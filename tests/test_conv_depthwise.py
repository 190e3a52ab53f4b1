"""The depthwise (groups = n_C) and pointwise (1x1, any stride) algorithms: values and gradients equal lax's."""

import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxconv import conv
from jaxconv.conv import conv2d, conv_geometry

F64 = jnp.float64
TOL = dict(rtol=1e-10, atol=1e-10)  # float64: the algorithms differ from lax only by rounding

# (x shape, w shape, conv2d keywords): small shapes, each compiled once per impl
DEPTHWISE = [
    ((2, 7, 6, 4), (3, 3, 1, 4), dict(padding=1, groups=4)),  # MobileNet's stride-1 layer
    ((2, 8, 9, 4), (3, 3, 1, 4), dict(padding=1, stride=2, groups=4)),  # its stride-2 layer, odd width
    ((1, 9, 7, 3), (3, 2, 1, 6), dict(padding=((2, 1), (0, 1)), stride=(2, 1), dilation=(1, 2), groups=3)),  # 2 filters/channel
]
POINTWISE = [
    ((2, 8, 8, 4), (1, 1, 4, 5), dict(stride=2)),  # ResNet's projection shortcut
    ((2, 7, 9, 4), (1, 1, 4, 3), dict(padding=1, stride=(2, 3))),
    ((2, 5, 5, 3), (1, 1, 3, 2), dict()),  # stride 1; checked without bias
]


def _data(x_shape, w_shape, seed=0):
    kx, kw, kb = jax.random.split(jax.random.key(seed), 3)
    return jax.random.normal(kx, x_shape, F64), jax.random.normal(kw, w_shape, F64), jax.random.normal(kb, w_shape[3:], F64)


@pytest.mark.parametrize(
    "algorithm, x_shape, w_shape, kw", [("depthwise", *c) for c in DEPTHWISE] + [("pointwise", *c) for c in POINTWISE]
)
def test_matches_lax_in_value_and_gradient(algorithm, x_shape, w_shape, kw):
    x, w, b = _data(x_shape, w_shape)
    bias = (x_shape, w_shape, kw) != POINTWISE[2]
    b = b if bias else None
    loss = lambda **impl: (lambda x, w, b: jnp.sum(jnp.sin(conv2d(x, w, b, **kw, **impl))))  # noqa: E731
    want = jax.value_and_grad(loss(impl="lax"), (0, 1, 2))(x, w, b)
    got = jax.value_and_grad(loss(impl="hand", algorithm=algorithm), (0, 1, 2))(x, w, b)
    assert len(jax.tree.leaves(got)) == (4 if bias else 3)
    for a, r in zip(jax.tree.leaves(got), jax.tree.leaves(want)):
        np.testing.assert_allclose(a, r, **TOL)


def test_depthwise_matches_direct_sum_by_hand():
    """One channel, 2x2 filter, stride 2: Z[0, 0] = 1·1 + 2·10 + 4·100 + 5·1000 = 5421 (x = 1..9 row-major)."""
    x = jnp.arange(1.0, 10.0, dtype=F64).reshape(1, 3, 3, 1)
    w = jnp.array([1.0, 10.0, 100.0, 1000.0], F64).reshape(2, 2, 1, 1)
    z = conv2d(jnp.concatenate([x, x], -1), jnp.concatenate([w, w], -1), stride=2, groups=2, impl="hand", algorithm="depthwise")
    np.testing.assert_array_equal(z[0, :, :, 0], [[5421.0]])


def test_auto_and_hand_choose_them():
    geom = lambda xs, ws, **kw: conv_geometry(xs, ws, **kw)[:4]  # noqa: E731
    for xs, ws, kw in DEPTHWISE:
        assert conv.hand_algorithm(xs, ws, geom(xs, ws, **kw)) == "depthwise"
    for xs, ws, kw in POINTWISE[:2]:
        assert conv.hand_algorithm(xs, ws, geom(xs, ws, **kw)) == "pointwise"
    assert conv.hand_algorithm((1, 16, 16, 32), (3, 3, 32, 32), geom((1, 16, 16, 32), (3, 3, 32, 32), padding=1)) == "taps"  # > 8 channels: not rows
    if jax.default_backend() == "cpu":
        assert conv.resolve_impl("auto", (128, 32, 32, 96), (3, 3, 1, 96), geom((128, 32, 32, 96), (3, 3, 1, 96), padding=1, stride=2, groups=96)) == "hand"
        assert conv.resolve_impl("auto", (128, 32, 32, 16), (1, 1, 16, 32), geom((128, 32, 32, 16), (1, 1, 16, 32), stride=2)) == "hand"


@pytest.mark.parametrize("where", ["x", "dZ"])
def test_nan_and_inf_spread_as_in_the_direct_sum(where):
    """Both read window pixels only, so a NaN/Inf reaches exactly the outputs and gradients of the direct sum,
    which im2col gives (tests/test_conv_algorithms.py checks im2col against lax), without a guard. (lax's CPU
    grouped convolution spreads a NaN to every channel of the group-masked dense filter: not the reference here.)"""
    for algorithm, (xs, ws, kw) in (("depthwise", DEPTHWISE[0]), ("depthwise", DEPTHWISE[1]), ("pointwise", POINTWISE[1])):
        x, w, _ = _data(xs, ws, seed=1)
        x = x.at[0, 3, 2, 1].set(jnp.nan if where == "x" else x[0, 3, 2, 1])  # read by both strides
        z_shape = conv_geometry(xs, ws, **kw)[4]
        g = jax.random.normal(jax.random.key(2), z_shape, F64)
        if where == "dZ":
            g = g.at[0, 1, 1, 0].set(jnp.inf)

        def run(**impl):
            z, vjp = jax.vjp(lambda x, w: conv2d(x, w, **kw, **impl), x, w)
            return [np.asarray(a) for a in (z, *vjp(g))]

        got, want = run(impl="hand", algorithm=algorithm), run(impl="hand", algorithm="im2col")
        for name, a, r in zip(("Z", "dX", "dW"), got, want):
            assert np.array_equal(np.isnan(a), np.isnan(r)) and np.array_equal(np.isinf(a), np.isinf(r)), (algorithm, where, name)
        assert not np.isfinite(got[1 if where == "dZ" else 0]).all(), (algorithm, where)  # the case spreads something
        if (xs, ws, kw) == DEPTHWISE[1] and where == "x":  # by hand: only channel 1's outputs, rows/columns whose window holds (3, 2)
            z = run(impl="hand", algorithm=algorithm)[0]
            assert np.argwhere(np.isnan(z)).tolist() == [[0, 1, 1, 1], [0, 2, 1, 1]]


@pytest.mark.parametrize(
    "algorithm, x_shape, w_shape, kw, needs",
    [
        ("depthwise", (1, 6, 6, 4), (3, 3, 4, 4), {}, "one input channel per group, groups = n_C (got groups=1 with 4 channels per group)"),
        ("depthwise", (1, 6, 6, 4), (3, 3, 2, 4), {"groups": 2}, "one input channel per group, groups = n_C (got groups=2 with 2 channels per group)"),
        ("pointwise", (1, 6, 6, 4), (3, 3, 4, 4), {}, "a 1x1 filter (got 3x3)"),
        ("pointwise", (1, 6, 6, 4), (1, 1, 1, 4), {"groups": 4}, "groups=1 (got 4)"),
    ],
)
def test_inapplicable_geometry_raises_naming_the_need(algorithm, x_shape, w_shape, kw, needs):
    x, w = jnp.zeros(x_shape), jnp.zeros(w_shape)
    msg = f"conv2d: `algorithm` {algorithm!r} needs {needs}; use algorithm='im2col' (any geometry) or 'auto'."
    with pytest.raises(ValueError, match=re.escape(msg)):
        conv2d(x, w, impl="hand", algorithm=algorithm, **kw)


def test_mobilenet_block_auto_equals_lax():
    """An inverted-residual block (1x1 expand, depthwise 3x3 stride 2, 1x1 project, BatchNorm in train mode):
    the default impl (pointwise and depthwise on CPU) gives lax's values, gradients and running statistics."""
    from jaxconv.models import inverted_residual

    x = jax.random.normal(jax.random.key(4), (2, 8, 8, 4), F64)
    outs = []
    for impl in ("auto", "lax"):
        block = inverted_residual(4, 6, 3, 2, impl=impl, dtype=F64)
        _, params = block.init(jax.random.key(0), x.shape)
        _, state = block.init_state(x.shape)

        def loss(params, x):
            y, new_state = block.apply(params, x, state=state, train=True)
            return jnp.sum(jnp.sin(y)), (y, new_state)

        (value, (y, new_state)), grads = jax.jit(jax.value_and_grad(loss, (0, 1), has_aux=True))(params, x)  # one compile, not one per op
        outs.append((value, y, new_state, grads))
    assert outs[0][1].shape == (2, 4, 4, 6)
    for a, r in zip(jax.tree.leaves(outs[0]), jax.tree.leaves(outs[1])):
        np.testing.assert_allclose(a, r, **TOL)


@pytest.mark.parametrize("batched", ["x", "w"])
def test_backward_under_vmap(batched):
    """Per-example gradients (vmap over x) and ensembles (vmap over w) equal the unbatched backward run one
    by one, and the backward's cond (`buffers.on_buffers`) stays a cond: as a select it would run twice."""
    xs, ws, kw = DEPTHWISE[0]
    x, w, _ = _data(xs, ws, seed=3)
    grad = jax.grad(lambda w, x1: jnp.sum(conv2d(x1[None], w, **kw, impl="hand", algorithm="depthwise") ** 2), argnums=(0, 1))
    if batched == "x":
        args, axes = (w, x), (None, 0)
        want = [grad(w, x[i]) for i in range(len(x))]
    else:
        ws_ = jnp.stack([w, 2 * w])
        args, axes = (ws_, x[0]), (0, None)
        want = [grad(ws_[i], x[0]) for i in range(2)]
    got = jax.vmap(grad, in_axes=axes)(*args)
    for i, (dw, dx) in enumerate(want):
        np.testing.assert_allclose(got[0][i], dw, **TOL)
        np.testing.assert_allclose(got[1][i], dx, **TOL)
    jaxpr = str(jax.make_jaxpr(jax.vmap(grad, in_axes=axes))(*args))
    assert "cond[" in jaxpr and "select_n" not in jaxpr, batched
