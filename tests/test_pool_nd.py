"""Pools in 1-D (NWC) and 3-D (NDHWC): shapes, values and indices against the float64 reference,
gradients against the reference's VJPs and finite differences, against PyTorch (layouts permuted),
and every error message.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.test_util import check_grads

import reference as ref
from jaxconv import (
    adaptive_avg_pool1d,
    adaptive_avg_pool3d,
    adaptive_max_pool1d,
    adaptive_max_pool3d,
    avg_pool1d,
    avg_pool3d,
    global_avg_pool1d,
    global_avg_pool3d,
    max_pool1d,
    max_pool3d,
)

# One shape per rank for every case: fewer compilations.
SHAPES = {1: (2, 9, 3), 3: (1, 4, 5, 6, 2)}
MAX = {1: max_pool1d, 3: max_pool3d}
AVG = {1: avg_pool1d, 3: avg_pool3d}

# Window, stride, padding, dilation, ceil mode: tiled, overlapping, gapped, asymmetric, SAME, ceil overhang.
CASES = {
    1: [
        dict(window=2),  # tiles: the hand-written backward
        dict(window=3, stride=2, padding=1),
        dict(window=4, stride=3, padding=((2, 1),), ceil_mode=True),
        dict(window=3, stride=1, padding="SAME"),
        dict(window=3, stride=2, padding=1, dilation=2),  # the dilated path
        dict(window=(2,), stride=(3,), ceil_mode=True),
    ],
    3: [
        dict(window=2),  # tiles; the last width column is read by none
        dict(window=(2, 3, 2), stride=(1, 2, 3), padding=(1, 1, 0), ceil_mode=True),
        dict(window=3, stride=2, padding=1, dilation=(1, 2, 1)),
        dict(window=(3, 2, 3), stride=1, padding="SAME"),
    ],
}
RANK_CASES = [(k, case) for k in (1, 3) for case in CASES[k]]


def _ties(shape, dtype=np.float64, seed=0):
    """Small integers: ties within a window are common, so the first-maximum policy is exercised."""
    return np.random.default_rng(seed).integers(0, 4, shape).astype(dtype)


def _pool_all(k, case, x, dy):
    """Outputs, indices and VJPs of max, avg(count_include_pad=True) and avg(False), in one jit."""

    @jax.jit
    def run(x, dy):
        out = {"idx": MAX[k](x, **case, return_indices=True)[1]}
        fns = {"max": lambda x: MAX[k](x, **case)}
        if "dilation" not in case:
            fns["avg_incl"] = lambda x: AVG[k](x, **case, count_include_pad=True)
            fns["avg_excl"] = lambda x: AVG[k](x, **case, count_include_pad=False)
        for name, fn in fns.items():
            y, vjp = jax.vjp(fn, x)
            out[name] = (y, vjp(dy)[0])
        return out

    return run(x, dy)


@pytest.mark.parametrize("k, case", RANK_CASES, ids=str)
def test_pools_match_reference(k, case):
    x = _ties(SHAPES[k])
    y_ref, idx_ref = ref.max_pool_nd(x, k, **case, return_indices=True)
    dy = np.random.default_rng(1).standard_normal(y_ref.shape)
    out = _pool_all(k, case, x, dy)
    t, tg = ref.tol(np.float64), ref.tol(np.float64, grad=True)
    np.testing.assert_allclose(out["max"][0], y_ref, **t)
    np.testing.assert_array_equal(out["idx"], idx_ref)
    assert out["idx"].dtype == jnp.int32
    np.testing.assert_allclose(out["max"][1], ref.max_pool_nd_vjp(x, dy, k, **case), **tg)
    for name, incl in (("avg_incl", True), ("avg_excl", False)):
        if name in out:
            np.testing.assert_allclose(out[name][0], ref.avg_pool_nd(x, k, **case, count_include_pad=incl), **t, err_msg=name)
            np.testing.assert_allclose(out[name][1], ref.avg_pool_nd_vjp(x, dy, k, **case, count_include_pad=incl), **tg, err_msg=name)
    for name in out.keys() - {"idx"}:
        y, dx = out[name]
        assert y.shape == y_ref.shape and dx.shape == x.shape and y.dtype == dx.dtype == np.float64, name


@pytest.mark.parametrize("k", [1, 3])
def test_divisor_override_ceil_mode_and_float32(k):
    x = _ties(SHAPES[k], np.float32)
    case = dict(window=3, stride=2, padding=1, ceil_mode=True, divisor_override=2)
    y = AVG[k](x, **case)
    assert y.dtype == np.float32
    np.testing.assert_allclose(y, ref.avg_pool_nd(x, k, **case), **ref.tol(np.float32))
    dy = np.ones(y.shape, np.float32)
    dx = jax.vjp(lambda x: AVG[k](x, **case), x)[1](dy)[0]
    np.testing.assert_allclose(dx, ref.avg_pool_nd_vjp(x, dy, k, **case), **ref.tol(np.float32, grad=True))


@pytest.mark.parametrize("k", [1, 3])
def test_one_example_without_the_batch_axis(k):
    x = _ties(SHAPES[k])[0]
    y, idx = MAX[k](x, 3, 2, 1, return_indices=True)
    y_ref, idx_ref = ref.max_pool_nd(x, k, 3, 2, 1, return_indices=True)
    assert y.shape == y_ref.shape == idx.shape and y.ndim == k + 1
    np.testing.assert_array_equal(y, y_ref)
    np.testing.assert_array_equal(idx, idx_ref)
    np.testing.assert_allclose(AVG[k](x, 3, 2, 1), ref.avg_pool_nd(x, k, 3, 2, 1), **ref.tol(np.float64))
    y, idx = (adaptive_max_pool1d if k == 1 else adaptive_max_pool3d)(x, 3, return_indices=True)
    assert y.shape == (3,) * k + (x.shape[-1],) and idx.shape == y.shape
    assert (global_avg_pool1d if k == 1 else global_avg_pool3d)(x).shape == (x.shape[-1],)


def test_max_pool_of_integers_keeps_the_dtype():
    x = jnp.asarray([[3, -7, 5, 1, -2]], jnp.int32).T  # (n_W, n_C) = (5, 1)
    assert max_pool1d(x, 2, 2, padding=1).ravel().tolist() == [3, 5, 1]
    assert max_pool1d(x, 2).dtype == jnp.int32
    assert adaptive_max_pool1d(x, 3).ravel().tolist() == [3, 5, 1]


ADAPTIVE = [
    (1, adaptive_avg_pool1d, adaptive_max_pool1d, 4),  # 9 -> 4: overlapping windows
    (1, adaptive_avg_pool1d, adaptive_max_pool1d, 3),  # 9 -> 3: divides, the pool path
    (3, adaptive_avg_pool3d, adaptive_max_pool3d, (3, None, 4)),  # None keeps n_H
    (3, adaptive_avg_pool3d, adaptive_max_pool3d, (2, 5, 3)),
]


@pytest.mark.parametrize("k, avg, mx, size", ADAPTIVE, ids=str)
def test_adaptive_pools_match_reference(k, avg, mx, size):
    x = _ties(SHAPES[k])
    t, tg = ref.tol(np.float64), ref.tol(np.float64, grad=True)
    y, idx = mx(x, size, return_indices=True)
    y_ref, idx_ref = ref.adaptive_max_pool_nd(x, k, size, return_indices=True)
    np.testing.assert_array_equal(y, y_ref)
    np.testing.assert_array_equal(idx, idx_ref)
    dy = np.random.default_rng(2).standard_normal(y.shape)
    dx = jax.vjp(lambda x: mx(x, size), x)[1](dy)[0]
    expected = np.zeros((x.shape[0], int(np.prod(x.shape[1:-1])), x.shape[-1]))  # dY scattered to the indices
    for i in range(x.shape[0]):
        for c in range(x.shape[-1]):
            np.add.at(expected[i, :, c], idx_ref[i, ..., c].ravel(), dy[i, ..., c].ravel())
    np.testing.assert_allclose(dx, expected.reshape(x.shape), **tg)
    np.testing.assert_allclose(avg(x, size), ref.adaptive_avg_pool_nd(x, k, size), **t)


# Finite differences on distinct values (no ties, so max is differentiable at x).
FD_CASES = [
    (max_pool1d, (1, 7, 2), dict(window=3, stride=2, padding=1, dilation=2, ceil_mode=True)),
    (max_pool3d, (1, 3, 4, 4, 1), dict(window=2)),
    (avg_pool1d, (1, 7, 2), dict(window=3, stride=2, padding=1, ceil_mode=True, count_include_pad=False)),
    (avg_pool3d, (1, 3, 4, 4, 1), dict(window=(2, 3, 2), stride=(1, 2, 2), padding=(1, 1, 0))),
    (adaptive_avg_pool3d, (1, 3, 5, 4, 1), dict(output_size=(2, 3, 3))),
    (adaptive_max_pool1d, (1, 7, 2), dict(output_size=3)),
]


@pytest.mark.parametrize("fn, shape, kwargs", FD_CASES, ids=lambda v: getattr(v, "__name__", str(v)))
def test_gradients_match_finite_differences(fn, shape, kwargs):
    x = np.random.default_rng(3).permutation(int(np.prod(shape))).reshape(shape) / 7.0  # distinct values
    check_grads(lambda x: fn(x, **kwargs), (x,), order=1, modes=["rev"], eps=1e-4)


# ---------------------------------------------------------------------------
# Against PyTorch, its channels-first layout permuted to channels last.
# ---------------------------------------------------------------------------

TORCH_CASES = [
    ("max_pool1d", dict(kernel_size=3, stride=2, padding=1, dilation=2, ceil_mode=True)),
    ("max_pool3d", dict(kernel_size=(2, 3, 2), stride=(1, 2, 2), padding=(1, 1, 0), ceil_mode=True)),
    ("avg_pool1d", dict(kernel_size=4, stride=3, padding=2, ceil_mode=True, count_include_pad=False)),
    ("avg_pool3d", dict(kernel_size=3, stride=2, padding=1, ceil_mode=True, divisor_override=5)),
    ("adaptive_max_pool1d", dict(output_size=4)),
    ("adaptive_avg_pool3d", dict(output_size=(3, 2, 4))),
]
OURS = {"max_pool1d": max_pool1d, "max_pool3d": max_pool3d, "avg_pool1d": avg_pool1d, "avg_pool3d": avg_pool3d,
        "adaptive_max_pool1d": adaptive_max_pool1d, "adaptive_avg_pool3d": adaptive_avg_pool3d}


@pytest.mark.parametrize("name, kwargs", TORCH_CASES, ids=str)
def test_matches_pytorch(name, kwargs):
    torch = pytest.importorskip("torch")
    k = 1 if name.endswith("1d") else 3
    x = _ties(SHAPES[k], seed=4)
    last = (0, k + 1, *range(1, k + 1))  # channels last -> channels first; its inverse below
    xt = torch.from_numpy(x.transpose(last)).requires_grad_()
    fn = getattr(torch.nn.functional, name)
    ours = dict(kwargs)
    if "kernel_size" in ours:
        ours["window"] = ours.pop("kernel_size")
    if name.startswith("max"):
        yt, it = fn(xt, **kwargs, return_indices=True)
        y, idx = OURS[name](x, **ours, return_indices=True)
        np.testing.assert_array_equal(idx, it.numpy().transpose(np.argsort(last)))
    else:
        yt, y = fn(xt, **kwargs), OURS[name](x, **ours)
    back = np.argsort(last)
    np.testing.assert_allclose(y, yt.detach().numpy().transpose(back), **ref.tol(np.float64))
    dy = np.random.default_rng(5).standard_normal(y.shape)
    (dxt,) = torch.autograd.grad(yt, xt, torch.from_numpy(dy.transpose(last)))
    dx = jax.vjp(lambda x: OURS[name](x, **ours), x)[1](dy)[0]
    np.testing.assert_allclose(dx, dxt.numpy().transpose(back), **ref.tol(np.float64, grad=True))


# ---------------------------------------------------------------------------
# Errors: each names the op and the argument, before XLA sees anything.
# ---------------------------------------------------------------------------

X1, X3 = np.zeros((2, 6, 3)), np.zeros((1, 4, 4, 4, 2))
ERRORS = [
    (ValueError, r"max_pool1d: `x` must have shape \(m, n_W, n_C\) or one example without m \(NWC\)", lambda: max_pool1d(np.zeros((1, 2, 3, 4)))),
    (ValueError, r"max_pool3d: `x` must have shape \(m, n_D, n_H, n_W, n_C\)", lambda: max_pool3d(np.zeros((4, 4, 2)))),
    (ValueError, r"avg_pool3d: `x` must have shape", lambda: avg_pool3d(np.zeros(3))),
    (TypeError, r"max_pool1d: `x` must be a real array .* got dtype bool", lambda: max_pool1d(np.zeros((6, 3), bool))),
    (TypeError, r"max_pool3d: `window` must be an int or a tuple of 3 ints", lambda: max_pool3d(X3, (2, 2))),
    (TypeError, r"max_pool1d: `window` must be an int, got 2.0", lambda: max_pool1d(X1, 2.0)),
    (ValueError, r"max_pool1d: `window` must be >= 1, got 0", lambda: max_pool1d(X1, 0)),
    (ValueError, r"avg_pool1d: `stride` must be >= 1, got 0", lambda: avg_pool1d(X1, 2, 0)),
    (ValueError, r"max_pool3d: `dilation` must be >= 1, got \(1, 0, 1\)", lambda: max_pool3d(X3, 2, dilation=(1, 0, 1))),
    (TypeError, r"max_pool1d: `ceil_mode` must be True or False, got 1", lambda: max_pool1d(X1, ceil_mode=1)),
    (ValueError, r"max_pool1d: unknown `padding` string 'FULL'", lambda: max_pool1d(X1, padding="FULL")),
    (TypeError, r"max_pool3d: `padding` must be an int, 3 ints .*got \(1, 1\)", lambda: max_pool3d(X3, 3, padding=(1, 1))),
    (TypeError, r"avg_pool1d: `padding` must be an int, \(p,\) or \(\(lo, hi\),\)", lambda: avg_pool1d(X1, 3, padding=(1, 1))),
    (ValueError, r"max_pool1d: `padding` must be non-negative, got -1", lambda: max_pool1d(X1, 3, padding=-1)),
    (ValueError, r"max_pool1d: padding \(2, 2\) in width must be at most half the window \(f=3\)", lambda: max_pool1d(X1, 3, padding=2)),
    (ValueError, r"avg_pool3d: padding \(0, 2\) in height must be at most half", lambda: avg_pool3d(X3, 3, padding=((0, 0), (0, 2), (0, 0)))),
    (ValueError, r"max_pool1d: the window spans 7 pixels in width \(f=7, d=1\) but the padded input has only 6",
     lambda: max_pool1d(X1, 7)),
    (ValueError, r"max_pool3d: the window spans 5 pixels in depth \(f=3, d=2\)", lambda: max_pool3d(X3, 3, dilation=(2, 1, 1))),
    (TypeError, r"max_pool1d: `return_indices` must be True or False", lambda: max_pool1d(X1, return_indices="yes")),
    (TypeError, r"avg_pool1d: `x` must be a floating-point array .* got int32", lambda: avg_pool1d(np.zeros((6, 3), np.int32))),
    (TypeError, r"avg_pool3d: `count_include_pad` must be True or False", lambda: avg_pool3d(X3, count_include_pad=None)),
    (ValueError, r"avg_pool1d: `divisor_override` must be None or a nonzero int .* got 0", lambda: avg_pool1d(X1, divisor_override=0)),
    (ValueError, r"avg_pool3d: `divisor_override` must be None or a nonzero int .* got 1.5", lambda: avg_pool3d(X3, divisor_override=1.5)),
    (TypeError, r"adaptive_avg_pool3d: `output_size` must be an int or 3 of them", lambda: adaptive_avg_pool3d(X3, (2, 2))),
    (ValueError, r"adaptive_max_pool1d: `output_size` must be >= 1, got \(0,\)", lambda: adaptive_max_pool1d(X1, 0)),
    (ValueError, r"adaptive_max_pool3d: `x` must have every spatial size >= 1", lambda: adaptive_max_pool3d(np.zeros((1, 0, 2, 2, 1)), 1)),
    (TypeError, r"adaptive_avg_pool1d: `x` must be a floating-point array", lambda: adaptive_avg_pool1d(np.zeros((6, 3), np.int64), 2)),
    (TypeError, r"adaptive_max_pool1d: `return_indices` must be True or False", lambda: adaptive_max_pool1d(X1, 2, return_indices=1)),
    (ValueError, r"adaptive_avg_pool1d: `x` must have shape \(m, n_W, n_C\)", lambda: adaptive_avg_pool1d(X3, 2)),
    (TypeError, r"global_avg_pool3d: `x` must be a floating-point array", lambda: global_avg_pool3d(np.zeros((2, 2, 2, 1), np.int32))),
    (ValueError, r"global_avg_pool1d: `x` must have shape \(m, n_W, n_C\)", lambda: global_avg_pool1d(np.zeros(3))),
]


@pytest.mark.parametrize("error, message, call", ERRORS, ids=[m.split(":")[0] + str(i) for i, (_, m, _) in enumerate(ERRORS)])
def test_errors_name_the_op_and_the_fix(error, message, call):
    with pytest.raises(error, match=message):
        call()
