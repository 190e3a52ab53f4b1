"""Data sets and mini-batches, as NumPy arrays in the layout of jaxconv.

Every loader returns a `Dataset` (x_train, y_train, x_test, y_test) with
images x float32 in [0, 1] of shape (m, n_H, n_W, n_C) and labels y int32 of
shape (m,); labels outside 0..9 are refused by every loader.

Loaders, one module per source:

- `load_digits()` (`data/digits.py`): the 8x8 handwritten digits bundled with
  jaxconv (1,797 images, no download), split into train and test with a
  seeded, stratified split; optionally resized (`resize_bilinear`) or
  zero-padded (e.g. to 32x32 for LeNet-5).
- `load_mnist(path)` (`data/idx.py`): MNIST or Fashion-MNIST from the four
  standard IDX files (`read_idx` reads one).
- `load_cifar10(path)` (`data/cifar.py`): CIFAR-10, binary or python version.
  The python version is a pickle, read with an unpickler that builds NumPy
  arrays and refuses every other global, so a file can never run code.

`DATASETS` (`data/registry.py`) is the registry behind `jaxconv train --data
NAME`: name -> `DatasetEntry(load, needs_dir, help)`, each giving 32x32 images.

Mini-batches (`data/batching.py`): `batches()` cuts an epoch into NumPy
mini-batches for a user's own loop, shuffled from a JAX key, and
`random_shift()` augments them. `jaxconv train` keeps the data set on the
device instead: `epoch_draws()` draws each epoch's shuffle and shifts on the
host with NumPy, and `cut_batch()` cuts each step's batch inside the compiled
step.
"""

from __future__ import annotations

from jaxconv.data.batching import batches, cut_batch, epoch_draws, num_batches, random_shift
from jaxconv.data.cifar import load_cifar10
from jaxconv.data.dataset import Dataset
from jaxconv.data.digits import load_digits, resize_bilinear
from jaxconv.data.idx import load_mnist, read_idx
from jaxconv.data.registry import DATASETS, DatasetEntry

__all__ = [
    "DATASETS",
    "Dataset",
    "DatasetEntry",
    "batches",
    "cut_batch",
    "epoch_draws",
    "load_cifar10",
    "load_digits",
    "load_mnist",
    "num_batches",
    "random_shift",
    "read_idx",
    "resize_bilinear",
]
