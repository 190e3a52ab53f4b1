"""The model zoo: parameter counts against the same networks built in PyTorch, init/apply
shapes (traced, no compiling), summary totals, the registry, and whole-model float64
gradients with the hand-rolled convolution against lax's.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxconv import count_params, summary
from jaxconv.models import INPUT_SHAPES, MODELS, inception, lenet5, mobilenet, resnet20
from jaxconv.nn import cost, softmax_cross_entropy

KEY = jax.random.key(0)


def init_shapes(model, input_shape):
    box = {}

    def init(k):
        box["shape"], params = model.init(k, input_shape)
        return params

    params = jax.eval_shape(init, KEY)
    return box["shape"], params


# ---------------------------------------------------------------------------
# The same networks in PyTorch (parameters only: weights and BatchNorm's affine).
# ---------------------------------------------------------------------------


def torch_resnet20(nn):
    def conv_bn(c_in, c_out, f, s):
        return [nn.Conv2d(c_in, c_out, f, s, f // 2, bias=False), nn.BatchNorm2d(c_out)]

    layers, c_in = conv_bn(3, 16, 3, 1), 16
    for c in (16, 32, 64):
        for j in range(3):
            s = 2 if (c != 16 and j == 0) else 1
            layers += conv_bn(c_in, c, 3, s) + conv_bn(c, c, 3, 1)
            if s != 1:
                layers += conv_bn(c_in, c, 1, s)  # option B projection
            c_in = c
    return nn.Sequential(*layers, nn.Linear(64, 10))


def torch_inception(nn):
    def cbr(c_in, c_out, f):
        return [nn.Conv2d(c_in, c_out, f, 1, (f - 1) // 2, bias=False), nn.BatchNorm2d(c_out)]

    def module(c_in, n1, r3, n3, r5, n5, pp):
        return cbr(c_in, n1, 1) + cbr(c_in, r3, 1) + cbr(r3, n3, 3) + cbr(c_in, r5, 1) + cbr(r5, n5, 5) + cbr(c_in, pp, 1)

    layers = cbr(3, 32, 3) + module(32, 16, 16, 24, 8, 12, 12) + module(64, 24, 24, 40, 8, 16, 16) + module(96, 32, 32, 48, 12, 24, 24)
    return nn.Sequential(*layers, nn.Linear(128, 10))


def torch_mobilenet(nn):
    def cbr(c_in, c_out, f, s=1, groups=1):
        return [nn.Conv2d(c_in, c_out, f, s, (f - 1) // 2, groups=groups, bias=False), nn.BatchNorm2d(c_out)]

    layers, c_in = cbr(3, 32, 3), 32
    for t, c, s in [(1, 16, 1), (6, 24, 2), (6, 24, 1), (6, 32, 2), (6, 32, 1), (6, 64, 2)]:
        hidden = c_in * t
        layers += (cbr(c_in, hidden, 1) if t != 1 else []) + cbr(hidden, hidden, 3, s, groups=hidden) + cbr(hidden, c, 1)
        c_in = c
    return nn.Sequential(*layers, *cbr(64, 256, 1), nn.Linear(256, 10))


@pytest.mark.parametrize(
    "name, build, expected",
    [("resnet20", torch_resnet20, 272_474), ("inception", torch_inception, None), ("mobilenet", torch_mobilenet, None)],
)
def test_parameter_count_matches_pytorch(name, build, expected):
    torch = pytest.importorskip("torch")
    n_torch = sum(p.numel() for p in build(torch.nn).parameters())
    shape, params = init_shapes(MODELS[name](), INPUT_SHAPES[name])
    assert shape == (1, 10)
    assert count_params(params) == n_torch
    if expected is not None:
        assert n_torch == expected  # He et al.'s 0.27M, with the option-B projections
    rows = summary(MODELS[name](), INPUT_SHAPES[name])
    assert sum(r.params for r in rows if r.depth == 0) == n_torch


def test_resnet20_param_and_state_paths():
    _, params = init_shapes(resnet20(), (-1, 32, 32, 3))
    _, state = resnet20().init_state((-1, 32, 32, 3))
    assert params["stage2"]["block1"]["conv_a"]["w"].shape == (3, 3, 16, 32)
    assert params["stage2"]["block1"]["shortcut"]["conv"]["w"].shape == (1, 1, 16, 32)
    assert set(params["stage2"]["block1"]["bn_a"]) == {"gamma", "beta"} and set(state["stage2"]["block1"]["bn_a"]) == {"mean", "var"}
    assert params["stage1"]["block1"]["shortcut"] == {} and params["fc"]["w"].shape == (64, 10)
    y, new_state = jax.eval_shape(lambda p, s, x: resnet20().apply(p, x, state=s, train=True), params, state, jax.ShapeDtypeStruct((2, 32, 32, 3), jnp.float64))
    assert y.shape == (2, 10) and jax.tree_util.tree_structure(new_state) == jax.tree_util.tree_structure(state)


def test_summary_shows_branches_indented():
    rows = summary(inception(), (1, 32, 32, 3))
    by_name = [(r.depth, r.name, r.shape) for r in rows]
    assert (0, "inception1", (32, 32, 64)) in by_name
    assert (1, "branches", ((32, 32, 16), (32, 32, 24), (32, 32, 12), (32, 32, 12))) in by_name
    assert (2, "b5x5", (32, 32, 12)) in by_name
    # a composite row's MACs are its layers' sum
    i = next(k for k, r in enumerate(rows) if r.name == "b1x1")
    assert rows[i].macs == rows[i + 1].macs == 32 * 32 * 16 * 32  # its 1x1 conv: n_H'·n_W'·n_C' outputs × n_C taps


def test_registry_lists_every_model_with_an_input_shape():
    assert set(MODELS) == set(INPUT_SHAPES) >= {"lenet5", "seed_cnn", "resnet20", "inception", "mobilenet"}
    assert mobilenet().kind == "serial" and lenet5().kind == "serial"


# ---------------------------------------------------------------------------
# Whole-model float64 gradients: impl="hand" vs impl="lax".
# ---------------------------------------------------------------------------


def _grads(model, params, x, y, state=None):
    def J(p):
        if state is None:
            return cost(softmax_cross_entropy(model.apply(p, x), y))
        return cost(softmax_cross_entropy(model.apply(p, x, state=state, train=True)[0], y))

    return jax.jit(jax.grad(J))(params)


def _max_rel_err(a, b):
    errs = [np.abs(np.asarray(u) - np.asarray(v)).max() / (np.abs(np.asarray(v)).max() + 1e-300) for u, v in zip(jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b))]
    return max(errs)


def test_lenet5_float64_gradient_hand_equals_lax():
    _, params = lenet5(impl="hand").init(KEY, (2, 32, 32, 1))
    assert params["conv1"]["w"].dtype == jnp.float64  # x64 on: params follow the default float dtype
    x, y = np.random.default_rng(0).standard_normal((2, 32, 32, 1)), np.array([3, 7])
    g_hand, g_lax = _grads(lenet5(impl="hand"), params, x, y), _grads(lenet5(impl="lax"), params, x, y)
    assert _max_rel_err(g_hand, g_lax) < 1e-12
    # The notes' im2col, chosen for the whole model (impl="hand" picks rows for LeNet's layers).
    g_im2col = _grads(lenet5(impl="hand", algorithm="im2col"), params, x, y)
    assert _max_rel_err(g_im2col, g_lax) < 1e-12


def test_a_model_wide_algorithm_that_does_not_fit_a_layer_names_it():
    model = resnet20(algorithm="taps")  # taps needs stride 1: stage2's first conv has stride 2
    shape = (1, 8, 8, 3)
    _, params = model.init(KEY, shape)
    _, state = model.init_state(shape)
    with pytest.raises(ValueError, match=r"'taps' needs stride 1 .*in layer `stage2/block1/conv_a`"):
        model.apply(params, np.zeros(shape), state=state)


@pytest.mark.slow
def test_resnet20_float64_gradient_hand_equals_lax():
    shape = (2, 8, 8, 3)  # small input: the stages run at 8x8, 4x4, 2x2
    _, params = resnet20(impl="hand").init(KEY, shape)
    _, state = resnet20().init_state(shape)
    x, y = np.random.default_rng(0).standard_normal(shape), np.array([1, 2])
    g_hand = _grads(resnet20(impl="hand"), params, x, y, state)
    g_lax = _grads(resnet20(impl="lax"), params, x, y, state)
    assert _max_rel_err(g_hand, g_lax) < 1e-10
