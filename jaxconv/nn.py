"""Dense layers, activations and losses as plain functions.

Losses return one value per example, L(ŷ⁽ⁱ⁾, y⁽ⁱ⁾); `cost` averages them into
the notes' J = (1/m) Σᵢ L(ŷ⁽ⁱ⁾, y⁽ⁱ⁾).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from jaxconv._args import check_labels


def dense(x, w, b=None):
    """Fully connected layer: x @ w + b.

    Args:
      x: (m, n_in) or one example (n_in,).
      w: (n_in, n_out).
      b: (n_out,) or None.

    Returns:
      (m, n_out) or (n_out,).
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
    y = x @ w  # (m, n_out)
    return y if b is None else y + b


def flatten(x):
    """(m, n_H, n_W, n_C) -> (m, n_H·n_W·n_C), keeping the batch axis; (n_H, n_W, n_C) -> (n_H·n_W·n_C,)."""
    if getattr(x, "ndim", 0) == 3:
        return x.reshape(-1)
    if getattr(x, "ndim", 0) < 2:
        raise ValueError(f"flatten: `x` must have a batch axis and features, got shape {getattr(x, 'shape', None)}.")
    return x.reshape(x.shape[0], -1)


# Activations: elementwise, any shape.
relu = jax.nn.relu
sigmoid = jax.nn.sigmoid
tanh = jnp.tanh


def softmax(z, axis=-1):
    """softmax(z)_k = exp(z_k) / Σ_j exp(z_j) along `axis`, computed stably."""
    return jax.nn.softmax(z, axis=axis)


def log_softmax(z, axis=-1):
    """log softmax(z) along `axis`, computed stably (z − logsumexp(z))."""
    return jax.nn.log_softmax(z, axis=axis)


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
    if getattr(logits, "ndim", 0) not in (1, 2):
        raise ValueError(f"softmax_cross_entropy: `logits` must have shape (m, K) or (K,), got {getattr(logits, 'shape', None)}.")
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
    labels = jnp.asarray(labels)
    if not jnp.issubdtype(labels.dtype, jnp.integer):
        labels = labels.argmax(-1)
    else:
        check_labels(labels, logits.shape[-1], "accuracy")
    return (logits.argmax(-1) == labels).mean()
