"""The `Dataset` every loader returns: a train/test split of images and labels."""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

__all__ = ["Dataset"]


class Dataset(NamedTuple):
    """A train/test split: x float32 (m, n_H, n_W, n_C) in [0, 1], y int32 (m,)."""

    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
