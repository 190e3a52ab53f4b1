"""Tests of jaxconv.data: bundled digits, IDX (MNIST), CIFAR-10 and mini-batches."""

from __future__ import annotations

import gzip
import os
import pickle
import struct

import jax
import numpy as np
import pytest

from jaxconv import data
from jaxconv.data import Dataset, batches, load_cifar10, load_digits, load_mnist, num_batches, random_shift, read_idx

# --------------------------------------------------------------------------- digits


@pytest.fixture(scope="module")
def digits():
    return load_digits()


def test_digits_shapes_and_ranges(digits):
    assert isinstance(digits, Dataset)
    x_tr, y_tr, x_te, y_te = digits
    assert x_tr.shape[1:] == (8, 8, 1) and x_te.shape[1:] == (8, 8, 1)
    assert len(x_tr) + len(x_te) == 1797
    assert len(x_tr) == len(y_tr) and len(x_te) == len(y_te)
    assert x_tr.dtype == np.float32 and y_tr.dtype == np.int32
    assert x_tr.min() == 0.0 and x_tr.max() == 1.0
    # pixels are multiples of 1/16
    np.testing.assert_array_equal(x_tr * 16, np.round(x_tr * 16))
    assert set(np.unique(y_tr)) == set(range(10)) == set(np.unique(y_te))


def test_digits_split_is_stratified(digits):
    _, y_tr, _, y_te = digits
    for c in range(10):
        n_c = np.sum(y_tr == c) + np.sum(y_te == c)
        assert abs(np.sum(y_te == c) - 0.2 * n_c) <= 1, c


def test_digits_split_is_a_partition():
    # every row lands in exactly one of train / test: compare the multisets of (image, label)
    whole = load_digits(test_fraction=0.0)
    assert len(whole.x_train) == 1797 and len(whole.x_test) == 0
    split = load_digits(test_fraction=0.3, seed=5)

    def rows(x, y):
        return sorted(map(bytes, np.concatenate([x.reshape(len(x), -1), y[:, None].astype(np.float32)], 1)))

    assert rows(np.concatenate([split.x_train, split.x_test]), np.concatenate([split.y_train, split.y_test])) == rows(
        whole.x_train, whole.y_train
    )


def test_digits_deterministic_from_seed(digits):
    again = load_digits(seed=0)
    for a, b in zip(digits, again):
        np.testing.assert_array_equal(a, b)
    other = load_digits(seed=1)
    assert not np.array_equal(digits.y_test, other.y_test) or not np.array_equal(digits.x_test, other.x_test)


def test_digits_pad_to_and_size(digits):
    padded = load_digits(pad_to=32)
    assert padded.x_train.shape == (len(digits.x_train), 32, 32, 1)
    np.testing.assert_array_equal(padded.x_train[:, 12:20, 12:20], digits.x_train)
    assert padded.x_train.sum() == digits.x_train.sum()
    np.testing.assert_array_equal(padded.y_train, digits.y_train)

    resized = load_digits(size=(32, 32))
    assert resized.x_test.shape == (len(digits.x_test), 32, 32, 1)
    assert resized.x_test.dtype == np.float32
    assert 0.0 <= resized.x_test.min() and resized.x_test.max() <= 1.0
    np.testing.assert_array_equal(resized.y_test, digits.y_test)


def test_digits_resize_then_pad_frames_the_digit():
    framed = load_digits(size=24, pad_to=32)
    resized = load_digits(size=24)
    assert framed.x_train.shape[1:] == (32, 32, 1)
    np.testing.assert_array_equal(framed.x_train[:, 4:28, 4:28], resized.x_train)  # the digit, centred
    assert not framed.x_train[:, :4].any() and not framed.x_train[:, 28:].any()  # a zero margin of 4


def test_resize_bilinear_equals_jax_image_resize():
    """The NumPy resize load_digits uses is jax.image.resize's bilinear (half-pixel centres, antialiased when
    shrinking), up to float32 rounding: growing, shrinking, one axis each way, and the identity."""
    x = np.random.default_rng(0).random((5, 8, 8, 2)).astype(np.float32)
    for size in ((24, 24), (32, 32), (5, 5), (24, 6), (8, 8), (9, 17)):
        ref = np.asarray(jax.image.resize(x, (5, *size, 2), method="bilinear"))
        got = data.resize_bilinear(x, size)
        assert got.shape == ref.shape and got.dtype == np.float32
        np.testing.assert_allclose(got, ref, rtol=0, atol=1e-6)


def test_resize_bilinear_by_hand():
    """Growing 2 pixels [0, 1] to 4: centres at -0.25, 0.25, 0.75, 1.25 of the input -> 0, 0.25, 0.75, 1."""
    x = np.array([0.0, 1.0], np.float32).reshape(1, 1, 2, 1)
    np.testing.assert_allclose(data.resize_bilinear(x, (1, 4))[0, 0, :, 0], [0.0, 0.25, 0.75, 1.0], atol=1e-7)
    with pytest.raises(ValueError, match=r"resize_bilinear: `x` must have shape \(m, n_H, n_W, n_C\), got \(2, 1\)"):
        data.resize_bilinear(np.zeros((2, 1)), 4)


def test_random_shift_moves_each_image_by_its_own_offset():
    import jax

    x = np.zeros((6, 9, 9, 1), np.float32)
    x[:, 4, 4, 0] = 1.0  # one bright pixel in the centre of each image
    shifted = random_shift(x, 2, jax.random.key(0))
    positions = [tuple(np.argwhere(img[..., 0])[0]) for img in shifted]
    assert all(2 <= r <= 6 and 2 <= c <= 6 for r, c in positions)  # within +-2 of the centre
    assert len(set(positions)) > 1  # not all moved alike
    assert np.array_equal(shifted, random_shift(x, 2, jax.random.key(0)))  # deterministic in the key
    assert shifted.sum() == x.sum()  # nothing lost: the pixel stays inside the frame
    np.testing.assert_array_equal(random_shift(x, 0, jax.random.key(0)), x)


def test_digits_argument_errors():
    with pytest.raises(ValueError, match=r"pad_to.*>= the image size \(24, 24\).*got 20"):
        load_digits(size=24, pad_to=20)
    with pytest.raises(ValueError, match=r"test_fraction.*\[0, 1\), got 1.5"):
        load_digits(test_fraction=1.5)
    with pytest.raises(ValueError, match=r"pad_to.*>= the image size \(8, 8\)"):
        load_digits(pad_to=4)
    with pytest.raises(TypeError, match="seed"):
        load_digits(seed="0")


# --------------------------------------------------------------------------- IDX / MNIST


def idx_bytes(array: np.ndarray) -> bytes:
    """Our own IDX writer: magic 0x0000TTDD, big-endian uint32 dims, then the data."""
    codes = {np.dtype(np.uint8): 0x08, np.dtype(np.int16): 0x0B, np.dtype(np.int32): 0x0C, np.dtype(np.float32): 0x0D}
    code = codes[array.dtype]
    header = bytes([0, 0, code, array.ndim]) + b"".join(struct.pack(">I", d) for d in array.shape)
    return header + array.astype(array.dtype.newbyteorder(">")).tobytes()


def write(path, payload: bytes, gz: bool):
    path = str(path) + (".gz" if gz else "")
    with open(path, "wb") as f:
        f.write(gzip.compress(payload) if gz else payload)
    return path


@pytest.mark.parametrize("gz", [False, True])
def test_read_idx_round_trip(tmp_path, gz):
    rng = np.random.default_rng(0)
    for array in (
        rng.integers(0, 256, (5, 28, 28), dtype=np.uint8),
        rng.integers(0, 10, (7,), dtype=np.uint8),
        rng.integers(-1000, 1000, (3, 4), dtype=np.int16),
        rng.normal(size=(2, 3)).astype(np.float32),
    ):
        path = write(tmp_path / f"a{array.ndim}{array.dtype}", idx_bytes(array), gz)
        out = read_idx(path)
        assert out.shape == array.shape and out.dtype == array.dtype
        np.testing.assert_array_equal(out, array)


def make_mnist(directory, *, m_train=6, m_test=4, gz=False, rows=28, cols=28):
    rng = np.random.default_rng(1)
    arrays = {}
    for prefix, m in (("train", m_train), ("t10k", m_test)):
        x = rng.integers(0, 256, (m, rows, cols), dtype=np.uint8)
        y = rng.integers(0, 10, (m,), dtype=np.uint8)
        write(directory / f"{prefix}-images-idx3-ubyte", idx_bytes(x), gz)
        write(directory / f"{prefix}-labels-idx1-ubyte", idx_bytes(y), gz)
        arrays[prefix] = (x, y)
    return arrays


@pytest.mark.parametrize("gz", [False, True])
def test_load_mnist_round_trip(tmp_path, gz):
    arrays = make_mnist(tmp_path, gz=gz)
    ds = load_mnist(tmp_path)
    assert ds.x_train.shape == (6, 28, 28, 1) and ds.x_test.shape == (4, 28, 28, 1)
    assert ds.x_train.dtype == np.float32 and ds.y_train.dtype == np.int32
    np.testing.assert_allclose(ds.x_train[..., 0], arrays["train"][0] / 255.0, rtol=1e-6)
    np.testing.assert_array_equal(ds.y_train, arrays["train"][1])
    np.testing.assert_allclose(ds.x_test[..., 0], arrays["t10k"][0] / 255.0, rtol=1e-6)
    np.testing.assert_array_equal(ds.y_test, arrays["t10k"][1])
    assert 0.0 <= ds.x_train.min() and ds.x_train.max() <= 1.0


def test_idx_truncated_file_names_path_and_counts(tmp_path):
    make_mnist(tmp_path)
    path = tmp_path / "train-images-idx3-ubyte"
    raw = path.read_bytes()
    path.write_bytes(raw[:-100])
    expected, actual = len(raw), len(raw) - 100
    with pytest.raises(ValueError, match=rf"train-images-idx3-ubyte` has {actual} bytes, expected {expected}.*truncated"):
        load_mnist(tmp_path)
    with pytest.raises(ValueError, match=rf"{path}` has {actual} bytes, expected {expected}"):
        read_idx(path)


def test_idx_truncated_gzip(tmp_path):
    make_mnist(tmp_path, gz=True)
    path = tmp_path / "t10k-labels-idx1-ubyte.gz"
    path.write_bytes(path.read_bytes()[:-12])
    with pytest.raises(ValueError, match=r"t10k-labels-idx1-ubyte.gz.*(truncated|damaged)"):
        load_mnist(tmp_path)


def test_idx_wrong_magic(tmp_path):
    make_mnist(tmp_path)
    # images and labels swapped: the labels file passed where the images are expected
    images = tmp_path / "train-images-idx3-ubyte"
    labels = tmp_path / "train-labels-idx1-ubyte"
    tmp = images.read_bytes()
    images.write_bytes(labels.read_bytes())
    labels.write_bytes(tmp)
    with pytest.raises(ValueError, match=r"train-images-idx3-ubyte` has magic number 2049, expected 2051.*images file"):
        load_mnist(tmp_path)
    garbage = tmp_path / "garbage"
    garbage.write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(20))
    with pytest.raises(ValueError, match=r"garbage` has magic number .*not an IDX header"):
        read_idx(garbage)


def test_idx_count_mismatch(tmp_path):
    make_mnist(tmp_path)
    write(tmp_path / "t10k-labels-idx1-ubyte", idx_bytes(np.zeros(3, np.uint8)), gz=False)
    with pytest.raises(ValueError, match=r"t10k-images-idx3-ubyte` holds 4 images but `.*t10k-labels-idx1-ubyte` holds 3"):
        load_mnist(tmp_path)


def test_mnist_missing_files(tmp_path):
    make_mnist(tmp_path)
    os.remove(tmp_path / "t10k-images-idx3-ubyte")
    with pytest.raises(FileNotFoundError, match=r"t10k-images-idx3-ubyte.*in `.*`.*four IDX files"):
        load_mnist(tmp_path)
    with pytest.raises(FileNotFoundError, match="not a directory"):
        load_mnist(tmp_path / "nope")


# --------------------------------------------------------------------------- CIFAR-10

N_PER_FILE = 5


def cifar_arrays(seed):
    rng = np.random.default_rng(seed)
    return rng.integers(0, 256, (N_PER_FILE, 3072), dtype=np.uint8), rng.integers(0, 10, N_PER_FILE)


def make_cifar_bin(directory):
    directory.mkdir(parents=True, exist_ok=True)
    out = {}
    for i, name in enumerate([f"data_batch_{k}" for k in range(1, 6)] + ["test_batch"]):
        pixels, labels = cifar_arrays(i)
        records = np.concatenate([labels.astype(np.uint8)[:, None], pixels], axis=1)
        (directory / f"{name}.bin").write_bytes(records.tobytes())
        out[name] = (pixels, labels)
    return out


def make_cifar_py(directory, protocol=2):
    directory.mkdir(parents=True, exist_ok=True)
    out = {}
    for i, name in enumerate([f"data_batch_{k}" for k in range(1, 6)] + ["test_batch"]):
        pixels, labels = cifar_arrays(i)
        batch = {b"batch_label": name.encode(), b"labels": labels.tolist(), b"data": pixels,
                 b"filenames": [b"x.png"] * N_PER_FILE}
        with open(directory / name, "wb") as f:
            pickle.dump(batch, f, protocol=protocol)
        out[name] = (pixels, labels)
    return out


def check_cifar(ds, arrays):
    assert ds.x_train.shape == (5 * N_PER_FILE, 32, 32, 3) and ds.x_test.shape == (N_PER_FILE, 32, 32, 3)
    assert ds.x_train.dtype == np.float32 and ds.y_train.dtype == np.int32
    pixels, labels = arrays["data_batch_2"]
    # record i of data_batch_2: red plane, then green, then blue, each row-major 32x32
    np.testing.assert_allclose(ds.x_train[N_PER_FILE:2 * N_PER_FILE],
                               pixels.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1) / 255.0, rtol=1e-6)
    np.testing.assert_array_equal(ds.y_train[N_PER_FILE:2 * N_PER_FILE], labels)
    assert ds.x_train[0, 0, 0, 1] == np.float32(arrays["data_batch_1"][0][0, 1024] / 255.0)  # green of pixel (0, 0)
    np.testing.assert_array_equal(ds.y_test, arrays["test_batch"][1])


def test_cifar_binary(tmp_path):
    arrays = make_cifar_bin(tmp_path / "cifar-10-batches-bin")
    check_cifar(load_cifar10(tmp_path), arrays)  # the parent directory works
    check_cifar(load_cifar10(tmp_path / "cifar-10-batches-bin"), arrays)


@pytest.mark.parametrize("protocol", [2, 5])
def test_cifar_python(tmp_path, protocol):
    arrays = make_cifar_py(tmp_path / "cifar-10-batches-py", protocol=protocol)
    check_cifar(load_cifar10(tmp_path), arrays)


def test_cifar_binary_truncated(tmp_path):
    make_cifar_bin(tmp_path)
    path = tmp_path / "data_batch_3.bin"
    path.write_bytes(path.read_bytes()[:-7])
    with pytest.raises(ValueError, match=rf"data_batch_3.bin` has {N_PER_FILE * 3073 - 7} bytes, expected a positive multiple of 3073"):
        load_cifar10(tmp_path)


def test_cifar_python_truncated_and_wrong_content(tmp_path):
    make_cifar_py(tmp_path)
    path = tmp_path / "data_batch_4"
    raw = path.read_bytes()
    path.write_bytes(raw[: len(raw) // 2])
    with pytest.raises(ValueError, match=r"data_batch_4` is not a readable CIFAR-10 python batch"):
        load_cifar10(tmp_path)
    with open(path, "wb") as f:
        pickle.dump({b"data": np.zeros((2, 100), np.uint8), b"labels": [0, 1]}, f, protocol=2)
    with pytest.raises(ValueError, match=r"data_batch_4` has b'data' of uint8 \(2, 100\), expected .*\(N, 3072\)"):
        load_cifar10(tmp_path)
    with open(path, "wb") as f:
        pickle.dump({b"data": np.zeros((2, 3072), np.uint8), b"labels": [0, 1, 2]}, f, protocol=2)
    with pytest.raises(ValueError, match=r"data_batch_4` has b'labels' of .*\(3,\), expected 2 integer labels"):
        load_cifar10(tmp_path)


def test_cifar_missing_files(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"data_batch_1.bin.*cs.toronto.edu/~kriz/cifar.html"):
        load_cifar10(tmp_path)
    make_cifar_bin(tmp_path)
    os.remove(tmp_path / "test_batch.bin")
    with pytest.raises(FileNotFoundError, match=r"test_batch.bin` is missing"):
        load_cifar10(tmp_path)


class _SystemCall:
    def __init__(self, command):
        self.command = command

    def __reduce__(self):
        return (os.system, (self.command,))


class _EvalCall:
    def __init__(self, source):
        self.source = source

    def __reduce__(self):
        import builtins

        return (builtins.eval, (self.source,))


@pytest.mark.parametrize("kind", ["system", "eval", "nested"])
def test_cifar_malicious_pickle_refused_without_side_effect(tmp_path, kind):
    make_cifar_py(tmp_path)
    marker = tmp_path / "pwned"
    if kind == "system":
        payload = _SystemCall(f"echo pwned > {marker}")
    elif kind == "eval":
        payload = _EvalCall(f"open({str(marker)!r}, 'w').write('pwned')")
    else:  # hidden inside an otherwise valid batch
        payload = {b"data": np.zeros((1, 3072), np.uint8), b"labels": [0], b"filenames": [_SystemCall(f"echo pwned > {marker}")]}
    path = tmp_path / "data_batch_2"
    for protocol in (2, 4):
        path.write_bytes(pickle.dumps(payload, protocol=protocol))
        with pytest.raises(pickle.UnpicklingError, match=r"data_batch_2` asks to load the global `(posix|os|nt|builtins|__builtin__)\.(system|eval)`; refused"):
            load_cifar10(tmp_path)
        assert not marker.exists()


# --------------------------------------------------------------------------- batches


def test_batches_cover_epoch_with_ragged_last_batch():
    x = np.arange(10, dtype=np.float32).reshape(10, 1, 1, 1)
    y = np.arange(10, dtype=np.int32)
    out = list(batches(x, y, 3))
    assert [len(yb) for _, yb in out] == [3, 3, 3, 1]
    assert num_batches(10, 3) == 4 and num_batches(10, 3, drop_last=True) == 3 and num_batches(9, 3) == 3
    np.testing.assert_array_equal(np.concatenate([yb for _, yb in out]), y)
    for xb, yb in out:
        assert isinstance(xb, np.ndarray) and xb.shape[1:] == (1, 1, 1)
        np.testing.assert_array_equal(xb[:, 0, 0, 0], yb)


def test_batches_shuffle_from_key():
    x = np.arange(50, dtype=np.float32)[:, None]
    y = np.arange(50, dtype=np.int32)
    key = jax.random.key(3)
    first = [yb for _, yb in batches(x, y, 8, key=key)]
    again = [yb for _, yb in batches(x, y, 8, key=key)]
    other = [yb for _, yb in batches(x, y, 8, key=jax.random.key(4))]
    for a, b in zip(first, again):
        np.testing.assert_array_equal(a, b)
    everything = np.concatenate(first)
    assert len(first) == 7 and len(first[-1]) == 2
    assert sorted(everything.tolist()) == list(range(50))  # each example exactly once
    assert not np.array_equal(everything, y)  # shuffled
    assert not np.array_equal(everything, np.concatenate(other))
    np.testing.assert_array_equal(everything, np.asarray(jax.random.permutation(key, 50)))
    for xb, yb in batches(x, y, 8, key=key):  # x and y stay paired
        np.testing.assert_array_equal(xb[:, 0], yb)


def test_batches_start_step_resumes_the_epoch():
    x = np.arange(23, dtype=np.float32)[:, None]
    y = np.arange(23, dtype=np.int32)
    key = jax.random.PRNGKey(0)  # raw keys work too
    full = [yb for _, yb in batches(x, y, 5, key=key)]
    for start in range(len(full) + 1):
        resumed = [yb for _, yb in batches(x, y, 5, key=key, start_step=start)]
        assert len(resumed) == len(full) - start
        for a, b in zip(resumed, full[start:]):
            np.testing.assert_array_equal(a, b)


def test_batches_drop_last():
    x = np.zeros((10, 2), np.float32)
    y = np.arange(10, dtype=np.int32)
    out = list(batches(x, y, 4, drop_last=True))
    assert [len(yb) for _, yb in out] == [4, 4]
    assert list(batches(x[:3], y[:3], 4, drop_last=True)) == []
    assert [len(yb) for _, yb in batches(x[:3], y[:3], 4)] == [3]


def test_batches_errors_raised_early():
    x, y = np.zeros((10, 2)), np.zeros(10)
    with pytest.raises(ValueError, match="batches: `batch_size` must be >= 1, got 0"):
        batches(x, y, 0)  # raised at the call, not at the first next()
    with pytest.raises(ValueError, match=r"batches: `x` has 10 examples but `y` has 9"):
        batches(x, y[:9], 2)
    with pytest.raises(ValueError, match=r"`start_step`=6 is past the end of the epoch, which has 5 batches"):
        batches(x, y, 2, start_step=6)
    with pytest.raises(TypeError, match="batch_size"):
        batches(x, y, 2.0)


def test_module_exports():
    for name in data.__all__:
        assert hasattr(data, name)
