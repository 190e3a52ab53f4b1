"""Layers, serial naming, models and summary: the shape tier, known parameter counts,
layers against the functional ops, and a finite-difference gradient check of J
through a small CNN with the hand-rolled convolution.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.flatten_util import ravel_pytree

import reference as ref
from jaxconv import (
    AvgPool,
    Conv2D,
    ConvTranspose2D,
    Dense,
    Flatten,
    GlobalAvgPool,
    LogSoftmax,
    MaxPool,
    Relu,
    Sigmoid,
    Softmax,
    Tanh,
    conv2d,
    count_params,
    format_summary,
    serial,
    summary,
)
from jaxconv.models import lenet5, seed_cnn
from jaxconv.train import make_cost

KEY = jax.random.key(0)


def init_shapes(layer, input_shape, key=KEY):
    """(output_shape, params as ShapeDtypeStructs): init traced without running, so no compiling."""
    box = {}

    def init(k):
        box["shape"], params = layer.init(k, input_shape)
        return params

    params = jax.eval_shape(init, key)
    return box["shape"], params


# ---------------------------------------------------------------------------
# Known counts.
# ---------------------------------------------------------------------------


def test_ten_3x3x3_filters_have_280_parameters():
    # The notes: 10 filters of 3x3x3 -> 10·27 weights + 10 biases.
    _, params = init_shapes(Conv2D(10, 3), (1, 6, 6, 3))
    assert params["w"].shape == (3, 3, 3, 10) and params["b"].shape == (10,)
    assert count_params(params) == 280


def test_seed_cnn_summary_matches_the_notes_table():
    rows = summary(seed_cnn(), (1, 32, 32, 3))
    by_name = {r.name: r for r in rows}
    sizes = [by_name[n].size for n in ("input", "conv1", "pool1", "conv2", "pool2", "fc3", "fc4", "fc5")]
    assert sizes == [3072, 6272, 1568, 1600, 400, 120, 84, 10]
    shapes = [by_name[n].shape for n in ("input", "conv1", "pool1", "conv2", "pool2")]
    assert shapes == [(32, 32, 3), (28, 28, 8), (14, 14, 8), (10, 10, 16), (5, 5, 16)]
    params = [by_name[n].params for n in ("conv1", "conv2", "fc3", "fc4", "fc5")]
    assert params == [608, 3216, 48120, 10164, 850]
    # Every parameter-free layer reports 0, and the table's total is the model's count.
    assert all(r.params == 0 for r in rows if r.name.startswith(("input", "relu", "pool", "flatten")))
    assert sum(r.params for r in rows) == 608 + 3216 + 48120 + 10164 + 850
    # MACs: conv1 has 28·28·8 outputs of 5·5·3 taps each.
    assert by_name["conv1"].macs == 28 * 28 * 8 * 5 * 5 * 3 and by_name["fc3"].macs == 400 * 120
    text = format_summary(rows)
    assert "62,958" in text and "6,272" in text


def test_summary_counts_a_transposed_convolutions_macs_from_its_input():
    """Each of the n_H·n_W·n_C input values of a transposed conv is multiplied into f_H·f_W·n_C' outputs:
    (4·4·3)·(2·2·5) = 960 for a 2x2 stride-2 layer of 5 filters on 4x4x3 (not its 8·8·5 outputs × 2·2·5 = 6,400)."""
    net = serial(("up", ConvTranspose2D(5, 2, stride=2)))
    by_name = {r.name: r for r in summary(net, (1, 4, 4, 3))}
    assert by_name["up"].shape == (8, 8, 5) and by_name["up"].macs == 4 * 4 * 3 * 2 * 2 * 5


def test_summary_accepts_minus_one_batch():
    assert summary(seed_cnn(), (-1, 32, 32, 3)) == summary(seed_cnn(), (1, 32, 32, 3))


def test_lenet5_has_61706_parameters():
    shape, params = init_shapes(lenet5(), (-1, 32, 32, 1))
    assert shape == (-1, 10)
    assert count_params(params) == 61706
    assert sum(r.params for r in summary(lenet5(), (1, 32, 32, 1))) == 61706


@pytest.mark.parametrize("impl", ["lax", "hand", "hand_autodiff"])
def test_models_apply_shapes(impl):
    # float32 models (dtype=): the tests run with x64 on, where params would default to float64.
    for model, n_C in ((lenet5(impl=impl, dtype=jnp.float32), 1), (seed_cnn(impl=impl, dtype=jnp.float32), 3)):
        shape, params = init_shapes(model, (-1, 32, 32, n_C))
        y = jax.eval_shape(model.apply, params, jax.ShapeDtypeStruct((2, 32, 32, n_C), jnp.float32))
        assert shape == (-1, 10) and y.shape == (2, 10) and y.dtype == jnp.float32


def test_lenet5_other_classes_and_channels():
    shape, params = init_shapes(lenet5(num_classes=5, in_channels=3), (4, 32, 32, 3))
    assert shape == (4, 5) and params["conv1"]["w"].shape == (5, 5, 3, 6) and params["fc5"]["w"].shape == (84, 5)


# ---------------------------------------------------------------------------
# Shape tier: init's predicted shape == apply's output shape, for every layer type.
# ---------------------------------------------------------------------------

LAYERS = [
    ("conv", Conv2D(4, 3), (-1, 9, 8, 2)),
    ("conv_s2_same", Conv2D(3, (3, 2), stride=2, padding="SAME"), (-1, 9, 8, 2)),
    ("conv_dil_groups", Conv2D(4, 2, stride=(1, 2), padding=((1, 0), (2, 1)), dilation=2, groups=2), (-1, 9, 8, 2)),
    ("conv_hand_nobias", Conv2D(3, 3, padding=1, use_bias=False, impl="hand"), (-1, 9, 8, 2)),
    ("conv_hand_autodiff", Conv2D(3, 3, stride=3, impl="hand_autodiff"), (-1, 9, 8, 2)),
    ("maxpool", MaxPool(2), (-1, 9, 8, 2)),
    ("maxpool_s1_pad", MaxPool(3, 1, padding=1), (-1, 9, 8, 2)),
    ("avgpool_same", AvgPool(3, 2, padding="SAME", count_include_pad=False), (-1, 9, 8, 2)),
    ("gap", GlobalAvgPool(), (-1, 9, 8, 2)),
    ("flatten", Flatten(), (-1, 9, 8, 2)),
    ("dense", Dense(5), (-1, 7)),
    ("dense_nobias", Dense(5, use_bias=False), (-1, 7)),
    ("relu", Relu(), (-1, 9, 8, 2)),
    ("tanh", Tanh(), (-1, 7)),
    ("sigmoid", Sigmoid(), (-1, 7)),
    ("softmax", Softmax(), (-1, 7)),
    ("log_softmax", LogSoftmax(), (-1, 7)),
    ("serial", serial(Conv2D(3, 3), Relu(), MaxPool(2), Flatten(), Dense(4)), (-1, 9, 8, 2)),
]


@pytest.mark.parametrize("name, layer, input_shape", LAYERS, ids=[n for n, _, _ in LAYERS])
@pytest.mark.parametrize("m", [-1, 3])
def test_init_shape_equals_apply_shape(name, layer, input_shape, m):
    out_shape, params = init_shapes(layer, (m, *input_shape[1:]))
    assert isinstance(out_shape, tuple) and all(type(n) is int for n in out_shape)
    assert out_shape[0] == m
    x = jnp.zeros((3, *input_shape[1:]), jnp.float32)
    y = jax.eval_shape(layer.apply, params, x)  # shapes only; the values tier is below
    assert y.shape == (3, *out_shape[1:]), name


# ---------------------------------------------------------------------------
# serial: names and params.
# ---------------------------------------------------------------------------


def test_serial_names_by_kind_and_position():
    net = serial(Conv2D(2, 3), Relu(), MaxPool(2), Conv2D(2, 3), Relu(), AvgPool(2), Flatten(), Dense(3), Dense(2))
    _, params = init_shapes(net, (-1, 16, 16, 1))
    expected = ["conv1", "relu1", "pool1", "conv2", "relu2", "pool2", "flatten1", "fc1", "fc2"]
    assert [name for name, _ in net.children] == expected  # (eval_shape's dicts come back key-sorted)
    assert set(params) == set(expected)
    assert params["relu1"] == {} and params["pool2"] == {} and set(params["fc2"]) == {"w", "b"}


def test_serial_explicit_names_and_nesting():
    block = serial(("c", Conv2D(2, 3, dtype=jnp.float32)), ("act", Tanh()))
    net = serial(("block", block), Flatten(), ("head", Dense(3, dtype=jnp.float32)))
    shape, _ = init_shapes(net, (-1, 6, 6, 1))
    params = jax.jit(lambda k: net.init(k, (-1, 6, 6, 1))[1])(KEY)
    assert shape == (-1, 3)
    assert [n for n, _ in net.children] == ["block", "flatten1", "head"]
    assert [n for n, _ in block.children] == ["c", "act"]
    assert set(params) == {"block", "flatten1", "head"} and set(params["block"]) == {"c", "act"}
    x = jnp.asarray(np.random.default_rng(0).standard_normal((2, 6, 6, 1)), jnp.float32)
    p = params
    expected = jnp.tanh(conv2d(x, p["block"]["c"]["w"], p["block"]["c"]["b"])).reshape(2, -1) @ p["head"]["w"] + p["head"]["b"]
    np.testing.assert_allclose(jax.jit(net.apply)(params, x), expected, **ref.tol(np.float32))


def test_serial_init_uses_different_keys_per_layer():
    _, params = serial(Dense(4), Dense(4)).init(KEY, (1, 4))
    assert not np.allclose(params["fc1"]["w"], params["fc2"]["w"])


def test_init_is_deterministic_in_the_key():
    net = serial(Conv2D(2, 3), Flatten(), Dense(3))
    init = jax.jit(lambda k: net.init(k, (1, 5, 5, 1))[1])
    p1, p2, p3 = init(jax.random.key(1)), init(jax.random.key(1)), init(jax.random.key(2))
    jax.tree.map(np.testing.assert_array_equal, p1, p2)
    assert not np.allclose(p1["conv1"]["w"], p3["conv1"]["w"])


# ---------------------------------------------------------------------------
# Values: layers equal the ops and the reference.
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("impl", ["lax", "hand", "hand_autodiff"])
def test_conv2d_layer_matches_reference(impl):
    layer = Conv2D(4, 3, stride=2, padding=1, groups=2, impl=impl, b_init=lambda k, s: jax.random.normal(k, s))
    _, params = layer.init(KEY, (-1, 7, 7, 2))
    x = np.random.default_rng(0).standard_normal((2, 7, 7, 2)).astype(np.float32)
    z_ref = ref.conv2d(x, params["w"], params["b"], stride=2, padding=1, groups=2)
    np.testing.assert_allclose(layer.apply(params, x), z_ref, **ref.tol(np.float32))
    np.testing.assert_allclose(layer.apply(params, x[0]), z_ref[0], **ref.tol(np.float32))


def test_pool_layers_match_reference():
    x = np.random.default_rng(1).standard_normal((2, 7, 7, 3))
    np.testing.assert_allclose(MaxPool(3, 2, padding=1).apply({}, x), ref.max_pool(x, 3, 2, 1), **ref.tol(np.float64))
    np.testing.assert_allclose(
        AvgPool(3, 2, padding=1, count_include_pad=False).apply({}, x),
        ref.avg_pool(x, 3, 2, 1, count_include_pad=False),
        **ref.tol(np.float64),
    )
    np.testing.assert_allclose(GlobalAvgPool().apply({}, x), ref.global_avg_pool(x), **ref.tol(np.float64))


def test_initialiser_scale():
    # He normal: std sqrt(2/fan_in), fan_in = f_H·f_W·n_C/groups.
    _, params = Conv2D(256, 3).init(KEY, (1, 8, 8, 32))
    assert np.std(np.asarray(params["w"])) == pytest.approx(np.sqrt(2 / (9 * 32)), rel=0.05)
    np.testing.assert_array_equal(params["b"], 0)


# ---------------------------------------------------------------------------
# Gradient check: jax.grad of J through a small CNN vs centred finite differences.
# ---------------------------------------------------------------------------


def _rel_error(g, g_num):
    return np.linalg.norm(g - g_num) / (np.linalg.norm(g) + np.linalg.norm(g_num))


@pytest.mark.parametrize(
    "pool_layer",
    [AvgPool(2), MaxPool(2)],
    ids=["avgpool", "maxpool"],
)
def test_cost_gradient_matches_finite_differences(pool_layer):
    net = serial(
        Conv2D(3, 3, padding=1, impl="hand", b_init=lambda k, s, dtype=jnp.float32: 0.1 * jax.random.normal(k, s, dtype)),
        Tanh(),  # smooth: no kinks for the finite differences to straddle
        pool_layer,
        Conv2D(4, 2, stride=2, impl="hand"),
        Tanh(),
        Flatten(),
        Dense(3),
    )
    params = jax.jit(lambda k: net.init(k, (-1, 8, 8, 2))[1])(jax.random.key(3))
    params = jax.tree.map(lambda a: a.astype(jnp.float64), params)
    theta, unravel = ravel_pytree(params)  # all parameters as one float64 vector
    rng = np.random.default_rng(4)
    x = rng.standard_normal((3, 8, 8, 2))  # continuous values: no ties in max pooling
    y = np.array([0, 2, 1])
    J = jax.jit(lambda p: make_cost(net.apply)(p, x, y)[0])
    g = ravel_pytree(jax.grad(J)(params))[0]
    J_flat = jax.jit(lambda t: J(unravel(t)))

    # Centred differences over a random subset of each array's entries, in float64 loops.
    eps = 1e-6
    sizes = [leaf.size for leaf in jax.tree.leaves(params)]
    starts = np.cumsum([0, *sizes[:-1]])
    idx = np.concatenate([s + rng.choice(n, size=min(n, 4), replace=False) for s, n in zip(starts, sizes)])
    theta = np.asarray(theta)
    g_num = np.empty(len(idx))
    for i, k in enumerate(idx):
        plus, minus = theta.copy(), theta.copy()
        plus[k] += eps
        minus[k] -= eps
        g_num[i] = (float(J_flat(plus)) - float(J_flat(minus))) / (2 * eps)
    g = np.asarray(g)[idx]
    assert len(idx) == sum(min(n, 4) for n in sizes) and np.linalg.norm(g) > 1e-3  # every array; not vacuous
    print(f"relative error {_rel_error(g, g_num):.2e} over {len(idx)} entries")
    assert _rel_error(g, g_num) < 1e-7, (g, g_num)


def test_activation_layers_apply_their_function_and_name_themselves():
    from jaxconv import Elu, Gelu, LeakyRelu, Relu6, Silu, Softplus, elu, gelu, leaky_relu, relu6, silu, softplus, serial

    x = np.linspace(-7, 7, 12).reshape(1, 2, 2, 3)
    layers = [(LeakyRelu(0.3), leaky_relu(x, 0.3)), (Relu6(), relu6(x)), (Gelu(approximate=True), gelu(x, True)),
              (Elu(alpha=2.0), elu(x, 2.0)), (Softplus(beta=3.0), softplus(x, 3.0)), (Silu(), silu(x))]
    for layer, expected in layers:
        shape, params = layer.init(jax.random.key(0), (-1, 2, 2, 3))
        assert shape == (-1, 2, 2, 3) and params == {}
        np.testing.assert_array_equal(layer.apply(params, x), expected)
    _, params = serial(*(layer for layer, _ in layers)).init(jax.random.key(0), (-1, 2, 2, 3))
    assert list(params) == ["leaky_relu1", "relu61", "gelu1", "elu1", "softplus1", "silu1"]
    with pytest.raises(ValueError, match=r"softplus: `beta` must be > 0"):
        Softplus(beta=-1.0)  # checked at construction
