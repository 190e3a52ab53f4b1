"""Training: the compiled step, evaluation, per-example gradients, the training loop and the CLI."""

import json
import os
import subprocess
import sys

import jax
import numpy as np
import optax
import pytest

import jaxconv as jc
from jaxconv import checkpoint, data, loop, models, steps
from jaxconv.train import evaluate, make_cost, make_eval_step, make_train_step, per_example_grads, stack_params
from jaxconv.loop import NonFiniteLoss, TrainConfig, fit

SHAPE = (16, 32, 32, 1)  # one batch shape for the step tests: one compilation


@pytest.fixture(scope="module")
def batch():
    ds = data.load_digits(size=24, pad_to=32)
    return ds.x_train[: SHAPE[0]], ds.y_train[: SHAPE[0]]


@pytest.fixture(scope="module")
def lenet():
    net = models.lenet5(impl="lax")
    _, params = net.init(jax.random.key(0), (-1, 32, 32, 1))
    return net, params


def test_step_reduces_the_loss_on_a_small_batch(batch, lenet):
    net, params = lenet
    x, y = batch
    optimizer = optax.adam(1e-3)
    step = make_train_step(net.apply, optimizer, donate=False)
    opt_state = optimizer.init(params)
    first = None
    for _ in range(15):
        params, opt_state, metrics = step(params, opt_state, x, y)
        first = float(metrics["loss"]) if first is None else first
    J = make_cost(net.apply)
    final = float(J(params, x, y)[0])
    assert final < 0.5 * first, (first, final)
    assert float(metrics["accuracy"]) > 0.5


def test_step_metrics_are_the_cost_and_accuracy_before_the_update(batch, lenet):
    net, params = lenet
    x, y = batch
    optimizer = optax.sgd(0.1)
    step = make_train_step(net.apply, optimizer, donate=False)
    new_params, _, metrics = step(params, optimizer.init(params), x, y)
    logits = jax.jit(net.apply)(params, x)
    expected_J = float(np.mean(-np.take_along_axis(np.asarray(jax.nn.log_softmax(logits)), y[:, None], 1)))
    np.testing.assert_allclose(float(metrics["loss"]), expected_J, rtol=1e-5)
    assert float(metrics["accuracy"]) == pytest.approx(float((np.asarray(logits).argmax(1) == y).mean()))
    # and the update is plain SGD on jax.grad of J: params - 0.1 * grad
    grads = jax.jit(jax.grad(lambda p: make_cost(net.apply)(p, x, y)[0]))(params)
    np.testing.assert_allclose(new_params["fc5"]["w"], params["fc5"]["w"] - 0.1 * grads["fc5"]["w"], rtol=1e-5, atol=1e-6)


def test_chunked_step_gives_the_one_shot_update_and_metrics(batch, lenet):
    net, params = lenet
    x, y = batch  # 16 examples in 4 chunks of 4
    optimizer = optax.sgd(0.1)
    one_shot = make_train_step(net.apply, optimizer, chunk_size=None, donate=False)
    chunked = make_train_step(net.apply, optimizer, chunk_size=4, donate=False)
    p1, _, m1 = one_shot(params, optimizer.init(params), x, y)
    p4, _, m4 = chunked(params, optimizer.init(params), x, y)
    for a, b in zip(jax.tree_util.tree_leaves(p1), jax.tree_util.tree_leaves(p4)):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(m1["loss"], m4["loss"], rtol=1e-6)
    assert float(m1["accuracy"]) == float(m4["accuracy"])


def test_num_chunks():
    from jaxconv.train import num_chunks

    assert num_chunks(512, 128) == 4
    assert num_chunks(128, 128) == 1  # not above the chunk size
    assert num_chunks(500, 128) == 1  # chunks must be equal for J to stay the batch mean
    assert num_chunks(512, None) == 1
    assert num_chunks(512, "auto") == (4 if jax.default_backend() == "cpu" else 1)


def test_per_example_grads_average_to_the_batch_gradient(batch, lenet):
    net, params = lenet
    x, y = batch
    per_example = per_example_grads(net.apply, jc.softmax_cross_entropy, params, x[:4], y[:4])
    assert per_example["conv1"]["w"].shape == (4, 5, 5, 1, 6)
    full = jax.jit(jax.grad(lambda p: make_cost(net.apply)(p, x[:4], y[:4])[0]))(params)  # compiled, not op by op
    for g_i, g in zip(jax.tree_util.tree_leaves(per_example), jax.tree_util.tree_leaves(full)):
        np.testing.assert_allclose(g_i.mean(0), g, rtol=1e-4, atol=1e-6)
    # example 0's gradient alone is the gradient of its own loss
    alone = jax.jit(jax.grad(lambda p: make_cost(net.apply)(p, x[:1], y[:1])[0]))(params)
    np.testing.assert_allclose(per_example["fc3"]["w"][0], alone["fc3"]["w"], rtol=1e-4, atol=1e-6)


def test_evaluate_ragged_batch_matches_one_big_batch_and_compiles_once(batch, lenet):
    net, params = lenet
    x, y = batch
    eval_step = make_eval_step(net.apply)
    result = evaluate(net.apply, params, x[:13], y[:13], batch_size=5, eval_step=eval_step)  # 5 + 5 + 3
    logits = np.asarray(net.apply(params, x[:13]))
    losses = -np.take_along_axis(np.asarray(jax.nn.log_softmax(logits)), y[:13, None], 1)[:, 0]
    np.testing.assert_allclose(result["loss"], losses.mean(), rtol=1e-5)
    assert result["accuracy"] == pytest.approx((logits.argmax(1) == y[:13]).mean())
    np.testing.assert_allclose(result["logits"], logits, rtol=1e-5, atol=1e-5)
    assert eval_step._cache_size() == 1  # the ragged 3 was padded to 5, not compiled anew


def test_evaluate_errors(lenet):
    net, params = lenet
    with pytest.raises(ValueError, match="same number"):
        evaluate(net.apply, params, np.zeros((4, 32, 32, 1), np.float32), np.zeros(3, np.int32))
    with pytest.raises(ValueError, match="batch_size.*>= 1, got 0"):
        evaluate(net.apply, params, np.zeros((4, 32, 32, 1), np.float32), np.zeros(4, np.int32), batch_size=0)


def test_ensemble_step_equals_each_model_trained_alone(batch):
    net = models.lenet5(impl="lax")
    x, y = batch
    optimizer = optax.sgd(0.05)
    members = [net.init(k, (-1, 32, 32, 1))[1] for k in jax.random.split(jax.random.key(3), 2)]
    stacked = stack_params(members)
    ens_step = make_train_step(net.apply, optimizer, ensemble=True, donate=False)
    new_stacked, _, metrics = ens_step(stacked, jax.vmap(optimizer.init)(stacked), x, y)
    assert metrics["loss"].shape == (2,)
    step = make_train_step(net.apply, optimizer, donate=False)
    for k, p in enumerate(members):
        alone, _, m = step(p, optimizer.init(p), x, y)
        np.testing.assert_allclose(new_stacked["conv2"]["w"][k], alone["conv2"]["w"], rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(metrics["loss"][k], m["loss"], rtol=1e-5)


# --------------------------------------------------------------------------- the training loop

QUICK = dict(limit=96, epochs=2, batch_size=32, impl="lax", progress=False)  # 3 steps an epoch


def _params(out):
    return {k: v for k, v in np.load(os.path.join(out, "checkpoint.npz"), allow_pickle=False).items() if k.startswith("params")}


def test_fit_writes_metrics_config_and_checkpoint(tmp_path):
    out = str(tmp_path / "run")
    lines = []
    result = fit(TrainConfig(out=out, **QUICK), log=lines.append)
    history = [json.loads(line) for line in open(os.path.join(out, "metrics.jsonl"))]
    assert [h["epoch"] for h in history] == [1, 2]
    assert all(0.0 <= h["test_accuracy"] <= 1.0 and np.isfinite(h["train_loss"]) for h in history)
    assert result["best_test_accuracy"] == max(h["test_accuracy"] for h in history)
    assert json.load(open(os.path.join(out, "config.json")))["limit"] == 96
    state = checkpoint.load_checkpoint(os.path.join(out, "checkpoint.npz"))
    assert int(state["step"]) == 6
    assert any("epoch   2/2" in line for line in lines)


def test_resume_is_bit_identical_to_an_uninterrupted_run(tmp_path, interrupt_at_step):
    whole = str(tmp_path / "whole")
    fit(TrainConfig(out=whole, checkpoint_every=2, **QUICK), log=lambda s: None)

    # The same run, killed at its 5th step (after the checkpoint at step 4), then resumed.
    broken = str(tmp_path / "broken")
    repair = interrupt_at_step(5, "simulated crash")
    with pytest.raises(KeyboardInterrupt):
        fit(TrainConfig(out=broken, checkpoint_every=2, **QUICK), log=lambda s: None)
    assert int(checkpoint.load_checkpoint(os.path.join(broken, "checkpoint.npz"))["step"]) == 4
    repair()
    lines = []
    fit(TrainConfig(out=broken, checkpoint_every=2, resume=True, **QUICK), log=lines.append)
    assert any("resumed" in line and "step 4" in line for line in lines)

    a, b = _params(whole), _params(broken)
    assert a.keys() == b.keys() and len(a) == 10
    for name in a:
        np.testing.assert_array_equal(a[name], b[name], err_msg=name)
    history = [json.loads(line) for line in open(os.path.join(broken, "metrics.jsonl"))]
    assert [h["epoch"] for h in history] == [1, 2]
    # The resumed epoch's metrics are the uninterrupted run's, train_loss included: the checkpoint at step 4
    # carried the loss of step 4 (#25). Only the timing fields differ.
    untimed = lambda h: {k: v for k, v in h.items() if not k.endswith("_s")}  # noqa: E731  time_s, images_per_s, ...
    whole_history = [json.loads(line) for line in open(os.path.join(whole, "metrics.jsonl"))]
    assert [untimed(h) for h in history] == [untimed(h) for h in whole_history]


def test_resume_refuses_a_checkpoint_of_another_config(tmp_path):
    out = str(tmp_path / "run")
    fit(TrainConfig(out=out, **{**QUICK, "epochs": 1}), log=lambda s: None)
    with pytest.raises(ValueError, match="optimizer"):
        fit(TrainConfig(out=out, resume=True, optimizer="sgd", **{**QUICK, "epochs": 1}), log=lambda s: None)
    with pytest.raises(ValueError, match="model"):
        fit(TrainConfig(out=out, resume=True, model="seed_cnn", **{**QUICK, "epochs": 1}), log=lambda s: None)


def test_nan_loss_stops_with_step_and_epoch_and_keeps_the_last_good_checkpoint(tmp_path, monkeypatch):
    out = str(tmp_path / "run")
    real_loop_step, calls = steps.loop_step, []

    def poison_from_step_4(*args):
        run = real_loop_step(*args)

        def poisoned(params, opt_state, x_all, *rest):  # the training set the step cuts its batch from: NaN from step 4
            calls.append(1)
            return run(params, opt_state, x_all * np.nan if len(calls) >= 4 else x_all, *rest)

        return poisoned

    monkeypatch.setattr(steps, "loop_step", poison_from_step_4)
    with pytest.raises(NonFiniteLoss, match=r"nan at step 4 \(epoch 2, step 1 of 3\).*last good checkpoint"):
        fit(TrainConfig(out=out, checkpoint_every=1, **QUICK), log=lambda s: None)
    state = checkpoint.load_checkpoint(os.path.join(out, "checkpoint.npz"))
    assert int(state["step"]) == 3
    assert all(np.isfinite(leaf).all() for leaf in jax.tree_util.tree_leaves(state["params"]))


def test_config_errors():
    with pytest.raises(ValueError, match="unknown `optimizer` 'rmsprop'"):
        TrainConfig(optimizer="rmsprop").validate()
    with pytest.raises(ValueError, match="--data-dir"):
        TrainConfig(data="mnist").validate()


# --------------------------------------------------------------------------- the command line


def _jaxconv(*args, cwd, timeout=240):
    return subprocess.run([sys.executable, "-m", "jaxconv.cli", *args], cwd=cwd, capture_output=True, text=True,
                          timeout=timeout)


def _jaxconv_env(*args, cwd, env, timeout=240):
    return subprocess.run([sys.executable, "-m", "jaxconv.cli", *args], cwd=cwd, capture_output=True, text=True,
                          timeout=timeout, env=env)


def test_cli_train_end_to_end(tmp_path):
    out = tmp_path / "cli"
    env = {k: v for k, v in os.environ.items() if k != "JAX_COMPILATION_CACHE_DIR"}  # the CLI's own cache, not the suite's
    env["XDG_CACHE_HOME"] = str(tmp_path / "cache")
    run = _jaxconv_env("train", "--limit", "96", "--epochs", "1", "--batch-size", "32", "--ensemble", "2",
                       "--impl", "lax", "--no-progress", "--out", str(out), cwd=tmp_path, env=env)
    assert run.returncode == 0, run.stderr
    assert os.listdir(tmp_path / "cache" / "jaxconv" / "xla")  # compiled steps kept for the next run
    assert "epoch   1/1" in run.stdout and "members" in run.stdout
    assert "best test accuracy" in run.stdout
    assert {"config.json", "metrics.jsonl", "checkpoint.npz"} <= set(os.listdir(out))
    record = json.loads(open(out / "metrics.jsonl").read().splitlines()[0])
    assert len(record["test_accuracy_each"]) == 2


@pytest.mark.parametrize(
    "args, message",
    [
        (["train", "--epochs", "0"], "--epochs: expected a whole number >= 1"),
        (["train", "--optimizer", "rmsprop"], "invalid choice: 'rmsprop'"),
        (["train", "--lr", "-1"], "--lr: expected a finite number > 0"),
        (["train", "--data", "mnist"], "--data-dir"),
        (["summary", "lenet5", "--input-shape", "32,32"], "three positive sizes"),
    ],
)
def test_cli_bad_values_exit_2_without_traceback(tmp_path, args, message):
    run = _jaxconv(*args, *(["--out", str(tmp_path)] if args[0] == "train" else []), cwd=tmp_path)
    assert run.returncode == 2
    assert message in run.stderr
    assert "Traceback" not in run.stderr


@pytest.mark.slow  # ~6 s subprocess: the sharded step itself is checked in test_parallel
def test_cli_cpu_devices_splits_each_batch(tmp_path):
    out = tmp_path / "two"
    run = _jaxconv("train", "--cpu-devices", "2", "--limit", "64", "--epochs", "1", "--batch-size", "32",
                   "--impl", "lax", "--no-progress", "--out", str(out), cwd=tmp_path)
    assert run.returncode == 0, run.stderr
    assert "data-parallel over 2 devices in 1 process(es)" in run.stdout
    odd = _jaxconv("train", "--cpu-devices", "2", "--batch-size", "31", "--limit", "64", "--out", str(out), cwd=tmp_path)
    assert odd.returncode == 2 and "multiple of the number of devices (=2)" in odd.stderr and "Traceback" not in odd.stderr


def _free_port():
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow  # three JAX processes, ~30-70 s; the mechanism is covered by tests/test_parallel.py
def test_cli_two_processes_train_like_one_process_with_the_same_devices(tmp_path):
    """jaxconv train across 2 processes x 2 CPU devices (gloo on loopback) = 1 process x 4 devices."""
    common = ["train", "--limit", "64", "--epochs", "1", "--batch-size", "32", "--impl", "lax", "--no-progress"]
    env = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=2"}
    coordinator = f"127.0.0.1:{_free_port()}"
    procs = [
        subprocess.Popen(
            [sys.executable, "-m", "jaxconv.cli", *common, "--out", str(tmp_path / "multi"), "--coordinator",
             coordinator, "--num-processes", "2", "--process-id", str(i)],
            cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )
        for i in range(2)
    ]
    try:
        outputs = [p.communicate(timeout=240) for p in procs]
    finally:
        for p in procs:
            p.kill()
    assert [p.returncode for p in procs] == [0, 0], outputs[0][1][-2000:] + outputs[1][1][-2000:]
    assert "data-parallel over 4 devices in 2 process(es)" in outputs[0][0]
    assert "best test accuracy" in outputs[0][0] and "best test accuracy" not in outputs[1][0]  # process 0 reports
    single = subprocess.run(
        [sys.executable, "-m", "jaxconv.cli", *common, "--out", str(tmp_path / "single"), "--cpu-devices", "4"],
        cwd=tmp_path, capture_output=True, text=True, timeout=240,
    )
    assert single.returncode == 0, single.stderr
    a, b = _params(str(tmp_path / "multi")), _params(str(tmp_path / "single"))
    assert a.keys() == b.keys() and len(a) == 10
    for name in a:
        # gloo's cross-process all-reduce sums in another order than the in-process one, and Adam's
        # g / sqrt(v) magnifies that rounding for near-zero gradients: 2 of fc3's 48,000 weights
        # differed by 1.7e-6 (session 6; also on session 5's code), so atol 1e-5 on weights ~0.1.
        np.testing.assert_allclose(a[name], b[name], rtol=1e-5, atol=1e-5, err_msg=name)


def test_cli_summary_prints_the_lenet_table(tmp_path):
    run = _jaxconv("summary", "lenet5", cwd=tmp_path)
    assert run.returncode == 0
    assert "61,706" in run.stdout and "(28, 28, 6)" in run.stdout
