"""experiments/ablate_lenet5.py: its networks are the ones it claims, its modes compute what they say, and --quick runs.

The networks are checked against the real models (the same params and outputs with every switch on)
and against parameter counts worked out by hand; the forward-only and no-update steps against plain
JAX; the script runs end to end once, as a user runs it (slow tier). No timing assertions.
"""

from __future__ import annotations

import csv
import importlib.util
import os
import subprocess
import sys

import numpy as np
import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
EXPERIMENTS = os.path.join(ROOT, "experiments")
HAVE_TORCH = importlib.util.find_spec("torch") is not None

# By hand, from LeNet-5's layers (f·f·n_C·n_C' weights + n_C' biases; n·n' + n' for a dense layer):
#   conv1 5·5·1·6 + 6 = 156, conv2 5·5·6·16 + 16 = 2,416, fc3 400·120 + 120 = 48,120,
#   fc4 120·84 + 84 = 10,164, fc5 84·10 + 10 = 850: 61,706 in all.
#   cheap-conv1: conv1 as a 1x1 conv 1·6 + 6 = 12 (144 fewer); cheap-conv2: 6·16 + 16 = 112 (2,304 fewer);
#   cheap-dense: a weight and a bias per output, 2·(120 + 84 + 10) = 428 for the dense layers' 59,134.
FULL = 61_706
PARAMS = {
    "full": FULL,
    "cheap-conv1": FULL - 156 + 12,
    "cheap-conv2": FULL - 2_416 + 112,
    "no-pool": FULL,
    "cheap-dense": FULL - 59_134 + 428,
    "forward-only": FULL,
    "no-update": FULL,
}
SWITCHES = [{"conv1": "1x1"}, {"conv2": "1x1"}, {"pool": "subsample"}, {"dense": "cheap"},
            {"conv1": "1x1", "conv2": "1x1", "pool": "subsample", "dense": "cheap"}]


def _import(name):
    sys.path.insert(0, EXPERIMENTS)
    try:
        return __import__(name)
    finally:
        sys.path.pop(0)


@pytest.fixture(scope="module")
def ablate():
    return _import("ablate_lenet5")


def test_every_variant_has_its_hand_counted_params_in_both_frameworks(ablate):
    assert set(PARAMS) == set(ablate.VARIANTS + ablate.EXTRA_VARIANTS)
    for variant in PARAMS:
        n_jaxconv, n_torch = ablate.param_counts(ablate.variant(variant))
        assert n_jaxconv == PARAMS[variant], variant
        if HAVE_TORCH:
            assert n_torch == PARAMS[variant], variant
    assert ablate.param_counts(ablate.variant("cheap-conv1+cheap-conv2+no-update"))[0] == FULL - 144 - 2_304
    ablate.check_full_networks()  # raises unless both full networks have models.lenet5's count


def test_all_switches_on_is_models_lenet5(ablate):
    """Same names, shapes, initial values and outputs under one key: 'full' and the variants share one network."""
    import jax

    from jaxconv.models import lenet5

    shape, mine = ablate.lenet5_variant().init(jax.random.key(0), (-1, 32, 32, 1))
    real_shape, real = lenet5().init(jax.random.key(0), (-1, 32, 32, 1))
    assert shape == real_shape == (-1, 10)
    assert jax.tree.structure(mine) == jax.tree.structure(real)
    for a, b in zip(jax.tree.leaves(mine), jax.tree.leaves(real)):
        np.testing.assert_array_equal(a, b)
    x = np.random.default_rng(0).standard_normal((2, 32, 32, 1))  # (m, n_H, n_W, n_C), float64 (conftest)
    np.testing.assert_array_equal(ablate.lenet5_variant().apply(mine, x), lenet5().apply(real, x))


@pytest.mark.parametrize("switches", SWITCHES)
def test_variants_keep_the_shapes(ablate, switches):
    """Each cheap stand-in gives its layer's output shape, so the rest of the network is unchanged."""
    import jax

    model = ablate.lenet5_variant(**switches)
    shape, params = model.init(jax.random.key(0), (-1, 32, 32, 1))
    logits = jax.eval_shape(model.apply, params, jax.ShapeDtypeStruct((2, 32, 32, 1), np.float32))
    assert shape == (-1, 10) and logits.shape == (2, 10)
    if HAVE_TORCH:
        import torch

        assert ablate.torch_lenet5_variant(**switches)(torch.zeros(2, 1, 32, 32)).shape == (2, 10)


def test_cheap_conv_is_a_1x1_conv_of_the_cropped_input(ablate):
    import jax

    from jaxconv import Conv2D

    x = np.random.default_rng(1).standard_normal((2, 14, 14, 6))  # conv2's input (m, n_H, n_W, n_C)
    shape, params = ablate.cropped(Conv2D(16, 1), 2).init(jax.random.key(1), (-1, 14, 14, 6))
    assert shape == Conv2D(16, 5).init(jax.random.key(1), (-1, 14, 14, 6))[0] == (-1, 10, 10, 16)
    np.testing.assert_array_equal(ablate.cropped(Conv2D(16, 1), 2).apply(params, x), Conv2D(16, 1).apply(params, x[:, 2:-2, 2:-2, :]))
    np.testing.assert_array_equal(ablate.subsample(2).apply({}, x), x[:, ::2, ::2, :])


@pytest.mark.skipif(not HAVE_TORCH, reason="PyTorch not installed")
def test_torch_all_switches_on_is_benchmarks_model(ablate):
    import torch

    benchmark = _import("benchmark")
    x = np.random.default_rng(2).standard_normal((2, 32, 32, 1)).astype(np.float32)
    real_model = benchmark.torch_step(x, np.zeros(2, np.int32)).model
    torch.manual_seed(0)  # as torch_step
    mine_model = ablate.torch_lenet5_variant()
    real, mine = real_model.state_dict(), mine_model.state_dict()
    assert list(mine) == list(real)
    for name in real:
        torch.testing.assert_close(mine[name], real[name], rtol=0, atol=0)
    xt = torch.from_numpy(x.transpose(0, 3, 1, 2).copy())  # (m, 1, 32, 32)
    torch.testing.assert_close(mine_model(xt), real_model(xt), rtol=0, atol=0)


def test_forward_loss_is_the_mean_loss_in_chunks(ablate):
    """At a batch the train step chunks (256 on CPU: 2 chunks of 128), forward_loss is still J of the whole batch."""
    import jax

    from jaxconv import softmax_cross_entropy
    from jaxconv.train import num_chunks

    model = ablate.lenet5_variant(conv1="1x1")
    _, params = model.init(jax.random.key(0), (-1, 32, 32, 1))
    rng = np.random.default_rng(3)
    x, y = rng.standard_normal((256, 32, 32, 1)), rng.integers(0, 10, 256)
    expected = softmax_cross_entropy(model.apply(params, x), y).mean()
    assert num_chunks(256, "auto") == (2 if jax.default_backend() == "cpu" else 1)
    np.testing.assert_allclose(ablate.forward_loss(model.apply)(params, x, y), expected, rtol=1e-12)


def test_no_update_step_keeps_the_gradients_and_the_params(ablate):
    """make_train_step with keep_gradients: params unchanged, the new opt_state is the gradient of J."""
    import jax

    from jaxconv.train import make_cost, make_train_step

    model = ablate.lenet5_variant(conv2="1x1", dense="cheap")
    _, params = model.init(jax.random.key(0), (-1, 32, 32, 1))
    rng = np.random.default_rng(4)
    x, y = rng.standard_normal((4, 32, 32, 1)), rng.integers(0, 10, 4)
    expected = jax.grad(lambda p: make_cost(model.apply)(p, x, y)[0])(params)
    optimizer = ablate.keep_gradients()
    new_params, grads, _ = make_train_step(model.apply, optimizer, donate=False)(params, optimizer.init(params), x, y)
    for a, b in zip(jax.tree.leaves(new_params), jax.tree.leaves(params)):
        np.testing.assert_array_equal(a, b)
    for a, b in zip(jax.tree.leaves(grads), jax.tree.leaves(expected)):
        np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-15)


def test_options(ablate):
    args = ablate.parse_args([])
    assert args.variants == list(ablate.VARIANTS) and args.threads == [2] and args.batch == [128, 512]
    assert ablate.parse_args(["--threads", "1", "--batch", "512"]).batch == [512]
    quick = ablate.parse_args(["--quick"])
    assert (quick.batch, quick.rounds, quick.steps, quick.threads) == ([8], 1, 1, [1])
    stack = ablate.parse_args(["--stack", "cheap-conv2", "cheap-conv1", "no-update"])
    assert stack.variants == ["full", "cheap-conv2", "cheap-conv2+cheap-conv1", "cheap-conv2+cheap-conv1+no-update"]


@pytest.mark.parametrize("argv", [["--variants", "no-such"], ["--variants", "forward-only+no-update"], ["--stack", "no-update", "forward-only"],
                                  ["--batch", "0"], ["--threads", "0"]])
def test_bad_arguments_are_usage_errors(ablate, argv):
    with pytest.raises(SystemExit) as e:
        ablate.parse_args(argv)
    assert e.value.code == 2


@pytest.mark.slow  # compiles seven LeNet-5 steps in each framework in a worker subprocess
def test_quick_prints_every_variant(tmp_path, ablate):
    out = tmp_path / "ablate"
    proc = subprocess.run([sys.executable, os.path.join(EXPERIMENTS, "ablate_lenet5.py"), "--quick", "--out", str(out)],
                          capture_output=True, text=True, cwd=tmp_path, timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    table = proc.stdout.split("All thread settings:")[1]
    assert "Machine: " in table and "torch " in table and "LeNet-5 training step, batch 8" in table
    for variant in ablate.VARIANTS:
        assert any(line.split()[:2] == ["1", variant] for line in table.splitlines()), variant
    with open(out / "ablate_lenet5.csv") as f:
        rows = list(csv.DictReader(f))
    assert [r["variant"] for r in rows] == list(ablate.VARIANTS)
    for r in rows:
        assert r["threads"] == "1" and r["batch"] == "8" and float(r["jaxconv_ms"]) > 0
        assert int(r["jaxconv_params"]) == PARAMS[r["variant"]]
        if HAVE_TORCH:
            assert float(r["torch_ms"]) > 0 and int(r["torch_params"]) == PARAMS[r["variant"]]
    assert float(rows[0]["jaxconv_delta_ms"]) == 0
    assert (out / "ablate_lenet5.json").exists() and (out / "ablate_lenet5.md").exists()
    assert not list(out.glob("worker_*.json"))  # the workers' files are folded in and removed
