"""The normalisation layers and Dropout: BatchNorm and InstanceNorm (running statistics as state), LayerNorm, GroupNorm.

Every affine normalisation names its parameters as BatchNorm does: {"gamma": scale, "beta": shift}
(PyTorch's weight and bias), initialised to ones and zeros.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp

from jaxconv import initializers, nn
from jaxconv.layers.core import Layer, check_count, check_key, check_params, make_layer
from jaxconv.layers.dtypes import check_dtypes, to_compute
from jaxconv.norm import group_norm, instance_norm, layer_norm


def _check_fraction(op, name, value, closed):
    """value must be a number in [0, 1] (closed) or [0, 1); bools are rejected."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not (0 <= value <= 1 if closed else 0 <= value < 1):
        raise ValueError(f"{op}: `{name}` must be a number in [0, {'1]' if closed else '1)'}, got {value!r}.")


def _channels(op, input_shape):
    """(input_shape as a tuple, n_C): BatchNorm takes (m, n) or (m, *spatial, n_C) with 1 to 3 spatial axes
    (PyTorch's BatchNorm1d, 2d and 3d, channels last)."""
    shape = tuple(input_shape)
    if len(shape) not in (2, 3, 4, 5) or not all(isinstance(n, int) for n in shape):
        raise ValueError(
            f"{op}: `input_shape` must be (m, n_H, n_W, n_C), (m, n) or another rank from (m, n_W, n_C) to "
            f"(m, n_D, n_H, n_W, n_C) (batch axis first, -1 allowed), got {input_shape!r}."
        )
    return shape, shape[-1]


def _running_update(state, mean, var, n, momentum):
    """new = (1 − momentum)·old + momentum·batch, with the batch's unbiased variance (·n/(n−1)), in the state's dtype."""
    batch_mean, batch_var = jax.lax.stop_gradient(mean), jax.lax.stop_gradient(var) * (n / (n - 1))
    return {
        "mean": ((1 - momentum) * state["mean"] + momentum * batch_mean).astype(state["mean"].dtype),
        "var": ((1 - momentum) * state["var"] + momentum * batch_var).astype(state["var"].dtype),
    }


def BatchNorm(momentum: float = 0.1, eps: float = 1e-5, dtype=None, compute_dtype=None) -> Layer:
    """Batch normalisation over every axis but the channels: (m, n_H, n_W, n_C), (m, n), (m, n_W, n_C) or (m, n_D, n_H, n_W, n_C).

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


# ----------------------------------------------------------------------------- per-example normalisations


def _check_eps(op, eps):
    if isinstance(eps, bool) or not isinstance(eps, (int, float)) or eps <= 0:
        raise ValueError(f"{op}: `eps` must be a number > 0, got {eps!r}.")


def _check_flag(op, name, value):
    if not isinstance(value, bool):
        raise TypeError(f"{op}: `{name}` must be True or False, got {value!r}.")


def check_spatial_dims(op, spatial_dims):
    """spatial_dims: None (x always has the batch axis) or an int >= 1 (the rank k, so one example (*spatial, n_C) is told apart)."""
    if spatial_dims is not None and (isinstance(spatial_dims, bool) or not isinstance(spatial_dims, int) or spatial_dims < 1):
        raise ValueError(f"{op}: `spatial_dims` must be None or an int >= 1 (1 for NWC, 2 for NHWC, 3 for NDHWC), got {spatial_dims!r}.")


def is_batched(op, x, spatial_dims, least=1):
    """Whether x (m, *spatial, n_C) has its batch axis: always with spatial_dims None, else by its rank (k + 2 vs k + 1)."""
    ndim = jnp.ndim(x)
    if spatial_dims is None:
        if ndim < least + 2:
            raise ValueError(f"{op}: x must have shape (m, *spatial, n_C) with at least {least} spatial axis, got shape {jnp.shape(x)}; for one example without the batch axis build the layer with spatial_dims=k.")
        return True
    if ndim not in (spatial_dims + 1, spatial_dims + 2):
        raise ValueError(f"{op}: the layer was built with spatial_dims={spatial_dims}, so x must have {spatial_dims + 2} axes (m, *spatial, n_C) or {spatial_dims + 1} (one example), got shape {jnp.shape(x)}.")
    return ndim == spatial_dims + 2


def _norm_shape(op, input_shape, spatial_dims, least):
    """input_shape (m, *spatial, n_C) as a tuple of ints, its rank checked against spatial_dims (and at least `least` spatial axes)."""
    shape = tuple(input_shape)
    want = f"(m, {'*spatial' if spatial_dims is None else ', '.join(['n_S'] * spatial_dims)}, n_C)"
    if not all(isinstance(n, int) for n in shape) or len(shape) < least + 2 or (spatial_dims is not None and len(shape) != spatial_dims + 2):
        raise ValueError(f"{op}: `input_shape` must be {want} with at least {least} spatial axis (batch axis first, -1 allowed), got {input_shape!r}.")
    return shape


def _affine_params(dtype, shape, affine):
    """{"gamma": ones, "beta": zeros} of `shape` (PyTorch's weight = 1, bias = 0), or {} without affine parameters."""
    if not affine:
        return {}
    dt = initializers.float_dtype(dtype)
    return {"gamma": jnp.ones(shape, dt), "beta": jnp.zeros(shape, dt)}


def _affine_args(op, params, affine, compute_dtype, x):
    """(x, gamma, beta) in the compute dtype (None: promoted to their common dtype); gamma, beta None without affine."""
    check_params(op, params, ("gamma", "beta") if affine else ())
    return to_compute(compute_dtype, x, params.get("gamma"), params.get("beta"))


def LayerNorm(n_axes: int = 1, eps: float = 1e-5, elementwise_affine: bool = True, dtype=None, compute_dtype=None) -> Layer:
    """Layer normalisation of each example over its last `n_axes` axes (PyTorch's `LayerNorm`, see `jaxconv.layer_norm`).

    n_axes=1 normalises the n_C channels of each position (the transformer / ConvNeXt use);
    n_axes = 1 + the number of spatial axes normalises whole examples (PyTorch's
    LayerNorm([n_C, n_H, n_W]) on NCHW). Any input rank; one example without the batch axis works too.
    params: {"gamma": ones, "beta": zeros} of the normalised shape (input_shape[-n_axes:]), {}
    with elementwise_affine=False, of `dtype`. The output is of `compute_dtype` when given.
    """
    op = "LayerNorm"
    dtype, compute_dtype = check_dtypes(op, dtype, compute_dtype)
    if isinstance(n_axes, bool) or not isinstance(n_axes, int) or n_axes < 1:
        raise ValueError(f"{op}: `n_axes` must be an int >= 1 (how many trailing axes to normalise), got {n_axes!r}.")
    _check_eps(op, eps)
    _check_flag(op, "elementwise_affine", elementwise_affine)

    def init(key, input_shape):
        shape = tuple(input_shape)
        if len(shape) < n_axes + 1:
            raise ValueError(f"{op}: n_axes={n_axes} needs an `input_shape` of at least {n_axes + 1} axes (batch axis first), got {input_shape!r}.")
        return shape, _affine_params(dtype, shape[len(shape) - n_axes :], elementwise_affine)

    def apply(params, x, **kwargs):
        x, gamma, beta = _affine_args(op, params, elementwise_affine, compute_dtype, x)
        if x.ndim < n_axes:
            raise ValueError(f"{op}: n_axes={n_axes} needs x of at least {n_axes} axes, got shape {x.shape}.")
        return layer_norm(x, x.shape[x.ndim - n_axes :], gamma, beta, eps)

    return make_layer(op, "layer_norm", init, apply)


def GroupNorm(num_groups: int, eps: float = 1e-5, affine: bool = True, spatial_dims=None, dtype=None, compute_dtype=None) -> Layer:
    """Group normalisation (PyTorch's `GroupNorm`, see `jaxconv.group_norm`): x (m, *spatial, n_C), G = num_groups dividing n_C.

    params: {"gamma": (n_C,) ones, "beta": (n_C,) zeros} ({} with affine=False), of `dtype`.
    Any number of spatial axes (none: (m, n_C)); x must carry the batch axis unless the layer is
    built with `spatial_dims` (then x of rank spatial_dims + 1 is one example).
    """
    op = "GroupNorm"
    dtype, compute_dtype = check_dtypes(op, dtype, compute_dtype)
    check_count(op, "num_groups", num_groups)
    _check_eps(op, eps)
    _check_flag(op, "affine", affine)
    check_spatial_dims(op, spatial_dims)

    def init(key, input_shape):
        shape = _norm_shape(op, input_shape, spatial_dims, 0)
        if shape[-1] % num_groups:
            raise ValueError(f"{op}: `num_groups` (={num_groups}) must divide the channels n_C (={shape[-1]}) of input_shape {shape}; pick num_groups among the divisors of {shape[-1]}.")
        return shape, _affine_params(dtype, shape[-1:], affine)

    def apply(params, x, **kwargs):
        x, gamma, beta = _affine_args(op, params, affine, compute_dtype, x)
        return group_norm(x, num_groups, gamma, beta, eps, batched=is_batched(op, x, spatial_dims, 0))

    return make_layer(op, "group_norm", init, apply)


def InstanceNorm(eps: float = 1e-5, momentum: float = 0.1, affine: bool = False, track_running_stats: bool = False,
                 spatial_dims=None, dtype=None, compute_dtype=None) -> Layer:
    """Instance normalisation (PyTorch's `InstanceNorm1d/2d/3d`, see `jaxconv.instance_norm`): each channel of each example.

    x (m, *spatial, n_C), at least one spatial axis. params: {"gamma": (n_C,) ones, "beta": (n_C,)
    zeros} with affine=True, else {} (PyTorch's default). With track_running_stats=True the state
    is {"mean": (n_C,) zeros, "var": (n_C,) ones}, as BatchNorm's: train=True normalises with each
    instance's statistics and, when `state` is given, updates it (the instances' statistics averaged
    over the batch, the variance unbiased); train=False normalises with the running statistics
    (`state` required). Without tracked statistics the state is {} and both modes use the instances'.
    """
    op = "InstanceNorm"
    dtype, compute_dtype = check_dtypes(op, dtype, compute_dtype)
    _check_eps(op, eps)
    _check_fraction(op, "momentum", momentum, closed=True)
    _check_flag(op, "affine", affine)
    _check_flag(op, "track_running_stats", track_running_stats)
    check_spatial_dims(op, spatial_dims)
    state_keys = ("mean", "var") if track_running_stats else ()

    def init(key, input_shape):
        shape = _norm_shape(op, input_shape, spatial_dims, 1)
        return shape, _affine_params(dtype, shape[-1:], affine)

    def init_state(input_shape):
        shape = _norm_shape(op, input_shape, spatial_dims, 1)
        if not track_running_stats:
            return shape, {}
        dt = initializers.float_dtype(dtype)
        return shape, {"mean": jnp.zeros(shape[-1:], dt), "var": jnp.ones(shape[-1:], dt)}

    def apply(params, x, *, state=None, key=None, train=False, **kwargs):
        x, gamma, beta = _affine_args(op, params, affine, compute_dtype, x)
        if state is not None:
            check_params(op, state, state_keys, what="state", fix="pass the state that init_state returned")
        batched = is_batched(op, x, spatial_dims)
        if not track_running_stats:
            y = instance_norm(x, gamma, beta, eps, batched=batched)
            return y if state is None else (y, {})
        if not train and state is None:
            raise ValueError(
                f"{op}: eval mode (train=False) with track_running_stats=True normalises with the running statistics, but no "
                f"`state` was given; pass state= (from init_state, updated by training steps), or train=True for the instances' statistics."
            )
        if state is None:  # train mode without state: the instances' statistics, nothing to update
            return instance_norm(x, gamma, beta, eps, batched=batched)
        return instance_norm(x, gamma, beta, eps, state=state, use_input_stats=train, momentum=momentum, batched=batched)

    return make_layer(op, "instance_norm", init, apply, init_state=init_state)
