"""experiments/ablate_resnet20.py: its networks are the ones it claims, and --quick prints every variant.

The networks are checked here against the real models (the same params with every switch on)
and against parameter counts worked out by hand; the script runs end to end once, as a user
runs it (slow tier: it compiles six ResNet-20 programs). No timing assertions.
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

# By hand, from ResNet-20's layers (3x3 convs without bias; BN: gamma and beta per channel):
#   BatchNorm channels: bn1 16 + 2 per block (3·16 + 3·32 + 3·64) + projections' 32 + 64 = 784, x2 params
#   projections (option B): 1x1 convs 16·32 + 32·64 = 2,560, their BN 2·(32 + 64) = 192
#   3x3 convs: 9·(3·16 + 6·16·16 + 16·32 + 5·32·32 + 32·64 + 5·64·64) = 267,696; as 1x1 convs a ninth of
#   that, 29,744; as 1x1 convs with groups = gcd(n_C, n_C'): 3·16 + 6·16 + 32 + 5·32 + 64 + 5·64 = 720
FULL = 272_474
PARAMS = {
    "full": FULL,
    "no-bn": FULL - 2 * 784,
    "no-residual": FULL - 2_560 - 192,
    "cheap-3x3": FULL - 267_696 + 29_744,
    "forward-only": FULL,
    "no-update": FULL,
    "cheap-3x3-grouped": FULL - 267_696 + 720,
    "cheap-3x3-elementwise": FULL - 267_696 + 720,
}


def _import(name):
    sys.path.insert(0, EXPERIMENTS)
    try:
        return __import__(name)
    finally:
        sys.path.pop(0)


@pytest.fixture(scope="module")
def ablate():
    return _import("ablate_resnet20")


@pytest.fixture(scope="module")
def ablation():
    return _import("_ablation")  # the harness ablate_resnet20 and ablate_lenet5 share


def test_every_variant_has_its_hand_counted_params_in_both_frameworks(ablate):
    assert set(PARAMS) == set(ablate.VARIANTS + ablate.EXTRA_VARIANTS)
    for variant in PARAMS:
        n_jaxconv, n_torch = ablate.param_counts(ablate.variant(variant))
        assert n_jaxconv == PARAMS[variant], variant
        if HAVE_TORCH:
            assert n_torch == PARAMS[variant], variant
    ablate.check_full_networks()  # raises unless both full networks have models.resnet20's count


def test_all_switches_on_is_models_resnet20(ablate):
    """Same names, shapes and initial values under one key: 'full' and the variants share one network."""
    import jax

    from jaxconv.models import resnet20

    shape, mine = ablate.resnet20_variant().init(jax.random.key(0), (-1, 32, 32, 3))
    real_shape, real = resnet20().init(jax.random.key(0), (-1, 32, 32, 3))
    assert shape == real_shape == (-1, 10)
    assert jax.tree.structure(mine) == jax.tree.structure(real)
    for a, b in zip(jax.tree.leaves(mine), jax.tree.leaves(real)):
        np.testing.assert_array_equal(a, b)
    assert jax.tree.structure(ablate.resnet20_variant().init_state((-1, 32, 32, 3))[1]) == jax.tree.structure(
        resnet20().init_state((-1, 32, 32, 3))[1]
    )


# (n_C, n_C', s) of ResNet-20's 3x3 convolutions: the stem (groups 1), depthwise, and depthwise x2 at stride 2.
CHEAP_SHAPES = [(3, 16, 1), (16, 16, 1), (16, 32, 2), (32, 64, 2)]


@pytest.mark.parametrize("n_C, n_C_out, s", CHEAP_SHAPES)
def test_cheap_conv_is_the_grouped_1x1_conv(ablate, n_C, n_C_out, s):
    """The written-out op computes what Conv2D(n_C', 1, stride=s, groups=gcd) computes, with the same params."""
    import math

    import jax

    from jaxconv import Conv2D

    x = np.random.default_rng(0).standard_normal((2, 8, 8, n_C))  # (m, n_H, n_W, n_C)
    shape, params = ablate.cheap_conv(n_C_out, s).init(jax.random.key(1), (-1, 8, 8, n_C))
    conv = Conv2D(n_C_out, 1, stride=s, groups=math.gcd(n_C, n_C_out), use_bias=False)
    conv_shape, conv_params = conv.init(jax.random.key(1), (-1, 8, 8, n_C))
    assert shape == conv_shape and params["w"].shape == conv_params["w"].shape
    y = ablate.cheap_conv(n_C_out, s).apply(params, x)
    np.testing.assert_allclose(y, conv.apply(params, x), rtol=1e-12, atol=1e-12)  # float64 (conftest)
    assert y.shape == (2, 8 // s, 8 // s, n_C_out)


@pytest.mark.skipif(not HAVE_TORCH, reason="PyTorch not installed")
@pytest.mark.parametrize("n_C, n_C_out, s", CHEAP_SHAPES)
def test_torch_cheap_conv_is_the_grouped_1x1_conv(ablate, n_C, n_C_out, s):
    import math

    import torch

    net = ablate.torch_resnet20_variant(conv3x3="elementwise")
    cheap_conv = type(net.conv1)(n_C, n_C_out, s)  # the network's CheapConv module class
    conv = torch.nn.Conv2d(n_C, n_C_out, 1, s, groups=math.gcd(n_C, n_C_out), bias=False)
    assert conv.weight.shape == cheap_conv.weight.shape
    conv.weight.data = cheap_conv.weight.data.clone()
    x = torch.randn(2, n_C, 8, 8, dtype=torch.float64)  # (m, n_C, n_H, n_W)
    torch.testing.assert_close(cheap_conv.double()(x), conv.double()(x), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("switches", [{"bn": False}, {"residual": False}, {"conv3x3": "1x1"}, {"conv3x3": "grouped"}, {"conv3x3": "elementwise"}])
def test_variants_keep_the_output_shape(ablate, switches):
    import jax

    model = ablate.resnet20_variant(**switches)
    shape, params = model.init(jax.random.key(0), (-1, 32, 32, 3))
    _, state = model.init_state((-1, 32, 32, 3))
    logits = jax.eval_shape(lambda p, s, x: model.apply(p, x, state=s, train=True)[0], params, state, jax.ShapeDtypeStruct((2, 32, 32, 3), np.float32))
    assert shape == (-1, 10) and logits.shape == (2, 10)


@pytest.mark.skipif(not HAVE_TORCH, reason="PyTorch not installed")
def test_torch_all_switches_on_is_benchmarks_model(ablate):
    import torch

    benchmark = _import("benchmark")
    x = np.zeros((2, 32, 32, 3), np.float32)
    real = benchmark.torch_resnet_step(x, np.zeros(2, np.int32)).model.state_dict()
    torch.manual_seed(0)  # as torch_resnet_step
    mine = ablate.torch_resnet20_variant().state_dict()
    assert list(mine) == list(real)
    for name in real:
        torch.testing.assert_close(mine[name], real[name], rtol=0, atol=0)
    for switches in ({"bn": False}, {"residual": False}, {"conv3x3": "1x1"}, {"conv3x3": "grouped"}, {"conv3x3": "elementwise"}):
        out = ablate.torch_resnet20_variant(**switches).train()(torch.zeros(2, 3, 32, 32))
        assert out.shape == (2, 10), switches


def test_options(ablate):
    args = ablate.parse_args(["--variants", "no-bn", "no-bn", "forward-only"])
    assert args.variants == ["full", "no-bn", "forward-only"]  # 'full' always first: the deltas need it
    assert args.threads == [1, 2] and args.batch == [128]
    assert ablate.parse_args(["--variants", "cheap-3x3-grouped"]).variants == ["full", "cheap-3x3-grouped"]
    quick = ablate.parse_args(["--quick"])
    assert (quick.batch, quick.rounds, quick.steps, quick.threads) == ([8], 1, 1, [1])
    assert ablate.parse_args(["--quick", "--threads", "1", "2"]).threads == [1, 2]


def test_one_thread_env_keeps_the_users_xla_flags(ablation, monkeypatch):
    monkeypatch.setenv("XLA_FLAGS", "--xla_backend_optimization_level=0")
    env = ablation.thread_env(1)
    assert env["XLA_FLAGS"].split() == ["--xla_backend_optimization_level=0", ablation.ONE_THREAD_XLA_FLAG]
    assert env["OMP_NUM_THREADS"] == "1"
    assert ablation.thread_env(2)["XLA_FLAGS"] == "--xla_backend_optimization_level=0"


@pytest.mark.parametrize("argv", [["--variants", "no-such"], ["--threads", "0"], ["--worker", "w.json", "--threads", "1", "2"]])
def test_bad_arguments_are_usage_errors(ablate, argv):
    with pytest.raises(SystemExit) as e:
        ablate.parse_args(argv)
    assert e.value.code == 2


def test_combined_variants_merge_switches_and_mode(ablate):
    both = ablate.variant("cheap-3x3+no-bn+no-residual")
    assert both.network == {"conv3x3": "1x1", "bn": False, "residual": False} and both.mode == "train"
    assert ablate.variant("no-bn+no-update") == type(both)("no-bn+no-update", {"bn": False}, "grad")
    assert ablate.variant("forward-only").network == {} and ablate.variant("forward-only").mode == "forward"
    args = ablate.parse_args(["--variants", "cheap-3x3+no-bn", "no-bn+forward-only"])
    assert args.variants == ["full", "cheap-3x3+no-bn", "no-bn+forward-only"]
    assert ablate.param_counts(ablate.variant("cheap-3x3+no-bn"))[0] == FULL - 267_696 + 29_744 - 2 * 784


@pytest.mark.parametrize("variant, message", [
    ("forward-only+no-update", "'forward-only' and 'no-update' are both modes"),
    ("cheap-3x3+cheap-3x3-grouped", "'cheap-3x3' and 'cheap-3x3-grouped' set `conv3x3`"),
    ("no-bn+no-bn", "'no-bn' is named twice"),
    ("full+no-bn", "'full' is the step with nothing removed"),
    ("no-bn+no-such", "unknown component 'no-such'"),
])
def test_contradictory_combinations_are_usage_errors_naming_the_variant(ablate, capsys, variant, message):
    for option in ("--variants", "--stack"):
        with pytest.raises(SystemExit) as e:
            ablate.parse_args([option, variant])
        assert e.value.code == 2
        err = capsys.readouterr().err
        assert f"variant {variant!r}" in err and message in err, err


def test_stack_times_the_cumulative_variants(ablate, ablation):
    assert ablation.stack_variants(["cheap-3x3", "no-bn", "no-residual"]) == [
        "full", "cheap-3x3", "cheap-3x3+no-bn", "cheap-3x3+no-bn+no-residual"]
    args = ablate.parse_args(["--stack", "cheap-3x3", "no-bn", "no-update"])
    assert args.variants == ["full", "cheap-3x3", "cheap-3x3+no-bn", "cheap-3x3+no-bn+no-update"]  # nothing else by default
    args = ablate.parse_args(["--stack", "cheap-3x3", "no-bn", "--variants", "no-residual", "cheap-3x3"])
    assert args.variants == ["full", "cheap-3x3", "cheap-3x3+no-bn", "no-residual"]
    assert ablate.parse_args([]).stack == [] and ablate.parse_args([]).variants == list(ablate.VARIANTS)


@pytest.mark.parametrize("stack", [["no-update", "forward-only"], ["cheap-3x3", "cheap-3x3-grouped"], ["full"]])
def test_a_stack_whose_cumulative_variant_contradicts_is_a_usage_error(ablate, capsys, stack):
    with pytest.raises(SystemExit) as e:
        ablate.parse_args(["--stack", *stack])
    assert e.value.code == 2 and "--stack" in capsys.readouterr().err


def _fake_row(variant, jaxconv_ms, torch_ms, threads=2, batch=128):
    """A row as the worker writes it, with only the fields the stack's columns read filled in."""
    other = ("speed_vs_torch", "jaxconv_delta_ms", "torch_delta_ms", "gap_closed_ms", "jaxconv_cores", "torch_cores")
    return {"threads": threads, "batch": batch, "variant": variant, "jaxconv_ms": jaxconv_ms, "torch_ms": torch_ms,
            "gap_ms": None if torch_ms is None else jaxconv_ms - torch_ms, **dict.fromkeys(other)}


def test_stack_deltas_telescope_to_the_full_gap(ablation):
    stack = ["cheap-3x3", "no-bn", "no-update"]
    ms = {"full": (100.0, 60.0), "cheap-3x3": (70.0, 45.0), "cheap-3x3+no-bn": (52.0, 38.5), "cheap-3x3+no-bn+no-update": (41.0, 33.0)}
    rows = [_fake_row(v, *ms[v]) for v in ms] + [_fake_row("no-residual", 95.0, 58.0)]
    ablation.add_stack_deltas(rows, stack)
    by = {r["variant"]: r for r in rows}
    assert by["full"]["jaxconv_prev_delta_ms"] is None and by["no-residual"]["gap_closed_prev_ms"] is None
    assert by["cheap-3x3+no-bn"]["jaxconv_prev_delta_ms"] == 52.0 - 70.0
    assert by["cheap-3x3+no-bn"]["torch_prev_delta_ms"] == 38.5 - 45.0
    closed = [(40.0 - 25.0), (25.0 - 13.5), (13.5 - 8.0)]  # each row's gap (jaxconv - PyTorch) after the one before
    assert [by[v]["gap_closed_prev_ms"] for v in list(ms)[1:]] == closed
    assert sum(closed) + 8.0 == 40.0  # ... plus the last row's gap: the full step's gap
    line = ablation.telescoping_line(rows, stack)
    assert "(+15.0 +11.5 +5.5)" in line and "(+8.0) sum to +40.0 ms" in line and "full step's gap is +40.0 ms" in line
    table = ablation.table_rows(rows, stack)
    assert len(table[0]) == len(ablation.header(stack)) == len(ablation.HEADER) + 3
    assert table[2][-3:] == ["-18.0", "-6.5", "+11.5"] and table[0][-3:] == ["-", "-", "-"]


def test_stack_without_torch_has_no_gap_to_attribute(ablation):
    rows = [_fake_row("full", 100.0, None), _fake_row("no-bn", 90.0, None)]
    ablation.add_stack_deltas(rows, ["no-bn"])
    assert rows[1]["jaxconv_prev_delta_ms"] == -10.0 and rows[1]["gap_closed_prev_ms"] is None
    assert "no PyTorch" in ablation.telescoping_line(rows, ["no-bn"])


@pytest.mark.slow  # compiles six ResNet-20 programs in a worker subprocess
def test_quick_prints_every_variant(tmp_path, ablate):
    out = tmp_path / "ablate"
    proc = subprocess.run([sys.executable, os.path.join(EXPERIMENTS, "ablate_resnet20.py"), "--quick", "--out", str(out)],
                          capture_output=True, text=True, cwd=tmp_path, timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    table = proc.stdout.split("All thread settings:")[1]
    assert "Machine: " in table and "torch " in table
    for variant in ablate.VARIANTS:
        assert any(line.split()[:2] == ["1", variant] for line in table.splitlines()), variant
    with open(out / "ablate_resnet20.csv") as f:
        rows = list(csv.DictReader(f))
    assert [r["variant"] for r in rows] == list(ablate.VARIANTS)
    for r in rows:
        assert r["threads"] == "1" and float(r["jaxconv_ms"]) > 0
        assert int(r["jaxconv_params"]) == PARAMS[r["variant"]]
        if HAVE_TORCH:
            assert float(r["torch_ms"]) > 0 and int(r["torch_params"]) == PARAMS[r["variant"]]
    full = rows[0]
    assert float(full["jaxconv_delta_ms"]) == 0
    assert (out / "ablate_resnet20.json").exists() and (out / "ablate_resnet20.md").exists()
    assert not list(out.glob("worker_*.json"))  # the workers' files are folded in and removed
