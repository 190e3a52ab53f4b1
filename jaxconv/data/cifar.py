"""CIFAR-10, from its binary or its python (pickled) version.

The python version is a pickle, read with an unpickler that builds NumPy
arrays of bytes and refuses every other global, so a data file can never run
code.
"""

from __future__ import annotations

import importlib
import os
import pickle

import numpy as np

from jaxconv.data.dataset import Dataset

__all__ = ["load_cifar10"]


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
