"""jaxconv.gradcheck on a single op, a layer and a whole model's cost; it must catch a wrong custom VJP."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxconv
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
        (dict(directions=0), ValueError, r"gradcheck: `directions` must be an int in \[1, 10000\], got 0; use mode='full'"),
        (dict(eps=0.0), ValueError, r"gradcheck: `eps` must be a finite number in \[1e-10, 0.1\], got 0.0; e.g. eps=1e-6"),
        (dict(f=lambda x: x), ValueError, r"gradcheck: `f` must return a scalar, got shape \(3,\)"),
        (dict(reference=1), TypeError, r"gradcheck: `reference` must be None or a callable like `f`, got int"),
    ],
)
def test_gradcheck_errors(kwargs, error, match):
    call = dict(f=lambda x: x.sum(), args=(np.ones(3),))
    call.update(kwargs)
    with pytest.raises(error, match=match):
        gradcheck(call.pop("f"), call.pop("args"), **call)


@pytest.mark.parametrize(
    "kwargs, error, match",
    [
        # eps: a step too large or too small for float64 differences could let a wrong (e.g. zero) gradient pass.
        (dict(eps=1e300), ValueError, r"gradcheck: `eps` must be a finite number in \[1e-10, 0.1\], got 1e\+300; e.g. eps=1e-6"),
        (dict(eps=1e-20), ValueError, r"gradcheck: `eps` must be a finite number in \[1e-10, 0.1\], got 1e-20"),
        (dict(eps=float("nan")), ValueError, r"gradcheck: `eps` must be a finite number in \[1e-10, 0.1\], got nan"),
        (dict(eps=float("inf")), ValueError, r"gradcheck: `eps` must be a finite number in \[1e-10, 0.1\], got inf"),
        (dict(eps=-1e-6), ValueError, r"gradcheck: `eps` must be a finite number in \[1e-10, 0.1\], got -1e-06"),
        (dict(eps="1e-6"), TypeError, r"gradcheck: `eps` must be a real number, got str '1e-6'; pass a float, e.g. eps=1e-6"),
        (dict(eps=True), TypeError, r"gradcheck: `eps` must be a real number, got bool True"),
        (dict(rtol=0.0), ValueError, r"gradcheck: `rtol` must be a finite number in \[1e-15, 0.01\], got 0.0; e.g. rtol=1e-6"),
        (dict(rtol=1.0), ValueError, r"gradcheck: `rtol` must be a finite number in \[1e-15, 0.01\], got 1.0"),
        (dict(rtol=float("nan")), ValueError, r"gradcheck: `rtol` must be a finite number in \[1e-15, 0.01\], got nan"),
        (dict(rtol=None), TypeError, r"gradcheck: `rtol` must be a real number, got NoneType None"),
        (dict(atol=-1e-10), ValueError, r"gradcheck: `atol` must be a finite number in \[0, 1e-06\], got -1e-10; e.g. atol=1e-10"),
        (dict(atol=1.0), ValueError, r"gradcheck: `atol` must be a finite number in \[0, 1e-06\], got 1.0"),
        (dict(atol=float("inf")), ValueError, r"gradcheck: `atol` must be a finite number in \[0, 1e-06\], got inf"),
        (dict(directions=20_000), ValueError, r"gradcheck: `directions` must be an int in \[1, 10000\], got 20000"),
        (dict(directions=2.0), TypeError, r"gradcheck: `directions` must be an int, got float 2.0; e.g. directions=3"),
        (dict(directions=True), TypeError, r"gradcheck: `directions` must be an int, got bool True"),
        (dict(mode=None), ValueError, r"gradcheck: unknown `mode` None. It needs to be one of \['directional', 'full'\]"),
        (dict(argnums=None), ValueError, r"gradcheck: `argnums` must be an int or ints in \[0, 1\) \(f has 1 args\), got None"),
        (dict(argnums=True), ValueError, r"gradcheck: `argnums` must be an int or ints in \[0, 1\) \(f has 1 args\), got True"),
        (dict(argnums=(0, 0)), ValueError, r"gradcheck: `argnums` must name each argument once, got \(0, 0\); write \(0,\)"),
        (dict(seed=-1), ValueError, r"gradcheck: `seed` must be an int >= 0, got -1; e.g. seed=0"),
        (dict(f=lambda x: jnp.argmax(x)), TypeError, r"gradcheck: `f` must return a real floating-point scalar, got dtype int"),
        (dict(f=lambda x: (x.sum(), x)), ValueError, r"gradcheck: `f` must return a scalar, got tuple; reduce it"),
        (dict(f=lambda x: jnp.log(x - 1).sum()), ValueError, r"gradcheck: `f` is -inf at `args`, not a finite number"),
        (dict(reference=lambda x: x), ValueError, r"gradcheck: `reference` must return a scalar, got shape \(3,\)"),
    ],
)
def test_gradcheck_refuses_bad_numbers_and_values(kwargs, error, match):
    call = dict(f=lambda x: x.sum(), args=(np.ones(3),))
    call.update(kwargs)
    with pytest.raises(error, match=match):
        gradcheck(call.pop("f"), call.pop("args"), **call)


# Non-float arguments: only floating leaves are differentiated; an argument in `argnums` with none is refused.


@pytest.mark.parametrize("arg, kinds", [(np.arange(3), "int64"), (np.ones(3, bool), "bool"), (3, "int"), ({"n": 2, "s": "a"}, "int, str")])
def test_argument_without_float_leaves_is_refused(arg, kinds):
    with pytest.raises(TypeError, match=rf"gradcheck: argument 0 has no floating-point leaf to differentiate \(its leaves: {kinds}\); drop 0"):
        gradcheck(lambda a: jnp.float64(1.0), (arg,))


def test_only_float_leaves_of_a_pytree_are_differentiated():
    state = {"w": RNG.standard_normal(3), "step": np.int32(4), "on": True, "name": "layer"}
    f = lambda s, x: (jnp.sin(s["w"] * x) * s["step"]).sum() if s["on"] and s["name"] else 0.0  # noqa: E731
    for mode in ("directional", "full"):
        report = gradcheck(f, (state, RNG.standard_normal(3)), mode=mode, reference=f)
        assert [(r.path, r.against) for r in report.rows] == [("w", "finite differences"), ("w", "reference")]
    # A non-float argument outside `argnums` (labels, a string) is passed to f as it is.
    report = gradcheck(lambda x, y, impl: conv2d(x, W, impl=impl)[..., y].sum(), (X, 1, "hand"))
    assert report.ok and [r.path for r in report.rows] == ["args[0]"]


# Planted defects: one wrong element of a custom VJP's gradient (or its filter gradient transposed) must fail
# in every mode: directional, full, and against a reference.

X_C = RNG.standard_normal((1, 4, 4, 2))  # (m, n_H_prev, n_W_prev, n_C_prev)
W_C = RNG.standard_normal((3, 3, 2, 2))  # (f, f, n_C_prev, n_C)


def _conv(x, w):  # (m, 2, 2, n_C): stride 1, no padding
    return jax.lax.conv_general_dilated(x, w, (1, 1), "VALID", dimension_numbers=("NHWC", "HWIO", "NHWC"))


def _one_element(change):
    """The defect in one element of dW, the largest in magnitude (so that a random direction cannot weigh it down)."""

    def plant(dw):
        k = jnp.unravel_index(jnp.argmax(jnp.abs(dw)), dw.shape)
        return dw.at[k].set(change(dw[k]))

    return plant


DEFECTS = {
    "nan": _one_element(lambda v: jnp.nan),
    "inf": _one_element(lambda v: jnp.inf),
    "sign": _one_element(lambda v: -v),
    "factor 1.01": _one_element(lambda v: 1.01 * v),
    "transposed filter gradient": lambda dw: dw.swapaxes(0, 1),  # dW's two f axes swapped
}
MODES = {"directional": {}, "full": dict(mode="full"), "reference": dict(reference=lambda x, w: jnp.sin(_conv(x, w)).sum())}


def _planted_cost(plant):
    """sin(conv(x, w)).sum(), with a custom VJP whose dW goes through `plant`."""

    @jax.custom_vjp
    def conv(x, w):
        return _conv(x, w)

    def backward(residuals, dz):
        dx, dw = jax.vjp(_conv, *residuals)[1](dz)
        return dx, plant(dw)

    conv.defvjp(lambda x, w: (_conv(x, w), (x, w)), backward)
    return lambda x, w: jnp.sin(conv(x, w)).sum()


def _largest_dw_index():
    dw = np.asarray(jax.grad(MODES["reference"]["reference"], argnums=1)(X_C, W_C))
    return "[" + ", ".join(str(int(i)) for i in np.unravel_index(np.argmax(np.abs(dw)), dw.shape)) + "]", dw


def test_planted_cases_are_real_defects():
    # Without a plant the check passes in every mode, and the transposed filter gradient is not dW itself.
    for kwargs in MODES.values():
        assert gradcheck(_planted_cost(lambda dw: dw), (X_C, W_C), argnums=(0, 1), **kwargs).ok
    _, dw = _largest_dw_index()
    assert np.abs(dw - dw.swapaxes(0, 1)).max() > 0.1 * np.abs(dw).max()


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("defect", DEFECTS)
def test_planted_defect_is_caught(defect, mode):
    with pytest.raises(GradcheckError, match=r"gradient over tolerance or not finite") as info:
        gradcheck(_planted_cost(DEFECTS[defect]), (X_C, W_C), argnums=(0, 1), **MODES[mode])
    rows = {(r.path, r.against): r for r in info.value.report.rows}
    against = "reference" if mode == "reference" else "finite differences"
    assert rows["args[0]", against].ok and not rows["args[1]", against].ok  # x's gradient is right, w's is not
    assert not rows["args[1]", "finite differences"].ok  # with a reference, finite differences catch it too
    failed = rows["args[1]", against]
    if defect in ("nan", "inf"):  # the leaf and the element are named, in the row and in the error's first line
        note = f"gradient{_largest_dw_index()[0]} = {defect}"
        assert failed.note == note and not np.isfinite(failed.max_rel)  # nan or inf, as measured
        assert str(info.value).splitlines()[0].endswith(f"first failure: `args[1]` against finite differences: {note}:")
    else:
        assert failed.max_rel > 1e-4  # far above rtol = 1e-6, not at the edge of the tolerance


def test_issue_reproduction_nan_gradient_fails():
    # Issue 25: this passed, printing "max abs err 0.00e+00 ... yes", as Python's max(0.0, nan) is 0.0.
    @jax.custom_vjp
    def sq(x):
        return x * x

    sq.defvjp(lambda x: (sq(x), x), lambda x, g: (jnp.full_like(x, jnp.nan),))
    with pytest.raises(GradcheckError, match=r"first failure: `args\[0\]` against finite differences: gradient\[0\] = nan"):
        jaxconv.gradcheck(lambda x: sq(x).sum(), (jnp.arange(1.0, 5.0),))


def test_nonfinite_reference_gradient_fails_with_its_element():
    plant = DEFECTS["nan"]
    with pytest.raises(GradcheckError) as info:
        gradcheck(MODES["reference"]["reference"], (X_C, W_C), argnums=1, reference=_planted_cost(plant))
    (fd_row, ref_row) = info.value.report.rows
    assert fd_row.ok and not ref_row.ok and ref_row.note == f"reference gradient{_largest_dw_index()[0]} = nan"


@pytest.mark.parametrize("mode, note", [("full", "finite difference[0] = nan"), ("directional", "finite difference along direction 0 = nan")])
def test_nonfinite_finite_difference_fails_with_its_element(mode, note):
    x0 = RNG.standard_normal(4)
    f = lambda x: (x**2).sum() + jnp.where(x == x0, 0.0, jnp.nan).sum()  # noqa: E731  (nan off the point, gradient 2x)
    with pytest.raises(GradcheckError) as info:
        gradcheck(f, (x0,), mode=mode)
    (row,) = info.value.report.rows
    assert not row.ok and row.note == note


def test_printed_table_is_what_was_measured():
    with pytest.raises(GradcheckError) as info:
        gradcheck(_planted_cost(DEFECTS["nan"]), (X_C, W_C), argnums=(0, 1), reference=MODES["reference"]["reference"])
    report = info.value.report
    lines = str(report).splitlines()[1:]
    assert len(lines) == len(report.rows) == 4
    for line, row in zip(lines, report.rows):
        assert line.split(row.against, 1)[1].split()[:2] == [f"{row.max_abs:.2e}", f"{row.max_rel:.2e}"]
        assert line.endswith("yes") if row.ok else line.endswith(f"NO   {row.note}")
    assert lines[2].split()[3:5] == ["nan", "nan"]  # w's row: nan as measured, not 0
    assert np.isnan(report.max_rel("finite differences")) and np.isnan(report.max_rel("reference"))  # nan is not folded away


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
