"""MNIST and Fashion-MNIST: the IDX file format, plain or gzip-compressed.

`read_idx(file)` reads one IDX file; `load_mnist(path)` reads the four files
of a split directory into a `Dataset`, checking headers, byte counts, that
images and labels come from the same split, and that labels are 0..9.
"""

from __future__ import annotations

import gzip
import math
import os

import numpy as np

from jaxconv._args import check_labels
from jaxconv.data.dataset import Dataset

__all__ = ["load_mnist", "read_idx"]


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
