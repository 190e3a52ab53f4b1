"""lax's convolution with its gradient read from buffers (`buffers.lax_conv`, what impl="lax" runs on CPU): the
values and gradients of plain lax autodiff, forward mode, second derivatives and vmap included, and a cond XLA keeps."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import lax

from jaxconv import compile as compiling
from jaxconv import conv
from jaxconv.conv import buffers, conv2d
from jaxconv._args import LAYOUT

F64 = jnp.float64
TOL = dict(rtol=1e-12, atol=1e-12)  # the same convolutions in float64: equal up to the order of sums

# (x shape, w shape, conv2d keywords): small shapes, one compile each
CASES = [
    ((2, 6, 6, 3), (3, 3, 3, 4), dict(padding=1)),
    ((2, 7, 8, 4), (3, 2, 2, 6), dict(padding=((1, 0), (2, 1)), stride=(2, 1), dilation=(1, 2), groups=2)),
]


def _data(x_shape, w_shape, dtype=F64, seed=0):
    kx, kw, kb = jax.random.split(jax.random.key(seed), 3)
    return (jax.random.normal(kx, x_shape, dtype), jax.random.normal(kw, w_shape, dtype), jax.random.normal(kb, w_shape[3:], dtype))


def _plain(x, w, b, padding=0, stride=1, dilation=1, groups=1):
    """The convolution written directly on lax, differentiated by JAX: the reference."""
    pads, s, d, groups, _ = conv.conv_geometry(x.shape, w.shape, stride=stride, padding=padding, dilation=dilation, groups=groups)
    z = lax.conv_general_dilated(x, w, s, pads, rhs_dilation=d, dimension_numbers=LAYOUT, feature_group_count=groups)
    return z + b


@pytest.mark.parametrize("x_shape, w_shape, kw", CASES)
def test_value_gradient_and_second_derivative_equal_plain_lax(x_shape, w_shape, kw):
    x, w, b = _data(x_shape, w_shape)
    u = jax.random.normal(jax.random.key(9), conv.conv_geometry(x_shape, w_shape, **kw)[4], F64)  # a fixed cotangent

    def results(f):
        loss = lambda x, w, b: jnp.sum(jnp.sin(f(x, w, b)) * u)
        g = jax.grad(loss, (0, 1, 2))
        gg = jax.grad(lambda x, w, b: jnp.sum(g(x, w, b)[1] ** 2), (0, 1))  # reverse over reverse: through the backward
        return f(x, w, b), g(x, w, b), gg(x, w, b)

    got = jax.jit(lambda: results(lambda x, w, b: conv2d(x, w, b, impl="lax", **kw)))()
    want = jax.jit(lambda: results(lambda x, w, b: _plain(x, w, b, **kw)))()
    for a, r in zip(jax.tree.leaves(got), jax.tree.leaves(want)):
        np.testing.assert_allclose(a, r, **TOL)
    jaxpr = str(jax.make_jaxpr(jax.grad(lambda x: jnp.sum(conv2d(x, w, b, impl="lax", **kw))))(x))
    assert "cond[" in jaxpr, "impl='lax' on CPU differentiates through buffers.lax_conv"


@pytest.mark.parametrize("x_shape, w_shape, kw", CASES[:1])
def test_forward_mode_and_hessian_equal_plain_lax(x_shape, w_shape, kw):
    """jax.jvp (both tangents, and one of them zero) and jax.hessian (forward over reverse) through impl="lax"."""
    x, w, b = _data(x_shape, w_shape)
    tx, tw, _ = _data(x_shape, w_shape, seed=5)
    ours = lambda x, w: conv2d(x, w, b, impl="lax", **kw)
    plain = lambda x, w: _plain(x, w, b, **kw)
    for args, tangents in [((x, w), (tx, tw)), ((x, w), (jnp.zeros_like(x), tw))]:
        got, want = jax.jvp(ours, args, tangents), jax.jvp(plain, args, tangents)
        for a, r in zip(got, want):
            np.testing.assert_allclose(a, r, **TOL)
    np.testing.assert_allclose(jax.jvp(lambda w: ours(x, w), (w,), (tw,))[1], jax.jvp(lambda w: plain(x, w), (w,), (tw,))[1], **TOL)
    hess = lambda f: jax.jit(jax.hessian(lambda w: jnp.sum(jnp.sin(f(x, w)))))(w)
    np.testing.assert_allclose(hess(ours), hess(plain), **TOL)


def test_bfloat16_gradient_dtypes_and_values():
    """bfloat16 sums in float32 (preferred_element_type) and rounds once; the gradients come back in bfloat16, equal to
    plain lax's with the same accumulation."""
    x, w, b = _data((2, 6, 6, 3), (3, 3, 3, 4), jnp.bfloat16)

    def plain(x, w, b):
        z = lax.conv_general_dilated(x, w, (1, 1), ((1, 1), (1, 1)), dimension_numbers=LAYOUT, preferred_element_type=jnp.float32)
        return (z + b).astype(x.dtype)

    loss = lambda f: lambda x, w, b: jnp.sum(f(x, w, b).astype(jnp.float32) ** 2)
    got = jax.jit(jax.grad(loss(lambda x, w, b: conv2d(x, w, b, padding=1, impl="lax")), (0, 1, 2)))(x, w, b)
    want = jax.jit(jax.grad(loss(plain), (0, 1, 2)))(x, w, b)
    for a, r in zip(got, want):
        assert a.dtype == jnp.bfloat16
        np.testing.assert_allclose(np.asarray(a, np.float32), np.asarray(r, np.float32), rtol=1e-2, atol=1e-2)


@pytest.mark.parametrize("batched", ["x", "w"])
def test_per_example_and_ensemble_gradients_keep_the_cond(batched):
    """vmap over examples (per-example gradients) or filters (ensembles) equals the gradients one by one, and the
    cond stays a cond under vmap (`all_finite`'s custom vmap): as a select both branches would run."""
    x_shape, w_shape, kw = CASES[0]
    x, w, b = _data(x_shape, w_shape, seed=3)
    grad = jax.grad(lambda w, x1: jnp.sum(jnp.sin(conv2d(x1[None], w, b, impl="lax", **kw))), argnums=(0, 1))
    if batched == "x":
        args, axes, want = (w, x), (None, 0), [grad(w, x[i]) for i in range(len(x))]
    else:
        ws = jnp.stack([w, 2 * w])
        args, axes, want = (ws, x[0]), (0, None), [grad(ws[i], x[0]) for i in range(2)]
    got = jax.jit(jax.vmap(grad, in_axes=axes))(*args)
    for i, (dw, dx) in enumerate(want):
        np.testing.assert_allclose(got[0][i], dw, **TOL)
        np.testing.assert_allclose(got[1][i], dx, **TOL)
    jaxpr = str(jax.make_jaxpr(jax.vmap(grad, in_axes=axes))(*args))
    assert "cond[" in jaxpr and "select_n" not in jaxpr, batched


def test_xla_keeps_the_cond_and_the_switch_turns_it_off(monkeypatch):
    """The point of `as_buffers`: XLA must keep the cond (it inlines one whose branches only return their operands, and
    fuses across it again). A jaxlib whose simplifier removes this one too fails here: the trick then needs another
    form. `compile.LAX_GRAD_ON_BUFFERS_BACKENDS = ()` gives plain lax autodiff, with no cond."""
    x, w, b = _data((2, 6, 6, 3), (3, 3, 3, 4), jnp.float32)

    def step(x, w):  # a new function each time: JAX caches a function's trace, and the setting is read while tracing
        return jax.grad(lambda x, w: jnp.sum(jax.nn.relu(conv2d(jax.nn.relu(x), w, padding=1, impl="lax")) ** 2), (0, 1))(x, w)

    hlo = jax.jit(step).lower(x, w).compile().as_text()
    assert " conditional(" in hlo
    monkeypatch.setattr(compiling, "LAX_GRAD_ON_BUFFERS_BACKENDS", ())
    assert not compiling.lax_grad_on_buffers()
    assert "cond[" not in str(jax.make_jaxpr(lambda x, w: step(x, w))(x, w))


def test_as_buffers_returns_its_operands_exactly():
    """Multiplying by 1 keeps NaN, Inf, -0.0 and integers as they are; the cond's predicate (w finite or not) picks
    between two equal branches."""
    a = jnp.array([np.nan, np.inf, -np.inf, -0.0, 1e-45, 3.0], jnp.float32)
    n = jnp.arange(5)
    for w in (jnp.ones(3), jnp.array([np.nan, 1.0, 1.0])):
        got_a, got_n = jax.jit(buffers.as_buffers)((a, n), w)
        np.testing.assert_array_equal(np.asarray(got_a), np.asarray(a))
        assert np.signbit(np.asarray(got_a)[3]) and got_n.dtype == n.dtype
        np.testing.assert_array_equal(got_n, n)
