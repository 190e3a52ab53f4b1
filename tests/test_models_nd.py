"""The 1-D and 3-D layers and models: Conv1D/3D, ConvTranspose1D/3D, the 1-D/3-D pool layers,
models.temporal_resnet and models.c3d_small.

Tiers: shapes (init's prediction equals apply's), values (each layer equals its op; the models equal
their PyTorch twins after a state_dict round trip), gradients (every leaf reached; impl="hand" vs
impl="lax" vs finite differences in float64 with `jaxconv.gradcheck`). Parameter counts against the
same networks in PyTorch, the summary's rows and MACs, and every new error message. Tiny shapes,
each model built once per configuration.
"""

from __future__ import annotations

import math
from collections import OrderedDict

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxconv
from jaxconv import interop, models
from jaxconv.layers import (
    AdaptiveAvgPool1D,
    AdaptiveAvgPool3D,
    AdaptiveMaxPool1D,
    AdaptiveMaxPool3D,
    AvgPool1D,
    AvgPool3D,
    BatchNorm,
    Conv1D,
    Conv3D,
    ConvTranspose1D,
    ConvTranspose3D,
    GlobalAvgPool1D,
    GlobalAvgPool3D,
    MaxPool1D,
    MaxPool3D,
    serial,
)
from jaxconv.nn import cost, softmax_cross_entropy

KEY = jax.random.key(0)
TORCH_ATOL = 1e-5  # float32 outputs: PyTorch and XLA sum in different orders
GRAD_RTOL = {"reference": 1e-12, "finite differences": 1e-7}  # float64: hand vs lax agree to rounding; FD to O(ε²)
SHAPES = {1: (2, 8, 3), 3: (2, 2, 4, 4, 3)}  # (m, *spatial, n_C) of the layer tests

# The models' tiny configurations, and their inputs: (m, n_W, n_C) and (m, n_D, n_H, n_W, n_C).
TINY = {
    "temporal_resnet": (dict(in_channels=2, num_classes=3, widths=(4, 8), blocks=1), (2, 8, 2)),
    "c3d_small": (dict(in_channels=2, num_classes=3, widths=(4, 8)), (2, 2, 4, 4, 2)),
}


def _x(shape, seed=0, dtype=np.float64):
    return np.random.default_rng(seed).standard_normal(shape).astype(dtype)


def _init_shapes(model, input_shape):
    """(output shape, params as ShapeDtypeStructs), traced: no compiling."""
    box = {}

    def init(k):
        box["shape"], params = model.init(k, input_shape)
        return params

    params = jax.eval_shape(init, KEY)
    return box["shape"], params


# --------------------------------------------------------------------------- layers: shapes and values


LAYERS = {
    "Conv1D": (lambda: Conv1D(4, 3, stride=2, padding=1, dilation=1, groups=1), 1, lambda x, p: jaxconv.conv1d(x, p["w"], p["b"], stride=2, padding=1)),
    "Conv1D_groups": (lambda: Conv1D(6, 2, groups=3, use_bias=False, padding_mode="circular", padding=1), 1,
                      lambda x, p: jaxconv.conv1d(x, p["w"], groups=3, padding=1, padding_mode="circular")),
    "Conv3D": (lambda: Conv3D(4, (1, 3, 3), padding=(0, 1, 1)), 3, lambda x, p: jaxconv.conv3d(x, p["w"], p["b"], padding=(0, 1, 1))),
    "ConvTranspose1D": (lambda: ConvTranspose1D(4, 3, stride=2, padding=1, output_padding=1), 1,
                        lambda x, p: jaxconv.conv_transpose1d(x, p["w"], p["b"], stride=2, padding=1, output_padding=1)),
    "ConvTranspose3D": (lambda: ConvTranspose3D(2, 2, stride=2), 3, lambda x, p: jaxconv.conv_transpose3d(x, p["w"], p["b"], stride=2)),
    "MaxPool1D": (lambda: MaxPool1D(3, stride=2, padding=1, ceil_mode=True), 1, lambda x, p: jaxconv.max_pool1d(x, 3, 2, 1, ceil_mode=True)),
    "MaxPool3D": (lambda: MaxPool3D((1, 2, 2)), 3, lambda x, p: jaxconv.max_pool3d(x, (1, 2, 2))),
    "AvgPool1D": (lambda: AvgPool1D(2, padding=1, count_include_pad=False), 1, lambda x, p: jaxconv.avg_pool1d(x, 2, padding=1, count_include_pad=False)),
    "AvgPool3D": (lambda: AvgPool3D(2), 3, lambda x, p: jaxconv.avg_pool3d(x, 2)),
    "AdaptiveAvgPool1D": (lambda: AdaptiveAvgPool1D(3), 1, lambda x, p: jaxconv.adaptive_avg_pool1d(x, 3)),
    "AdaptiveAvgPool3D": (lambda: AdaptiveAvgPool3D((1, None, 3)), 3, lambda x, p: jaxconv.adaptive_avg_pool3d(x, (1, None, 3))),
    "AdaptiveMaxPool1D": (lambda: AdaptiveMaxPool1D(3), 1, lambda x, p: jaxconv.adaptive_max_pool1d(x, 3)),
    "AdaptiveMaxPool3D": (lambda: AdaptiveMaxPool3D(2), 3, lambda x, p: jaxconv.adaptive_max_pool3d(x, 2)),
    "GlobalAvgPool1D": (lambda: GlobalAvgPool1D(), 1, lambda x, p: jaxconv.global_avg_pool1d(x)),
    "GlobalAvgPool3D": (lambda: GlobalAvgPool3D(), 3, lambda x, p: jaxconv.global_avg_pool3d(x)),
}


@pytest.mark.parametrize("name", sorted(LAYERS))
def test_layer_init_shape_equals_apply_shape_and_the_op(name):
    make, rank, op = LAYERS[name]
    layer, x = make(), _x(SHAPES[rank])
    out_shape, params = layer.init(KEY, (-1, *x.shape[1:]))
    y = layer.apply(params, x)
    assert out_shape == (-1, *y.shape[1:])
    np.testing.assert_array_equal(np.asarray(y), np.asarray(op(x, params)))
    assert name in jaxconv.__all__ or name.split("_")[0] in jaxconv.__all__


def test_conv_layers_he_fan_in_is_every_filter_axis_but_the_output():
    # fan-in = f_D·f_H·f_W·n_C/groups = 27·2 for Conv3D(64, 3, groups=2) on 4 channels, as in 2-D.
    _, params = Conv3D(64, 3, groups=2).init(KEY, (-1, 3, 3, 3, 4))
    w = np.asarray(params["w"])
    assert w.shape == (3, 3, 3, 2, 64)
    assert abs(w.std() / math.sqrt(2 / 54) - 1) < 0.1  # 3,456 draws: the estimate is within a few percent
    _, params = ConvTranspose1D(6, 5, groups=3).init(KEY, (-1, 4, 3))
    assert params["w"].shape == (5, 2, 3) and params["b"].shape == (6,)


def test_batchnorm_takes_1d_and_3d_activations():
    for shape in ((-1, 5, 3), (-1, 2, 2, 2, 3)):
        _, state = BatchNorm().init_state(shape)
        assert state["mean"].shape == (3,)


# --------------------------------------------------------------------------- the same models in PyTorch


def _torch_block(torch, N, c_in, c, s):
    """ResNet's basic block with Conv{N}d and BatchNorm{N}d, module names as jaxconv's paths."""
    nn = torch.nn
    Conv, Norm = getattr(nn, f"Conv{N}d"), getattr(nn, f"BatchNorm{N}d")

    class Block(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv_a, self.bn_a = Conv(c_in, c, 3, s, 1, bias=False), Norm(c)
            self.conv_b, self.bn_b = Conv(c, c, 3, 1, 1, bias=False), Norm(c)
            self.shortcut = nn.Sequential(OrderedDict(conv=Conv(c_in, c, 1, s, bias=False), bn=Norm(c))) if s != 1 else None

        def forward(self, x):
            y = self.bn_b(self.conv_b(torch.relu(self.bn_a(self.conv_a(x)))))
            return torch.relu(y + (x if self.shortcut is None else self.shortcut(x)))

    return Block()


def torch_temporal_resnet(torch, in_channels=1, num_classes=10, widths=(16, 32, 64), blocks=1):
    nn = torch.nn
    layers = [("conv1", nn.Conv1d(in_channels, widths[0], 7, 1, 3, bias=False)), ("bn1", nn.BatchNorm1d(widths[0])), ("relu1", nn.ReLU())]
    c_in = widths[0]
    for i, c in enumerate(widths, start=1):
        stage = []
        for j in range(1, blocks + 1):
            stage.append((f"block{j}", _torch_block(torch, 1, c_in, c, 2 if (i > 1 and j == 1) else 1)))
            c_in = c
        layers.append((f"stage{i}", nn.Sequential(OrderedDict(stage))))
    layers += [("pool", nn.AdaptiveAvgPool1d(1)), ("flatten", nn.Flatten()), ("fc", nn.Linear(widths[-1], num_classes))]
    return nn.Sequential(OrderedDict(layers))


def torch_c3d_small(torch, in_channels=1, num_classes=10, widths=(16, 32, 64)):
    nn = torch.nn
    layers, c_in = [], in_channels
    for i, c in enumerate(widths, start=1):
        layers += [(f"conv{i}", nn.Conv3d(c_in, c, 3, padding=1)), (f"relu{i}", nn.ReLU()), (f"pool{i}", nn.MaxPool3d((1, 2, 2) if i == 1 else 2))]
        c_in = c
    layers += [("gap", nn.AdaptiveAvgPool3d(1)), ("flatten", nn.Flatten()), ("fc", nn.Linear(widths[-1], num_classes))]
    return nn.Sequential(OrderedDict(layers))


TWINS = {"temporal_resnet": torch_temporal_resnet, "c3d_small": torch_c3d_small}
CONFIGS = [  # (model, config, input shape): the defaults, and others
    ("temporal_resnet", {}, (-1, 64, 1)),
    ("temporal_resnet", dict(in_channels=3, num_classes=5, widths=(8, 16), blocks=2), (-1, 32, 3)),
    ("c3d_small", {}, (-1, 8, 16, 16, 1)),
    ("c3d_small", dict(in_channels=3, num_classes=4, widths=(8, 16, 32, 32)), (-1, 8, 16, 16, 3)),
]
DEFAULT_PARAMS = {"temporal_resnet": 28_570, "c3d_small": 70_314}  # the counts the docstrings state


@pytest.mark.parametrize("name, config, shape", CONFIGS, ids=[f"{n}-{i}" for i, (n, _, _) in enumerate(CONFIGS)])
def test_parameter_count_equals_pytorch(name, config, shape):
    torch = pytest.importorskip("torch")
    out_shape, params = _init_shapes(getattr(models, name)(**config), shape)
    assert out_shape == (-1, config.get("num_classes", 10))
    n = jaxconv.count_params(params)
    assert n == sum(p.numel() for p in TWINS[name](torch, **config).parameters())
    if not config:
        assert n == DEFAULT_PARAMS[name]


# --------------------------------------------------------------------------- shapes, gradients, summary


@pytest.mark.parametrize("name", sorted(TINY))
def test_init_shape_equals_apply_shape_and_gradient_reaches_every_leaf(name):
    config, shape = TINY[name]
    model = getattr(models, name)(impl="lax", **config)
    out_shape, params = model.init(KEY, (-1, *shape[1:]))
    x = jnp.asarray(_x(shape))

    def loss(p):
        y = model.apply(p, x, train=True)  # BatchNorm on the batch's statistics
        return jnp.sum(y**2), y.shape

    grads, y_shape = jax.jit(jax.grad(loss, has_aux=True))(params)  # compiled whole: eagerly every op compiles alone
    assert out_shape == (-1, *y_shape[1:]) == (-1, config["num_classes"])
    flat = jax.tree_util.tree_flatten_with_path(grads)[0]
    assert len(flat) == len(jax.tree.leaves(params))
    unreached = [jax.tree_util.keystr(path) for path, g in flat if not float(jnp.abs(g).sum()) > 0]
    assert not unreached


def test_summary_prints_1d_and_3d_activations_with_conv_macs():
    config, shape = TINY["c3d_small"]
    rows = jaxconv.summary(models.c3d_small(**config), shape)
    by_name = {r.name: r for r in rows}
    assert by_name["input"].shape == (2, 4, 4, 2) and by_name["pool1"].shape == (2, 2, 2, 4)
    assert by_name["conv1"].macs == 2 * 4 * 4 * 4 * (27 * 2)  # n_D'·n_H'·n_W'·n_C' outputs × f_D·f_H·f_W·n_C taps
    _, params = _init_shapes(models.c3d_small(**config), shape)
    text = jaxconv.format_summary(rows)
    assert "(2, 4, 4, 4)" in text and text.splitlines()[-1].split()[1] == f"{jaxconv.count_params(params):,}"

    config, shape = TINY["temporal_resnet"]
    rows = {(r.depth, r.name): r for r in jaxconv.summary(models.temporal_resnet(**config), shape)}
    assert rows[(0, "conv1")].shape == (8, 4) and rows[(0, "conv1")].macs == 8 * 4 * (7 * 2)
    assert rows[(0, "stage2")].shape == (4, 8) and rows[(0, "pool")].shape == (8,)
    # a transposed convolution: each of the n_W·n_C inputs is multiplied into f_W·n_C'/groups outputs
    rows = jaxconv.summary(serial(("up", ConvTranspose1D(6, 3, stride=2))), (1, 5, 4))
    assert rows[1].shape == (11, 6) and rows[1].macs == 5 * 4 * (3 * 6)


# --------------------------------------------------------------------------- PyTorch round trip


@pytest.mark.parametrize("name", sorted(TINY))
def test_torch_round_trip_gives_equal_outputs_and_identical_tensors(name):
    torch = pytest.importorskip("torch")
    torch.manual_seed(0)
    config, shape = TINY[name]
    net = TWINS[name](torch, **config)
    channels_first = (0, len(shape) - 1, *range(1, len(shape) - 1))  # NWC -> NCW, NDHWC -> NCDHW
    with torch.no_grad():
        net.train()
        net(torch.randn(*(shape[i] for i in channels_first)))  # BatchNorm's running statistics move off 0 / 1
        for m in net.modules():
            if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
                m.weight.uniform_(0.5, 1.5), m.bias.uniform_(-0.5, 0.5)
    net.eval()
    model = getattr(models, name)(impl="lax", **config)
    rows = interop.name_map(model, (-1, *shape[1:]))  # the twins' module names are jaxconv's paths
    sd = net.state_dict()
    assert {r.torch_name for r in rows} == set(sd)
    params, state = interop.from_torch(sd, rows)
    x = _x(shape, seed=1, dtype=np.float32)
    y, _ = jax.jit(lambda p, x, s: model.apply(p, x, state=s, train=False))(params, jnp.asarray(x), state)
    with torch.no_grad():
        y_t = net(torch.from_numpy(x).permute(*channels_first)).numpy()
    np.testing.assert_allclose(np.asarray(y), y_t, atol=TORCH_ATOL, rtol=0)
    back = interop.to_torch(params, rows, state, num_batches_tracked=1, tensors=True)  # one train-mode call above
    for key, value in sd.items():
        assert back[key].dtype == value.dtype and torch.equal(back[key], value), key


def test_name_map_reorders_a_linear_after_flattening_a_volume():
    # PyTorch flattens (n_C, n_D, n_H, n_W), jaxconv (n_D, n_H, n_W, n_C): the Linear's inputs are permuted.
    torch = pytest.importorskip("torch")
    torch.manual_seed(0)
    net = torch.nn.Sequential(OrderedDict(conv=torch.nn.Conv3d(2, 3, 2), flatten=torch.nn.Flatten(), fc=torch.nn.Linear(3 * 1 * 2 * 3, 4)))
    model = serial(("conv", Conv3D(3, 2, impl="lax")), ("flatten", jaxconv.Flatten()), ("fc", jaxconv.Dense(4)))
    rows = interop.name_map(model, (-1, 2, 3, 4, 2))
    fc = next(r for r in rows if r.torch_name == "fc.weight")
    assert fc.flatten == (1, 2, 3, 3) and "NCDHW-flattened (3, 1, 2, 3) -> NDHWC (1, 2, 3, 3)" in interop.format_name_map(rows)
    params, _ = interop.from_torch(net.state_dict(), rows)
    x = _x((2, 2, 3, 4, 2), seed=2, dtype=np.float32)
    with torch.no_grad():
        y_t = net(torch.from_numpy(x).permute(0, 4, 1, 2, 3)).numpy()
    np.testing.assert_allclose(np.asarray(model.apply(params, jnp.asarray(x))), y_t, atol=TORCH_ATOL, rtol=0)
    assert torch.equal(interop.to_torch(params, rows, tensors=True)["fc.weight"], net.state_dict()["fc.weight"])


# --------------------------------------------------------------------------- gradcheck: hand vs lax vs FD


@pytest.mark.parametrize("name", sorted(TINY))
def test_gradcheck_model_cost_hand_vs_lax_vs_finite_differences(name):
    config, shape = TINY[name]

    def cost_of(impl):
        model = getattr(models, name)(impl=impl, **config)
        return model, lambda p, x, y: cost(softmax_cross_entropy(model.apply(p, x, train=True), y))

    model, cost_hand = cost_of("hand")
    _, params = model.init(KEY, (-1, *shape[1:]))
    x, y = _x(shape, seed=3), np.arange(shape[0]) % config["num_classes"]
    report = jaxconv.gradcheck(cost_hand, (params, x, y), reference=cost_of("lax")[1], directions=2)
    print(f"\n{name}: max rel err vs lax {report.max_rel('reference'):.2e}, vs finite differences "
          f"{report.max_rel('finite differences'):.2e}\n{report}")
    assert report.ok
    assert {r.path for r in report.rows} >= {"conv1/w", "fc/b"}
    for against, rtol in GRAD_RTOL.items():
        assert report.max_rel(against) < rtol, against


# --------------------------------------------------------------------------- errors


@pytest.mark.parametrize(
    "build, shape, error, match",
    [
        (lambda: Conv3D(4, 3), (2, 8, 8, 1), ValueError, r"Conv3D: `input_shape` must be \(m, n_D, n_H, n_W, n_C\) \(batch axis first, -1 allowed\), got \(2, 8, 8, 1\)"),
        (lambda: Conv1D(4, 3, groups=2), (2, 8, 3), ValueError, r"Conv1D: `groups` \(=2\) must divide the input channels n_C \(=3\)"),
        (lambda: Conv1D(4, 5), (2, 3, 1), ValueError, r"Conv1D: .*filter"),
        (lambda: ConvTranspose3D(4, 2), (2, 4, 4, 1), ValueError, r"ConvTranspose3D: `input_shape` must be \(m, n_D, n_H, n_W, n_C\)"),
        (lambda: MaxPool1D(2), (2, 4, 4, 1), ValueError, r"MaxPool1D: `input_shape` must be \(m, n_W, n_C\)"),
        (lambda: MaxPool3D(2, padding=2), (2, 4, 4, 4, 1), ValueError, r"MaxPool3D: padding \(2, 2\) in .* must be at most half the window"),
        (lambda: AdaptiveAvgPool3D((2, 2)), (2, 4, 4, 4, 1), TypeError, r"AdaptiveAvgPool3D: `output_size` must be an int or 3 of them"),
        (lambda: GlobalAvgPool1D(), (2, 4, 4, 1), ValueError, r"GlobalAvgPool1D: `input_shape` must be \(m, n_W, n_C\)"),
        (lambda: models.temporal_resnet(in_channels=2), (2, 16, 3), ValueError, r"temporal_resnet: `input_shape` must be \(m, n_W, n_C\) with n_C = in_channels = 2, got \(2, 16, 3\)"),
        (lambda: models.c3d_small(), (2, 8, 8, 1), ValueError, r"c3d_small: `input_shape` must be \(m, n_D, n_H, n_W, n_C\) with n_C = in_channels = 1"),
    ],
)
def test_init_errors(build, shape, error, match):
    with pytest.raises(error, match=match):
        build().init(KEY, shape)


@pytest.mark.parametrize(
    "build, error, match",
    [
        (lambda: Conv1D(4, (3, 3)), TypeError, r"Conv1D: `f` must be an int, got \(3, 3\)"),
        (lambda: Conv3D(4, 3, impl="fast"), ValueError, r"Conv3D: unknown `impl` 'fast'. It needs to be one of"),
        (lambda: Conv1D(0, 3), ValueError, r"Conv1D: `n_filters` must be an int >= 1, got 0"),
        (lambda: Conv3D(4, 3, padding_mode="mirror"), ValueError, r"Conv3D: unknown `padding_mode` 'mirror'"),
        (lambda: ConvTranspose1D(5, 3, groups=2), ValueError, r"ConvTranspose1D: `groups` \(=2\) must divide `n_filters` \(=5\)"),
        (lambda: ConvTranspose3D(4, 3, impl="hand_autodiff"), ValueError, r"ConvTranspose3D: unknown `impl` 'hand_autodiff'"),
        (lambda: models.temporal_resnet(widths=()), ValueError, r"temporal_resnet: `widths` must be a non-empty tuple of ints >= 1"),
        (lambda: models.temporal_resnet(blocks=0), ValueError, r"temporal_resnet: `blocks` must be an int >= 1 \(basic blocks per stage\), got 0"),
        (lambda: models.c3d_small(widths=(8, 0)), ValueError, r"c3d_small: `widths` must be a non-empty tuple of ints >= 1 .*, got \(8, 0\)"),
    ],
)
def test_construction_errors(build, error, match):
    with pytest.raises(error, match=match):
        build()
