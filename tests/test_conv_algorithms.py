"""The hand-rolled algorithm as a public choice: conv2d(..., impl="hand", algorithm=...)."""

import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxconv import Conv2D
from jaxconv.conv import ALGORITHMS, IMPLS, conv2d

F64 = jnp.float64
TOL = dict(rtol=1e-10, atol=1e-10)  # float64: the algorithms differ from lax only by rounding
SHAPE_X, SHAPE_W = (2, 9, 8, 4), (3, 3, 4, 5)  # one geometry family reused: few compilations


def _data(seed=0, x_shape=SHAPE_X, w_shape=SHAPE_W):
    kx, kw, kb = jax.random.split(jax.random.key(seed), 3)
    return (jax.random.normal(kx, x_shape, F64), jax.random.normal(kw, w_shape, F64), jax.random.normal(kb, w_shape[3:], F64))


def test_docstring_names_every_algorithm_and_impl():
    doc = conv2d.__doc__
    for name in (*ALGORITHMS, *IMPLS):
        assert f'"{name}"' in doc, name


@pytest.mark.parametrize("algorithm", ALGORITHMS)
def test_every_algorithm_matches_lax_in_value_and_gradient(algorithm):
    x, w, b = _data()
    loss = lambda **kw: (lambda x, w, b: jnp.sum(jnp.sin(conv2d(x, w, b, padding=1, **kw))))
    want = jax.value_and_grad(loss(impl="lax"), (0, 1, 2))(x, w, b)
    got = jax.value_and_grad(loss(impl="hand", algorithm=algorithm), (0, 1, 2))(x, w, b)
    for a, r in zip(jax.tree.leaves(got), jax.tree.leaves(want)):
        np.testing.assert_allclose(a, r, **TOL)


def test_conv2d_layer_takes_the_algorithm():
    x, _, _ = _data()
    layer = Conv2D(5, 3, padding=1, impl="hand", algorithm="taps")
    _, params = layer.init(jax.random.key(1), x.shape)
    params = jax.tree.map(lambda a: a.astype(F64), params)
    want = conv2d(x, params["w"], params["b"], padding=1, impl="lax")
    np.testing.assert_allclose(layer.apply(params, x), want, **TOL)


ERRORS = [
    (dict(algorithm="fft"), f"conv2d: unknown `algorithm` 'fft'. It needs to be one of {list(ALGORITHMS)}."),
    (dict(impl="lax", algorithm="rows"), "conv2d: `algorithm` ('rows') chooses among the hand-rolled algorithms, but impl='lax' has none; use impl='hand' with it, or leave algorithm='auto'."),
    (dict(impl="hand_autodiff", algorithm="taps"), "conv2d: impl='hand_autodiff' differentiates the im2col forward only, got `algorithm` 'taps'; use impl='hand' for 'taps', or algorithm='im2col'."),
    (dict(impl="hand", algorithm="rows", stride=2), "conv2d: `algorithm` 'rows' needs stride 1 (got (2, 2)); use algorithm='im2col' (any geometry) or 'auto'."),
    (dict(impl="hand", algorithm="rows", dilation=(1, 2)), "conv2d: `algorithm` 'rows' needs dilation 1 (got (1, 2)); use algorithm='im2col' (any geometry) or 'auto'."),
    (dict(impl="hand", algorithm="taps", groups=2, stride=(1, 2)), "conv2d: `algorithm` 'taps' needs stride 1 (got (1, 2)), groups=1 (got 2); use algorithm='im2col' (any geometry) or 'auto'."),
]


@pytest.mark.parametrize("kw,message", ERRORS)
def test_algorithm_errors(kw, message):
    x, w, _ = _data()
    if kw.get("groups"):
        w = w[:, :, :2, :4]
    with pytest.raises(ValueError, match=re.escape(message)):
        conv2d(x, w, **kw)


def test_conv2d_layer_checks_the_algorithm_at_construction():
    with pytest.raises(ValueError, match=re.escape(f"Conv2D: unknown `algorithm` 'row'. It needs to be one of {list(ALGORITHMS)}.")):
        Conv2D(4, 3, algorithm="row")
    with pytest.raises(ValueError, match=re.escape("Conv2D: `algorithm` ('im2col') chooses among the hand-rolled algorithms, but impl='lax' has none")):
        Conv2D(4, 3, impl="lax", algorithm="im2col")
