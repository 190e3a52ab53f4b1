"""data.random_shift's one-gather batch path equals the per-image loop it replaced, draw for draw."""

import jax
import numpy as np

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
