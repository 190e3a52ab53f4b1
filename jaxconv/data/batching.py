"""Mini-batches of a data set, and the random shifts that augment them.

Two ways to cut an epoch, for two callers:

- `batches()` is the iterator for a user's own loop: NumPy batches, shuffled
  from a JAX key, the last smaller batch kept unless told otherwise, able to
  start in the middle of an epoch to resume a run; `random_shift()` augments
  such a batch on the host.
- `jaxconv train` keeps the data set on the device: `epoch_draws()` draws an
  epoch's shuffle and every step's shifts on the host with NumPy (nothing to
  compile), and `cut_batch()` cuts and shifts step k's batch inside the
  compiled training step.

`num_batches()` counts the batches of an epoch.
"""

from __future__ import annotations

import functools
from typing import Iterator

import numpy as np

from jaxconv._args import integer as _int

__all__ = ["batches", "cut_batch", "epoch_draws", "num_batches", "random_shift"]


# --------------------------------------------------------------------------- a user's loop: NumPy batches


def num_batches(m: int, batch_size: int, drop_last: bool = False) -> int:
    """Number of mini-batches in an epoch of m examples: ceil(m / batch_size), or floor with drop_last."""
    m = _int(m, "m", "num_batches", minimum=0)
    batch_size = _int(batch_size, "batch_size", "num_batches", minimum=1)
    return m // batch_size if drop_last else -(-m // batch_size)


def batches(x, y, batch_size: int, *, key=None, start_step: int = 0, drop_last: bool = False) -> Iterator:
    """Iterate over one epoch of mini-batches (x_batch, y_batch).

    Without `key` the examples come in order; with a JAX random key they come
    in the order `jax.random.permutation(key, m)`, so the same key gives the
    same batches. The last batch is smaller when batch_size does not divide m;
    drop_last=True leaves it out instead. start_step=k skips the first k
    batches of the epoch (to resume a run in the middle of an epoch: use the
    same key).

    Args:
      x: array (m, n_H, n_W, n_C) (any array with a first axis of m).
      y: array (m,).

    Yields:
      (x_batch, y_batch): NumPy arrays (batch_size, n_H, n_W, n_C) and
      (batch_size,), the last one possibly smaller.
    """
    op = "batches"
    batch_size = _int(batch_size, "batch_size", op, minimum=1)
    start_step = _int(start_step, "start_step", op, minimum=0)
    x, y = np.asarray(x), np.asarray(y)
    if x.ndim == 0 or y.ndim == 0:
        raise ValueError(f"{op}: `x` and `y` need a first axis of m examples, got shapes {x.shape} and {y.shape}.")
    m = x.shape[0]
    if y.shape[0] != m:
        raise ValueError(
            f"{op}: `x` has {m} examples but `y` has {y.shape[0]} (shapes {x.shape} and {y.shape}); "
            f"pass one label per image."
        )
    n = num_batches(m, batch_size, drop_last)
    if start_step > n:
        raise ValueError(
            f"{op}: `start_step`={start_step} is past the end of the epoch, which has {n} batches "
            f"(m={m}, batch_size={batch_size}, drop_last={drop_last}); use start_step in 0..{n}."
        )
    if key is not None:
        import jax

        order = np.asarray(jax.random.permutation(key, m))
    else:
        order = None

    def generate():
        for step in range(start_step, n):
            lo, hi = step * batch_size, min((step + 1) * batch_size, m)
            if order is None:
                yield x[lo:hi], y[lo:hi]
            else:
                idx = order[lo:hi]
                yield x[idx], y[idx]

    return generate()


def random_shift(x, max_shift: int, key):
    """Shift each image by its own random (dy, dx) in [-max_shift, max_shift], filling with zeros.

    A cheap augmentation for digits framed by a zero margin (as with
    `load_digits(size=24, pad_to=32)`): it teaches the translation
    invariance the notes credit to convolutions. Deterministic in `key`: the
    shifts are `jax.random.randint(key, (m, 2), -max_shift, max_shift + 1)`.
    `cut_batch` moves images the same way, inside a compiled step.

    Args:
      x: (m, n_H, n_W, n_C).
      max_shift: largest shift in pixels, >= 0.
      key: a JAX random key.

    Returns:
      (m, n_H, n_W, n_C), same dtype.
    """
    op = "random_shift"
    max_shift = _int(max_shift, "max_shift", op, minimum=0)
    x = np.asarray(x)
    if x.ndim != 4:
        raise ValueError(f"{op}: `x` must have shape (m, n_H, n_W, n_C), got {x.shape}.")
    if max_shift == 0:
        return x
    m, H, W, _ = x.shape
    shifts = _draw_shifts(key, m, max_shift)  # (m, 2): (dy, dx)
    s = max_shift
    padded = np.pad(x, ((0, 0), (s, s), (s, s), (0, 0)))
    # windows[i, a, b] = padded[i, a : a + H, b : b + W] (a view, no copy): (m, 2s + 1, 2s + 1, n_C, H, W)
    windows = np.lib.stride_tricks.sliding_window_view(padded, (H, W), axis=(1, 2))
    out = windows[np.arange(m), s - shifts[:, 0], s - shifts[:, 1]]  # one gather for the batch: (m, n_C, H, W)
    return np.ascontiguousarray(np.moveaxis(out, 1, -1))


@functools.lru_cache(maxsize=None)
def _shift_sampler(m: int, max_shift: int):
    """One compiled draw of m (dy, dx) pairs: jax.random.randint's values, without its op-by-op dispatch per batch."""
    import jax

    return jax.jit(lambda key: jax.random.randint(key, (m, 2), -max_shift, max_shift + 1))


def _draw_shifts(key, m: int, max_shift: int):
    """(m, 2) shifts in [-max_shift, max_shift], as jax.random.randint(key, (m, 2), ...) draws them."""
    return np.asarray(_shift_sampler(m, max_shift)(key))



# --------------------------------------------------------------------------- jaxconv train: batches cut on the device


def epoch_draws(seed: int, epoch: int, m: int, batch_size: int, max_shift: int = 0):
    """An epoch's shuffle and every step's shifts, drawn on the host by NumPy from (seed, epoch).

    The draws of `jaxconv train`: nothing is compiled (jax.random's permutation
    and randint would each compile an XLA program at a run's start), and the same
    (seed, epoch) gives the same draws on every host and process, so a resumed
    run and every process of a data-parallel run agree. Each epoch has its own
    stream, `numpy.random.SeedSequence(seed mod 2**64, spawn_key=(epoch,))`.

    Args:
      seed: the run's seed (any int).
      epoch: the epoch, >= 0.
      m: training examples.
      batch_size: B; the epoch has m // B full batches (the rest sit it out).
      max_shift: largest shift in pixels, >= 0.

    Returns:
      (order, shifts): int32 NumPy arrays (m,), a permutation of range(m), and
      (m // B, B, 2), batch k's (dy, dx) per image, each in [-max_shift, max_shift]
      (all 0 when max_shift is 0). Batch k holds examples order[k*B:(k+1)*B]:
      `cut_batch` makes it.
    """
    op = "epoch_draws"
    seed = _int(seed, "seed", op)
    epoch = _int(epoch, "epoch", op, minimum=0)
    m = _int(m, "m", op, minimum=1)
    batch_size = _int(batch_size, "batch_size", op, minimum=1)
    max_shift = _int(max_shift, "max_shift", op, minimum=0)
    if batch_size > m:
        raise ValueError(f"{op}: `batch_size`={batch_size} is larger than the m={m} examples; use batch_size <= m.")
    rng = np.random.default_rng(np.random.SeedSequence(seed % (1 << 64), spawn_key=(epoch,)))
    order = rng.permutation(m).astype(np.int32)
    shifts = rng.integers(-max_shift, max_shift + 1, size=(m // batch_size, batch_size, 2), dtype=np.int32)
    return order, shifts


def cut_batch(x, y, order, shifts, k, batch_size: int, max_shift: int):
    """Batch k of an epoch drawn by `epoch_draws`, as traceable JAX code (for inside a compiled step).

    x_batch[i] = x[order[k*B + i]] moved by shifts[k, i] = (dy, dx) with zero fill
    (the pixel at (r, c) goes to (r + dy, c + dx)), y_batch[i] = y[order[k*B + i]].
    `jaxconv train` runs it inside its compiled step, with x and y on the device: one
    program per step and no host round trip.

    Args:
      x: (m, n_H, n_W, n_C); y: (m,) or (m, K); order: (m,) int; shifts: (m // B, B, 2) int.
      k: the batch (an int or a traced int scalar), 0 <= k < m // B; not checked when traced.
      batch_size: B (static). max_shift: the largest |dy|, |dx| in shifts (static), 0 for no shifts.

    Returns:
      (x_batch, y_batch): (B, n_H, n_W, n_C) and (B, ...).
    """
    import jax
    import jax.numpy as jnp

    op = "cut_batch"
    batch_size = _int(batch_size, "batch_size", op, minimum=1)
    max_shift = _int(max_shift, "max_shift", op, minimum=0)
    if getattr(x, "ndim", None) != 4:
        raise ValueError(f"{op}: `x` must have shape (m, n_H, n_W, n_C), got {getattr(x, 'shape', type(x).__name__)}.")
    m = x.shape[0]
    steps = m // batch_size
    if y.shape[0] != m or tuple(order.shape) != (m,) or tuple(shifts.shape) != (steps, batch_size, 2):
        raise ValueError(f"{op}: `x`, `y`, `order` and `shifts` must hold m={m} examples and {steps} batches of "
                         f"{batch_size}, got shapes {x.shape}, {y.shape}, {order.shape} and {shifts.shape}; pass "
                         f"the (order, shifts) of epoch_draws(seed, epoch, {m}, {batch_size}, max_shift).")
    if isinstance(k, int) and not 0 <= k < steps:
        raise ValueError(f"{op}: batch `k`={k} is outside the epoch's {steps} batches; use k in 0..{steps - 1}.")
    idx = jax.lax.dynamic_slice_in_dim(order, k * batch_size, batch_size)
    xb, yb = jnp.take(x, idx, axis=0), jnp.take(y, idx, axis=0)
    if max_shift == 0:
        return xb, yb
    return _shifted(xb, jax.lax.dynamic_index_in_dim(shifts, k, keepdims=False), max_shift), yb


def _shifted(x, shifts, s: int):
    """Image i of x (m, n_H, n_W, n_C) moved by shifts[i] = (dy, dx), |dy|, |dx| <= s, zero fill: traceable JAX."""
    import jax
    import jax.numpy as jnp

    _, H, W, C = x.shape
    padded = jnp.pad(x, ((0, 0), (s, s), (s, s), (0, 0)))
    window = lambda img, d: jax.lax.dynamic_slice(img, (s - d[0], s - d[1], 0 * d[0]), (H, W, C))  # noqa: E731
    return jax.vmap(window)(padded, jnp.asarray(shifts, jnp.int32))
