"""Data sets and mini-batches, as NumPy arrays in the layout of jaxconv.

Every loader returns a `Dataset` (x_train, y_train, x_test, y_test) with
images x float32 in [0, 1] of shape (m, n_H, n_W, n_C) and labels y int32 of
shape (m,):

- `load_digits()`: the 8x8 handwritten digits bundled with jaxconv (1,797
  images, no download), split into train and test with a seeded, stratified
  split; optionally resized or zero-padded (e.g. to 32x32 for LeNet-5).
- `load_mnist(path)`: MNIST or Fashion-MNIST from the four standard IDX files.
- `load_cifar10(path)`: CIFAR-10, binary or python version.

The loaders only read bytes: the CIFAR-10 python version is a pickle, and it
is read with an unpickler that builds NumPy arrays and refuses every other
global, so a file can never run code.

`DATASETS` is the registry behind `jaxconv train --data NAME`: name ->
`DatasetEntry(load, needs_dir, help)`, each giving 32x32 images.

Labels outside 0..9 are refused by every loader.

`batches()` cuts an epoch into mini-batches, shuffled from a JAX key,
keeping the last, smaller batch unless told otherwise, and can start in the
middle of an epoch to resume a run. `take_batch()` makes the same
batch (shuffled and shifted alike) on the device, for a training loop whose
data stay there. `jaxconv train` draws each epoch's shuffle and shifts on the
host with NumPy instead (`epoch_draws()`: nothing to compile) and cuts each
step's batch inside its compiled step (`cut_batch()`).
"""

from __future__ import annotations

import functools

import gzip
import importlib
import importlib.resources
import io
import math
import os
import pickle
from typing import Iterator, NamedTuple

import numpy as np

from jaxconv._args import check_labels
from jaxconv._args import integer as _int

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
    "take_batch",
]


class Dataset(NamedTuple):
    """A train/test split: x float32 (m, n_H, n_W, n_C) in [0, 1], y int32 (m,)."""

    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray


# --------------------------------------------------------------------------- helpers


def _size_pair(value, name: str, op: str) -> tuple[int, int]:
    """Turn an int or an (n_H, n_W) pair into a tuple of two ints >= 1."""
    if isinstance(value, (tuple, list)):
        if len(value) != 2:
            raise ValueError(f"{op}: `{name}` must be an int or a pair (n_H, n_W), got {value!r}.")
        return (_int(value[0], f"{name}[0]", op, minimum=1), _int(value[1], f"{name}[1]", op, minimum=1))
    n = _int(value, name, op, minimum=1)
    return n, n


# --------------------------------------------------------------------------- digits

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

    What `jax.image.resize(x, ..., method="bilinear")` computes (equal to float32 rounding,
    tests/test_data.py), as two small matmuls: loading data compiles no XLA program (the jax
    call was 0.1 s of a first `jaxconv train`'s start-up). Returns float32.
    """
    x = np.asarray(x)
    if x.ndim != 4:
        raise ValueError(f"resize_bilinear: `x` must have shape (m, n_H, n_W, n_C), got {x.shape}.")
    n_H, n_W = _size_pair(size, "size", "resize_bilinear")
    W_H, W_W = _bilinear_weights(x.shape[1], n_H), _bilinear_weights(x.shape[2], n_W)
    return np.einsum("ha,mabc,wb->mhwc", W_H, x.astype(np.float64), W_W).astype(np.float32)


# --------------------------------------------------------------------------- IDX (MNIST)

# IDX type codes (third byte of the magic number) and their big-endian dtypes.
_IDX_DTYPES = {0x08: ">u1", 0x09: ">i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}
_IDX_IMAGES_MAGIC = 2051  # 0x00000803: unsigned bytes, 3 dims (m, rows, cols)
_IDX_LABELS_MAGIC = 2049  # 0x00000801: unsigned bytes, 1 dim (m,)


def _read_bytes(file, op: str) -> bytes:
    """All the bytes of file, gunzipped if it is gzip (by content, not name)."""
    path = os.fspath(file)
    with open(path, "rb") as f:
        raw = f.read()
    if raw[:2] == b"\x1f\x8b":
        try:
            raw = gzip.decompress(raw)
        except (EOFError, OSError, gzip.BadGzipFile) as e:
            raise ValueError(
                f"{op}: `{path}` is a damaged or truncated gzip file ({e}); download it again."
            ) from None
    return raw


def _parse_idx(raw: bytes, path: str, op: str) -> np.ndarray:
    if len(raw) < 4:
        raise ValueError(
            f"{op}: `{path}` has {len(raw)} bytes, expected at least 4 (the IDX magic number); "
            f"the file is truncated, download it again."
        )
    magic = int.from_bytes(raw[:4], "big")
    zero, type_code, ndim = int.from_bytes(raw[:2], "big"), raw[2], raw[3]
    if zero != 0 or type_code not in _IDX_DTYPES or ndim == 0:
        raise ValueError(
            f"{op}: `{path}` has magic number {magic} (0x{magic:08X}), which is not an IDX header "
            f"(expected 0x0000TTDD with type TT in {[hex(t) for t in _IDX_DTYPES]} and DD >= 1 dims, e.g. 2051 "
            f"for images, 2049 for labels); pass an uncompressed or .gz IDX file such as train-images-idx3-ubyte."
        )
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise ValueError(
            f"{op}: `{path}` has {len(raw)} bytes, expected at least {header} for the header of {ndim} dims; "
            f"the file is truncated, download it again."
        )
    dims = tuple(int.from_bytes(raw[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim))
    dtype = np.dtype(_IDX_DTYPES[type_code])
    expected = header + math.prod(dims) * dtype.itemsize
    if len(raw) != expected:
        what = "truncated" if len(raw) < expected else "longer than its header says"
        raise ValueError(
            f"{op}: `{path}` has {len(raw)} bytes, expected {expected} ({header} header bytes + dims {dims} x "
            f"{dtype.itemsize} bytes); the file is {what}, download it again."
        )
    return np.frombuffer(raw, dtype=dtype, offset=header).reshape(dims).astype(dtype.newbyteorder("="))


def read_idx(file) -> np.ndarray:
    """Read one IDX file (the format of MNIST), plain or gzip-compressed.

    Checks the magic number (0x0000TTDD: type code TT, DD dims), and that the
    file holds exactly the bytes its header announces.

    Returns:
      The array with the dims of the header, e.g. uint8 (m, 28, 28) for
      train-images-idx3-ubyte or uint8 (m,) for train-labels-idx1-ubyte.
    """
    path = os.fspath(file)
    return _parse_idx(_read_bytes(path, "read_idx"), path, "read_idx")


_MNIST_FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}
_MNIST_SOURCES = (
    "MNIST: https://ossci-datasets.s3.amazonaws.com/mnist/ (mirror of yann.lecun.com/exdb/mnist); "
    "Fashion-MNIST: https://github.com/zalandoresearch/fashion-mnist"
)


def _find_mnist_file(directory: str, name: str) -> str:
    # The standard names, with .gz or not; some archives use a dot before "idx".
    dotted = name.replace("-idx", ".idx")
    for candidate in (name, name + ".gz", dotted, dotted + ".gz"):
        full = os.path.join(directory, candidate)
        if os.path.isfile(full):
            return full
    expected = [n for pair in _MNIST_FILES.values() for n in pair]
    raise FileNotFoundError(
        f"load_mnist: no `{name}` (or `{name}.gz`) in `{directory}`. The directory must hold the four IDX "
        f"files {expected}, each optionally gzipped; get them from {_MNIST_SOURCES}."
    )


def _load_idx_pair(images_path: str, labels_path: str, op: str) -> tuple[np.ndarray, np.ndarray]:
    images = _read_bytes(images_path, op)
    labels = _read_bytes(labels_path, op)
    for path, raw, magic, what, other in (
        (images_path, images, _IDX_IMAGES_MAGIC, "an IDX image file", "images file, not the labels file"),
        (labels_path, labels, _IDX_LABELS_MAGIC, "an IDX label file", "labels file, not the images file"),
    ):
        if len(raw) < 4:
            _parse_idx(raw, path, op)  # raises: truncated
        found = int.from_bytes(raw[:4], "big")
        if found != magic:
            swapped = found == (_IDX_LABELS_MAGIC if magic == _IDX_IMAGES_MAGIC else _IDX_IMAGES_MAGIC)
            fix = f"pass the {other}" if swapped else "the file is not an MNIST IDX file, download it again"
            raise ValueError(f"{op}: `{path}` has magic number {found}, expected {magic} ({what}); {fix}.")
    x = _parse_idx(images, images_path, op)
    y = _parse_idx(labels, labels_path, op)
    if x.shape[0] != y.shape[0]:
        raise ValueError(
            f"{op}: `{images_path}` holds {x.shape[0]} images but `{labels_path}` holds {y.shape[0]} labels; "
            f"the two files must come from the same split (e.g. train-images with train-labels)."
        )
    if x.ndim != 3 or y.ndim != 1:
        raise ValueError(
            f"{op}: `{images_path}` has dims {x.shape} and `{labels_path}` {y.shape}, expected (m, n_H, n_W) and "
            f"(m,); the files are not MNIST IDX files, download them again."
        )
    check_labels(y, 10, op, name=f"labels in {labels_path}",
                 fix="the file is not an MNIST or Fashion-MNIST label file (labels 0..9), download it again")
    return (x.astype(np.float32) / np.float32(255.0))[..., None], y.astype(np.int32)


def load_mnist(path) -> Dataset:
    """Load MNIST (or Fashion-MNIST, same format) from the four IDX files in a directory.

    The directory `path` must hold train-images-idx3-ubyte,
    train-labels-idx1-ubyte, t10k-images-idx3-ubyte and t10k-labels-idx1-ubyte,
    each plain or with .gz. Headers and byte counts are checked.

    Returns:
      Dataset(x_train, y_train, x_test, y_test): x float32 (m, 28, 28, 1) with
      pixel / 255 in [0, 1], y int32 (m,); 60,000 train and 10,000 test images.
    """
    directory = os.fspath(path)
    if not os.path.isdir(directory):
        raise FileNotFoundError(
            f"load_mnist: `{directory}` is not a directory; pass the directory holding the four MNIST IDX files "
            f"(train-images-idx3-ubyte[.gz], ...), from {_MNIST_SOURCES}."
        )
    splits = []
    for kind in ("train", "test"):
        images_name, labels_name = _MNIST_FILES[kind]
        splits += _load_idx_pair(
            _find_mnist_file(directory, images_name), _find_mnist_file(directory, labels_name), "load_mnist"
        )
    return Dataset(*splits)


# --------------------------------------------------------------------------- CIFAR-10

_CIFAR_RECORD = 1 + 3 * 32 * 32  # one label byte, then 3072 pixel bytes: 1024 red, 1024 green, 1024 blue
_CIFAR_TRAIN = [f"data_batch_{i}" for i in range(1, 6)]
_CIFAR_TEST = "test_batch"
_CIFAR_SOURCE = "https://www.cs.toronto.edu/~kriz/cifar.html (cifar-10-binary.tar.gz or cifar-10-python.tar.gz)"


class _RefusedGlobal(pickle.UnpicklingError, ValueError):
    """A pickle asked for a global outside the allow-list (a ValueError too: a bad value in a data file)."""


def _numpy_global(module: str, name: str):
    """Resolve a NumPy global without triggering numpy.core deprecation warnings."""
    for prefix in ("numpy._core", "numpy.core"):
        try:
            return getattr(importlib.import_module(f"{prefix}.{module}"), name)
        except (ImportError, AttributeError):
            continue
    raise pickle.UnpicklingError(f"numpy has no `{module}.{name}`")  # pragma: no cover


def _latin1_encode(text, encoding="latin1"):
    """`_codecs.encode` as protocol-2 pickles of bytes use it, limited to latin-1."""
    if not isinstance(text, str) or encoding not in ("latin1", "latin-1"):
        raise _RefusedGlobal(f"_codecs.encode({type(text).__name__}, {encoding!r}) is refused: only latin-1 is allowed")
    return text.encode("latin1")


# (module, name) -> how to get the object. Only what rebuilds NumPy arrays of bytes.
_SAFE_GLOBALS = {
    ("numpy", "ndarray"): lambda: np.ndarray,
    ("numpy", "dtype"): lambda: np.dtype,
    ("_codecs", "encode"): lambda: _latin1_encode,
}
for _prefix in ("numpy.core", "numpy._core"):
    _SAFE_GLOBALS[(f"{_prefix}.multiarray", "_reconstruct")] = lambda: _numpy_global("multiarray", "_reconstruct")
    _SAFE_GLOBALS[(f"{_prefix}.multiarray", "scalar")] = lambda: _numpy_global("multiarray", "scalar")
    _SAFE_GLOBALS[(f"{_prefix}.numeric", "_frombuffer")] = lambda: _numpy_global("numeric", "_frombuffer")
del _prefix


class _ArrayOnlyUnpickler(pickle.Unpickler):
    """An unpickler that builds containers, bytes, str, numbers and NumPy arrays, and nothing else."""

    def __init__(self, file, path: str, op: str):
        super().__init__(file, encoding="bytes")
        self._path, self._op = path, op

    def find_class(self, module, name):
        make = _SAFE_GLOBALS.get((module, name))
        if make is None:
            allowed = sorted(f"{m}.{n}" for m, n in _SAFE_GLOBALS)
            raise _RefusedGlobal(
                f"{self._op}: `{self._path}` asks to load the global `{module}.{name}`; refused, a data file "
                f"may only rebuild NumPy arrays ({allowed}), and loading never runs code from a file. "
                f"The file is not a CIFAR-10 batch: download it again from {_CIFAR_SOURCE}."
            )
        return make()

    def persistent_load(self, pid):
        raise _RefusedGlobal(f"{self._op}: `{self._path}` uses persistent ids; refused.")


def _load_cifar_pickle(path: str, op: str) -> tuple[np.ndarray, np.ndarray]:
    with open(path, "rb") as f:
        try:
            batch = _ArrayOnlyUnpickler(f, path, op).load()
        except _RefusedGlobal as e:
            message = str(e) if str(e).startswith(op) else f"{op}: `{path}`: {e}; the file is not a CIFAR-10 batch."
            raise _RefusedGlobal(message) from None  # one line: the unpickler's frames say nothing more
        except Exception as e:  # truncated or garbled pickles fail in many ways
            raise ValueError(
                f"{op}: `{path}` is not a readable CIFAR-10 python batch ({type(e).__name__}: {e}); expected a "
                f"pickled dict with b'data' (N, 3072) uint8 and b'labels'; download it again from {_CIFAR_SOURCE}."
            ) from None
    if not isinstance(batch, dict):
        raise ValueError(
            f"{op}: `{path}` holds a {type(batch).__name__}, expected a dict with b'data' and b'labels'; "
            f"download it again from {_CIFAR_SOURCE}."
        )

    def get(key: str):
        for k in (key.encode(), key):
            if k in batch:
                return batch[k]
        raise ValueError(
            f"{op}: `{path}` has keys {sorted(map(repr, batch))}, expected b'data' and b'labels'; "
            f"download it again from {_CIFAR_SOURCE}."
        )

    data, labels = get("data"), get("labels")
    if not isinstance(data, np.ndarray) or data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3072:
        found = f"{data.dtype} {data.shape}" if isinstance(data, np.ndarray) else type(data).__name__
        raise ValueError(
            f"{op}: `{path}` has b'data' of {found}, expected a uint8 array (N, 3072); "
            f"download it again from {_CIFAR_SOURCE}."
        )
    try:
        labels = np.asarray(labels)
    except Exception:  # pragma: no cover - ragged or odd objects
        labels = np.asarray([], dtype=object)
    if labels.shape != (data.shape[0],) or labels.dtype.kind not in "iu":
        raise ValueError(
            f"{op}: `{path}` has b'labels' of {labels.dtype} {labels.shape}, expected {data.shape[0]} integer "
            f"labels (one per row of b'data'); download it again from {_CIFAR_SOURCE}."
        )
    return data.reshape(-1, 3, 32, 32), labels


def _load_cifar_binary(path: str, op: str) -> tuple[np.ndarray, np.ndarray]:
    raw = np.fromfile(path, dtype=np.uint8)
    if raw.size == 0 or raw.size % _CIFAR_RECORD:
        raise ValueError(
            f"{op}: `{path}` has {raw.size} bytes, expected a positive multiple of {_CIFAR_RECORD} (records of "
            f"1 label byte + 3072 pixel bytes; 10000 records = {10000 * _CIFAR_RECORD} bytes); the file is "
            f"truncated or not a CIFAR-10 binary batch, download it again from {_CIFAR_SOURCE}."
        )
    records = raw.reshape(-1, _CIFAR_RECORD)
    return records[:, 1:].reshape(-1, 3, 32, 32), records[:, 0]


def _cifar_dir(directory: str) -> tuple[str, str]:
    """(directory holding the batches, 'bin' or 'py')."""
    candidates = [directory] + [os.path.join(directory, f"cifar-10-batches-{v}") for v in ("bin", "py")]
    for d in candidates:
        if os.path.isfile(os.path.join(d, "data_batch_1.bin")):
            return d, "bin"
        if os.path.isfile(os.path.join(d, "data_batch_1")):
            return d, "py"
    raise FileNotFoundError(
        f"load_cifar10: found neither `data_batch_1.bin` nor `data_batch_1` in `{directory}` (nor in its "
        f"cifar-10-batches-bin/ or cifar-10-batches-py/). Expected the binary version (data_batch_1.bin .. "
        f"data_batch_5.bin, test_batch.bin) or the python version (data_batch_1 .. data_batch_5, test_batch); "
        f"get and extract one from {_CIFAR_SOURCE}."
    )


def load_cifar10(path) -> Dataset:
    """Load CIFAR-10 from its binary or python version, extracted in a directory.

    `path` is the extracted directory (cifar-10-batches-bin or
    cifar-10-batches-py) or its parent. Binary batches are records of 1 label
    byte then 3072 pixel bytes in (n_C, n_H, n_W) order; python batches are
    pickled dicts read with an unpickler that can only rebuild NumPy arrays.
    Batches with fewer than 10,000 records are accepted.

    Returns:
      Dataset(x_train, y_train, x_test, y_test): x float32 (m, 32, 32, 3) with
      pixel / 255 in [0, 1], y int32 (m,) in 0..9; 50,000 train and 10,000
      test images for the full data set.
    """
    op = "load_cifar10"
    directory = os.fspath(path)
    base, version = _cifar_dir(directory)
    suffix = ".bin" if version == "bin" else ""
    reader = _load_cifar_binary if version == "bin" else _load_cifar_pickle
    out = []
    for names in (_CIFAR_TRAIN, [_CIFAR_TEST]):
        xs, ys = [], []
        for name in names:
            file = os.path.join(base, name + suffix)
            if not os.path.isfile(file):
                raise FileNotFoundError(
                    f"{op}: `{file}` is missing; the {version} version of CIFAR-10 needs "
                    f"{[n + suffix for n in _CIFAR_TRAIN + [_CIFAR_TEST]]} in `{base}`; get and extract "
                    f"{_CIFAR_SOURCE}."
                )
            x, y = reader(file, op)
            if y.size and (int(y.min()) < 0 or int(y.max()) > 9):
                raise ValueError(
                    f"{op}: `{file}` has labels in [{int(y.min())}, {int(y.max())}], expected 0..9; the file is "
                    f"not a CIFAR-10 batch (CIFAR-100 has another layout), download it again from {_CIFAR_SOURCE}."
                )
            xs.append(x)
            ys.append(y)
        x = np.concatenate(xs).transpose(0, 2, 3, 1)  # (m, n_C, n_H, n_W) -> (m, n_H, n_W, n_C)
        out += [x.astype(np.float32) / np.float32(255.0), np.concatenate(ys).astype(np.int32)]
    return Dataset(*out)


# --------------------------------------------------------------------------- batches


def random_shift(x, max_shift: int, key):
    """Shift each image by its own random (dy, dx) in [-max_shift, max_shift], filling with zeros.

    A cheap augmentation for digits framed by a zero margin (as with
    `load_digits(size=24, pad_to=32)`): it teaches the translation
    invariance the notes credit to convolutions. Deterministic in `key`.

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


def take_batch(x, y, order, k: int, batch_size: int, max_shift: int = 0, key=None):
    """Mini-batch k of an epoch, made on the device: `batches()` and `random_shift()` in one compiled call.

    The same batch, draw for draw, as
    `random_shift(x[order[k*B:(k+1)*B]], max_shift, key)` with B = batch_size
    and `order = jax.random.permutation(epoch_key, m)` (what `batches()`
    draws), but x, y and order stay on the device and nothing waits for the
    host: `jaxconv train` keeps the data set on the device and calls this once
    per step, so the steps run back to back (the host-side pair waited for
    every step's shifts to reach NumPy).

    Args:
      x: (m, n_H, n_W, n_C) array (a jax.Array on the device, ideally).
      y: (m,) or (m, K) labels.
      order: (m,) int permutation of the examples for this epoch.
      k: batch index in the epoch, 0 <= k < m // batch_size (full batches only).
      batch_size: B.
      max_shift: shift each image by its own (dy, dx) in [-max_shift, max_shift], zero fill; 0 = none.
      key: the step's JAX key for the shifts (needed when max_shift > 0).

    Returns:
      (x_batch, y_batch): jax.Arrays (B, n_H, n_W, n_C) and (B, ...).
    """
    op = "take_batch"
    batch_size = _int(batch_size, "batch_size", op, minimum=1)
    max_shift = _int(max_shift, "max_shift", op, minimum=0)
    k = _int(k, "k", op, minimum=0)
    if getattr(x, "ndim", None) != 4:
        raise ValueError(f"{op}: `x` must have shape (m, n_H, n_W, n_C), got {getattr(x, 'shape', type(x).__name__)}.")
    m = x.shape[0]
    if y.shape[0] != m or order.shape != (m,):
        raise ValueError(f"{op}: `x`, `y` and `order` must hold the same m examples, got shapes {x.shape}, {y.shape} "
                         f"and {order.shape}; pass order = jax.random.permutation(key, m).")
    if (k + 1) * batch_size > m:
        raise ValueError(f"{op}: batch `k`={k} of {batch_size} ends past the {m} examples; use k in 0..{m // batch_size - 1}.")
    if max_shift and key is None:
        raise ValueError(f"{op}: `max_shift`={max_shift} needs the step's random `key`; pass key=, or max_shift=0.")
    return _batch_taker(batch_size, max_shift)(x, y, order, k, key)


@functools.lru_cache(maxsize=None)
def _batch_taker(B: int, s: int):
    """take_batch compiled for one (batch size, max shift)."""
    import jax
    import jax.numpy as jnp

    def take(x, y, order, k, key):
        idx = jax.lax.dynamic_slice_in_dim(order, k * B, B)
        xb, yb = jnp.take(x, idx, axis=0), jnp.take(y, idx, axis=0)
        if s == 0:
            return xb, yb
        return _shifted(xb, _shift_sampler(B, s)(key), s), yb  # random_shift's own draw: (dy, dx) per image

    return jax.jit(take)


def _shifted(x, shifts, s: int):
    """Image i of x (m, n_H, n_W, n_C) moved by shifts[i] = (dy, dx), |dy|, |dx| <= s, zero fill: traceable JAX."""
    import jax
    import jax.numpy as jnp

    _, H, W, C = x.shape
    padded = jnp.pad(x, ((0, 0), (s, s), (s, s), (0, 0)))
    window = lambda img, d: jax.lax.dynamic_slice(img, (s - d[0], s - d[1], 0 * d[0]), (H, W, C))  # noqa: E731
    return jax.vmap(window)(padded, jnp.asarray(shifts, jnp.int32))


def epoch_draws(seed: int, epoch: int, m: int, batch_size: int, max_shift: int = 0):
    """An epoch's shuffle and every step's shifts, drawn on the host by NumPy from (seed, epoch).

    The draws of `jaxconv train`: nothing is compiled (jax.random's permutation
    and randint took ~0.6 s of XLA compilation at a run's start), and the same
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


# --------------------------------------------------------------------------- the registry


class DatasetEntry(NamedTuple):
    """How `jaxconv train --data NAME` gets a data set: load(data_dir) -> Dataset of 32x32 images."""

    load: object  # Callable[[str | None], Dataset]
    needs_dir: bool  # read from files in --data-dir (True) or bundled (False)
    help: str  # one line for --help


def _pad_to_32(ds: Dataset) -> Dataset:
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
