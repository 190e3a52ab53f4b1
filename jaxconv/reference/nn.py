"""Float64 references of the dense layer, the activations with their derivatives, and the losses."""

from __future__ import annotations

import math

import numpy as np

def dense(x, w, b=None):
    """y[m, o] = Σ_i x[m, i] · w[i, o] + b[o]. x (m, n_in) or (n_in,), w (n_in, n_out) -> (m, n_out) or (n_out,)."""
    x, w = np.asarray(x, np.float64), np.asarray(w, np.float64)
    y = np.einsum("...i,io->...o", x, w)
    return y if b is None else y + np.asarray(b, np.float64)


# ---------------------------------------------------------------------------
# Activations (elementwise, any shape) and their derivatives, from the formulas.
# ---------------------------------------------------------------------------

_ERF = np.vectorize(math.erf, otypes=[np.float64])


def _f64(z):
    return np.asarray(z, np.float64)


def relu(z):
    """max(z, 0)."""
    return np.maximum(_f64(z), 0.0)


def leaky_relu(z, negative_slope=0.01):
    """z for z >= 0, negative_slope·z below."""
    z = _f64(z)
    return np.where(z >= 0, z, negative_slope * z)


def relu6(z):
    """min(max(z, 0), 6)."""
    return np.minimum(np.maximum(_f64(z), 0.0), 6.0)


def gelu(z, approximate=False):
    """z·Φ(z) = z·(1 + erf(z/√2))/2; approximate: z·(1 + tanh(√(2/π)(z + 0.044715 z³)))/2."""
    z = _f64(z)
    if approximate:
        return 0.5 * z * (1 + np.tanh(math.sqrt(2 / math.pi) * (z + 0.044715 * z**3)))
    return 0.5 * z * (1 + _ERF(z / math.sqrt(2)))


def elu(z, alpha=1.0):
    """z for z > 0, alpha·(eᶻ − 1) below."""
    z = _f64(z)
    return np.where(z > 0, z, alpha * np.expm1(np.minimum(z, 0)))


def softplus(z, beta=1.0, threshold=20.0):
    """log(1 + e^{βz})/β, and z itself where βz > threshold (PyTorch's rule)."""
    z = _f64(z)
    return np.where(beta * z > threshold, z, np.log1p(np.exp(np.minimum(beta * z, threshold))) / beta)


def sigmoid(z):
    """1/(1 + e^{−z})."""
    return 1 / (1 + np.exp(-_f64(z)))


def silu(z):
    """z·σ(z) (swish)."""
    z = _f64(z)
    return z * sigmoid(z)


def activation_grad(name, z, **kwargs):
    """The derivative of activation `name` at z, from its formula (PyTorch's choice at kinks).

    relu' = [z > 0]; leaky_relu' = 1 for z > 0 else slope (PyTorch: slope at 0);
    relu6' = [0 < z < 6]; elu' = 1 for z > 0 else α eᶻ; softplus' = σ(βz) (1 past the
    threshold); silu' = σ(z)(1 + z(1 − σ(z))); gelu' = Φ(z) + z φ(z), or the tanh form's.
    """
    z = _f64(z)
    if name == "relu":
        return (z > 0).astype(np.float64)
    if name == "leaky_relu":
        return np.where(z > 0, 1.0, kwargs.get("negative_slope", 0.01))
    if name == "relu6":
        return ((z > 0) & (z < 6)).astype(np.float64)
    if name == "elu":
        alpha = kwargs.get("alpha", 1.0)
        return np.where(z > 0, 1.0, alpha * np.exp(np.minimum(z, 0)))
    if name == "softplus":
        beta, threshold = kwargs.get("beta", 1.0), kwargs.get("threshold", 20.0)
        return np.where(beta * z > threshold, 1.0, sigmoid(beta * z))
    if name == "silu":
        s = sigmoid(z)
        return s * (1 + z * (1 - s))
    if name == "gelu":
        if kwargs.get("approximate", False):
            k = math.sqrt(2 / math.pi)
            u = k * (z + 0.044715 * z**3)
            return 0.5 * (1 + np.tanh(u)) + 0.5 * z * (1 - np.tanh(u) ** 2) * k * (1 + 3 * 0.044715 * z**2)
        return 0.5 * (1 + _ERF(z / math.sqrt(2))) + z * np.exp(-(z**2) / 2) / math.sqrt(2 * math.pi)
    raise ValueError(f"activation_grad: unknown activation {name!r}")


# ---------------------------------------------------------------------------
# Losses.
# ---------------------------------------------------------------------------


def log_softmax(z):
    """z_k − log Σ_j e^{z_j} along the last axis, shifted by the max for stability."""
    z = _f64(z)
    shifted = z - z.max(axis=-1, keepdims=True)
    return shifted - np.log(np.exp(shifted).sum(axis=-1, keepdims=True))


def softmax_cross_entropy(logits, labels):
    """L = −Σ_k y_k log softmax(logits)_k per example: logits (m, K); labels (m,) ints or (m, K) -> (m,)."""
    logp = log_softmax(logits)
    labels = np.asarray(labels)
    if np.issubdtype(labels.dtype, np.integer):
        labels = np.eye(logp.shape[-1])[labels]
    return -(labels * logp).sum(axis=-1)
