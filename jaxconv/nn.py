"""Dense layers, batch normalisation, activations and losses as plain functions.

Losses return one value per example, L(ŷ⁽ⁱ⁾, y⁽ⁱ⁾); `cost` averages them into
the notes' J = (1/m) Σᵢ L(ŷ⁽ⁱ⁾, y⁽ⁱ⁾).
"""

from __future__ import annotations

import functools

import math

import jax
import jax.numpy as jnp

from jaxconv._args import check_floating, check_labels
from jaxconv.conv.geometry import lax_sum_dtype


def dense(x, w, b=None):
    """Fully connected layer: x @ w + b.

    Args:
      x: (m, n_in) or one example (n_in,).
      w: (n_in, n_out).
      b: (n_out,) or None.

    Returns:
      (m, n_out) or (n_out,), of x's dtype; bfloat16/float16 products are summed in float32.
    """
    if getattr(x, "ndim", None) not in (1, 2):
        raise ValueError(
            f"dense: `x` must have shape (m, n_in) or (n_in,), got shape {getattr(x, 'shape', None)}; "
            f"flatten convolutional activations first (jaxconv.flatten)."
        )
    if getattr(w, "ndim", None) != 2:
        raise ValueError(f"dense: `w` must have shape (n_in, n_out), got shape {getattr(w, 'shape', None)}.")
    if x.shape[-1] != w.shape[0]:
        raise ValueError(
            f"dense: `x` has n_in={x.shape[-1]} features but `w` expects {w.shape[0]} (w has shape {w.shape}); "
            f"give w the shape ({x.shape[-1]}, n_out)."
        )
    if b is not None and tuple(b.shape) != (w.shape[1],):
        raise ValueError(f"dense: `b` must have shape (n_out,) = ({w.shape[1]},), got {tuple(b.shape)}.")
    if x.dtype != w.dtype:
        raise TypeError(f"dense: `x` ({x.dtype}) and `w` ({w.dtype}) must have the same dtype; cast one with .astype().")
    if lax_sum_dtype(x.dtype) is None:
        y = x @ w  # (m, n_out)
        return y if b is None else y + b
    y = jnp.matmul(x, w, preferred_element_type=lax_sum_dtype(x.dtype))  # (m, n_out), products summed in float32
    return (y if b is None else y + b).astype(x.dtype)


def flatten(x):
    """(m, n_H, n_W, n_C) -> (m, n_H·n_W·n_C), keeping the batch axis; (n_H, n_W, n_C) -> (n_H·n_W·n_C,)."""
    if getattr(x, "ndim", 0) == 3:
        return x.reshape(-1)
    if getattr(x, "ndim", 0) < 2:
        raise ValueError(f"flatten: `x` must have a batch axis and features, got shape {getattr(x, 'shape', None)}.")
    return x.reshape(x.shape[0], math.prod(x.shape[1:]))  # explicit: -1 is undefined for an empty batch


# Activations: elementwise on a floating array of any shape; each derivative (at the kinks too) is PyTorch's.


def _floating(z, op):
    """z as an array, refused unless floating (an activation of ints or bools has no derivative to take)."""
    z = z if hasattr(z, "dtype") else jnp.asarray(z)
    check_floating(z, op, "z")
    return z


def relu(z):
    """max(z, 0); derivative 0 at z = 0 (as PyTorch). Any shape -> same shape."""
    return jax.nn.relu(_floating(z, "relu"))


def sigmoid(z):
    """σ(z) = 1 / (1 + e⁻ᶻ). Any shape -> same shape."""
    return jax.nn.sigmoid(_floating(z, "sigmoid"))


def tanh(z):
    """tanh(z). Any shape -> same shape."""
    return jnp.tanh(_floating(z, "tanh"))


@functools.partial(jax.custom_vjp, nondiff_argnums=(3,))
def batch_norm(x, gamma, beta, eps=1e-5):
    """Train-mode batch normalisation with the batch's statistics, and its hand-derived backward.

    Over every axis but the last (the channels): with μ = mean(x), σ² = mean((x − μ)²) (biased)
    and x̂ = (x − μ) / sqrt(σ² + eps) per channel, y = γ · x̂ + β. Returns (y, μ, σ²).

    The backward, derived by hand (n values per channel, r = 1 / sqrt(σ² + eps)):

        dβ = Σ dy,   dγ = Σ dy · x̂,   dx = (γ · r / n) · (n · dy − dβ − x̂ · dγ)

    plus the terms of cotangents of μ and σ², if any (dμ / n + dσ² · 2 (x − μ) / n). Two sums
    and one elementwise pass, where autodiff of the forward made XLA run more passes over x
    (docs/benchmarks.md#batchnorm-backward). `layers.BatchNorm` uses it in train mode; tests/test_state.py checks it against autodiff, finite differences
    and PyTorch.

    Args:
      x: (m, n_H, n_W, n_C) or (m, n_C); gamma, beta: (n_C,); eps: a float (not differentiated).
    """
    return _batch_norm_fwd(x, gamma, beta, eps)[0]


def _batch_norm_fwd(x, gamma, beta, eps):
    axes = tuple(range(x.ndim - 1))
    mean = x.mean(axes)
    var = jnp.square(x - mean).mean(axes)
    r = jax.lax.rsqrt(var + eps)
    y = (x - mean) * r * gamma + beta
    return (y, mean, var), (x, mean, r, gamma)


def _batch_norm_bwd(eps, res, cotangents):
    x, mean, r, gamma = res
    dy, dmean, dvar = cotangents
    axes = tuple(range(x.ndim - 1))
    n = x.size // x.shape[-1]
    xhat = (x - mean) * r
    dbeta = dy.sum(axes)
    dgamma = (dy * xhat).sum(axes)
    dx = (gamma * r / n) * (n * dy - dbeta - xhat * dgamma)
    dx = dx + dmean / n + dvar * 2 * (x - mean) / n  # zeros when μ and σ² feed nothing (the usual case)
    return dx, dgamma, dbeta


batch_norm.defvjp(_batch_norm_fwd, _batch_norm_bwd)


def _number(op, name, value):
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{op}: `{name}` must be a Python number, got {value!r}; pass e.g. {name}=1.0.")
    return float(value)


def leaky_relu(z, negative_slope=0.01):
    """z for z > 0, negative_slope·z otherwise (slope also at 0, as PyTorch). z: any shape -> same shape.

    >>> leaky_relu(jnp.array([-2.0, 3.0]), 0.5).tolist()
    [-1.0, 3.0]
    """
    a = _number("leaky_relu", "negative_slope", negative_slope)
    z = _floating(z, "leaky_relu")
    return jnp.where(z > 0, z, a * z)


def relu6(z):
    """min(max(z, 0), 6); derivative 1 on (0, 6), 0 elsewhere (kinks included, as PyTorch). Any shape."""
    z = _floating(z, "relu6")
    return jnp.where(z <= 0, jnp.zeros_like(z), jnp.where(z >= 6, jnp.full_like(z, 6), z))


def gelu(z, approximate=False):
    """z·Φ(z), Φ the standard normal CDF: z·(1 + erf(z/√2))/2. Any shape -> same shape.

    approximate=True: z·(1 + tanh(√(2/π)(z + 0.044715 z³)))/2 (PyTorch's approximate="tanh").
    Note jax.nn.gelu defaults to the approximation; this follows PyTorch's exact default.
    """
    if not isinstance(approximate, bool):
        raise TypeError(
            f"gelu: `approximate` must be True or False, got {approximate!r}; for PyTorch's approximate='tanh' pass True."
        )
    return jax.nn.gelu(_floating(z, "gelu"), approximate=approximate)


def elu(z, alpha=1.0):
    """z for z > 0, alpha·(eᶻ − 1) otherwise. Any shape -> same shape."""
    a = _number("elu", "alpha", alpha)
    z = _floating(z, "elu")
    return jnp.where(z > 0, z, a * jnp.expm1(jnp.where(z > 0, 0, z)))  # inner where: no overflow in the unused branch


def softplus(z, beta=1.0, threshold=20.0):
    """log(1 + e^{βz})/β, a smooth relu; z itself where βz > threshold (PyTorch's rule). Any shape."""
    b = _number("softplus", "beta", beta)
    t = _number("softplus", "threshold", threshold)
    if b <= 0:
        raise ValueError(f"softplus: `beta` must be > 0, got {beta!r}; use beta=1.0 for the plain softplus.")
    z = _floating(z, "softplus")
    bz = b * z
    return jnp.where(bz > t, z, jnp.log1p(jnp.exp(jnp.where(bz > t, t, bz))) / b)  # inner where: no overflow


def silu(z):
    """z·σ(z), also called swish. Any shape -> same shape."""
    return jax.nn.silu(_floating(z, "silu"))


swish = silu


def softmax(z, axis=-1):
    """softmax(z)_k = exp(z_k) / Σ_j exp(z_j) along `axis`, computed stably."""
    z = _floating(z, "softmax")
    return jax.nn.softmax(z, axis=_axis(axis, z.ndim, "softmax"))


def log_softmax(z, axis=-1):
    """log softmax(z) along `axis`, computed stably (z − logsumexp(z))."""
    z = _floating(z, "log_softmax")
    return jax.nn.log_softmax(z, axis=_axis(axis, z.ndim, "log_softmax"))


def _axis(axis, ndim, op):
    """`axis` checked against z's rank: an int in [-ndim, ndim)."""
    if isinstance(axis, bool) or not isinstance(axis, int):
        raise TypeError(f"{op}: `axis` must be an int, got {axis!r}; pass e.g. axis=-1 (the last axis).")
    if not -ndim <= axis < ndim:
        raise ValueError(f"{op}: `axis` (={axis}) is out of range for `z` of rank {ndim}; use an axis in [{-ndim}, {ndim}).")
    return axis


def softmax_cross_entropy(logits, labels):
    """Per-example cross-entropy L(ŷ, y) = −Σ_k y_k log softmax(logits)_k.

    Args:
      logits: (m, K) unnormalised scores, or (K,) for one example.
      labels: integer class indices (m,) (or a scalar), or one-hot / probability
        rows (m, K) (or (K,)).

    Returns:
      (m,) losses, or a scalar for one example.

    Integer labels outside [0, K) raise a ValueError when they are concrete
    (eager calls). Under `jax.jit` they are tracers and cannot be checked: there
    a label of -1 picks class K-1 and a label >= K gives a NaN loss; check them
    where the data enters, or wrap the step in `jax.experimental.checkify`.
    """
    if getattr(logits, "ndim", 0) not in (1, 2) or logits.shape[-1] == 0:
        raise ValueError(
            f"softmax_cross_entropy: `logits` must have shape (m, K) or (K,) with K >= 1, got {getattr(logits, 'shape', None)}."
        )
    check_floating(logits, "softmax_cross_entropy", "logits")
    labels = jnp.asarray(labels)
    logp = jax.nn.log_softmax(logits, axis=-1)  # (m, K)
    if jnp.issubdtype(labels.dtype, jnp.integer):
        if labels.shape != logits.shape[:-1]:
            raise ValueError(
                f"softmax_cross_entropy: integer `labels` must have shape {logits.shape[:-1]} (one class index "
                f"per example), got {labels.shape}; for one-hot labels pass shape {logits.shape}."
            )
        check_labels(labels, logits.shape[-1], "softmax_cross_entropy")
        return -jnp.take_along_axis(logp, labels[..., None], axis=-1)[..., 0]
    if labels.shape != logits.shape:
        raise ValueError(
            f"softmax_cross_entropy: one-hot `labels` must have the shape of `logits` {logits.shape}, got {labels.shape}; "
            f"for class indices pass an integer array of shape {logits.shape[:-1]}."
        )
    return -(labels * logp).sum(axis=-1)


def cost(losses):
    """The cost J = (1/m) Σᵢ L⁽ⁱ⁾ of per-example losses (m,)."""
    losses = jnp.asarray(losses)
    if losses.ndim != 1:
        raise ValueError(f"cost: `losses` must be per-example values of shape (m,), got shape {losses.shape}.")
    return losses.mean()


def accuracy(logits, labels):
    """Fraction of examples whose arg-max logit is the label. logits (m, K); labels (m,) or (m, K).

    Integer labels outside [0, K) raise a ValueError in eager calls; under jit
    they are not checked (see `softmax_cross_entropy`).
    """
    if getattr(logits, "ndim", 0) not in (1, 2) or logits.shape[-1] == 0:
        raise ValueError(f"accuracy: `logits` must have shape (m, K) or (K,) with K >= 1, got {getattr(logits, 'shape', None)}.")
    labels = jnp.asarray(labels)
    integer = jnp.issubdtype(labels.dtype, jnp.integer)
    want = logits.shape[:-1] if integer else logits.shape
    if labels.shape != want:
        raise ValueError(
            f"accuracy: {'integer' if integer else 'one-hot'} `labels` must have shape {want}, got {labels.shape}; "
            f"pass one class index per example (shape {logits.shape[:-1]}) or one-hot rows (shape {logits.shape})."
        )
    if not integer:
        labels = labels.argmax(-1)
    else:
        check_labels(labels, logits.shape[-1], "accuracy")
    return (logits.argmax(-1) == labels).mean()
