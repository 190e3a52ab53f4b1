"""data.random_shift's one-gather batch path equals the per-image loop it replaced, draw for draw; data.cut_batch (the
training loop's, inside a compiled step) cuts and shifts the batches of batches() + random_shift() when given their draws;
data.epoch_draws' draws are fixed by (seed, epoch)."""

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


def test_cut_batch_is_batches_then_random_shift_on_the_device():
    """data.cut_batch, given the host pair's draws (batches' permutation, random_shift's shifts), gives its batches."""
    rng = np.random.default_rng(1)
    m, B = 13, 4  # 3 batches of 4, one example left out
    x = rng.standard_normal((m, 9, 6, 3)).astype(np.float32)
    y = rng.integers(0, 10, m).astype(np.int32)
    epoch_key, shift_key = jax.random.key(2), jax.random.key(3)
    order = jax.random.permutation(epoch_key, m)  # what batches(key=epoch_key) draws
    x_dev, y_dev = jax.device_put(x), jax.device_put(y)
    for s in (0, 2):
        step_keys = [jax.random.fold_in(shift_key, k) for k in range(m // B)]
        shifts = np.stack([jax.random.randint(key, (B, 2), -s, s + 1) for key in step_keys])  # random_shift's draws
        cut = jax.jit(lambda k: data.cut_batch(x_dev, y_dev, order, shifts, k, B, s))  # k traced, as in the loop's step
        for k, (xb, yb) in enumerate(data.batches(x, y, B, key=epoch_key, drop_last=True)):
            got_x, got_y = cut(k)
            np.testing.assert_array_equal(np.asarray(got_x), data.random_shift(xb, s, step_keys[k]) if s else xb)
            np.testing.assert_array_equal(np.asarray(got_y), yb)
            assert got_x.dtype == x.dtype and got_y.dtype == y.dtype


def test_epoch_draws_are_a_permutation_and_shifts_in_range_fixed_by_seed_and_epoch():
    order, shifts = data.epoch_draws(7, 3, 13, 4, 2)
    assert order.dtype == np.int32 and shifts.dtype == np.int32
    assert sorted(order.tolist()) == list(range(13)) and shifts.shape == (3, 4, 2)  # 3 full batches of 4
    assert shifts.min() >= -2 and shifts.max() <= 2 and len(np.unique(shifts)) > 1
    again = data.epoch_draws(7, 3, 13, 4, 2)  # what a resumed run, or another process, draws
    np.testing.assert_array_equal(order, again[0])
    np.testing.assert_array_equal(shifts, again[1])
    other_epoch, other_seed = data.epoch_draws(7, 4, 13, 4, 2), data.epoch_draws(-7, 3, 13, 4, 2)
    assert not np.array_equal(order, other_epoch[0]) and not np.array_equal(order, other_seed[0])
    assert not data.epoch_draws(7, 3, 13, 4, 0)[1].any()  # no shifts asked: all zero


def test_epoch_draws_refuses_bad_arguments_by_name():
    with pytest.raises(ValueError, match=r"epoch_draws: `epoch` must be >= 0, got -1"):
        data.epoch_draws(0, -1, 8, 4)
    with pytest.raises(ValueError, match=r"epoch_draws: `batch_size`=9 is larger than the m=8 examples"):
        data.epoch_draws(0, 0, 8, 9)
    with pytest.raises(TypeError, match=r"epoch_draws: `seed` must be an int"):
        data.epoch_draws(0.5, 0, 8, 4)


def test_cut_batch_by_hand_and_under_jit():
    """Batch k holds examples order[kB:(k+1)B], image i moved by shifts[k, i]: a lit pixel lands at (r + dy, c + dx)."""
    m, B, s = 10, 4, 2
    x = np.zeros((m, 8, 8, 1), np.float32)
    x[np.arange(m), 4, 3, 0] = np.arange(1, m + 1)  # example j's pixel holds j + 1
    y = np.arange(m, dtype=np.int32) * 10
    order, shifts = data.epoch_draws(1, 0, m, B, s)
    cut = jax.jit(lambda k: data.cut_batch(x, y, order, shifts, k, B, s))  # k traced, as in the loop's step
    for k in range(m // B):
        got_x, got_y = (np.asarray(a) for a in cut(k))
        np.testing.assert_array_equal(got_y, y[order[k * B:(k + 1) * B]])
        for i, j in enumerate(order[k * B:(k + 1) * B]):
            dy, dx = shifts[k, i]
            assert got_x[i].sum() == j + 1 and got_x[i, 4 + dy, 3 + dx, 0] == j + 1
        unshifted, _ = data.cut_batch(x, y, order, shifts, k, B, 0)
        np.testing.assert_array_equal(np.asarray(unshifted), x[order[k * B:(k + 1) * B]])


def test_cut_batch_refuses_bad_arguments_by_name():
    x, y = np.zeros((8, 4, 4, 1), np.float32), np.zeros(8, np.int32)
    order, shifts = data.epoch_draws(0, 0, 8, 4, 1)
    with pytest.raises(ValueError, match=r"cut_batch: batch `k`=2 is outside the epoch's 2 batches; use k in 0..1"):
        data.cut_batch(x, y, order, shifts, 2, 4, 1)
    with pytest.raises(ValueError, match=r"cut_batch: `x`, `y`, `order` and `shifts` must hold m=8 examples and 4 batches of 2"):
        data.cut_batch(x, y, order, shifts, 0, 2, 1)  # shifts drawn for batches of 4
    with pytest.raises(ValueError, match=r"cut_batch: `x` must have shape \(m, n_H, n_W, n_C\)"):
        data.cut_batch(x[..., 0], y, order, shifts, 0, 4, 1)
