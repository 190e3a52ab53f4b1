"""Pooling: the notes' example, max/avg/global-avg against the float64 numpy reference,
the max-pool gradient's first-maximum tie policy (vs the reference and PyTorch).
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import reference as ref
from jaxconv import avg_pool, global_avg_pool, max_pool

# The notes' 4x4 pooling example, f = 2, s = 2.
POOL_4x4 = [[1, 3, 2, 1], [2, 9, 1, 1], [1, 3, 2, 3], [5, 6, 1, 2]]


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_notes_pooling_example(dtype):
    x = jnp.asarray(np.asarray(POOL_4x4, dtype)[None, :, :, None])
    y_max, y_avg = max_pool(x, 2, 2), avg_pool(x, 2, 2)
    assert y_max.shape == y_avg.shape == (1, 2, 2, 1) and y_max.dtype == y_avg.dtype == dtype
    np.testing.assert_array_equal(np.asarray(y_max)[0, :, :, 0], [[9, 2], [6, 3]])
    np.testing.assert_array_equal(np.asarray(y_avg)[0, :, :, 0], [[3.75, 1.25], [3.75, 2.0]])
    # The reference agrees with the hand-computed answers.
    np.testing.assert_array_equal(ref.max_pool(x, 2, 2)[0, :, :, 0], [[9, 2], [6, 3]])
    np.testing.assert_array_equal(ref.avg_pool(x, 2, 2)[0, :, :, 0], [[3.75, 1.25], [3.75, 2.0]])


# Window, stride, padding: strides != window (overlapping and gapped), every padding form.
POOL_CASES = [
    dict(window=2, stride=None, padding=0),
    dict(window=3, stride=2, padding=1),  # overlapping windows, padded border
    dict(window=(2, 3), stride=(3, 1), padding=((1, 0), (0, 2))),  # gaps between rows, asymmetric padding
    dict(window=3, stride=1, padding="SAME"),
    dict(window=(3, 2), stride=2, padding="SAME"),  # odd total padding goes bottom/right
    dict(window=2, stride=1, padding=(1, 0)),
    dict(window=3, stride=3, padding="VALID"),  # floor drops the last row/column
]
SHAPE = (2, 7, 8, 3)  # one shape for every case: fewer compilations


def _pool_all(x, dy, case):
    """Outputs and VJPs of max, avg(count_include_pad=True) and avg(False) in one jit."""

    @jax.jit
    def run(x, dy):
        fns = {
            "max": lambda x: max_pool(x, **case),
            "avg_incl": lambda x: avg_pool(x, **case, count_include_pad=True),
            "avg_excl": lambda x: avg_pool(x, **case, count_include_pad=False),
        }
        out = {}
        for name, fn in fns.items():
            y, vjp = jax.vjp(fn, x)
            out[name] = (y, vjp(dy)[0])
        return out

    return run(x, dy)


# Every case in float64; float32 only where padding and overlap make it interesting (each compiles).
DTYPE_CASES = [(case, np.float64) for case in POOL_CASES] + [(POOL_CASES[i], np.float32) for i in (1, 4)]


@pytest.mark.parametrize("case, dtype", DTYPE_CASES, ids=str)
def test_pooling_matches_reference(case, dtype):
    rng = np.random.default_rng(0)
    # Small integers: ties within a window are common, so the tie policy is exercised.
    x = rng.integers(0, 4, SHAPE).astype(dtype)
    y_ref = ref.max_pool(x, **case)
    dy = rng.standard_normal(y_ref.shape).astype(dtype)
    out = _pool_all(x, dy, case)
    t, tg = ref.tol(dtype), ref.tol(dtype, grad=True)
    np.testing.assert_allclose(out["max"][0], y_ref, **t)
    np.testing.assert_allclose(out["max"][1], ref.max_pool_vjp(x, dy, **case), **tg)
    for name, incl in (("avg_incl", True), ("avg_excl", False)):
        np.testing.assert_allclose(out[name][0], ref.avg_pool(x, **case, count_include_pad=incl), **t, err_msg=name)
        np.testing.assert_allclose(out[name][1], ref.avg_pool_vjp(x, dy, **case, count_include_pad=incl), **tg, err_msg=name)
    for name, (y, dx) in out.items():
        assert y.dtype == dtype and dx.dtype == dtype and dx.shape == x.shape, name


def test_reference_has_ties():
    # Guard for the test above: the drawn inputs really have tied maxima.
    x = np.random.default_rng(0).integers(0, 4, SHAPE).astype(np.float64)
    win = x[:, :2, :2, :].reshape(SHAPE[0], 4, SHAPE[3])
    assert ((win == win.max(axis=1, keepdims=True)).sum(axis=1) > 1).any()


def test_count_include_pad_differs_only_at_the_border():
    x = jnp.ones((1, 4, 4, 1), jnp.float64)
    incl = avg_pool(x, 3, 1, padding=1, count_include_pad=True)[0, :, :, 0]
    excl = avg_pool(x, 3, 1, padding=1, count_include_pad=False)[0, :, :, 0]
    np.testing.assert_allclose(excl, np.ones((4, 4)), rtol=1e-15)  # the mean of ones is 1
    np.testing.assert_allclose(incl[0, 0], 4 / 9, rtol=1e-15)  # corner: 4 real pixels of 9
    np.testing.assert_allclose(incl[0, 1], 6 / 9, rtol=1e-15)  # edge: 6 of 9
    np.testing.assert_allclose(incl[1, 1], 1.0, rtol=1e-15)  # interior


def test_max_pool_padding_never_wins():
    # All-negative input: zero padding would win; −∞ padding must not.
    x = -1.0 - jnp.arange(16.0, dtype=jnp.float64).reshape(1, 4, 4, 1)
    y = max_pool(x, 2, 2, padding=1)[0, :, :, 0]
    np.testing.assert_array_equal(y, ref.max_pool(x, 2, 2, padding=1)[0, :, :, 0])
    assert (np.asarray(y) < 0).all()


def test_max_pool_grad_all_equal_window_goes_to_first_element():
    x = jnp.full((1, 4, 4, 1), 5.0, jnp.float64)
    dx = jax.grad(lambda x: max_pool(x, 2, 2).sum())(x)[0, :, :, 0]
    expected = np.array([[1, 0, 1, 0], [0, 0, 0, 0], [1, 0, 1, 0], [0, 0, 0, 0]], float)
    np.testing.assert_array_equal(dx, expected)
    np.testing.assert_array_equal(ref.max_pool_vjp(x, np.ones((1, 2, 2, 1)), 2, 2)[0, :, :, 0], expected)


def test_max_pool_grad_tie_in_later_row_goes_to_first_in_row_major_order():
    # Window [[1, 7], [7, 7]]: the first maximum in row-major order is (0, 1).
    x = jnp.asarray([[1.0, 7.0], [7.0, 7.0]], jnp.float64)[None, :, :, None]
    dx = jax.grad(lambda x: max_pool(x, 2).sum())(x)[0, :, :, 0]
    np.testing.assert_array_equal(dx, [[0, 1], [0, 0]])


def test_max_pool_grad_overlapping_windows_accumulate():
    # A single maximum shared by all four overlapping 2x2 windows (stride 1) gets 4.
    x = jnp.zeros((1, 3, 3, 1), jnp.float64).at[0, 1, 1, 0].set(1.0)
    dx = jax.grad(lambda x: max_pool(x, 2, 1).sum())(x)[0, :, :, 0]
    np.testing.assert_array_equal(dx, [[0, 0, 0], [0, 4, 0], [0, 0, 0]])


def test_single_example_and_vmap():
    rng = np.random.default_rng(1)
    x = rng.standard_normal((3, 6, 5, 2)).astype(np.float32)
    case = dict(window=3, stride=2, padding="SAME")
    for fn in (max_pool, avg_pool):
        batched = fn(x, **case)
        np.testing.assert_allclose(fn(x[0], **case), batched[0], **ref.tol(np.float32))
        np.testing.assert_allclose(jax.vmap(lambda x_i: fn(x_i, **case))(x), batched, **ref.tol(np.float32))


def test_global_avg_pool():
    rng = np.random.default_rng(2)
    x = rng.standard_normal((2, 5, 4, 3))
    np.testing.assert_allclose(global_avg_pool(x), ref.global_avg_pool(x), **ref.tol(np.float64))
    np.testing.assert_allclose(global_avg_pool(x[1]), ref.global_avg_pool(x)[1], **ref.tol(np.float64))
    assert global_avg_pool(x).shape == (2, 3) and global_avg_pool(x[1]).shape == (3,)
    # The gradient spreads evenly: ∂/∂x of Σ mean = 1/(n_H·n_W) everywhere.
    np.testing.assert_allclose(jax.grad(lambda x: global_avg_pool(x).sum())(x), np.full(x.shape, 1 / 20), rtol=1e-15)


# ---------------------------------------------------------------------------
# PyTorch: values and the tie policy of the max-pool gradient.
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("case", [dict(window=2, stride=2, padding=0), dict(window=3, stride=2, padding=1),
                                  dict(window=3, stride=1, padding=1)], ids=str)
def test_max_pool_matches_torch_with_ties(case):
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(5)
    x = rng.integers(0, 3, (2, 6, 6, 2)).astype(np.float64)  # many ties
    xt = torch.from_numpy(x.transpose(0, 3, 1, 2).copy()).requires_grad_(True)  # NCHW
    yt = torch.nn.functional.max_pool2d(xt, case["window"], case["stride"], case["padding"])
    dy = rng.standard_normal(tuple(yt.shape))
    yt.backward(torch.from_numpy(dy))
    dy_nhwc = dy.transpose(0, 2, 3, 1)
    y, vjp = jax.vjp(lambda x: max_pool(x, **case), x)
    np.testing.assert_allclose(y, yt.detach().numpy().transpose(0, 2, 3, 1), rtol=0, atol=0)
    np.testing.assert_allclose(vjp(dy_nhwc)[0], xt.grad.numpy().transpose(0, 2, 3, 1), **ref.tol(np.float64, grad=True))


# ---------------------------------------------------------------------------
# PyTorch's options (#12): ceil_mode, dilation, return_indices, divisor_override, adaptive pools,
# against the float64 reference (itself checked against PyTorch in test_reference.py).
# ---------------------------------------------------------------------------

from jaxconv import adaptive_avg_pool, adaptive_max_pool  # noqa: E402
from jaxconv import pool  # noqa: E402

OPTION_CASES = [
    dict(window=3, stride=2, padding=1, ceil_mode=True),
    dict(window=(2, 3), stride=(3, 2), padding=((1, 0), (0, 1)), ceil_mode=True),  # asymmetric padding
    dict(window=2, stride=3, padding=0, ceil_mode=True),  # a ceil window that would start in the padding is dropped
    dict(window=2, stride=1, padding=1, dilation=2),
    dict(window=(3, 2), stride=2, padding=1, dilation=(2, 3), ceil_mode=True),
]


@pytest.mark.parametrize("case", OPTION_CASES, ids=str)
def test_max_pool_options_match_reference(case):
    rng = np.random.default_rng(3)
    x = rng.integers(0, 4, SHAPE).astype(np.float64)  # ties
    y_ref, idx_ref = ref.max_pool(x, **case, return_indices=True)
    dy = rng.standard_normal(y_ref.shape)
    y, idx = max_pool(x, **case, return_indices=True)
    np.testing.assert_array_equal(y, y_ref)
    np.testing.assert_array_equal(idx, idx_ref)
    _, vjp = jax.vjp(lambda x: max_pool(x, **case), x)
    np.testing.assert_allclose(vjp(dy)[0], ref.max_pool_vjp(x, dy, **case), **ref.tol(np.float64, grad=True))
    assert max_pool(x, **case).shape == pool.pool_geometry(x.shape, case["window"], case["stride"], case["padding"],
                                                           "max_pool", case.get("dilation", 1),
                                                           case.get("ceil_mode", False))[3]


@pytest.mark.parametrize("incl", [True, False])
@pytest.mark.parametrize("case", [c for c in OPTION_CASES if "dilation" not in c]
                         + [dict(window=3, stride=2, padding=1, divisor_override=4)], ids=str)
def test_avg_pool_options_match_reference(case, incl):
    rng = np.random.default_rng(4)
    x = rng.standard_normal(SHAPE)
    y_ref = ref.avg_pool(x, **case, count_include_pad=incl)
    dy = rng.standard_normal(y_ref.shape)
    y, vjp = jax.vjp(lambda x: avg_pool(x, **case, count_include_pad=incl), x)
    np.testing.assert_allclose(y, y_ref, **ref.tol(np.float64))
    np.testing.assert_allclose(vjp(dy)[0], ref.avg_pool_vjp(x, dy, **case, count_include_pad=incl),
                               **ref.tol(np.float64, grad=True))


# (3, 4): uneven overlapping windows on both axes; (7, 2): divides evenly, the tiled path; (None, 3): keep n_H.
@pytest.mark.parametrize("out", [(3, 4), (7, 2), (None, 3)], ids=str)
def test_adaptive_pools_match_reference(out):
    rng = np.random.default_rng(6)
    x = rng.integers(0, 3, SHAPE).astype(np.float64)  # ties: the first maximum in row-major order must win
    size = (SHAPE[1] if out[0] is None else out[0], out[1]) if isinstance(out, tuple) else out
    y_ref, idx_ref = ref.adaptive_max_pool(x, size, return_indices=True)
    dy = rng.standard_normal(y_ref.shape)
    (y, idx) = adaptive_max_pool(x, out, return_indices=True)
    np.testing.assert_array_equal(y, y_ref)
    np.testing.assert_array_equal(idx, idx_ref)
    _, vjp = jax.vjp(lambda x: adaptive_max_pool(x, out), x)
    np.testing.assert_allclose(vjp(dy)[0], ref.max_unpool(dy, idx_ref, x.shape), **ref.tol(np.float64, grad=True))
    y, vjp = jax.vjp(lambda x: adaptive_avg_pool(x, out), x)
    np.testing.assert_allclose(y, ref.adaptive_avg_pool(x, size), **ref.tol(np.float64))
    # The gradient of a mean over window i is 1/len(window) on it: check with finite differences of the reference.
    v = rng.standard_normal(x.shape)
    fd = ((ref.adaptive_avg_pool(x + 1e-6 * v, size) - ref.adaptive_avg_pool(x - 1e-6 * v, size)) * dy).sum() / 2e-6
    np.testing.assert_allclose((vjp(dy)[0] * v).sum(), fd, rtol=1e-7)
    assert adaptive_avg_pool(x[0], out).shape == y.shape[1:]  # one example


def test_adaptive_pools_hand_computed():
    x = jnp.arange(5.0).reshape(1, 5, 1)  # one example (n_H, n_W, n_C) = (1, 5, 1); windows [0,2) [1,4) [3,5)
    np.testing.assert_allclose(adaptive_avg_pool(x, (1, 3))[..., 0], [[0.5, 2.0, 3.5]], rtol=1e-7)
    y, idx = adaptive_max_pool(x, (1, 3), return_indices=True)
    np.testing.assert_array_equal(y[..., 0], [[1.0, 3.0, 4.0]])
    np.testing.assert_array_equal(idx[..., 0], [[1, 3, 4]])


def test_max_pool_return_indices_hand_computed():
    x = jnp.asarray(np.asarray(POOL_4x4, np.float32)[None, :, :, None])
    y, idx = max_pool(x, return_indices=True)
    np.testing.assert_array_equal(idx[0, :, :, 0], [[5, 2], [13, 11]])  # 9 at (1, 1) = 1·4 + 1, ...
    assert idx.dtype == jnp.int32


def test_default_max_pool_keeps_the_tiled_path():
    # LeNet's 2x2 pool: the reshape-and-max with its hand-written backward, no reduce_window, options or not.
    x = jnp.zeros((2, 28, 28, 6))
    for kw in ({}, dict(dilation=1, ceil_mode=True)):  # ceil mode changes nothing when the windows tile exactly
        jaxpr = str(jax.make_jaxpr(jax.grad(lambda x: max_pool(x, 2, **kw).sum()))(x))
        assert "reduce_window" not in jaxpr and "reduce_min" in jaxpr, kw  # reduce_min: the backward's first max


def test_pool_layers_with_options():
    from jaxconv import AdaptiveAvgPool, AdaptiveMaxPool, AvgPool, MaxPool

    x = np.random.default_rng(7).standard_normal(SHAPE)
    layers = [
        (MaxPool(3, 2, 1, dilation=2, ceil_mode=True), ref.max_pool(x, 3, 2, 1, dilation=2, ceil_mode=True)),
        (AvgPool(3, 2, 1, ceil_mode=True, divisor_override=2), ref.avg_pool(x, 3, 2, 1, ceil_mode=True, divisor_override=2)),
        (AdaptiveAvgPool((3, 5)), ref.adaptive_avg_pool(x, (3, 5))),
        (AdaptiveMaxPool(2), ref.adaptive_max_pool(x, 2)),
    ]
    for layer, expected in layers:
        shape, params = layer.init(jax.random.key(0), (-1, *SHAPE[1:]))
        y = layer.apply(params, x)
        assert shape == (-1, *expected.shape[1:]) and params == {}
        np.testing.assert_allclose(y, expected, **ref.tol(np.float64))


@pytest.mark.parametrize(
    "call, error, match",
    [
        (lambda x: max_pool(x, 2, dilation=0), ValueError, r"max_pool: `dilation` must be >= 1, got 0"),
        (lambda x: max_pool(x, 2, ceil_mode=1), TypeError, r"max_pool: `ceil_mode` must be True or False, got 1"),
        (lambda x: avg_pool(x, 2, divisor_override=0), ValueError, r"avg_pool: `divisor_override` must be None or a nonzero int \(as PyTorch\), got 0"),
        (lambda x: max_pool(x, 8, stride=1, ceil_mode=True), ValueError, r"max_pool: the window spans 8 pixels in height"),
        (lambda x: adaptive_avg_pool(x, 0), ValueError, r"adaptive_avg_pool: `output_size` must be >= 1"),
        (lambda x: adaptive_max_pool(x, "2"), TypeError, r"adaptive_max_pool: `output_size` must be an int or a pair"),
    ],
)
def test_pool_option_errors(call, error, match):
    with pytest.raises(error, match=match):
        call(np.zeros(SHAPE))
