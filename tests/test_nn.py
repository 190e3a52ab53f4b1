"""Dense, activations, losses and the cost, against plain float64 numpy formulas."""

import jax
import numpy as np
import pytest

import reference as ref
from jaxconv import (
    accuracy,
    cost,
    dense,
    flatten,
    log_softmax,
    relu,
    sigmoid,
    softmax,
    softmax_cross_entropy,
    tanh,
)
from jaxconv.train import make_cost

RNG = np.random.default_rng(0)
Z = RNG.standard_normal((4, 5)) * 3  # (m, K) logits


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_dense(dtype):
    x = RNG.standard_normal((3, 6)).astype(dtype)
    w = RNG.standard_normal((6, 2)).astype(dtype)
    b = RNG.standard_normal(2).astype(dtype)
    expected = np.einsum("mi,io->mo", x.astype(np.float64), w.astype(np.float64)) + b
    y = dense(x, w, b)
    assert y.shape == (3, 2) and y.dtype == dtype
    np.testing.assert_allclose(y, expected, **ref.tol(dtype))
    np.testing.assert_allclose(dense(x, w), expected - b, **ref.tol(dtype))
    np.testing.assert_allclose(dense(x[1], w, b), expected[1], **ref.tol(dtype))  # one example
    # Gradients: dW = xᵀ dY, db = Σ dY, dx = dY Wᵀ.
    dy = RNG.standard_normal((3, 2)).astype(dtype)
    dx, dw, db = jax.vjp(dense, x, w, b)[1](dy)
    np.testing.assert_allclose(dw, x.T.astype(np.float64) @ dy, **ref.tol(dtype, grad=True))
    np.testing.assert_allclose(db, dy.sum(0), **ref.tol(dtype, grad=True))
    np.testing.assert_allclose(dx, dy.astype(np.float64) @ w.T, **ref.tol(dtype, grad=True))


def test_flatten():
    x = np.arange(2 * 3 * 4 * 5.0).reshape(2, 3, 4, 5)
    np.testing.assert_array_equal(flatten(x), x.reshape(2, 60))
    np.testing.assert_array_equal(flatten(x[0]), x[0].ravel())  # one example: no batch axis


def test_activations():
    z = np.linspace(-6, 6, 25)
    np.testing.assert_allclose(relu(z), np.maximum(z, 0), rtol=0)
    np.testing.assert_allclose(sigmoid(z), 1 / (1 + np.exp(-z)), **ref.tol(np.float64))
    np.testing.assert_allclose(tanh(z), (np.exp(z) - np.exp(-z)) / (np.exp(z) + np.exp(-z)), **ref.tol(np.float64))
    # Derivatives: relu' = [z > 0], sigmoid' = σ(1 − σ), tanh' = 1 − tanh².
    grad = lambda f: jax.vmap(jax.grad(f))(z)  # noqa: E731
    np.testing.assert_array_equal(grad(relu), (z > 0).astype(float))
    s = 1 / (1 + np.exp(-z))
    np.testing.assert_allclose(grad(sigmoid), s * (1 - s), **ref.tol(np.float64))
    np.testing.assert_allclose(grad(tanh), 1 - np.tanh(z) ** 2, **ref.tol(np.float64))


def _np_softmax(z):
    e = np.exp(z - z.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


def test_softmax_and_log_softmax():
    np.testing.assert_allclose(softmax(Z), _np_softmax(Z), **ref.tol(np.float64))
    np.testing.assert_allclose(softmax(Z).sum(-1), 1.0, **ref.tol(np.float64))
    np.testing.assert_allclose(log_softmax(Z), np.log(_np_softmax(Z)), **ref.tol(np.float64))
    np.testing.assert_allclose(softmax(Z.T, axis=0), _np_softmax(Z).T, **ref.tol(np.float64))


def test_softmax_is_stable_for_large_logits():
    z = np.array([[1000.0, 1001.0, 999.0], [-1000.0, -1001.0, -1002.0]], np.float32)
    for row in (0, 1):
        expected = _np_softmax(z[row].astype(np.float64))
        np.testing.assert_allclose(softmax(z)[row], expected, **ref.tol(np.float32))
        np.testing.assert_allclose(log_softmax(z)[row], np.log(expected), **ref.tol(np.float32))
    assert np.isfinite(np.asarray(softmax_cross_entropy(z, np.array([1, 0])))).all()


def test_softmax_cross_entropy_integer_and_one_hot_labels():
    y = np.array([0, 4, 2, 2])
    expected = -np.log(_np_softmax(Z)[np.arange(4), y])  # L = −log ŷ_y
    np.testing.assert_allclose(softmax_cross_entropy(Z, y), expected, **ref.tol(np.float64))
    np.testing.assert_allclose(softmax_cross_entropy(Z, np.eye(5)[y]), expected, **ref.tol(np.float64))
    # Soft labels: −Σ_k y_k log ŷ_k.
    p = _np_softmax(RNG.standard_normal((4, 5)))
    np.testing.assert_allclose(softmax_cross_entropy(Z, p), -(p * np.log(_np_softmax(Z))).sum(-1), **ref.tol(np.float64))
    # One example: scalar loss.
    np.testing.assert_allclose(softmax_cross_entropy(Z[1], 4), expected[1], **ref.tol(np.float64))
    assert softmax_cross_entropy(Z[1], 4).shape == ()


def test_softmax_cross_entropy_gradient_is_softmax_minus_one_hot():
    y = np.array([1, 0, 3, 4])
    g = jax.grad(lambda z: softmax_cross_entropy(z, y).sum())(Z)
    np.testing.assert_allclose(g, _np_softmax(Z) - np.eye(5)[y], **ref.tol(np.float64))


def test_cost_is_the_mean_of_the_losses():
    losses = np.array([0.5, 1.5, 4.0])
    np.testing.assert_allclose(cost(losses), 2.0, rtol=1e-15)
    # make_cost: J = (1/m) Σ L(ŷ⁽ⁱ⁾, y⁽ⁱ⁾) of the model's logits.
    y = np.array([0, 4, 2, 2])
    J, logits = make_cost(lambda params, x: x @ params)(np.eye(5), Z, y)
    np.testing.assert_allclose(logits, Z, rtol=0)
    np.testing.assert_allclose(J, np.mean(-np.log(_np_softmax(Z)[np.arange(4), y])), **ref.tol(np.float64))


def test_accuracy():
    y = Z.argmax(-1).copy()
    assert float(accuracy(Z, y)) == 1.0
    y[0] = (y[0] + 1) % 5
    assert float(accuracy(Z, y)) == 0.75
    assert float(accuracy(Z, np.eye(5)[y])) == 0.75


# ---------------------------------------------------------------------------
# Activations with options: PyTorch (forward and gradient, float32 and float64) and the reference.
# ---------------------------------------------------------------------------

from jaxconv import elu, gelu, leaky_relu, relu6, silu, softplus, swish  # noqa: E402

ACTIVATIONS = [  # (ours, kwargs, reference name, torch name, torch kwargs)
    (leaky_relu, {}, "leaky_relu", "leaky_relu", {}),
    (leaky_relu, dict(negative_slope=0.2), "leaky_relu", "leaky_relu", dict(negative_slope=0.2)),
    (relu6, {}, "relu6", "relu6", {}),
    (gelu, {}, "gelu", "gelu", {}),
    (gelu, dict(approximate=True), "gelu", "gelu", dict(approximate="tanh")),
    (elu, dict(alpha=0.7), "elu", "elu", dict(alpha=0.7)),
    (softplus, {}, "softplus", "softplus", {}),
    (softplus, dict(beta=2.0, threshold=5.0), "softplus", "softplus", dict(beta=2.0, threshold=5.0)),
    (silu, {}, "silu", "silu", {}),
]
# Includes the kinks 0 and 6 exactly (PyTorch's one-sided choices there) and the softplus threshold.
Z_ACT = np.concatenate([np.linspace(-8, 8, 33), [0.0, 6.0, 2.5, 2.4999, 25.0, -30.0]])


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("fn, kw, ref_name, torch_name, torch_kw", ACTIVATIONS, ids=lambda v: getattr(v, "__name__", str(v)))
def test_activation_matches_torch_and_reference(fn, kw, ref_name, torch_name, torch_kw, dtype):
    torch = pytest.importorskip("torch")
    z = Z_ACT.astype(dtype)
    zt = torch.from_numpy(z).requires_grad_(True)
    yt = getattr(torch.nn.functional, torch_name)(zt, **torch_kw)
    yt.sum().backward()
    y, vjp = jax.vjp(lambda z: fn(z, **kw), z)
    (g,) = vjp(np.ones_like(z))
    assert y.dtype == dtype and g.dtype == dtype
    np.testing.assert_allclose(y, yt.detach().numpy(), **ref.tol(dtype))
    np.testing.assert_allclose(g, zt.grad.numpy(), **ref.tol(dtype, grad=True))
    np.testing.assert_allclose(y, getattr(ref, ref_name)(z, **kw), **ref.tol(dtype))
    np.testing.assert_allclose(g, ref.activation_grad(ref_name, z, **kw), **ref.tol(dtype, grad=True))


def test_activation_hand_computed_values():
    np.testing.assert_allclose(leaky_relu(np.array([-2.0, 3.0]), 0.1), [-0.2, 3.0], rtol=1e-15)
    np.testing.assert_array_equal(relu6(np.array([-1.0, 3.0, 9.0])), [0.0, 3.0, 6.0])
    np.testing.assert_allclose(gelu(np.array([0.0, 1.0])), [0.0, 0.8413447460685429], rtol=1e-12)  # Φ(1)
    np.testing.assert_allclose(elu(np.array([-np.inf, 2.0]), alpha=0.5), [-0.5, 2.0], rtol=1e-15)
    np.testing.assert_allclose(softplus(np.array([0.0])), [np.log(2)], rtol=1e-15)
    np.testing.assert_allclose(silu(np.array([1.0])), [1 / (1 + np.exp(-1))], rtol=1e-15)
    assert swish is silu


@pytest.mark.parametrize(
    "call, error, match",
    [
        (lambda: gelu(Z, approximate="tanh"), TypeError, r"gelu: `approximate` must be True or False, got 'tanh'"),
        (lambda: softplus(Z, beta=0), ValueError, r"softplus: `beta` must be > 0, got 0"),
        (lambda: softplus(Z, threshold="20"), TypeError, r"softplus: `threshold` must be a Python number"),
        (lambda: leaky_relu(Z, negative_slope=None), TypeError, r"leaky_relu: `negative_slope` must be a Python number"),
        (lambda: elu(Z, alpha=True), TypeError, r"elu: `alpha` must be a Python number, got True"),
    ],
)
def test_activation_errors(call, error, match):
    with pytest.raises(error, match=match):
        call()
