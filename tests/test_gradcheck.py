"""jaxconv.gradcheck on a single op, a layer and a whole model's cost; it must catch a wrong custom VJP."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxconv import Conv2D, conv2d, models
from jaxconv.gradcheck import GradcheckError, GradcheckReport, gradcheck
from jaxconv.train import make_cost

RNG = np.random.default_rng(0)
X = RNG.standard_normal((1, 5, 5, 2))
W = RNG.standard_normal((3, 3, 2, 2))


def test_single_op_full_mode_hand_vs_lax_vs_finite_differences():
    f = lambda x, w: (conv2d(x, w, stride=2, padding=1, impl="hand") ** 2).sum()  # noqa: E731
    g = lambda x, w: (conv2d(x, w, stride=2, padding=1, impl="lax") ** 2).sum()  # noqa: E731
    report = gradcheck(f, (X, W), argnums=(0, 1), reference=g, mode="full")
    assert isinstance(report, GradcheckReport) and report.ok
    assert [(r.path, r.against) for r in report.rows] == [
        ("args[0]", "finite differences"), ("args[0]", "reference"), ("args[1]", "finite differences"), ("args[1]", "reference")]
    # float64 end to end: finite differences agree to ~1e-9, hand and lax to rounding.
    assert report.max_rel("finite differences") < 1e-7
    assert report.max_rel("reference") < 1e-12


@jax.custom_vjp
def _square_wrong(x):
    return x**2


_square_wrong.defvjp(lambda x: (x**2, x), lambda x, g: (g * x,))  # forgets the factor 2 of d(x²)/dx = 2x


def test_catches_a_wrong_custom_vjp():
    f = lambda x: _square_wrong(x).sum()  # noqa: E731
    with pytest.raises(GradcheckError, match=r"(?s)gradient over tolerance.*finite differences .* NO") as info:
        gradcheck(f, (RNG.standard_normal(6),), mode="full")
    assert info.value.report.max_rel("finite differences") == pytest.approx(0.5, rel=1e-6)  # g = x vs 2x
    # Directional mode catches it too, and so does the reference (the right formula) alone.
    with pytest.raises(GradcheckError):
        gradcheck(f, (RNG.standard_normal(6),))
    with pytest.raises(GradcheckError) as info:
        gradcheck(f, (RNG.standard_normal(6),), reference=lambda x: (x**2).sum())
    assert {(r.against, r.ok) for r in info.value.report.rows} == {("finite differences", False), ("reference", False)}


def test_layer_params_by_path():
    layer = Conv2D(3, 3, padding=1, impl="hand")
    _, params = layer.init(jax.random.key(0), (-1, 5, 5, 2))
    report = gradcheck(lambda p, x: jnp.tanh(layer.apply(p, x)).sum(), (params, X))
    assert [r.path for r in report.rows] == ["b", "w"]
    assert report.ok and report.max_rel("finite differences") < 1e-7


def _cost(impl):
    net = models.lenet5(impl=impl)
    return lambda params, x, y: make_cost(net.apply)(params, x, y)[0]


def test_small_model_cost_hand_vs_lax():
    # A whole model's cost in the default suite: conv, relu, pool, dense, cross-entropy.
    from jaxconv import Dense, Flatten, MaxPool, Relu, serial

    def cost(impl):
        net = serial(Conv2D(2, 3, impl=impl), Relu(), MaxPool(2), Flatten(), Dense(3))
        return net, lambda params, x, y: make_cost(net.apply)(params, x, y)[0]

    net, cost_hand = cost("hand")
    _, params = net.init(jax.random.key(0), (-1, 6, 6, 1))
    x, y = RNG.standard_normal((2, 6, 6, 1)), np.array([0, 2])
    report = gradcheck(cost_hand, (params, x, y), reference=cost("lax")[1], directions=2)
    assert [r.path for r in report.rows[::2]] == ["conv1/b", "conv1/w", "fc1/b", "fc1/w"]
    assert report.max_rel("reference") < 1e-12 and report.max_rel("finite differences") < 1e-7


@pytest.mark.slow
def test_lenet5_cost_hand_vs_lax_vs_finite_differences():
    _, params = models.lenet5().init(jax.random.key(0), (-1, 32, 32, 1))
    x = jax.random.normal(jax.random.key(1), (2, 32, 32, 1))
    y = jnp.array([3, 7])
    report = gradcheck(_cost("hand"), (params, x, y), reference=_cost("lax"), directions=1)
    print(report)
    assert {r.path for r in report.rows} >= {"conv1/w", "conv2/b", "fc5/w"}
    assert report.max_rel("reference") < 1e-12 and report.max_rel("finite differences") < 1e-7


def test_float64_even_when_x64_is_off():
    # Float32 inputs, x64 disabled: the check still runs in float64, so the errors are far below float32's 1e-7.
    with jax.enable_x64(False):
        x = np.asarray(RNG.standard_normal(5), np.float32)
        report = gradcheck(lambda x: jnp.sin(x).prod(), (x,), mode="full")
    assert report.max_rel("finite differences") < 1e-8


def test_report_prints_a_table():
    text = str(gradcheck(lambda p: (p["a"]["b"] ** 2).sum(), ({"a": {"b": np.ones(2)}},)))
    header, row = text.splitlines()
    assert header.split() == ["leaf", "against", "max", "abs", "err", "max", "rel", "err", "ok"]
    assert row.startswith("a/b") and row.endswith("yes")


@pytest.mark.parametrize(
    "kwargs, error, match",
    [
        (dict(args=[1.0]), TypeError, r"gradcheck: `args` must be a tuple of f's arguments, got list"),
        (dict(argnums=2), ValueError, r"gradcheck: `argnums` must be an int or ints in \[0, 1\)"),
        (dict(mode="exact"), ValueError, r"gradcheck: unknown `mode` 'exact'. It needs to be one of"),
        (dict(directions=0), ValueError, r"gradcheck: `directions` must be an int >= 1, got 0"),
        (dict(eps=0.0), ValueError, r"gradcheck: `eps` must be a positive number, got 0.0"),
        (dict(f=lambda x: x), ValueError, r"gradcheck: `f` must return a scalar, got shape \(3,\)"),
        (dict(reference=1), TypeError, r"gradcheck: `reference` must be None or a callable like `f`, got int"),
    ],
)
def test_gradcheck_errors(kwargs, error, match):
    call = dict(f=lambda x: x.sum(), args=(np.ones(3),))
    call.update(kwargs)
    with pytest.raises(error, match=match):
        gradcheck(call.pop("f"), call.pop("args"), **call)


@pytest.mark.slow
def test_readme_gradcheck_example_runs():
    # The README's "Gradient checking" block, in a fresh interpreter (x64 off, as a user runs it).
    import pathlib
    import re
    import subprocess
    import sys

    root = pathlib.Path(__file__).resolve().parents[1]
    section = (root / "README.md").read_text().split("## Gradient checking", 1)[1]
    code = re.search(r"```python\n(.*?)```", section, re.S).group(1)
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=600,
                         env={**__import__("os").environ, "PYTHONPATH": str(root)})
    assert run.returncode == 0, run.stderr
    rows = run.stdout.splitlines()[1:]
    assert len(rows) == 20 and all(row.endswith("yes") for row in rows), run.stdout
