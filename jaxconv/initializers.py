"""Weight initialisers: `init(key, shape, dtype=None) -> array`; dtype None is JAX's default float dtype.

fan_in is the number of inputs of one output unit: f_H·f_W·n_C/groups for an
HWIO filter, n_in for a dense (n_in, n_out) matrix; fan_out likewise.
"""

from __future__ import annotations

import contextlib
import contextvars
import functools
import math

import jax
import jax.extend.random
import jax.numpy as jnp
import numpy as np


def float_dtype(dtype):
    """dtype, or JAX's default float dtype (float32; float64 with jax_enable_x64) when None."""
    return jnp.dtype(dtype) if dtype is not None else jax.dtypes.canonicalize_dtype(jnp.float64)


def _fans(shape):
    receptive = math.prod(shape[:-2]) if len(shape) > 2 else 1
    return receptive * shape[-2], receptive * shape[-1]


def he_normal(key, shape, dtype=None):
    """N(0, 2/fan_in): keeps activation variance through ReLU layers (He et al. 2015). The default."""
    fan_in, dtype = _fans(shape)[0], float_dtype(dtype)
    return _draw("normal", key, shape, dtype) * np.asarray(math.sqrt(2.0 / fan_in), dtype)


def glorot_uniform(key, shape, dtype=None):
    """U(−a, a), a = sqrt(6/(fan_in + fan_out)) (Glorot & Bengio 2010), for tanh/sigmoid nets."""
    fan_in, fan_out = _fans(shape)
    limit, dtype = math.sqrt(6.0 / (fan_in + fan_out)), float_dtype(dtype)
    return (_draw("uniform", key, shape, dtype) * np.asarray(2, dtype) - np.asarray(1, dtype)) * np.asarray(limit, dtype)


def lecun_normal(key, shape, dtype=None):
    """N(0, 1/fan_in) (LeCun et al. 1998)."""
    fan_in, dtype = _fans(shape)[0], float_dtype(dtype)
    return _draw("normal", key, shape, dtype) * np.asarray(math.sqrt(1.0 / fan_in), dtype)


def zeros(key, shape, dtype=None):
    """All zeros (the default for biases)."""
    del key
    return (np if _POOL.get() is not None else jnp).zeros(shape, float_dtype(dtype))


def ones(key, shape, dtype=None):
    """All ones (BatchNorm's scale gamma)."""
    del key
    return (np if _POOL.get() is not None else jnp).ones(shape, float_dtype(dtype))


# ----------------------------------------------------------------------------- the init key
# A model's init draws one array per parameter. With JAX's default threefry keys each draw of
# a new shape is a threefry program that XLA compiles on its own, slowly on CPU, so a model's
# init was dominated by compiling (docs/benchmarks.md#init-compile). Layer.init therefore runs
# the whole init as one compiled program keyed by `init_key(key)`: a key of a small counter-based
# hash generator (murmur3's 32-bit finaliser over key words and element counters), which is
# quick to compile. It is deterministic in the user's key and statistically fine for
# initialisation; it is NOT a cryptographic or training-time generator (dropout keys stay the
# user's threefry keys).

_GOLDEN = 0x9E3779B9


def _fmix(h):
    """murmur3's 32-bit finaliser: a bijective avalanche mix of uint32 values."""
    h = h ^ (h >> 16)
    h = h * jnp.uint32(0x85EBCA6B)
    h = h ^ (h >> 13)
    h = h * jnp.uint32(0xC2B2AE35)
    return h ^ (h >> 16)


def _hash_seed(seed):
    seed = jnp.asarray(seed).astype(jnp.uint32)
    return jnp.stack([_fmix(seed ^ jnp.uint32(_GOLDEN)), _fmix(seed + jnp.uint32(0x6A09E667))])


@functools.partial(jax.jit, static_argnums=1)
def _hash_split(key, shape):
    i = jax.lax.iota(jnp.uint32, math.prod(shape)) + jnp.uint32(1)
    a = _fmix(key[0] ^ _fmix(i * jnp.uint32(_GOLDEN)))
    b = _fmix(key[1] + a)
    return jnp.stack([a, b], axis=-1).reshape(*shape, 2)


@jax.jit
def _hash_fold_in(key, data):
    a = _fmix(key[0] ^ _fmix(jnp.asarray(data).astype(jnp.uint32) + jnp.uint32(_GOLDEN)))
    return jnp.stack([a, _fmix(key[1] + a)])


@functools.partial(jax.jit, static_argnums=(1, 2))
def _hash_bits(key, bit_width, shape):
    n = math.prod(shape)
    i = jax.lax.iota(jnp.uint32, n)
    lo = _fmix(_fmix(i * jnp.uint32(_GOLDEN) + key[0]) ^ key[1])
    if bit_width == 64:
        hi = _fmix(lo ^ _fmix(i + key[1]))
        bits = (hi.astype(jnp.uint64) << 32) | lo.astype(jnp.uint64)
    else:
        bits = lo.astype({8: jnp.uint8, 16: jnp.uint16, 32: jnp.uint32}[bit_width])
    return bits.reshape(shape)


_HASH_IMPL = jax.extend.random.define_prng_impl(
    key_shape=(2,), seed=_hash_seed, split=_hash_split, random_bits=_hash_bits, fold_in=_hash_fold_in, name="jaxconv_init_hash"
)


@jax.jit
def init_key(key):
    """The key `Layer.init` draws params from: the hash generator above, seeded by every word of `key`."""
    data = jax.random.key_data(key) if jax.dtypes.issubdtype(key.dtype, jax.dtypes.prng_key) else key
    words = data.reshape(-1).astype(jnp.uint32)
    state = jnp.array([_GOLDEN, 0x6A09E667], jnp.uint32)
    for j in range(words.shape[0]):
        state = _hash_fold_in(state, words[j])
    return jax.random.wrap_key_data(state, impl=_HASH_IMPL)


# ----------------------------------------------------------------------------- pooled draws
# Even with the hash key, every draw and every scaling of a new shape is a program for XLA to
# compile (compiled as one jit, XLA still makes a fusion per leaf, and ResNet-20 has 65 leaves).
# Inside Layer.init the built-in initialisers therefore take their standard normal / U(0, 1)
# values from ONE draw per (distribution, dtype), as numpy slices in the order of the calls: a
# first pass (traced only) counts the values, one small compiled draw per dtype makes them, and
# a second pass (eager, numpy) slices and scales. User initialisers still run as jax code.

_POOL = contextvars.ContextVar("jaxconv_init_pool", default=None)


@functools.partial(jax.jit, static_argnums=(1, 2, 3, 4))
def _pool_draw(key, i, dist, n, dtype):
    draw = jax.random.normal if dist == "normal" else jax.random.uniform
    return draw(jax.random.fold_in(key, i), (n,), dtype)


class DrawPool:
    """Counts (no key) or serves (given a key) the built-in initialisers' draws."""

    def __init__(self, sizes=None, key=None):
        self.sizes, self.values, self.offsets = dict(sizes or {}), {}, {}
        if key is not None:
            for i, ((dist, dtype), n) in enumerate(sorted(self.sizes.items())):
                values = _pool_draw(key, i, dist, n, dtype)
                self.values[dist, dtype] = values if isinstance(values, jax.core.Tracer) else np.asarray(values)
                self.offsets[dist, dtype] = 0

    def take(self, dist, shape, dtype):
        n, slot = math.prod(shape), (dist, np.dtype(dtype).name)
        if slot not in self.values:  # counting pass
            self.sizes[slot] = self.sizes.get(slot, 0) + n
            return np.zeros(shape, dtype)
        start = self.offsets[slot]
        self.offsets[slot] = start + n
        return self.values[slot][start : start + n].reshape(shape)


@contextlib.contextmanager
def pooled(pool):
    """Within: the built-in initialisers draw through `pool` and return numpy arrays (see Layer.init)."""
    token = _POOL.set(pool)
    try:
        yield pool
    finally:
        _POOL.reset(token)


def _draw(dist, key, shape, dtype):
    """A standard normal or U(0, 1) array: from the active pool if any, else from `key`."""
    pool = _POOL.get()
    if pool is not None:
        return pool.take(dist, shape, dtype)
    return jax.random.normal(key, shape, dtype) if dist == "normal" else jax.random.uniform(key, shape, dtype)


def in_pooled_init() -> bool:
    """True inside Layer.init's passes (nested layer inits then run directly)."""
    return _POOL.get() is not None
