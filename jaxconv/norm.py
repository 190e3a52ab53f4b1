"""Layer, group and instance normalisation as plain functions (PyTorch's semantics, channels last).

Each normalises a set S of values with its own mean and biased variance, then applies the
affine parameters γ (weight) and β (bias):

    μ = (1/|S|) Σ_S x,   σ² = (1/|S|) Σ_S (x − μ)²,   y = γ · (x − μ) / sqrt(σ² + eps) + β

For x (m, *spatial, n_C), any number of spatial axes (NWC, NHWC, NDHWC), the channel axis last:
- `layer_norm`: S = the trailing `normalized_shape` axes of one example (PyTorch's LayerNorm;
  (n_C,) normalises each position's channels, (n_H, n_W, n_C) whole examples).
- `group_norm`: S = every position of the n_C / G channels of one group of one example.
- `instance_norm`: S = every position of one channel of one example (group norm with G = n_C,
  plus PyTorch's optional running statistics, carried as explicit state like BatchNorm's).

None of them mixes examples, so `batched=False` takes one example (*spatial, n_C) without the
batch axis (for `jax.vmap` over examples). bfloat16 and float16 inputs are normalised in
float32 (a mean over many values, and x − μ, would lose most of their 8 or 11 bits of
mantissa) and the result is cast back: the output has x's dtype.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp


def _float_input(op, x):
    """x as an array of a floating dtype, and the dtype its statistics are computed in (float32 at least)."""
    x = jnp.asarray(x)
    if not jnp.issubdtype(x.dtype, jnp.floating):
        raise TypeError(f"{op}: `x` must be a floating-point array (bfloat16, float16, float32 or float64), got dtype {x.dtype}; cast it first, e.g. x.astype(jnp.float32).")
    return x, jnp.promote_types(x.dtype, jnp.float32)


def _check_number(op, name, value, low, high=math.inf):
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{op}: `{name}` must be a Python number, got {value!r} of type {type(value).__name__}.")
    if not low <= value <= high:
        raise ValueError(f"{op}: `{name}` must be in [{low}, {high}], got {value!r}.")


def _check_batched(op, batched):
    if not isinstance(batched, bool):
        raise TypeError(f"{op}: `batched` must be True (x has the batch axis first) or False (one example), got {batched!r}.")


def _affine(op, y, weight, bias, shape, dtype):
    """y · γ + β, with γ and β of `shape` (None: no scale, no shift), computed in `dtype`."""
    for name, value in (("weight", weight), ("bias", bias)):
        if value is not None and tuple(jnp.shape(value)) != tuple(shape):
            raise ValueError(f"{op}: `{name}` must have shape {tuple(shape)}, got {tuple(jnp.shape(value))}; pass one value per normalised feature, or None.")
    if weight is not None:
        y = y * jnp.asarray(weight).astype(dtype)
    if bias is not None:
        y = y + jnp.asarray(bias).astype(dtype)
    return y


def _normalise(x, axes, eps):
    """(x − μ) / sqrt(σ² + eps) over `axes`, and μ, σ² (biased) with those axes kept (size 1)."""
    mean = x.mean(axes, keepdims=True)
    var = jnp.square(x - mean).mean(axes, keepdims=True)
    return (x - mean) * jax.lax.rsqrt(var + eps), mean, var


def layer_norm(x, normalized_shape, weight=None, bias=None, eps=1e-5):
    """Normalise each example over its trailing `normalized_shape` axes (PyTorch's `F.layer_norm`).

    Args:
      x: (..., *normalized_shape), e.g. (m, n_H, n_W, n_C) with normalized_shape (n_C,) or (n_H, n_W, n_C).
      normalized_shape: an int (the last axis) or a tuple of the trailing sizes of x.
      weight, bias: γ and β of shape normalized_shape, or None (no scale / no shift).
      eps: added to σ² for stability.

    Returns:
      y of x's shape and dtype.

    >>> layer_norm(jnp.array([[1.0, 3.0]]), 2, eps=0.0).tolist()
    [[-1.0, 1.0]]
    """
    op = "layer_norm"
    x, dtype = _float_input(op, x)
    shape = (normalized_shape,) if isinstance(normalized_shape, int) and not isinstance(normalized_shape, bool) else normalized_shape
    if not isinstance(shape, (tuple, list)) or not shape or not all(isinstance(n, int) and not isinstance(n, bool) for n in shape):
        raise TypeError(f"{op}: `normalized_shape` must be an int or a non-empty tuple of ints (the trailing sizes of x), got {normalized_shape!r}.")
    shape = tuple(shape)
    if x.ndim < len(shape) or x.shape[x.ndim - len(shape) :] != shape:
        raise ValueError(f"{op}: `normalized_shape` {shape} must equal the trailing sizes of x, but x has shape {x.shape}; pass normalized_shape={x.shape[-len(shape):] if x.ndim >= len(shape) else x.shape}.")
    _check_number(op, "eps", eps, 0)
    axes = tuple(range(x.ndim - len(shape), x.ndim))
    y, _, _ = _normalise(x.astype(dtype), axes, eps)
    return _affine(op, y, weight, bias, shape, dtype).astype(x.dtype)


def group_norm(x, num_groups, weight=None, bias=None, eps=1e-5, *, batched=True):
    """Normalise each group of n_C / G channels of each example over all its positions (PyTorch's `F.group_norm`).

    Group g holds channels g·n_C/G .. (g+1)·n_C/G − 1, as PyTorch's does (its channel axis moved last).

    Args:
      x: (m, *spatial, n_C), any number of spatial axes (none: (m, n_C)); batched=False: (*spatial, n_C).
      num_groups: G, an int that divides n_C.
      weight, bias: γ and β (n_C,), or None.
      eps: added to σ² for stability.

    Returns:
      y of x's shape and dtype.
    """
    op = "group_norm"
    x, dtype = _float_input(op, x)
    _check_batched(op, batched)
    if x.ndim < (2 if batched else 1):
        raise ValueError(f"{op}: `x` must have shape (m, *spatial, n_C) (channels last), got shape {x.shape}; for one example without the batch axis pass batched=False.")
    if isinstance(num_groups, bool) or not isinstance(num_groups, int):
        raise TypeError(f"{op}: `num_groups` must be an int, got {num_groups!r} of type {type(num_groups).__name__}.")
    if num_groups < 1:
        raise ValueError(f"{op}: `num_groups` must be >= 1, got {num_groups}; num_groups=1 normalises all channels together.")
    n_C = x.shape[-1]
    if n_C % num_groups:
        raise ValueError(f"{op}: `num_groups` (={num_groups}) must divide the channels n_C (={n_C}) of x {x.shape}; pick num_groups among the divisors of {n_C}.")
    _check_number(op, "eps", eps, 0)
    xb = x if batched else x[None]  # (m, *spatial, n_C)
    m = xb.shape[0]
    positions = math.prod(xb.shape[1:-1])  # not -1: reshape cannot infer it when m = 0
    grouped = xb.astype(dtype).reshape(m, positions, num_groups, n_C // num_groups)  # (m, positions, G, n_C / G)
    y, _, _ = _normalise(grouped, (1, 3), eps)
    y = _affine(op, y.reshape(xb.shape), weight, bias, (n_C,), dtype).astype(x.dtype)
    return y if batched else y[0]


def instance_norm(x, weight=None, bias=None, eps=1e-5, *, state=None, use_input_stats=True, momentum=0.1, batched=True):
    """Normalise each channel of each example over its positions (PyTorch's `F.instance_norm`), with optional running statistics.

    use_input_stats=True (PyTorch's train mode): each instance's μ and σ²; when `state` is given
    it is updated as PyTorch updates running_mean/var, with the instances' statistics averaged
    over the batch and the variance unbiased (·N/(N−1), N = positions per channel):
    new = (1 − momentum)·old + momentum·(1/m) Σ_i stat_i.
    use_input_stats=False (eval mode with tracked statistics): every instance normalised with
    state's mean and var, and the state returned unchanged.

    Args:
      x: (m, *spatial, n_C) with at least one spatial axis; batched=False: (*spatial, n_C).
      weight, bias: γ and β (n_C,), or None (PyTorch's default affine=False).
      eps: added to σ² for stability.
      state: None, or {"mean": (n_C,), "var": (n_C,)} running statistics (PyTorch's
        track_running_stats=True; start from zeros and ones).
      use_input_stats: normalise with the instances' statistics (True) or with `state` (False).
      momentum: the weight of the new statistics in the running average, in [0, 1].

    Returns:
      y of x's shape and dtype when `state` is None, else (y, new_state) with state's dtypes.
    """
    op = "instance_norm"
    x, dtype = _float_input(op, x)
    _check_batched(op, batched)
    xb = x if batched else x[None]  # (m, *spatial, n_C)
    if xb.ndim < 3:
        raise ValueError(f"{op}: `x` must have shape (m, *spatial, n_C) with at least one spatial axis (or (*spatial, n_C) with batched=False), got shape {x.shape}; for (m, n_C) features use layer_norm or batch norm.")
    _check_number(op, "eps", eps, 0)
    _check_number(op, "momentum", momentum, 0, 1)
    n_C = xb.shape[-1]
    N = math.prod(xb.shape[1:-1])  # positions per channel
    if state is not None:
        state = _check_state(op, state, n_C)
    if use_input_stats and N < 2:
        raise ValueError(f"{op}: the instances' statistics need more than 1 position per channel, got x of shape {x.shape}; use a larger input, or use_input_stats=False with running statistics.")
    if not use_input_stats and state is None:
        raise ValueError(f"{op}: use_input_stats=False normalises with the running statistics, but no `state` was given; pass state={{'mean': ..., 'var': ...}} or use_input_stats=True.")
    flat = xb.astype(dtype).reshape(xb.shape[0], N, n_C)  # (m, positions, n_C)
    if use_input_stats:
        y, mean, var = _normalise(flat, (1,), eps)  # mean, var: (m, 1, n_C)
    else:
        y = (flat - state["mean"].astype(dtype)) * jax.lax.rsqrt(state["var"].astype(dtype) + eps)
    y = _affine(op, y.reshape(xb.shape), weight, bias, (n_C,), dtype).astype(x.dtype)
    y = y if batched else y[0]
    if state is None:
        return y
    if use_input_stats:
        batch_mean = jax.lax.stop_gradient(mean).mean((0, 1))  # (n_C,), averaged over the instances
        batch_var = (jax.lax.stop_gradient(var) * (N / (N - 1))).mean((0, 1))  # unbiased, as PyTorch
        state = {
            "mean": ((1 - momentum) * state["mean"] + momentum * batch_mean).astype(state["mean"].dtype),
            "var": ((1 - momentum) * state["var"] + momentum * batch_var).astype(state["var"].dtype),
        }
    return y, state


def _check_state(op, state, n_C):
    """state = {"mean": (n_C,), "var": (n_C,)} as arrays, checked."""
    if not isinstance(state, dict) or set(state) != {"mean", "var"}:
        raise TypeError(f"{op}: `state` must be a dict {{'mean': (n_C,), 'var': (n_C,)}}, got {state!r}; start from {{'mean': jnp.zeros(n_C), 'var': jnp.ones(n_C)}}.")
    for name in ("mean", "var"):
        if tuple(jnp.shape(state[name])) != (n_C,):
            raise ValueError(f"{op}: state[{name!r}] must have shape (n_C,) = ({n_C},), got {tuple(jnp.shape(state[name]))}; pass the state of a layer with n_C={n_C} channels.")
    return {name: jnp.asarray(value) for name, value in state.items()}
