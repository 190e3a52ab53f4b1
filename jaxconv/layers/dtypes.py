"""The layers' dtype policy: which dtypes they accept, how they promote, and mixed precision.

- params follow JAX's default float dtype (float32; float64 with jax_enable_x64)
  unless a layer's `dtype=` says otherwise.
- Layers promote a mixed input/params pair to their common dtype
  (`jnp.result_type`, as Flax does); the pure functions (`conv2d`) stay strict
  and raise instead.
- `compute_dtype=` (Conv2D, ConvTranspose2D, Dense, BatchNorm; Flax's `dtype`)
  is the mixed precision policy: apply casts the input and the params to it and
  returns its dtype, while the params (and so the gradients and the optimizer)
  keep `dtype`. Convolutions and Dense sum products in float32 for
  bfloat16/float16; BatchNorm computes its statistics and normalises in float32
  and keeps float32 running statistics. None (the default) is the promotion above.
"""

from __future__ import annotations

import jax.numpy as jnp

FLOAT_DTYPES = ("float32", "bfloat16", "float16", "float64")  # what `dtype=` and `compute_dtype=` accept


def check_dtype(op, name, dtype):
    """`dtype` as a numpy dtype (None stays None); a float dtype by name, type or dtype, else an error naming the choices."""
    if dtype is None:
        return None
    if not isinstance(dtype, (str, type, jnp.dtype)):
        raise TypeError(f"{op}: `{name}` must be a dtype or its name, got {type(dtype).__name__} {dtype!r}; pass one of {list(FLOAT_DTYPES)} or None.")
    try:
        dt = jnp.dtype(dtype)
    except TypeError:
        dt = None
    if dt is None or dt.name not in FLOAT_DTYPES:
        example = "bfloat16" if name == "compute_dtype" else "float32"
        raise ValueError(f"{op}: unknown `{name}` {dtype!r}. It needs to be one of {list(FLOAT_DTYPES)} or None (e.g. {name}=\"{example}\").")
    return dt


def check_dtypes(op, dtype, compute_dtype):
    """(dtype, compute_dtype), each checked by `check_dtype`: the pair every layer with params takes."""
    return check_dtype(op, "dtype", dtype), check_dtype(op, "compute_dtype", compute_dtype)


def _promote(x, *arrays):
    """x and the params cast to their common dtype (the layers' mixed-dtype policy)."""
    dtype = jnp.result_type(x, *[a for a in arrays if a is not None])
    return [None if a is None else jnp.asarray(a).astype(dtype) for a in (x, *arrays)]


def to_compute(compute_dtype, x, *arrays):
    """x and the params (None entries stay None) in the compute dtype; with compute_dtype None, promoted to their common dtype."""
    if compute_dtype is None:
        return _promote(x, *arrays)
    return [None if a is None else jnp.asarray(a).astype(compute_dtype) for a in (x, *arrays)]
