"""jaxconv.reference checked on its own: against PyTorch (float64) and hand-computed answers.

The reference is what the other tests trust, so it is checked independently of jaxconv.
"""

import numpy as np
import pytest

from jaxconv import reference as ref

RNG = np.random.default_rng(0)


def _nchw(x):
    return np.ascontiguousarray(x.transpose(0, 3, 1, 2))


def _nhwc(t):
    return t.detach().numpy().transpose(0, 2, 3, 1)


def test_tolerances_table_has_both_dtypes():
    assert ref.tol(np.float32) == ref.TOLERANCES[np.dtype("float32")]["forward"]
    assert ref.tol(np.float64, grad=True)["rtol"] > ref.tol(np.float64)["rtol"]


def test_conv_transpose2d_is_the_adjoint_of_conv2d():
    # <conv2d(u, w), v> = <u, conv_transpose2d(v, w)> for every u, v: the defining identity.
    kw = dict(stride=2, padding=1, dilation=1, groups=2)
    u = RNG.standard_normal((2, 7, 6, 4))
    w = RNG.standard_normal((3, 3, 2, 6))  # n_C'=4 -> n_C=6, groups 2
    z = ref.conv2d(u, w, **kw)
    v = RNG.standard_normal(z.shape)
    # output_padding recovers the conv input size lost to the floor: 7 -> 4 -> 7 needs 0, 6 -> 3 -> 6 needs 1.
    y = ref.conv_transpose2d(v, w, **kw, output_padding=(0, 1))
    assert y.shape == u.shape
    np.testing.assert_allclose((z * v).sum(), (u * y).sum(), rtol=1e-12)
    np.testing.assert_allclose(y, ref.conv2d_vjp(u, w, v, **kw)[0], rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize(
    "kw",
    [dict(stride=2, padding=1, output_padding=1, dilation=1, groups=1),
     dict(stride=(1, 3), padding=(0, 2), output_padding=(0, 2), dilation=(2, 1), groups=3)],
    ids=str,
)
def test_conv_transpose2d_matches_torch(kw):
    torch = pytest.importorskip("torch")
    x = RNG.standard_normal((2, 4, 5, 6))
    w = RNG.standard_normal((3, 2, 2, 6))  # (f_H, f_W, n_C'/groups, n_C): n_C = 6 -> n_C' = 2·groups
    b = RNG.standard_normal(2 * kw["groups"])
    # Ours = torch's (n_C, n_C'/groups, f_H, f_W).permute(2, 3, 1, 0), so torch's = ours.transpose(3, 2, 0, 1).
    wt = torch.from_numpy(np.ascontiguousarray(w.transpose(3, 2, 0, 1)))
    yt = torch.nn.functional.conv_transpose2d(torch.from_numpy(_nchw(x)), wt, torch.from_numpy(b), **kw)
    np.testing.assert_allclose(ref.conv_transpose2d(x, w, b, **kw), _nhwc(yt), **ref.tol(np.float64))


POOL_CASES = [
    dict(window=3, stride=2, padding=1, ceil_mode=True),
    dict(window=(2, 3), stride=(2, 1), padding=(1, 1), ceil_mode=True),
    dict(window=2, stride=3, padding=0, ceil_mode=True),  # the ceil window would start in the padding: dropped
]


@pytest.mark.parametrize("case", POOL_CASES + [dict(window=2, stride=1, padding=1, dilation=2, ceil_mode=False),
                                               dict(window=3, stride=2, padding=1, dilation=(2, 1), ceil_mode=True)], ids=str)
def test_max_pool_matches_torch(case):
    torch = pytest.importorskip("torch")
    x = RNG.integers(0, 4, (2, 7, 8, 3)).astype(np.float64)  # ties
    xt = torch.from_numpy(_nchw(x)).requires_grad_(True)
    yt, it = torch.nn.functional.max_pool2d(xt, case["window"], case["stride"], case["padding"],
                                            case.get("dilation", 1), case["ceil_mode"], return_indices=True)
    dy = RNG.standard_normal(tuple(yt.shape))
    yt.backward(torch.from_numpy(dy))
    y, idx = ref.max_pool(x, **case, return_indices=True)
    np.testing.assert_array_equal(y, _nhwc(yt))
    np.testing.assert_array_equal(idx, it.numpy().transpose(0, 2, 3, 1))
    np.testing.assert_allclose(ref.max_pool_vjp(x, dy.transpose(0, 2, 3, 1), **case), _nhwc(xt.grad), **ref.tol(np.float64))


@pytest.mark.parametrize("incl", [True, False])
@pytest.mark.parametrize("case", POOL_CASES + [dict(window=3, stride=2, padding=1, ceil_mode=False, divisor_override=5)], ids=str)
def test_avg_pool_matches_torch(case, incl):
    torch = pytest.importorskip("torch")
    x = RNG.standard_normal((2, 7, 8, 3))
    xt = torch.from_numpy(_nchw(x)).requires_grad_(True)
    yt = torch.nn.functional.avg_pool2d(xt, case["window"], case["stride"], case["padding"], case["ceil_mode"], incl,
                                        case.get("divisor_override"))
    dy = RNG.standard_normal(tuple(yt.shape))
    yt.backward(torch.from_numpy(dy))
    np.testing.assert_allclose(ref.avg_pool(x, **case, count_include_pad=incl), _nhwc(yt), **ref.tol(np.float64))
    dx = ref.avg_pool_vjp(x, dy.transpose(0, 2, 3, 1), **case, count_include_pad=incl)
    np.testing.assert_allclose(dx, _nhwc(xt.grad), **ref.tol(np.float64))


def test_adaptive_windows_hand_computed():
    # n = 5 to 3 windows: [0, 2), [1, 4), [3, 5) -- overlapping, of sizes 2, 3, 2.
    assert ref.adaptive_windows(5, 3) == [(0, 2), (1, 4), (3, 5)]
    assert ref.adaptive_windows(4, 2) == [(0, 2), (2, 4)]


@pytest.mark.parametrize("out", [(3, 4), 5, (1, 1), (7, 2)], ids=str)
def test_adaptive_pools_match_torch(out):
    torch = pytest.importorskip("torch")
    x = RNG.integers(0, 3, (2, 5, 7, 2)).astype(np.float64)
    xt = torch.from_numpy(_nchw(x))
    np.testing.assert_allclose(ref.adaptive_avg_pool(x, out), _nhwc(torch.nn.functional.adaptive_avg_pool2d(xt, out)),
                               **ref.tol(np.float64))
    yt, it = torch.nn.functional.adaptive_max_pool2d(xt, out, return_indices=True)
    y, idx = ref.adaptive_max_pool(x, out, return_indices=True)
    np.testing.assert_array_equal(y, _nhwc(yt))
    np.testing.assert_array_equal(idx, it.numpy().transpose(0, 2, 3, 1))


ACTIVATIONS = [
    ("relu", {}, "relu", {}),
    ("leaky_relu", dict(negative_slope=0.2), "leaky_relu", dict(negative_slope=0.2)),
    ("relu6", {}, "relu6", {}),
    ("gelu", {}, "gelu", {}),
    ("gelu", dict(approximate=True), "gelu", dict(approximate="tanh")),
    ("elu", dict(alpha=0.7), "elu", dict(alpha=0.7)),
    ("softplus", dict(beta=2.0, threshold=5.0), "softplus", dict(beta=2.0, threshold=5.0)),
    ("silu", {}, "silu", {}),
]


@pytest.mark.parametrize("name, kw, torch_name, torch_kw", ACTIVATIONS, ids=lambda v: str(v))
def test_activations_match_torch(name, kw, torch_name, torch_kw):
    torch = pytest.importorskip("torch")
    z = np.concatenate([np.linspace(-8, 8, 33), [-1e-3, 1e-3, 2.4, 2.6, 5.9, 6.1]])  # kinks avoided exactly
    zt = torch.from_numpy(z).requires_grad_(True)
    yt = getattr(torch.nn.functional, torch_name)(zt, **torch_kw)
    yt.sum().backward()
    np.testing.assert_allclose(getattr(ref, name)(z, **kw), yt.detach().numpy(), **ref.tol(np.float64))
    np.testing.assert_allclose(ref.activation_grad(name, z, **kw), zt.grad.numpy(), **ref.tol(np.float64))


def test_softmax_cross_entropy_hand_computed():
    # Two equal logits: L = log 2 for either label.
    np.testing.assert_allclose(ref.softmax_cross_entropy(np.zeros((1, 2)), np.array([1])), [np.log(2)], rtol=1e-15)
    np.testing.assert_allclose(ref.dense(np.ones((1, 2)), np.eye(2), np.array([1.0, 2.0])), [[2.0, 3.0]])
