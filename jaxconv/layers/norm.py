"""The layers whose behaviour depends on the mode: BatchNorm (with running statistics as state) and Dropout."""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp

from jaxconv import initializers, nn
from jaxconv.layers.core import Layer, check_key, check_params, make_layer
from jaxconv.layers.dtypes import check_dtypes, to_compute


def _check_fraction(op, name, value, closed):
    """value must be a number in [0, 1] (closed) or [0, 1); bools are rejected."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not (0 <= value <= 1 if closed else 0 <= value < 1):
        raise ValueError(f"{op}: `{name}` must be a number in [0, {'1]' if closed else '1)'}, got {value!r}.")


def _channels(op, input_shape):
    """(input_shape as a tuple, n_C): BatchNorm takes (m, n_H, n_W, n_C) or (m, n)."""
    shape = tuple(input_shape)
    if len(shape) not in (2, 4) or not all(isinstance(n, int) for n in shape):
        raise ValueError(f"{op}: `input_shape` must be (m, n_H, n_W, n_C) or (m, n) (batch axis first, -1 allowed), got {input_shape!r}.")
    return shape, shape[-1]


def _running_update(state, mean, var, n, momentum):
    """new = (1 − momentum)·old + momentum·batch, with the batch's unbiased variance (·n/(n−1)), in the state's dtype."""
    batch_mean, batch_var = jax.lax.stop_gradient(mean), jax.lax.stop_gradient(var) * (n / (n - 1))
    return {
        "mean": ((1 - momentum) * state["mean"] + momentum * batch_mean).astype(state["mean"].dtype),
        "var": ((1 - momentum) * state["var"] + momentum * batch_var).astype(state["var"].dtype),
    }


def BatchNorm(momentum: float = 0.1, eps: float = 1e-5, dtype=None, compute_dtype=None) -> Layer:
    """Batch normalisation over every axis but the channels: (m, n_H, n_W, n_C) or (m, n).

    y = gamma · (x − μ) / sqrt(σ² + eps) + beta, with μ, σ² the batch's mean and (biased)
    variance per channel in train mode, the running ones in eval mode (PyTorch's semantics).
    params: {"gamma": (n_C,) ones, "beta": (n_C,) zeros}; state: {"mean": (n_C,) zeros,
    "var": (n_C,) ones}, updated in train mode as new = (1 − momentum)·old + momentum·batch,
    with the batch's UNBIASED variance (·N/(N−1), N = values per channel) as PyTorch does.
    params and state are of `dtype` (None: JAX's default float). With `compute_dtype` (e.g.
    bfloat16) the output is of that dtype, but the statistics and the normalisation are computed
    in float32 at least (bfloat16 keeps 8 bits of mantissa: a mean over a batch, and x − μ, would
    lose most of theirs), and the running statistics stay in `dtype`.
    """
    op = "BatchNorm"
    dtype, compute_dtype = check_dtypes(op, dtype, compute_dtype)
    # the dtype statistics are computed in: the compute dtype, widened to float32 at least
    stat_dtype = None if compute_dtype is None else jnp.promote_types(compute_dtype, jnp.float32)
    _check_fraction(op, "momentum", momentum, closed=True)
    if isinstance(eps, bool) or not isinstance(eps, (int, float)) or eps <= 0:
        raise ValueError(f"{op}: `eps` must be a number > 0, got {eps!r}.")

    def init(key, input_shape):
        shape, n_C = _channels(op, input_shape)
        dt = initializers.float_dtype(dtype)
        return shape, {"gamma": initializers.ones(key, (n_C,), dt), "beta": initializers.zeros(key, (n_C,), dt)}

    def init_state(input_shape):
        shape, n_C = _channels(op, input_shape)
        dt = initializers.float_dtype(dtype)
        return shape, {"mean": jnp.zeros((n_C,), dt), "var": jnp.ones((n_C,), dt)}

    def apply(params, x, *, state=None, key=None, train=False, **kwargs):
        check_params(op, params, ("gamma", "beta"))
        if state is not None:
            check_params(op, state, ("mean", "var"), what="state", fix="pass the state that init_state returned")
        if stat_dtype is not None:
            x = jnp.asarray(x).astype(stat_dtype)  # statistics and normalisation in float32 (or wider)
        if train:  # statistics over every axis but n_C
            n = math.prod(x.shape[:-1])  # values per channel
            if n < 2:
                raise ValueError(f"{op}: train mode needs more than 1 value per channel to estimate a variance, got x of shape {x.shape}; use a batch of m >= 2 or train=False.")
            y, mean, var = nn.batch_norm(*to_compute(stat_dtype, x, params["gamma"], params["beta"]), eps)
            if state is not None:
                state = _running_update(state, mean, var, n, momentum)
        else:
            if state is None:
                raise ValueError(
                    f"{op}: eval mode (train=False) normalises with the running statistics, but no `state` was given; "
                    f"pass state= (from init_state, updated by training steps), or train=True for batch statistics."
                )
            x, gamma, beta, mean, var = to_compute(stat_dtype, x, params["gamma"], params["beta"], state["mean"], state["var"])
            y = (x - mean) * jax.lax.rsqrt(var + eps) * gamma + beta
        if compute_dtype is not None:
            y = y.astype(compute_dtype)  # the next layer's input, in the compute dtype
        return y if state is None else (y, state)

    return make_layer(op, "bn", init, apply, init_state=init_state)


def Dropout(rate: float) -> Layer:
    """Inverted dropout: in train mode each value is zeroed with probability `rate`, the rest scaled by 1/(1 − rate).

    Needs `key` in train mode; the identity in eval mode. No params, state {}. Any shape.
    """
    op = "Dropout"
    _check_fraction(op, "rate", rate, closed=False)

    def init(key, input_shape):
        return tuple(input_shape), {}

    def init_state(input_shape):
        return tuple(input_shape), {}

    def apply(params, x, *, state=None, key=None, train=False, **kwargs):
        check_params(op, params, ())
        if train and rate > 0:
            if key is None:
                raise ValueError(f"{op}: train mode drops values at random and needs a `key`; pass key=jax.random.key(step) to apply (or train=False).")
            check_key(op, key, "apply")
            keep = jax.random.bernoulli(key, 1 - rate, x.shape)
            x = jnp.where(keep, x / (1 - rate), jnp.zeros((), x.dtype))
        return x if state is None else (x, {})

    return make_layer(op, "dropout", init, apply, init_state=init_state)
