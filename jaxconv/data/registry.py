"""`DATASETS`, the data sets `jaxconv train --data NAME` can use, each as 32x32 images."""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

from jaxconv.data.cifar import load_cifar10
from jaxconv.data.dataset import Dataset
from jaxconv.data.digits import load_digits
from jaxconv.data.idx import load_mnist

__all__ = ["DATASETS", "DatasetEntry"]


class DatasetEntry(NamedTuple):
    """How `jaxconv train --data NAME` gets a data set: load(data_dir) -> Dataset of 32x32 images."""

    load: object  # Callable[[str | None], Dataset]
    needs_dir: bool  # read from files in --data-dir (True) or bundled (False)
    help: str  # one line for --help


def _pad_to_32(ds: Dataset) -> Dataset:
    """Zero-pad 28x28 images (MNIST) by 2 on every side to 32x32."""
    pad = lambda x: np.pad(x, ((0, 0), (2, 2), (2, 2), (0, 0)))  # noqa: E731  (m, 28, 28, 1) -> (m, 32, 32, 1)
    return Dataset(pad(ds.x_train), ds.y_train, pad(ds.x_test), ds.y_test)


# name -> entry; every entry gives 32x32 images, the input of LeNet-5 and the notes' network.
# The CLI's --data choices come from here.
DATASETS = {
    "digits": DatasetEntry(
        lambda data_dir: load_digits(size=24, pad_to=32),  # 8x8 -> 24x24 in a 32x32 frame, as MNIST's 20x20 in 28x28
        False, "bundled 8x8 UCI digits resized to 32x32 (no download)"),
    "mnist": DatasetEntry(
        lambda data_dir: _pad_to_32(load_mnist(data_dir)),  # 28x28 -> padded to 32x32, as LeCun et al. did
        True, "the four IDX files (MNIST or Fashion-MNIST) in --data-dir"),
    "cifar10": DatasetEntry(load_cifar10, True, "the binary or python batches in --data-dir"),
}
