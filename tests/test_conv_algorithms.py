"""The hand-rolled algorithm as a public choice: conv2d(..., impl="hand", algorithm=...)."""

import math
import re
from functools import partial
from types import MappingProxyType

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxconv import Conv2D, conv
from jaxconv.conv import ALGORITHMS, IMPLS, conv2d, guard

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


# depthwise and pointwise need groups = n_C and 1x1 filters: tests/test_conv_depthwise.py checks them the same way
@pytest.mark.parametrize("algorithm", [a for a in ALGORITHMS if a not in ("depthwise", "pointwise")])
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


# --------------------------------------------------------------------------- NaN and Inf (#14.7)

NONFINITE_X, NONFINITE_W = (1, 32, 32, 6), (5, 5, 6, 16)  # the case: one bad pixel into a 5x5 16-filter conv
NONFINITE_CASES = [("auto", "auto"), ("hand", "auto"), ("hand", "im2col"), ("hand", "rows"), ("hand", "taps"), ("hand_autodiff", "auto")]


def _nonfinite_inputs(where):
    kx, kw, kg = jax.random.split(jax.random.key(3), 3)
    x = jax.random.normal(kx, NONFINITE_X, jnp.float32)
    w = jax.random.normal(kw, NONFINITE_W, jnp.float32)
    g = jax.random.normal(kg, (1, 28, 28, 16), jnp.float32)
    if where == "x NaN":
        x = x.at[0, 10, 12, 2].set(jnp.nan)
    elif where == "x Inf":
        x = x.at[0, 10, 12, 2].set(jnp.inf)
    elif where == "dZ NaN":
        g = g.at[0, 5, 7, 3].set(jnp.nan)
    elif where == "dZ -Inf":
        g = g.at[0, 5, 7, 3].set(-jnp.inf)
    return x, w, g


@partial(jax.jit, static_argnums=(0, 1))  # one compilation per (impl, algorithm), reused by every case
def _forward_backward(impl, algorithm, x, w, g):
    y, vjp = jax.vjp(lambda x, w: conv2d(x, w, impl=impl, algorithm=algorithm), x, w)
    return (y, *vjp(g))  # Z, dX, dW


def _masks(impl, algorithm, x, w, g):
    return [(np.isnan(a), np.isinf(a)) for a in map(np.asarray, _forward_backward(impl, algorithm, x, w, g))]


@pytest.mark.parametrize("where", ["x NaN", "x Inf", "dZ NaN", "dZ -Inf"])
def test_every_algorithm_gives_lax_nan_and_inf_pattern(where):
    x, w, g = _nonfinite_inputs(where)
    want = _masks("lax", "auto", x, w, g)
    assert any(m.any() for pair in want for m in pair)  # the case does produce non-finite values
    for impl, algorithm in NONFINITE_CASES:
        got = _masks(impl, algorithm, x, w, g)
        for name, (nan_g, inf_g), (nan_w, inf_w) in zip(("Z", "dX", "dW"), got, want):
            assert np.array_equal(nan_g, nan_w), (impl, algorithm, name, "NaN", nan_g.sum(), nan_w.sum())
            assert np.array_equal(inf_g, inf_w), (impl, algorithm, name, "Inf", inf_g.sum(), inf_w.sum())


@pytest.mark.parametrize("m, chunked", [(24, True), (6, True), (24, False)])  # chunks of gcd(m, 16) = 8 and 2, or all m
def test_the_exact_branch_keeps_every_example_in_its_place(m, chunked, monkeypatch):
    """A batch with one non-finite example runs the guard's im2col branch over strided chunks (patches above
    TUNED["guard_whole_batch_bytes"]) or the whole batch: every example's output and gradient must come back
    in its own place, equal to lax's in value and NaN pattern (float64)."""
    if chunked:
        monkeypatch.setattr(conv.policy, "TUNED", MappingProxyType(conv.policy.TUNED | {"guard_whole_batch_bytes": 0}))
    assert guard._chunk_size((m, 7, 7, 2), (3, 3, 2, 3), conv.Plan(((0, 0), (0, 0)))) == (math.gcd(m, 16) if chunked else m)
    x, w, b = _data(4, (m, 7, 7, 2), (3, 3, 2, 3))
    x = x.at[m // 2, 3, 4, 1].set(jnp.nan)
    g = jax.random.normal(jax.random.key(5), (m, 5, 5, 3), F64)

    @partial(jax.jit, static_argnums=0)
    def forward_backward(kw, x, w, b):
        y, vjp = jax.vjp(lambda x, w, b: conv2d(x, w, b, **dict(kw)), x, w, b)
        return (y, *vjp(g))

    got = forward_backward((("impl", "hand"), ("algorithm", "rows")), x, w, b)
    want = forward_backward((("impl", "lax"),), x, w, b)
    assert np.isnan(np.asarray(got[0][m // 2])).any() and not np.isnan(np.asarray(got[0][m // 2 + 1])).any()
    for name, a, r in zip(("Z", "dX", "dW", "db"), got, want):
        a, r = np.asarray(a), np.asarray(r)
        assert np.array_equal(np.isnan(a), np.isnan(r)), name
        np.testing.assert_allclose(a[np.isfinite(r)], r[np.isfinite(r)], rtol=1e-10, atol=1e-10, err_msg=name)


def test_nan_pixel_reaches_only_its_windows():
    """Hand-computed: a NaN at (10, 12) reaches outputs h in 6..10, w in 8..12 of all 16 filters: 5·5·16 = 400."""
    x, w, g = _nonfinite_inputs("x NaN")
    for impl, algorithm in NONFINITE_CASES:
        (nan, _), _, _ = _masks(impl, algorithm, x, w, g)
        assert nan.sum() == 400 and nan[0, 6:11, 8:13].all(), (impl, algorithm, nan.sum())


# --------------------------------------------------------------------------- the XLA CPU abort (#14.8)

_ABORT_SCRIPT = """
import jax, numpy as np
from jaxconv import conv2d
x = np.ones((1, 6, 3, 1), np.float32)
w = np.ones((2, 2, 1, 1), np.float32)
kw = dict(stride=(2, 3), padding=((1, 1), (0, 0)), dilation=(1, 2))
dx = jax.grad(lambda x: conv2d(x, w, **kw).sum())(x)  # the default impl
# Hand-computed: each output's 2x2 window of ones sends 1 to the pixels it reads (rows 2h - 1 + i, columns 0 and 2).
want = np.zeros((1, 6, 3, 1), np.float32)
want[0, :, [0, 2], 0] = 1
np.testing.assert_array_equal(np.asarray(dx), want)
print("ok")
"""


def test_default_impl_survives_the_xla_abort_geometry():
    import subprocess
    import sys

    result = subprocess.run([sys.executable, "-c", _ABORT_SCRIPT], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0 and "ok" in result.stdout, result.stderr[-2000:]


def test_abort_rule_covers_every_probed_abort():
    """Geometries whose lax gradient aborted in subprocess probes (jaxlib 0.10.2 CPU), and some that compiled."""
    from jaxconv.conv import conv_geometry, policy

    aborted = [
        ((1, 6, 3, 1), (2, 2, 1, 1), dict(stride=(2, 3), padding=((1, 1), (0, 0)), dilation=(1, 2))),
        ((2, 6, 3, 4), (2, 2, 4, 3), dict(stride=(2, 3), padding=((1, 1), (0, 0)), dilation=(1, 2))),
        ((1, 6, 3, 1), (2, 2, 1, 1), dict(stride=(2, 1), padding=((1, 1), (0, 0)), dilation=(1, 2))),
        ((1, 6, 4, 1), (2, 2, 1, 1), dict(stride=(2, 3), padding=((1, 1), (0, 0)))),
        ((1, 3, 6, 1), (2, 2, 1, 1), dict(stride=(3, 2), padding=((0, 0), (1, 1)), dilation=(2, 1))),
    ]
    compiled = [
        ((1, 6, 3, 1), (2, 2, 1, 1), dict(stride=(2, 3), dilation=(1, 2))),  # no padding
        ((1, 6, 3, 1), (2, 2, 1, 1), dict(stride=(1, 3), padding=((1, 1), (0, 0)), dilation=(1, 2))),  # padded axis stride 1
        ((1, 6, 7, 1), (2, 2, 1, 1), dict(stride=(2, 3), padding=((1, 1), (0, 0)))),  # two output columns
    ]
    rule = lambda xs, ws, kw: policy.lax_grad_aborts(xs, ws, conv_geometry(xs, ws, **kw)[:4])
    assert all(rule(*case) for case in aborted)
    assert not any(rule(*case) for case in compiled)


# --------------------------------------------------------------------------- bfloat16: float32 accumulation (#15)

BF16_X, BF16_W = (2, 12, 12, 64), (3, 3, 64, 8)  # 576 products per output, 200 per dW entry


def test_bfloat16_accumulates_in_float32_forward_and_backward():
    """Positive inputs make the sums grow until a bfloat16 accumulator drops whole terms; float32 sums keep
    every algorithm within one bfloat16 rounding of the float64 result on the same bf16-rounded inputs."""
    kx, kw = jax.random.split(jax.random.key(4))
    x = jax.random.uniform(kx, BF16_X, jnp.float32).astype(jnp.bfloat16)
    w = jax.random.uniform(kw, BF16_W, jnp.float32).astype(jnp.bfloat16)
    g = jnp.ones((2, 10, 10, 8), jnp.bfloat16)
    ref_fn = lambda x, w: conv2d(x, w, impl="lax")
    y64, vjp64 = jax.vjp(ref_fn, x.astype(F64), w.astype(F64))
    want = [np.asarray(a) for a in (y64, *vjp64(g.astype(F64)))]

    # The case is discriminating: one output's 576 products summed in bfloat16 lose far more than one rounding.
    prods = (np.asarray(x[0, :3, :3, :], np.float64) * np.asarray(w[..., 0], np.float64)).ravel()
    total = jnp.bfloat16(0)
    for p in prods.astype(jnp.bfloat16):
        total = jnp.bfloat16(total + p)
    assert abs(float(total) - want[0][0, 0, 0, 0]) > 4 * 2.0**-8 * want[0][0, 0, 0, 0]

    for algorithm in ("im2col", "rows", "taps"):
        y, vjp = jax.vjp(lambda x, w: conv2d(x, w, impl="hand", algorithm=algorithm), x, w)
        for name, a, r in zip(("Z", "dX", "dW"), (y, *vjp(g)), want):
            assert a.dtype == jnp.bfloat16, (algorithm, name, a.dtype)
            err = np.abs(np.asarray(a, np.float64) - r)
            assert (err <= 2.0**-8 * np.abs(r) + 1e-6).all(), (algorithm, name, float((err / np.abs(r)).max()))


def test_nan_pattern_under_vmap_per_example_gradients():
    """vmap (per-example gradients) checks finiteness over the whole batch: a NaN in example 1 sends every
    example to im2col, so example 0's gradient stays finite and each example's equals lax's, one example at
    a time (lax itself under vmap leaks NaNs into example 0: its batched gradient mixes the examples)."""
    x, w, b = _data()
    x = x.at[1, 4, 3, 2].set(jnp.nan)
    # padding 0: with padding, lax's dW skips the padded terms that im2col multiplies (0 · NaN), see the README
    grad = lambda **kw: jax.grad(lambda w, x: jnp.sum(jnp.sin(conv2d(x, w, b, **kw))))
    got = np.asarray(jax.vmap(grad(impl="hand", algorithm="rows"), in_axes=(None, 0))(w, x[:, None]))
    for i in range(2):
        want = np.asarray(grad(impl="lax")(w, x[i : i + 1]))
        assert np.array_equal(np.isnan(got[i]), np.isnan(want)), i
        np.testing.assert_allclose(got[i], want, **TOL)
    assert not np.isnan(got[0]).any() and np.isnan(got[1]).any()


SECOND_ORDER = {  # algorithm: (x shape, w shape, conv2d keywords), small and each compiled once
    "rows": ((2, 14, 14, 2), (5, 5, 2, 3), {}),
    "taps": ((2, 10, 10, 9), (3, 3, 9, 4), {"padding": 1}),
    "im2col": ((2, 9, 9, 3), (3, 3, 3, 4), {"stride": 2, "padding": 1}),
    "depthwise": ((2, 7, 7, 4), (3, 3, 1, 4), {"padding": 1, "groups": 4, "stride": 2}),
    "pointwise": ((2, 8, 8, 4), (1, 1, 4, 5), {"stride": 2}),
}


@pytest.mark.parametrize("algorithm", list(SECOND_ORDER))
def test_second_order_gradients_match_lax(algorithm):
    """Gradients of a gradient (a gradient penalty, Hessian-vector products): d/d(x, w) of |∇_(x,w) J|² through
    each hand-derived backward equals lax's (float64). The finiteness predicates of the guard and of
    depthwise sit inside those backwards; differentiated, their custom vmap used to fail."""
    x_shape, w_shape, kw = SECOND_ORDER[algorithm]
    x, w, b = _data(7, x_shape, w_shape)

    def penalty(impl):
        J = lambda x, w: jnp.sum(jnp.tanh(conv2d(x, w, b, **kw, **impl)))
        return lambda x, w: sum(jnp.sum(g**2) for g in jax.grad(J, argnums=(0, 1))(x, w))

    got = jax.grad(penalty({"impl": "hand", "algorithm": algorithm}), argnums=(0, 1))(x, w)
    want = jax.grad(penalty({"impl": "lax"}), argnums=(0, 1))(x, w)
    for name, a, r in zip(("x", "w"), got, want):
        np.testing.assert_allclose(a, r, rtol=1e-9, atol=1e-9, err_msg=name)
