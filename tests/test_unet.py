"""models.unet: shapes, parameter counts against the same network in PyTorch, gradients, the summary,
and a PyTorch round trip (state_dict in, equal outputs, state_dict out bit for bit).

Also the name map of the other new norms (LayerNorm over whole examples, InstanceNorm with tracked
statistics and no affine params). Tiny sizes: depth 2, base width 8, 8x8 inputs.
"""

from __future__ import annotations

from collections import OrderedDict

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxconv
from jaxconv import interop, models
from jaxconv.layers import Conv2D, InstanceNorm, LayerNorm, serial

KEY = jax.random.key(0)
SHAPE = (2, 8, 8, 1)  # (m, n_H, n_W, n_C), divisible by 2^depth = 4
ATOL = 1e-5  # float32 outputs, PyTorch and XLA sum in different orders
CONFIGS = [dict(norm="group", up="transpose"), dict(norm="batch", up="upsample"), dict(norm=None, up="transpose")]


def torch_unet(torch, in_channels=1, out_channels=1, depth=2, base_width=8, norm="group", num_groups=4, up="transpose"):
    """The same network in PyTorch, module names as jaxconv's paths with `branches.down.` left out."""
    nn = torch.nn

    def block(n_in, n_C):
        layers = []
        for part in ("a", "b"):
            layers.append((f"conv_{part}", nn.Conv2d(n_in if part == "a" else n_C, n_C, 3, padding=1, bias=norm is None)))
            if norm is not None:
                layers.append((f"norm_{part}", nn.GroupNorm(num_groups, n_C) if norm == "group" else nn.BatchNorm2d(n_C)))
            layers.append((f"relu_{part}", nn.ReLU()))
        return nn.Sequential(OrderedDict(layers))

    class Level(nn.Module):
        def __init__(self, d, n_in):
            super().__init__()
            w = base_width * 2**d
            self.enc, self.pool, self.level = block(n_in, w), nn.MaxPool2d(2), level(d + 1, w)
            if up == "transpose":
                self.up = nn.ConvTranspose2d(2 * w, w, 2, stride=2)
            else:
                self.up = nn.Sequential(OrderedDict(upsample=nn.Upsample(scale_factor=2, mode="bilinear"), conv=nn.Conv2d(2 * w, w, 3, padding=1)))
            self.dec = block(2 * w, w)

        def forward(self, x):
            e = self.enc(x)
            return self.dec(torch.cat([e, self.up(self.level(self.pool(e)))], 1))

    def level(d, n_in):
        return block(n_in, base_width * 2**d) if d == depth else Level(d, n_in)

    class UNet(Level):
        def __init__(self):
            super().__init__(0, in_channels)
            self.head = nn.Conv2d(base_width, out_channels, 1)

        def forward(self, x):
            return self.head(super().forward(x))

    return UNet()


def _mapping(module):
    """{torch module name: jaxconv path} for every module with tensors: `level` and `up` sit under branches.down."""
    names = {k.rsplit(".", 1)[0] for k in module.state_dict()}
    return {n: ".".join("branches.down." + c if c in ("level", "up") else c for c in n.split(".")) for n in sorted(names)}


def _jax_unet(**config):
    return models.unet(depth=2, base_width=8, num_groups=4, impl="lax", **config)


@pytest.mark.parametrize("config", CONFIGS, ids=lambda c: f"{c['norm']}-{c['up']}")
def test_parameter_count_equals_pytorch_and_output_shape(config):
    torch = pytest.importorskip("torch")
    model = _jax_unet(**config)
    out_shape, params = model.init(KEY, (-1, *SHAPE[1:]))
    assert out_shape == (-1, 8, 8, 1)
    assert jaxconv.count_params(params) == sum(p.numel() for p in torch_unet(torch, **config).parameters())


def test_output_shape_channels_and_gradient_flows_to_every_leaf():
    model = models.unet(in_channels=3, out_channels=2, depth=1, base_width=4, num_groups=2, up="upsample", impl="lax")
    x = jnp.asarray(np.random.default_rng(0).standard_normal((2, 6, 4, 3)))
    _, params = model.init(KEY, x.shape)
    y = jax.jit(model.apply)(params, x)  # compiled whole: eagerly, every op would compile on its own
    assert y.shape == (2, 6, 4, 2)
    grads = jax.jit(jax.grad(lambda p: jnp.sum(model.apply(p, x) ** 2)))(params)
    assert all(float(jnp.abs(g).sum()) > 0 for g in jax.tree.leaves(grads))


def test_summary_prints_every_level_and_the_total():
    model = _jax_unet()
    text = jaxconv.format_summary(jaxconv.summary(model, SHAPE))
    _, params = model.init(KEY, SHAPE)
    assert "branches" in text and "head" in text and "(8, 8, 1)" in text
    assert text.splitlines()[-1].split()[1] == f"{jaxconv.count_params(params):,}"


@pytest.mark.parametrize("config", CONFIGS[:2], ids=lambda c: f"{c['norm']}-{c['up']}")
def test_torch_round_trip_gives_equal_outputs_and_identical_tensors(config):
    torch = pytest.importorskip("torch")
    torch.manual_seed(0)
    net = torch_unet(torch, **config)
    with torch.no_grad():
        net.train()
        net(torch.randn(4, 1, 8, 8))  # BatchNorm's running statistics move off 0 / 1
        for m in net.modules():
            if isinstance(m, (torch.nn.GroupNorm, torch.nn.BatchNorm2d)):
                m.weight.uniform_(0.5, 1.5), m.bias.uniform_(-0.5, 0.5)
    net.eval()
    model = _jax_unet(**config)
    rows = interop.name_map(model, (-1, *SHAPE[1:]), mapping=_mapping(net))
    sd = net.state_dict()
    assert {r.torch_name for r in rows} == set(sd)
    params, state = interop.from_torch(sd, rows)
    x = np.random.default_rng(1).standard_normal(SHAPE).astype(np.float32)
    y, _ = jax.jit(lambda p, x, s: model.apply(p, x, state=s, train=False))(params, jnp.asarray(x), state)
    with torch.no_grad():
        y_t = net(torch.from_numpy(x).permute(0, 3, 1, 2)).permute(0, 2, 3, 1).numpy()
    np.testing.assert_allclose(np.asarray(y), y_t, atol=ATOL, rtol=0)
    back = interop.to_torch(params, rows, state, num_batches_tracked=1, tensors=True)  # one train-mode call above
    for name, value in sd.items():
        assert back[name].dtype == value.dtype and torch.equal(back[name], value), name


def test_name_map_of_layer_norm_and_state_only_instance_norm_round_trip():
    torch = pytest.importorskip("torch")
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Conv2d(2, 3, 3, padding=1), torch.nn.LayerNorm([3, 4, 5]), torch.nn.InstanceNorm2d(3, track_running_stats=True))
    with torch.no_grad():
        net[1].weight.uniform_(0.5, 1.5), net[1].bias.uniform_(-0.5, 0.5)
        net(torch.randn(2, 2, 4, 5))  # the InstanceNorm's running statistics move
    net.eval()
    model = serial(("conv", Conv2D(3, 3, padding=1, impl="lax")), ("ln", LayerNorm(3)), ("inorm", InstanceNorm(track_running_stats=True)))
    rows = interop.name_map(model, (-1, 4, 5, 2), mapping={"0": "conv", "1": "ln", "2": "inorm"})
    by_name = {r.torch_name: r for r in rows}
    assert set(by_name) == set(net.state_dict())
    assert by_name["1.weight"].conversion == "channels_first" and by_name["1.weight"].jax_shape == (4, 5, 3)
    assert by_name["2.running_var"].path == "inorm.var" and by_name["2.num_batches_tracked"].collection == "count"
    params, state = interop.from_torch(net.state_dict(), rows)
    x = np.random.default_rng(2).standard_normal((2, 4, 5, 2)).astype(np.float32)
    y, _ = model.apply(params, jnp.asarray(x), state=state, train=False)
    with torch.no_grad():
        y_t = net(torch.from_numpy(x).permute(0, 3, 1, 2)).permute(0, 2, 3, 1).numpy()
    np.testing.assert_allclose(np.asarray(y), y_t, atol=ATOL, rtol=0)
    back = interop.to_torch(params, rows, state, tensors=True)  # InstanceNorm2d never counts its batches: 0
    for name, value in net.state_dict().items():
        assert torch.equal(back[name], value), name


def test_unet_errors():
    with pytest.raises(ValueError, match=r"unet: unknown `norm` 'layer'. It needs to be one of \['group', 'batch', None\]"):
        models.unet(norm="layer")
    with pytest.raises(ValueError, match=r"unet: unknown `up` 'bilinear'. It needs to be one of \['transpose', 'upsample'\]"):
        models.unet(up="bilinear")
    with pytest.raises(ValueError, match=r"unet: `num_groups` \(=3\) must divide `base_width` \(=8\)"):
        models.unet(base_width=8, num_groups=3)
    with pytest.raises(ValueError, match=r"unet: `depth` must be an int >= 0, got -1"):
        models.unet(depth=-1)
    with pytest.raises(ValueError, match=r"unet: `input_shape` must be \(m, n_H, n_W, in_channels=1\) with n_H and n_W divisible by 2\^depth = 4, got \(1, 6, 8, 1\)"):
        models.unet().init(KEY, (1, 6, 8, 1))
