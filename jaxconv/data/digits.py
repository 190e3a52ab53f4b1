"""The 8x8 handwritten digits bundled with jaxconv, and the bilinear resize that frames them.

`load_digits()` reads `jaxconv/datasets/digits.csv.gz` (1,797 images, no
download) and splits it into train and test with a seeded, stratified split;
it can resize the images (`resize_bilinear`) and zero-pad them, e.g. to 32x32
for LeNet-5.
"""

from __future__ import annotations

import gzip
import importlib.resources
import io
import math

import numpy as np

from jaxconv._args import check_labels
from jaxconv._args import integer as _int
from jaxconv.data.dataset import Dataset

__all__ = ["load_digits", "resize_bilinear"]


def _size_pair(value, name: str, op: str) -> tuple[int, int]:
    """Turn an int or an (n_H, n_W) pair into a tuple of two ints >= 1."""
    if isinstance(value, (tuple, list)):
        if len(value) != 2:
            raise ValueError(f"{op}: `{name}` must be an int or a pair (n_H, n_W), got {value!r}.")
        return (_int(value[0], f"{name}[0]", op, minimum=1), _int(value[1], f"{name}[1]", op, minimum=1))
    n = _int(value, name, op, minimum=1)
    return n, n


_DIGITS_FILE = "digits.csv.gz"
_DIGITS_ROWS = 1797


def _read_digits() -> tuple[np.ndarray, np.ndarray]:
    """Read the bundled digits: x uint8 (1797, 8, 8), y int32 (1797,)."""
    resource = importlib.resources.files("jaxconv") / "datasets" / _DIGITS_FILE
    try:
        raw = resource.read_bytes()
    except FileNotFoundError:
        raise FileNotFoundError(
            f"load_digits: the bundled data file `jaxconv/datasets/{_DIGITS_FILE}` is missing from the "
            f"installed package; reinstall jaxconv (pip install --force-reinstall jaxconv)."
        ) from None
    table = np.loadtxt(io.StringIO(gzip.decompress(raw).decode("ascii")), delimiter=",", dtype=np.int64, ndmin=2)
    if table.shape != (_DIGITS_ROWS, 65):
        raise ValueError(
            f"load_digits: the bundled `{_DIGITS_FILE}` has shape {table.shape}, expected ({_DIGITS_ROWS}, 65) "
            f"(64 pixels then a label per row); the package data is damaged, reinstall jaxconv."
        )
    labels = table[:, 64].astype(np.int32)
    check_labels(labels, 10, "load_digits", name=f"labels of {_DIGITS_FILE}",
                 fix="the package data is damaged, reinstall jaxconv")
    return table[:, :64].reshape(-1, 8, 8).astype(np.uint8), labels


def _stratified_split(y: np.ndarray, test_fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Indices (train, test): each class split in the proportion test_fraction, shuffled from seed."""
    rng = np.random.default_rng(seed)
    train, test = [], []
    for c in np.unique(y):
        idx = rng.permutation(np.flatnonzero(y == c))
        n_test = int(math.floor(len(idx) * test_fraction + 0.5))
        test.append(idx[:n_test])
        train.append(idx[n_test:])
    train_idx = rng.permutation(np.concatenate(train))
    test_idx = rng.permutation(np.concatenate(test))
    return train_idx, test_idx


def load_digits(*, test_fraction: float = 0.2, seed: int = 0, size=None, pad_to=None) -> Dataset:
    """Load the bundled 8x8 handwritten digits, split into train and test.

    The 1,797 images of the UCI "Optical Recognition of Handwritten Digits"
    test set (as redistributed by scikit-learn; see jaxconv/datasets/README.md)
    are split per class: each digit puts round(test_fraction * count) of its
    images in the test set. The same seed gives the same split.

    Args:
      test_fraction: share of each class in the test set, 0 <= test_fraction < 1.
      seed: int seed of the split and of the order of the examples.
      size: optional int or (n_H, n_W): resize every image bilinearly
        (`resize_bilinear`: jax.image.resize's bilinear, in NumPy), e.g. size=32 for LeNet-5.
      pad_to: optional int or (n_H, n_W): zero-pad every image centrally (after
        resizing, if `size` is given) to this size (the extra row or column, if
        odd, goes to the bottom or right).

    Returns:
      Dataset(x_train, y_train, x_test, y_test): x float32 (m, 8, 8, 1) with
      pixel / 16 in [0, 1] (or (m, n_H, n_W, 1) with size or pad_to), y int32 (m,).
    """
    op = "load_digits"
    if isinstance(test_fraction, bool) or not isinstance(test_fraction, (int, float, np.floating, np.integer)):
        raise TypeError(f"{op}: `test_fraction` must be a float in [0, 1), got {test_fraction!r}.")
    if not 0.0 <= float(test_fraction) < 1.0:
        raise ValueError(
            f"{op}: `test_fraction` must be in [0, 1), got {test_fraction!r}; e.g. test_fraction=0.2 keeps 20% "
            f"of each class for testing."
        )
    seed = _int(seed, "seed", op)
    size_hw = _size_pair(size, "size", op) if size is not None else (8, 8)
    if pad_to is not None:
        pad_hw = _size_pair(pad_to, "pad_to", op)
        if pad_hw[0] < size_hw[0] or pad_hw[1] < size_hw[1]:
            raise ValueError(
                f"{op}: `pad_to` must be >= the image size {size_hw} (8x8, or `size` when given), got {pad_to!r}; "
                f"use `size` to shrink images."
            )

    pixels, labels = _read_digits()
    x = (pixels.astype(np.float32) / np.float32(16.0))[..., None]
    if size is not None:
        x = np.clip(resize_bilinear(x, size_hw), 0.0, 1.0)
    if pad_to is not None:  # after resizing: size=24, pad_to=32 frames each digit like MNIST's 20-in-28
        (h, w), (H, W) = x.shape[1:3], pad_hw
        top, left = (H - h) // 2, (W - w) // 2
        x = np.pad(x, ((0, 0), (top, H - h - top), (left, W - w - left), (0, 0)))
    train_idx, test_idx = _stratified_split(labels, float(test_fraction), seed)
    return Dataset(x[train_idx], labels[train_idx], x[test_idx], labels[test_idx])


def _bilinear_weights(n_in: int, n_out: int) -> np.ndarray:
    """(n_out, n_in): output pixel i's weights over the input pixels, each row summing to 1.

    Half-pixel centres: output pixel i sits at input coordinate (i + 0.5)·n_in/n_out − 0.5, and
    input pixel a weighs max(0, 1 − |a − that| / k), the triangle kernel widened by k = n_in/n_out
    when shrinking (antialiasing; k = 1 when growing), renormalised over the pixels that exist.
    """
    scale = n_out / n_in
    k = max(1.0 / scale, 1.0)
    centres = (np.arange(n_out) + 0.5) / scale - 0.5
    w = np.maximum(0.0, 1.0 - np.abs(np.arange(n_in)[None, :] - centres[:, None]) / k)
    return w / w.sum(axis=1, keepdims=True)


def resize_bilinear(x, size) -> np.ndarray:
    """Resize images (m, n_H, n_W, n_C) to size = (n_H', n_W'), bilinearly, in NumPy.

    What `jax.image.resize(x, ..., method="bilinear")` computes (equal up to float32 rounding,
    tests/test_data.py), as two small matmuls, so that loading data compiles no XLA program.
    Returns float32.

    Args:
      x: (m, n_H, n_W, n_C).
      size: int or (n_H', n_W'), each >= 1.

    Returns:
      (m, n_H', n_W', n_C) float32.
    """
    x = np.asarray(x)
    if x.ndim != 4:
        raise ValueError(f"resize_bilinear: `x` must have shape (m, n_H, n_W, n_C), got {x.shape}.")
    n_H, n_W = _size_pair(size, "size", "resize_bilinear")
    W_H, W_W = _bilinear_weights(x.shape[1], n_H), _bilinear_weights(x.shape[2], n_W)
    return np.einsum("ha,mabc,wb->mhwc", W_H, x.astype(np.float64), W_W).astype(np.float32)
