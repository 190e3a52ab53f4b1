"""Training models with state (issue #12): the registry behind --model, BatchNorm state and dropout keys
through the loop, checkpoints and resume, eval mode for evaluation, ensembles and several devices."""

import json
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxconv import checkpoint, loop, models
from jaxconv.layers import BatchNorm, Conv2D, Dense, Dropout, GlobalAvgPool, Relu, serial
from jaxconv.loop import TrainConfig, fit
from jaxconv.train import evaluate

QUICK = dict(limit=96, epochs=2, batch_size=32, impl="lax", progress=False)  # 3 steps an epoch, as test_train
QUIET = dict(log=lambda s: None)
TINY = "tiny_bn_dropout"


def tiny_bn_dropout(num_classes=10, in_channels=1, impl="auto", dtype=None):
    """A small model with both kinds of train-mode layer: (m, 32, 32, n_C) -> (m, num_classes)."""
    del in_channels
    return serial(
        ("conv", Conv2D(4, 3, stride=4, use_bias=False, impl=impl, dtype=dtype)),  # (m, 8, 8, 4)
        ("bn", BatchNorm(dtype=dtype)),
        ("relu", Relu()),
        ("pool", GlobalAvgPool()),  # (m, 4)
        ("drop", Dropout(0.5)),
        ("fc", Dense(num_classes, dtype=dtype)),
    )


TINY_SOURCE = (  # the same model registered in a subprocess (the CLI's --model choices come from the registry)
    "from jaxconv import models\n"
    "from jaxconv.layers import BatchNorm, Conv2D, Dense, Dropout, GlobalAvgPool, Relu, serial\n"
    "def tiny(num_classes=10, in_channels=1, impl='auto', dtype=None):\n"
    "    return serial(('conv', Conv2D(4, 3, stride=4, use_bias=False, impl=impl, dtype=dtype)), ('bn', BatchNorm(dtype=dtype)),\n"
    "                  ('relu', Relu()), ('pool', GlobalAvgPool()), ('drop', Dropout(0.5)), ('fc', Dense(num_classes, dtype=dtype)))\n"
    f"models.MODELS[{TINY!r}] = tiny\n"
    "import sys\nfrom jaxconv.cli import main\nsys.exit(main(sys.argv[1:]))\n"
)


@pytest.fixture
def tiny(monkeypatch):
    monkeypatch.setitem(models.MODELS, TINY, tiny_bn_dropout)
    return TINY


def _load(out, **kwargs):
    return checkpoint.load_checkpoint(os.path.join(out, "checkpoint.npz"), **kwargs)


def _lines(out):
    return [json.loads(line) for line in open(os.path.join(out, "metrics.jsonl"))]


def _arrays(out, prefix):
    with np.load(os.path.join(out, "checkpoint.npz"), allow_pickle=False) as f:
        return {k: f[k] for k in f.files if k.startswith(prefix)}


# --------------------------------------------------------------------------- the registry


@pytest.mark.parametrize("name", ["resnet20", "inception", "mobilenet", "lenet5"])
def test_build_model_is_the_registry_model_for_the_data_channels(name):
    model = loop.build_model(TrainConfig(model=name, impl="lax"), in_channels=1)
    expected = models.MODELS[name](num_classes=10, in_channels=1, impl="lax")
    shape = (-1, 32, 32, 1)
    got = model.init(jax.random.key(0), shape)[1]
    want = expected.init(jax.random.key(0), shape)[1]
    assert jax.tree_util.tree_structure(got) == jax.tree_util.tree_structure(want)
    for a, b in zip(jax.tree_util.tree_leaves(got), jax.tree_util.tree_leaves(want)):
        assert a.shape == b.shape
    first = got["conv1"]["w"] if name in ("resnet20", "lenet5") else got["stem"]["conv"]["w"]  # (f, f, n_C, n_C')
    assert first.shape[2] == 1  # the filter takes the digits' one channel
    assert loop.uses_train_mode(model) == (name != "lenet5")


def test_build_model_passes_num_classes_and_seed_cnn_keeps_rgb():
    model = loop.build_model(TrainConfig(model="resnet20"), in_channels=1, num_classes=7)
    assert model.init(jax.random.key(0), (-1, 32, 32, 1))[0] == (-1, 7)
    seed = loop.build_model(TrainConfig(model="seed_cnn"), in_channels=1)  # fed grey images tiled to 3 channels
    assert seed.init(jax.random.key(0), (-1, 32, 32, 3))[0] == (-1, 10)


# --------------------------------------------------------------------------- state through the loop


def test_fit_carries_batchnorm_state_and_evaluates_in_eval_mode(tiny, tmp_path):
    out = str(tmp_path / "run")
    fit(TrainConfig(model=tiny, out=out, **{**QUICK, "epochs": 1}), **QUIET)
    model = loop.build_model(TrainConfig(model=tiny, impl="lax"), 1)
    _, state0 = model.init_state((-1, 32, 32, 1))
    _, params0 = model.init(jax.random.key(0), (-1, 32, 32, 1))
    saved = _load(out, params_like=params0, state_like=state0)
    assert int(saved["step"]) == 3
    mean, var = np.asarray(saved["state"]["bn"]["mean"]), np.asarray(saved["state"]["bn"]["var"])
    assert mean.shape == var.shape == (4,)
    assert not np.allclose(mean, 0) and not np.allclose(var, 1)  # 3 train-mode steps moved the running statistics
    # The recorded test accuracy is eval mode's: running statistics, dropout off (deterministic).
    ds = loop.load_data(TrainConfig(limit=96))
    again = evaluate(model.apply, saved["params"], ds.x_test, ds.y_test, 256, state=saved["state"])
    assert _lines(out)[-1]["test_accuracy"] == again["accuracy"]
    assert _lines(out)[-1]["test_loss"] == pytest.approx(again["loss"], rel=1e-6)
    with_batch_stats = model.apply(saved["params"], jnp.asarray(ds.x_test[:64]), state=saved["state"], train=True,
                                   key=jax.random.key(0))[0]
    eval_logits = model.apply(saved["params"], jnp.asarray(ds.x_test[:64]), state=saved["state"])[0]
    np.testing.assert_allclose(again["logits"][:64], eval_logits, rtol=1e-5, atol=1e-6)
    assert not np.allclose(with_batch_stats, eval_logits)  # train mode would have given other logits


def test_resume_with_state_and_dropout_is_bit_identical(tiny, tmp_path, interrupt_at_step):
    whole = str(tmp_path / "whole")
    fit(TrainConfig(model=tiny, out=whole, checkpoint_every=2, **QUICK), **QUIET)

    broken = str(tmp_path / "broken")  # killed at its 5th step, after the checkpoint at step 4, then resumed
    repair = interrupt_at_step(5, "simulated crash")
    with pytest.raises(KeyboardInterrupt):
        fit(TrainConfig(model=tiny, out=broken, checkpoint_every=2, **QUICK), **QUIET)
    assert int(_load(broken)["step"]) == 4
    repair()
    lines = []
    fit(TrainConfig(model=tiny, out=broken, checkpoint_every=2, resume=True, **QUICK), log=lines.append)
    assert any("resumed" in line and "step 4" in line for line in lines)

    for prefix, count in (("params", 5), ("state", 2)):
        a, b = _arrays(whole, prefix), _arrays(broken, prefix)
        assert a.keys() == b.keys() and len(a) == count, sorted(a)
        for name in a:
            np.testing.assert_array_equal(a[name], b[name], err_msg=name)
    # Evaluation (eval mode, running statistics) agrees exactly; train_loss of the resumed epoch averages only the
    # steps run after the resume, and times differ.
    same = lambda h: {k: v for k, v in h.items() if k != "train_loss" and "time" not in k and "per_s" not in k}  # noqa: E731
    assert [same(h) for h in _lines(whole)] == [same(h) for h in _lines(broken)]


@pytest.mark.slow  # two runs: ~30 s on 2 busy cores
def test_training_runs_dropout_in_train_mode(tiny, tmp_path, monkeypatch):
    """The loop's steps drop (train mode, a key per step): the same run with Dropout(0) ends elsewhere."""
    def no_dropout(num_classes=10, in_channels=1, impl="auto", dtype=None):
        net = tiny_bn_dropout(num_classes, in_channels, impl, dtype)
        children = tuple((n, Dropout(0.0) if n == "drop" else layer) for n, layer in net.children)
        return serial(*children)

    monkeypatch.setitem(models.MODELS, "tiny_no_dropout", no_dropout)
    a, b = str(tmp_path / "a"), str(tmp_path / "b")
    fit(TrainConfig(model=tiny, out=a, **{**QUICK, "epochs": 1}), **QUIET)
    fit(TrainConfig(model="tiny_no_dropout", out=b, **{**QUICK, "epochs": 1}), **QUIET)
    pa, pb = _arrays(a, "params"), _arrays(b, "params")
    assert pa.keys() == pb.keys()
    assert not np.allclose(pa["params['fc']['w']"], pb["params['fc']['w']"])  # the masks changed the updates


@pytest.mark.slow  # a vmapped stateful step and K evaluations: ~40 s on 2 busy cores
def test_ensemble_with_state_trains_each_member_with_its_own_statistics(tiny, tmp_path):
    out = str(tmp_path / "ens")
    fit(TrainConfig(model=tiny, out=out, ensemble=2, **{**QUICK, "epochs": 1}), **QUIET)
    state = _arrays(out, "state")
    mean = state["state['bn']['mean']"]
    assert mean.shape == (2, 4) and not np.allclose(mean[0], mean[1])  # two members, two sets of statistics
    line = _lines(out)[-1]
    saved = _load(out)
    model = loop.build_model(TrainConfig(model=tiny, impl="lax"), 1)
    ds = loop.load_data(TrainConfig(limit=96))
    for k in range(2):
        member = jax.tree_util.tree_map(lambda leaf: leaf[k], saved["params"])
        member_state = jax.tree_util.tree_map(lambda leaf: leaf[k], saved["state"])
        accuracy = evaluate(model.apply, member, ds.x_test, ds.y_test, 256, state=member_state)["accuracy"]
        assert line["test_accuracy_each"][k] == accuracy


@pytest.mark.slow  # two CLI processes
def test_cli_two_cpu_devices_with_batchnorm_match_one_device(tmp_path):
    """--cpu-devices 2: the state is replicated and BatchNorm's statistics are over the global batch."""
    common = ["train", "--model", TINY, "--limit", "64", "--epochs", "1", "--batch-size", "32", "--impl", "lax",
              "--no-progress"]
    runs = {}
    for name, extra in (("two", ["--cpu-devices", "2"]), ("one", [])):
        run = subprocess.run([sys.executable, "-c", TINY_SOURCE, *common, "--out", str(tmp_path / name), *extra],
                             cwd=tmp_path, capture_output=True, text=True, timeout=240)
        assert run.returncode == 0, run.stderr[-3000:]
        runs[name] = run.stdout
    assert "data-parallel over 2 devices" in runs["two"]
    for prefix in ("params", "state"):
        a, b = _arrays(str(tmp_path / "two"), prefix), _arrays(str(tmp_path / "one"), prefix)
        assert a.keys() == b.keys() and a
        for name in a:
            np.testing.assert_allclose(a[name], b[name], rtol=1e-4, atol=1e-6, err_msg=name)


# --------------------------------------------------------------------------- checkpoints with state


def test_checkpoint_round_trips_state_and_refuses_a_missing_one(tmp_path):
    params = {"fc": {"w": jnp.ones((2, 3)), "b": jnp.zeros(3)}}
    state = {"bn": {"mean": jnp.arange(3.0), "var": jnp.full(3, 2.0)}, "relu": {}}
    with_state = checkpoint.save_checkpoint(tmp_path / "a.npz", params=params, opt_state=(), step=3, key=None,
                                            config=None, state=state)
    loaded = checkpoint.load_checkpoint(with_state, params_like=params, state_like=state)
    np.testing.assert_array_equal(loaded["state"]["bn"]["mean"], [0, 1, 2])
    np.testing.assert_array_equal(loaded["state"]["bn"]["var"], [2, 2, 2])
    assert loaded["state"]["relu"] == {}
    without = checkpoint.save_checkpoint(tmp_path / "b.npz", params=params, opt_state=(), step=3, key=None, config=None)
    assert "state" not in checkpoint.load_checkpoint(without)
    with pytest.raises(ValueError, match=r"load_checkpoint: `.*b.npz` holds no model state but `state_like` asks for one"):
        checkpoint.load_checkpoint(without, params_like=params, state_like=state)
    other = {"bn": {"mean": jnp.zeros(4), "var": jnp.ones(4)}, "relu": {}}
    with pytest.raises(ValueError, match=r"leaf 0 of `state` .* shape \(3,\) in the checkpoint but \(4,\) in `state_like`"):
        checkpoint.load_checkpoint(with_state, state_like=other)


# --------------------------------------------------------------------------- the new models from the CLI (slow)


@pytest.mark.slow  # one compile of each model's train step: ~25-60 s each on 2 busy cores
@pytest.mark.parametrize("name", ["resnet20", "inception", "mobilenet"])
def test_cli_trains_each_new_model_end_to_end(tmp_path, name):
    out = tmp_path / name
    run = subprocess.run(
        [sys.executable, "-m", "jaxconv.cli", "train", "--model", name, "--limit", "64", "--epochs", "1",
         "--batch-size", "32", "--no-progress", "--out", str(out)],
        cwd=tmp_path, capture_output=True, text=True, timeout=600,
    )
    assert run.returncode == 0, run.stderr[-3000:]
    assert f"training {name}" in run.stdout and "best test accuracy" in run.stdout
    state = _arrays(str(out), "state")
    assert any("['bn" in k or "['bn']" in k for k in state), sorted(state)[:5]
    assert all(np.isfinite(v).all() for v in state.values())


def test_algorithm_option_reaches_every_conv_and_is_checked_with_impl():
    with pytest.raises(ValueError, match=r"train: `algorithm` \('rows'\) chooses among the hand-rolled algorithms, but impl='lax'"):
        TrainConfig(algorithm="rows", impl="lax").validate()
    model = loop.build_model(TrainConfig(model="resnet20", algorithm="taps"), in_channels=1)
    shape = (1, 8, 8, 1)
    _, params = model.init(jax.random.key(0), shape)
    _, state = model.init_state(shape)
    with pytest.raises(ValueError, match=r"'taps' needs stride 1 .*in layer `stage2/block1/conv_a`"):
        model.apply(params, np.zeros(shape), state=state)
