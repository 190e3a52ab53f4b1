"""Inputs checked where they enter: class labels, integer arguments, damaged files (issue #14)."""

import os
import pickle

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxconv as jc
from jaxconv import data
from jaxconv._args import integer
from jaxconv.train import evaluate

LOGITS = jnp.array([[2.0, 0.0, 0.0], [0.0, 2.0, 0.0]])  # (m=2, K=3)


# --------------------------------------------------------------------------- labels


@pytest.mark.parametrize("bad", [[0, -1], [0, 3]])
def test_eager_loss_and_accuracy_refuse_labels_outside_0_to_K(bad):
    with pytest.raises(ValueError, match=r"softmax_cross_entropy: `labels` must be class indices in \[0, 3\), got 1 outside it"):
        jc.softmax_cross_entropy(LOGITS, jnp.array(bad))
    with pytest.raises(ValueError, match=r"accuracy: `labels` must be class indices in \[0, 3\)"):
        jc.accuracy(LOGITS, np.array(bad))


def test_labels_in_range_give_the_hand_computed_loss():
    loss = jc.softmax_cross_entropy(LOGITS, jnp.array([0, 2]))
    logsumexp = np.log(np.exp(2.0) + 2.0)
    np.testing.assert_allclose(loss, [logsumexp - 2.0, logsumexp - 0.0], rtol=1e-6)
    assert float(jc.accuracy(LOGITS, jnp.array([0, 2]))) == 0.5


def test_under_jit_labels_are_not_checked_as_documented():
    # Inside jit the labels are tracers: no error; -1 picks class K-1 (take_along_axis wraps), 3 gives NaN.
    f = jax.jit(jc.softmax_cross_entropy)
    wrapped = f(LOGITS, jnp.array([0, -1]))
    np.testing.assert_allclose(wrapped[1], jc.softmax_cross_entropy(LOGITS, jnp.array([0, 2]))[1], rtol=1e-6)
    assert "jax.experimental.checkify" in jc.softmax_cross_entropy.__doc__


def test_evaluate_refuses_labels_outside_0_to_K():
    apply = lambda params, x: x @ params  # noqa: E731  (m, 2) @ (2, 3) -> (m, 3)
    x = np.eye(2, dtype=np.float32)
    with pytest.raises(ValueError, match=r"evaluate: `y` must be class indices in \[0, 3\).*first 7 at index 1"):
        evaluate(apply, jnp.ones((2, 3)), x, np.array([0, 7]), 2)


def _idx(path, magic, dims, payload):
    header = magic.to_bytes(4, "big") + b"".join(d.to_bytes(4, "big") for d in dims)
    with open(path, "wb") as f:
        f.write(header + bytes(payload))


def _mnist_dir(tmp_path, train_labels):
    for prefix, labels in (("train", train_labels), ("t10k", [1, 2])):
        _idx(tmp_path / f"{prefix}-images-idx3-ubyte", 2051, (len(labels), 2, 2), [0] * 4 * len(labels))
        _idx(tmp_path / f"{prefix}-labels-idx1-ubyte", 2049, (len(labels),), labels)
    return tmp_path


def test_mnist_loader_refuses_labels_outside_0_to_9(tmp_path):
    with pytest.raises(ValueError, match=r"load_mnist: `labels in .*train-labels-idx1-ubyte` must be class indices in \[0, 10\).*first 12 at index 1\); the file is not an MNIST"):
        data.load_mnist(_mnist_dir(tmp_path, [3, 12]))


def test_mnist_random_bytes_do_not_blame_swapped_files(tmp_path):
    _mnist_dir(tmp_path, [3, 4])
    (tmp_path / "train-images-idx3-ubyte").write_bytes(bytes(np.random.default_rng(0).integers(0, 256, 100, np.uint8)))
    with pytest.raises(ValueError, match="expected 2051 \\(an IDX image file\\); the file is not an MNIST IDX file") as e:
        data.load_mnist(tmp_path)
    assert "labels file" not in str(e.value)
    # The swapped case still says so.
    os.replace(tmp_path / "train-labels-idx1-ubyte", tmp_path / "train-images-idx3-ubyte")
    _idx(tmp_path / "train-labels-idx1-ubyte", 2051, (2, 2, 2), [0] * 8)
    with pytest.raises(ValueError, match="pass the images file, not the labels file"):
        data.load_mnist(tmp_path)


class _Evil:
    def __reduce__(self):
        return (os.system, ("true",))


def test_malicious_cifar_pickle_is_one_line_without_a_chained_traceback(tmp_path):
    d = tmp_path / "cifar-10-batches-py"
    d.mkdir()
    (d / "data_batch_1").write_bytes(pickle.dumps({b"data": _Evil()}))
    with pytest.raises(ValueError, match=r"load_cifar10: `.*data_batch_1` asks to load the global `(posix|os)\.system`; refused") as e:
        data.load_cifar10(tmp_path)
    assert e.value.__cause__ is None and e.value.__suppress_context__ and "\n" not in str(e.value)


# --------------------------------------------------------------------------- the shared integer validator


@pytest.mark.parametrize("value", [2, np.int64(2), np.uint8(2), jnp.int32(2)])
def test_integer_accepts_python_numpy_and_jax_integers(value):
    out = integer(value, "n", "op", minimum=1)
    assert out == 2 and type(out) is int


@pytest.mark.parametrize("value", [True, np.bool_(True), 2.0, np.float32(2), jnp.float32(2), "2", jnp.array([2])])
def test_integer_refuses_bools_floats_strings_and_arrays(value):
    with pytest.raises(TypeError, match=r"op: `n` must be an int, got .* of type"):
        integer(value, "n", "op")


def test_integer_minimum():
    with pytest.raises(ValueError, match=r"op: `n` must be >= 1, got 0; pass n=1 or more."):
        integer(np.int64(0), "n", "op", minimum=1)


def test_numpy_integer_padding_is_accepted_like_a_jax_integer_stride():
    x, w = jnp.ones((1, 5, 5, 1)), jnp.ones((3, 3, 1, 1))
    reference = jc.conv2d(x, w, padding=1, stride=2, impl="lax")
    for padding in (np.int64(1), (np.int64(1), jnp.int32(1)), ((np.int8(1), 1), (1, np.uint16(1)))):
        np.testing.assert_array_equal(jc.conv2d(x, w, padding=padding, stride=jnp.int32(2), impl="lax"), reference)
    with pytest.raises(TypeError, match="`padding` must be an int"):
        jc.conv2d(x, w, padding=np.float64(1), impl="lax")


# --------------------------------------------------------------------------- the training step's inputs


def _tiny_step(**kw):
    import optax

    from jaxconv.train import make_train_step

    apply = lambda p, x: x @ p["w"]  # noqa: E731  (m, 4) @ (4, 3)
    return make_train_step(apply, optax.adam(1e-3), **kw), {"w": jnp.ones((4, 3))}, optax.adam(1e-3)


def test_a_donated_params_reused_is_a_message_naming_donation():
    step, params, opt = _tiny_step()
    x, y = jnp.ones((2, 4)), jnp.array([0, 1])
    new_params, state, _ = step(params, opt.init(params), x, y)
    with pytest.raises(ValueError, match=r"train_step: `params` holds arrays deleted by an earlier call: make_train_step donates.*donate=False"):
        step(params, state, x, y)
    kept, params, opt = _tiny_step(donate=False)
    state = opt.init(params)
    a, _, _ = kept(params, state, x, y)
    b, _, _ = kept(params, state, x, y)  # the same inputs twice: allowed, same answer
    np.testing.assert_array_equal(a["w"], b["w"])


def test_another_optimizers_state_is_a_message():
    import optax

    step, params, _ = _tiny_step(donate=False)
    with pytest.raises(TypeError, match=r"train_step: `opt_state` does not belong to this step's optimizer .*optimizer.init\(params\)"):
        step(params, optax.sgd(0.1, momentum=0.9).init(params), jnp.ones((2, 4)), jnp.array([0, 1]))


# --------------------------------------------------------------------------- checkpoints and the CLI's registries


def test_save_checkpoint_to_a_directory_and_random_bytes_are_one_line_errors(tmp_path):
    from jaxconv import checkpoint

    with pytest.raises(IsADirectoryError, match=r"save_checkpoint: `path` '.*' is a directory; pass a file name such as checkpoint_path"):
        checkpoint.save_checkpoint(tmp_path, params={}, opt_state=None, step=0, key=None, config=None)
    junk = tmp_path / "junk.npz"
    junk.write_bytes(bytes(np.random.default_rng(0).integers(0, 256, 300, np.uint8)))
    for read in (checkpoint.load_checkpoint, checkpoint.read_header):
        with pytest.raises(ValueError, match=r"is not a .npz checkpoint \(it starts with bytes .*use an earlier checkpoint") as e:
            read(junk)
        assert "allow_pickle" not in str(e.value) and "\n" not in str(e.value)


def test_read_header_and_remove_temporaries(tmp_path):
    from jaxconv import checkpoint

    path = checkpoint.checkpoint_path(tmp_path)
    checkpoint.save_checkpoint(path, params={"w": np.ones(2)}, opt_state=None, step=7, key=None, config={"a": 1},
                               metadata={"history": [{"epoch": 1}]})
    assert checkpoint.read_header(path) == {"step": 7, "config": {"a": 1}, "metadata": {"history": [{"epoch": 1}]}}
    stale = tmp_path / ".checkpoint.npz.x1y2.tmp"
    stale.write_bytes(b"")
    (tmp_path / "keep.tmp").write_bytes(b"")
    assert checkpoint.remove_temporaries(path) == [str(stale)]
    assert sorted(os.listdir(tmp_path)) == ["checkpoint.npz", "keep.tmp"]


def test_cli_choices_come_from_the_registries():
    from jaxconv import cli, conv, loop, models

    train = cli.build_parser()._subparsers._group_actions[0].choices["train"]
    choices = {a.dest: a.choices for a in train._actions if a.choices}
    assert choices["model"] == sorted(models.MODELS)
    assert choices["data"] == sorted(data.DATASETS)
    assert choices["impl"] == list(conv.IMPLS)
    assert choices["optimizer"] == list(loop.OPTIMIZERS)
    assert "1.5x" not in train.format_help()


def test_train_config_integers_use_the_shared_validator():
    from jaxconv.loop import TrainConfig

    assert type(TrainConfig(epochs=np.int64(3)).validate().epochs) is int
    with pytest.raises(ValueError, match=r"train: `epochs` must be >= 1, got 0; pass epochs=1 or more."):
        TrainConfig(epochs=0).validate()
    with pytest.raises(TypeError, match=r"train: `limit` must be an int, got 1.5 of type float."):
        TrainConfig(limit=1.5).validate()
    with pytest.raises(ValueError, match=r"train: `resume` and `overwrite` exclude each other"):
        TrainConfig(resume=True, overwrite=True).validate()
