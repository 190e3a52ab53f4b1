"""data.random_shift's one-gather batch path equals the per-image loop it replaced, draw for draw; data.take_batch (on the
device) equals batches() + random_shift()."""

import jax
import numpy as np
import pytest

from jaxconv import data


def _loop_reference(x, s, key):
    """The former implementation: jax.random.randint's shifts, one slice of the zero-padded image per example."""
    m, H, W, _ = x.shape
    shifts = np.asarray(jax.random.randint(key, (m, 2), -s, s + 1))
    padded = np.pad(x, ((0, 0), (s, s), (s, s), (0, 0)))
    out = np.empty_like(x)
    for i, (dy, dx) in enumerate(shifts):
        out[i] = padded[i, s - dy : s - dy + H, s - dx : s - dx + W]
    return out


def test_random_shift_equals_the_per_image_loop():
    x = np.random.default_rng(0).standard_normal((7, 9, 6, 3)).astype(np.float32)  # odd sizes, 3 channels
    for i, s in enumerate((1, 2, 3)):
        key = jax.random.fold_in(jax.random.key(5), i)
        got = data.random_shift(x, s, key)
        np.testing.assert_array_equal(got, _loop_reference(x, s, key))
        assert got.dtype == x.dtype and got.flags.c_contiguous


def test_random_shift_by_hand():
    """A single lit pixel moves by the drawn (dy, dx): its new place is (r + dy, c + dx)."""
    x = np.zeros((4, 8, 8, 1), np.float32)
    x[:, 4, 3, 0] = 1.0
    key = jax.random.key(11)
    shifts = np.asarray(jax.random.randint(key, (4, 2), -2, 3))
    got = data.random_shift(x, 2, key)
    for i, (dy, dx) in enumerate(shifts):
        assert got[i].sum() == 1.0 and got[i, 4 + dy, 3 + dx, 0] == 1.0


def test_take_batch_is_batches_then_random_shift_on_the_device():
    """data.take_batch (the training loop's, on the device) gives the host pair's batches, draw for draw."""
    rng = np.random.default_rng(1)
    x = rng.standard_normal((13, 9, 6, 3)).astype(np.float32)  # 13 = 3 batches of 4, one example left out
    y = rng.integers(0, 10, 13).astype(np.int32)
    epoch_key, shift_key = jax.random.key(2), jax.random.key(3)
    order = jax.random.permutation(epoch_key, 13)  # what batches(key=epoch_key) draws
    x_dev, y_dev = jax.device_put(x), jax.device_put(y)
    for k, (xb, yb) in enumerate(data.batches(x, y, 4, key=epoch_key, drop_last=True)):
        step_key = jax.random.fold_in(shift_key, k)
        for s in (0, 2):
            got_x, got_y = data.take_batch(x_dev, y_dev, order, k, 4, s, step_key if s else None)
            np.testing.assert_array_equal(np.asarray(got_x), data.random_shift(xb, s, step_key) if s else xb)
            np.testing.assert_array_equal(np.asarray(got_y), yb)
            assert got_x.dtype == x.dtype and got_y.dtype == y.dtype


def test_take_batch_refuses_bad_arguments_by_name():
    x, y = np.zeros((8, 4, 4, 1), np.float32), np.zeros(8, np.int32)
    order = np.arange(8)
    with pytest.raises(ValueError, match=r"take_batch: batch `k`=2 of 4 ends past the 8 examples; use k in 0..1"):
        data.take_batch(x, y, order, 2, 4)
    with pytest.raises(ValueError, match=r"take_batch: `max_shift`=2 needs the step's random `key`"):
        data.take_batch(x, y, order, 0, 4, 2)
    with pytest.raises(ValueError, match=r"take_batch: `x`, `y` and `order` must hold the same m examples"):
        data.take_batch(x, y, order[:7], 0, 4)
    with pytest.raises(ValueError, match=r"take_batch: `x` must have shape \(m, n_H, n_W, n_C\), got \(8, 16\)"):
        data.take_batch(x.reshape(8, 16), y, order, 0, 4)
