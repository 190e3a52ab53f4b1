"""Weight initialisers: `init(key, shape, dtype) -> array`.

fan_in is the number of inputs of one output unit: f_H·f_W·n_C/groups for an
HWIO filter, n_in for a dense (n_in, n_out) matrix; fan_out likewise.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp


def _fans(shape):
    receptive = math.prod(shape[:-2]) if len(shape) > 2 else 1
    return receptive * shape[-2], receptive * shape[-1]


def he_normal(key, shape, dtype=jnp.float32):
    """N(0, 2/fan_in): keeps activation variance through ReLU layers (He et al. 2015). The default."""
    fan_in, _ = _fans(shape)
    return jax.random.normal(key, shape, dtype) * jnp.sqrt(2.0 / fan_in).astype(dtype)


def glorot_uniform(key, shape, dtype=jnp.float32):
    """U(−a, a), a = sqrt(6/(fan_in + fan_out)) (Glorot & Bengio 2010), for tanh/sigmoid nets."""
    fan_in, fan_out = _fans(shape)
    limit = math.sqrt(6.0 / (fan_in + fan_out))
    return jax.random.uniform(key, shape, dtype, -limit, limit)


def lecun_normal(key, shape, dtype=jnp.float32):
    """N(0, 1/fan_in) (LeCun et al. 1998)."""
    fan_in, _ = _fans(shape)
    return jax.random.normal(key, shape, dtype) * jnp.sqrt(1.0 / fan_in).astype(dtype)


def zeros(key, shape, dtype=jnp.float32):
    """All zeros (the default for biases)."""
    del key
    return jnp.zeros(shape, dtype)
