"""Float64 references of layer, group and instance normalisation (PyTorch's semantics, channels last).

Each normalises a set S of values with its own mean and biased variance,

    μ = (1/|S|) Σ_S x,   σ² = (1/|S|) Σ_S (x − μ)²,   x̂ = (x − μ) / sqrt(σ² + eps),

then y = γ · x̂ + β. The sets, one example at a time (x (m, *spatial, n_C), spatial any rank):
layer norm, the trailing `normalized_shape` axes; group norm, every position of the n_C / G
channels of one group; instance norm, every position of one channel. Written with loops over
examples, groups and channels, independently of `jaxconv.norm`.
"""

from __future__ import annotations

import numpy as np


def _normalise(values, eps):
    """x̂ of one set of values (any shape), and its μ and biased σ²."""
    mean = values.mean()
    var = ((values - mean) ** 2).mean()
    return (values - mean) / np.sqrt(var + eps), mean, var


def _affine(y, weight, bias):
    """y · γ + β, γ and β broadcast against the trailing axes of y (either may be None)."""
    if weight is not None:
        y = y * np.asarray(weight, np.float64)
    if bias is not None:
        y = y + np.asarray(bias, np.float64)
    return y


def layer_norm(x, normalized_shape, weight=None, bias=None, eps=1e-5):
    """Normalise over the trailing axes `normalized_shape` of x (any leading axes); weight, bias of that shape."""
    x = np.asarray(x, np.float64)
    shape = (normalized_shape,) if isinstance(normalized_shape, int) else tuple(normalized_shape)
    lead = x.shape[: x.ndim - len(shape)]
    flat = x.reshape(-1, *shape)
    y = np.empty_like(flat)
    for k in range(flat.shape[0]):
        y[k] = _normalise(flat[k], eps)[0]
    return _affine(y.reshape(*lead, *shape), weight, bias)


def group_norm(x, num_groups, weight=None, bias=None, eps=1e-5):
    """x (m, *spatial, n_C): channels g·n_C/G .. (g+1)·n_C/G − 1 of each example form group g."""
    x = np.asarray(x, np.float64)
    n_C = x.shape[-1]
    Cg = n_C // num_groups
    y = np.empty_like(x)
    for i in range(x.shape[0]):
        for g in range(num_groups):
            y[i, ..., g * Cg : (g + 1) * Cg] = _normalise(x[i, ..., g * Cg : (g + 1) * Cg], eps)[0]
    return _affine(y, weight, bias)


def instance_norm(x, weight=None, bias=None, eps=1e-5, running_mean=None, running_var=None, use_input_stats=True, momentum=0.1):
    """x (m, *spatial, n_C), each (example, channel) on its own -> (y, new_running_mean, new_running_var).

    use_input_stats: normalise with each instance's statistics and, when running_mean/var
    are given, update them as PyTorch does, with the instances' statistics averaged over
    the batch and the variance unbiased (·N/(N−1), N = positions per channel):

        new_mean = (1 − momentum)·running_mean + momentum·(1/m) Σ_i μ_i
        new_var  = (1 − momentum)·running_var  + momentum·(1/m) Σ_i σ²_i · N/(N−1)

    Else normalise every instance with running_mean and running_var (returned unchanged).
    """
    x = np.asarray(x, np.float64)
    m, n_C, N = x.shape[0], x.shape[-1], x[0, ..., 0].size
    y = np.empty_like(x)
    means, variances = np.empty((m, n_C)), np.empty((m, n_C))
    for i in range(m):
        for c in range(n_C):
            if use_input_stats:
                y[i, ..., c], means[i, c], variances[i, c] = _normalise(x[i, ..., c], eps)
            else:
                y[i, ..., c] = (x[i, ..., c] - running_mean[c]) / np.sqrt(running_var[c] + eps)
    if use_input_stats and running_mean is not None:
        running_mean = (1 - momentum) * np.asarray(running_mean, np.float64) + momentum * means.mean(axis=0)
        running_var = (1 - momentum) * np.asarray(running_var, np.float64) + momentum * (variances * N / (N - 1)).mean(axis=0)
    return _affine(y, weight, bias), running_mean, running_var
