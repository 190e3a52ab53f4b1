"""Tests of jaxconv.checkpoint: round trip, refusals, no pickle, atomic writes."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import textwrap
import time
import zipfile
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from jaxconv.checkpoint import (
    CHECKPOINT_NAME,
    checkpoint_path,
    latest_checkpoint,
    load_checkpoint,
    save_checkpoint,
)

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIG = {"model": "lenet5", "lr": 1e-3, "batch_size": 32, "input_shape": [32, 32, 1]}


def rand(rng, shape):
    # built in NumPy then moved to JAX: no XLA compilation, so the tests stay fast
    return jnp.asarray(rng.normal(size=shape).astype(np.float32))


def make_params(seed=0, n_out=10):
    rng = np.random.default_rng(seed)
    return {
        "conv1": {"w": rand(rng, (5, 5, 1, 6)), "b": rand(rng, (6,))},
        "relu1": {},
        "dense": {"w": rand(rng, (6, n_out)), "b": rand(rng, (n_out,))},
    }


def trained_state():
    """Params and an adam state with non-trivial mu, nu and count (as after a few updates)."""
    params = make_params()
    opt = optax.adam(1e-3)
    adam, rest = opt.init(params)
    rng = np.random.default_rng(1)
    adam = adam._replace(
        count=jnp.asarray(3, jnp.int32),
        mu=jax.tree_util.tree_map(lambda p: rand(rng, p.shape), params),
        nu=jax.tree_util.tree_map(lambda p: rand(rng, p.shape) ** 2, params),
    )
    return params, (adam, rest), opt


def assert_trees_identical(a, b):
    la, ta = jax.tree_util.tree_flatten(a)
    lb, tb = jax.tree_util.tree_flatten(b)
    assert ta == tb
    for x, y in zip(la, lb):
        x, y = np.asarray(x), np.asarray(y)
        assert x.dtype == y.dtype and x.shape == y.shape
        assert x.tobytes() == y.tobytes()  # bit-identical


@pytest.fixture
def saved(tmp_path):
    params, state, opt = trained_state()
    key = jax.random.key(42)
    path = checkpoint_path(tmp_path)
    save_checkpoint(path, params=params, opt_state=state, step=7, key=key, config=CONFIG)
    return path, params, state, opt, key


def test_round_trip_bit_identical(saved):
    path, params, state, opt, key = saved
    fresh = make_params(seed=1)
    out = load_checkpoint(path, params_like=fresh, opt_state_like=opt.init(fresh), config={"lr": 1e-3})
    assert set(out) == {"params", "opt_state", "step", "key", "config"}
    assert_trees_identical(out["params"], params)
    assert_trees_identical(out["opt_state"], state)
    assert isinstance(out["opt_state"][0], optax.ScaleByAdamState)
    assert out["step"] == 7 and isinstance(out["step"], int)
    assert out["config"] == CONFIG
    assert jax.dtypes.issubdtype(out["key"].dtype, jax.dtypes.prng_key)
    np.testing.assert_array_equal(jax.random.key_data(out["key"]), jax.random.key_data(key))
    assert str(jax.random.key_impl(out["key"])) == str(jax.random.key_impl(key))


def test_load_without_templates(saved):
    path, params, state, _, _ = saved
    out = load_checkpoint(path)
    assert_trees_identical(out["params"], params)  # dict of dicts rebuilt, empty "relu1" included
    assert out["params"]["relu1"] == {}
    # optax NamedTuples are not described by the file: a flat dict of named leaves
    assert "opt_state[0].mu['conv1']['w']" in out["opt_state"]
    np.testing.assert_array_equal(out["opt_state"]["opt_state[0].mu['conv1']['w']"], state[0].mu["conv1"]["w"])


def test_raw_key_none_key_and_other_dtypes(tmp_path):
    path = tmp_path / "a.npz"
    params = {"w": jnp.arange(6, dtype=jnp.bfloat16).reshape(2, 3), "n": jnp.arange(3, dtype=jnp.int32),
              "layers": [{"w": jnp.ones(2)}, ()]}
    save_checkpoint(path, params=params, opt_state=(), step=np.int64(3), key=jax.random.PRNGKey(5), config=None)
    out = load_checkpoint(path)
    assert_trees_identical(out["params"], params)
    assert out["opt_state"] == () and out["step"] == 3 and out["config"] is None
    assert out["key"].dtype == jnp.uint32
    np.testing.assert_array_equal(out["key"], jax.random.PRNGKey(5))
    save_checkpoint(path, params=params, opt_state=None, step=0, key=None, config={})
    assert load_checkpoint(path, params_like=params)["key"] is None


def test_mismatched_templates_refused(saved):
    path, params, state, opt, _ = saved
    other = make_params(n_out=5)  # another model: dense has 5 outputs
    with pytest.raises(ValueError, match=r"`params\['dense'\]\['b'\]`.*shape \(10,\) in the checkpoint but \(5,\) in `params_like`"):
        load_checkpoint(path, params_like=other)
    renamed = dict(params)
    renamed["conv2"] = renamed.pop("conv1")
    with pytest.raises(ValueError, match=r"name `params\['conv1'\]\['b'\]` in the checkpoint but `params\['conv2'\]\['b'\]`"):
        load_checkpoint(path, params_like=renamed)
    bigger = dict(params, extra={"w": jnp.zeros(1)})
    with pytest.raises(ValueError, match=r"(does not match|leaves in)"):
        load_checkpoint(path, params_like=bigger)
    fewer = {k: v for k, v in params.items() if k != "dense"}
    with pytest.raises(ValueError, match=r"`params` has 4 leaves in .* but 2 in `params_like`.*`params\['dense'\]\['b'\]` is in the checkpoint"):
        load_checkpoint(path, params_like=fewer)
    half = jax.tree_util.tree_map(lambda p: jnp.asarray(np.asarray(p, np.float16)), params)
    with pytest.raises(ValueError, match=r"dtype float32 in the checkpoint but float16 in `params_like`"):
        load_checkpoint(path, params_like=half)
    with pytest.raises(ValueError, match=r"opt_state_like"):
        load_checkpoint(path, opt_state_like=optax.sgd(0.1, momentum=0.9).init(params))


def test_config_mismatch_refused(saved):
    path = saved[0]
    with pytest.raises(ValueError, match=r"differs from `config` in 2 setting\(s\): lr: checkpoint has 0.001, you asked for 0.01; model: .*'lenet5'.*'alexnet'"):
        load_checkpoint(path, config={"lr": 0.01, "model": "alexnet", "batch_size": 32})
    with pytest.raises(ValueError, match=r"seed: not in the checkpoint"):
        load_checkpoint(path, config={"seed": 0})
    # tuples compare as the lists JSON stores
    assert load_checkpoint(path, config={"input_shape": (32, 32, 1)})["step"] == 7


def test_save_argument_errors(tmp_path):
    path = tmp_path / "c.npz"
    with pytest.raises(TypeError, match="save_checkpoint: `config` must be JSON-serialisable"):
        save_checkpoint(path, params={}, opt_state=(), step=0, key=None, config={"f": object()})
    with pytest.raises(TypeError, match="save_checkpoint: `step` must be an int"):
        save_checkpoint(path, params={}, opt_state=(), step=1.5, key=None, config=None)
    with pytest.raises(TypeError, match=r"leaf `params\['k'\]` is a typed PRNG key"):
        save_checkpoint(path, params={"k": jax.random.key(0)}, opt_state=(), step=0, key=None, config=None)
    assert os.listdir(tmp_path) == []


def test_file_is_plain_npz_without_pickle(saved):
    path = saved[0]
    with zipfile.ZipFile(path) as z:
        names = z.namelist()
    assert all(n.endswith(".npy") for n in names)
    with np.load(path, allow_pickle=False) as npz:  # every entry loads without pickle
        for name in npz.files:
            assert npz[name].dtype != object
        assert "params['conv1']['w']" in npz.files and "opt_state[0].nu['dense']['b']" in npz.files


def test_object_array_refused(saved, tmp_path):
    path = saved[0]
    with np.load(path, allow_pickle=False) as npz:
        entries = {name: npz[name] for name in npz.files}
    entries["params['conv1']['b']"] = np.array([{"evil": 1}, None], dtype=object)
    crafted = tmp_path / "crafted.npz"
    np.savez(crafted, allow_pickle=True, **entries)
    with pytest.raises(ValueError, match=r"entry `params\['conv1'\]\['b'\]` of `.*crafted.npz` reads as an object \(pickled\) array, which is refused"):
        load_checkpoint(crafted)
    entries[("__meta__")] = np.array(["{}"], dtype=object)
    np.savez(crafted, allow_pickle=True, **entries)
    with pytest.raises(ValueError, match=r"reads as an object \(pickled\) array, which is refused"):
        load_checkpoint(crafted)


def test_a_flipped_array_header_is_reported_as_damage(saved, tmp_path):
    """A bit flip that turns a stored array's dtype into an object dtype: the message says the header is damaged
    (the file came from save_checkpoint), not only that it holds pickles (issue #25)."""
    raw = open(saved[0], "rb").read()
    found = re.search(rb"'descr': '<f\d', ", raw)
    assert found is not None
    as_object = b"'descr': '|O', ".ljust(len(found.group(0)))  # the same length: the zip's offsets stay right
    flipped = raw[: found.start()] + as_object + raw[found.end():]
    assert len(flipped) == len(raw)
    damaged = tmp_path / "flipped.npz"
    damaged.write_bytes(flipped)
    with pytest.raises(ValueError, match=r"flipped.npz` (is damaged \(Bad CRC|reads as an object .*its array header is damaged)"):
        load_checkpoint(damaged)


def test_not_a_checkpoint(tmp_path):
    other = tmp_path / "other.npz"
    np.savez(other, a=np.zeros(3))
    with pytest.raises(ValueError, match=r"other.npz` has no `__meta__` entry"):
        load_checkpoint(other)
    junk = tmp_path / "junk.npz"
    junk.write_bytes(b"PK\x03\x04 not really a zip")
    with pytest.raises(ValueError, match=r"junk.npz` is not a readable .npz checkpoint"):
        load_checkpoint(junk)
    with pytest.raises(FileNotFoundError, match="no checkpoint file"):
        load_checkpoint(tmp_path / "missing.npz")


def test_latest_checkpoint(tmp_path):
    assert latest_checkpoint(tmp_path) is None
    path = save_checkpoint(checkpoint_path(tmp_path / "run"), params={}, opt_state=(), step=1, key=None, config=None)
    assert path == str(tmp_path / "run" / CHECKPOINT_NAME)
    assert latest_checkpoint(tmp_path / "run") == path


@pytest.mark.parametrize("failure", ["savez", "replace"])
def test_failed_write_keeps_previous_checkpoint(saved, monkeypatch, failure):
    path, params, state, opt, _ = saved
    directory = os.path.dirname(path)
    before = Path(path).read_bytes()

    def broken_savez(file, *args, **kwargs):
        file.write(b"PK\x03\x04" + b"\0" * 1000)  # half a file, then the disk fills up
        raise OSError(28, "No space left on device")

    def broken_replace(src, dst):
        raise OSError(5, "Input/output error")

    if failure == "savez":
        monkeypatch.setattr(np, "savez", broken_savez)
    else:
        monkeypatch.setattr(os, "replace", broken_replace)
    new_params = make_params(seed=3)
    with pytest.raises(OSError):
        save_checkpoint(path, params=new_params, opt_state=state, step=8, key=jax.random.key(0), config=CONFIG)
    monkeypatch.undo()
    assert os.listdir(directory) == [CHECKPOINT_NAME]  # no temporary file left behind
    assert Path(path).read_bytes() == before
    out = load_checkpoint(path, params_like=params, opt_state_like=state)
    assert out["step"] == 7
    assert_trees_identical(out["params"], params)


CHILD = textwrap.dedent(
    """
    import sys
    import numpy as np
    from jaxconv.checkpoint import save_checkpoint

    path = sys.argv[1]
    step = 0
    while True:
        big = {"a": np.full((1_000_000,), step, np.float32), "b": np.full((1_000_000,), -step, np.float32)}
        save_checkpoint(path, params={"layer": big}, opt_state=(), step=step, key=None, config={"step": step})
        print(step, flush=True)
        step += 1
    """
)


def test_killed_writer_leaves_loadable_checkpoint(tmp_path):
    path = str(tmp_path / CHECKPOINT_NAME)
    env = dict(os.environ, PYTHONPATH=REPO + os.pathsep + os.environ.get("PYTHONPATH", ""), JAX_PLATFORMS="cpu")
    child = subprocess.Popen([sys.executable, "-c", CHILD, path], stdout=subprocess.PIPE, env=env, text=True)
    try:
        line = child.stdout.readline()  # the first save is complete
        assert line.strip().isdigit(), "the child process failed to save a checkpoint"
        time.sleep(0.3)  # several more saves, then kill it, most likely in the middle of one
    finally:
        child.send_signal(signal.SIGKILL)
        child.wait()
        child.stdout.close()
    out = load_checkpoint(path)
    step = out["step"]
    assert step >= 0 and out["config"] == {"step": step}
    np.testing.assert_array_equal(out["params"]["layer"]["a"], np.full((1_000_000,), step, np.float32))
    np.testing.assert_array_equal(out["params"]["layer"]["b"], np.full((1_000_000,), -step, np.float32))
