"""Weight initialisers: `init(key, shape, dtype=None) -> array`; dtype None is JAX's default float dtype.

fan_in is the number of inputs of one output unit: f_H·f_W·n_C/groups for an
HWIO filter, n_in for a dense (n_in, n_out) matrix; fan_out likewise.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp


def _float(dtype):
    """dtype, or JAX's default float dtype (float32; float64 with jax_enable_x64) when None."""
    return jnp.dtype(dtype) if dtype is not None else jax.dtypes.canonicalize_dtype(jnp.float64)


def _fans(shape):
    receptive = math.prod(shape[:-2]) if len(shape) > 2 else 1
    return receptive * shape[-2], receptive * shape[-1]


def he_normal(key, shape, dtype=None):
    """N(0, 2/fan_in): keeps activation variance through ReLU layers (He et al. 2015). The default."""
    fan_in, dtype = _fans(shape)[0], _float(dtype)
    return jax.random.normal(key, shape, dtype) * jnp.sqrt(2.0 / fan_in).astype(dtype)


def glorot_uniform(key, shape, dtype=None):
    """U(−a, a), a = sqrt(6/(fan_in + fan_out)) (Glorot & Bengio 2010), for tanh/sigmoid nets."""
    fan_in, fan_out = _fans(shape)
    limit = math.sqrt(6.0 / (fan_in + fan_out))
    return jax.random.uniform(key, shape, _float(dtype), -limit, limit)


def lecun_normal(key, shape, dtype=None):
    """N(0, 1/fan_in) (LeCun et al. 1998)."""
    fan_in, dtype = _fans(shape)[0], _float(dtype)
    return jax.random.normal(key, shape, dtype) * jnp.sqrt(1.0 / fan_in).astype(dtype)


def zeros(key, shape, dtype=None):
    """All zeros (the default for biases)."""
    del key
    return jnp.zeros(shape, _float(dtype))


def ones(key, shape, dtype=None):
    """All ones (BatchNorm's scale gamma)."""
    del key
    return jnp.ones(shape, _float(dtype))
