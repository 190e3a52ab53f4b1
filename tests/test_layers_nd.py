"""The normalisation and up-sampling layers: LayerNorm, GroupNorm, InstanceNorm, Upsample, PixelShuffle, PixelUnshuffle.

Three tiers, kept tiny: shapes (init's prediction equals apply's, in 1-, 2- and 3-D), values
(against jaxconv.reference's float64 loops, and against PyTorch's modules where installed),
and the running statistics of InstanceNorm against torch.nn.InstanceNorm2d step by step.
Every error message the layers raise has a test here.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxconv import reference
from jaxconv.layers import GroupNorm, InstanceNorm, LayerNorm, PixelShuffle, PixelUnshuffle, Upsample, serial

TOL = 1e-10  # float64 throughout (conftest turns x64 on); float32 against PyTorch below
TORCH_TOL = 1e-5  # float32: PyTorch and XLA sum in different orders
KEY = jax.random.key(0)
RNG = np.random.default_rng(0)
SHAPES = {1: (2, 6, 4), 2: (2, 4, 6, 4), 3: (2, 2, 4, 4, 4)}  # (m, *spatial, n_C), n_C = 4


def _x(shape, seed=0):
    return np.random.default_rng(seed).standard_normal(shape)


def _random_affine(params, seed=1):
    """params with gamma, beta drawn at random (so a swapped or ignored parameter shows)."""
    rng = np.random.default_rng(seed)
    return {k: jnp.asarray(rng.uniform(0.5, 1.5, v.shape) if k == "gamma" else rng.uniform(-0.5, 0.5, v.shape)) for k, v in params.items()}


LAYERS = {
    "LayerNorm": lambda: LayerNorm(),
    "GroupNorm": lambda: GroupNorm(2),
    "InstanceNorm": lambda: InstanceNorm(affine=True, track_running_stats=True),
    "Upsample": lambda: Upsample(scale_factor=2),
    "Upsample_size": lambda: Upsample(size=4, mode="nearest-exact"),
}


# --------------------------------------------------------------------------- shapes


@pytest.mark.parametrize("rank", [1, 2, 3])
@pytest.mark.parametrize("name", sorted(LAYERS))
def test_init_shape_equals_apply_shape(name, rank):
    layer, shape = LAYERS[name](), SHAPES[rank]
    out_shape, params = layer.init(KEY, (-1, *shape[1:]))
    _, state = layer.init_state(shape)
    y, new_state = layer.apply(params, jnp.asarray(_x(shape)), state=state, train=True)
    assert (shape[0], *out_shape[1:]) == y.shape and jax.tree.map(jnp.shape, new_state) == jax.tree.map(jnp.shape, state)


def test_pixel_shuffle_layers_shapes_and_inverse():
    x = jnp.asarray(_x((2, 3, 5, 8)))
    out_shape, params = PixelShuffle(2).init(KEY, (-1, 3, 5, 8))
    y = PixelShuffle(2).apply(params, x)
    assert params == {} and out_shape == (-1, 6, 10, 2) and y.shape == (2, 6, 10, 2)
    assert PixelUnshuffle(2).init(KEY, (2, 6, 10, 2))[0] == (2, 3, 5, 8)
    np.testing.assert_array_equal(PixelUnshuffle(2).apply({}, y), x)


def test_params_names_and_pytorch_defaults():
    assert jax.tree.map(lambda a: a.tolist(), GroupNorm(2).init(KEY, (1, 3, 4))[1]) == {"gamma": [1.0] * 4, "beta": [0.0] * 4}
    assert jax.tree.map(jnp.shape, LayerNorm(3).init(KEY, (1, 2, 3, 4))[1]) == {"gamma": (2, 3, 4), "beta": (2, 3, 4)}
    assert LayerNorm(elementwise_affine=False).init(KEY, (1, 4))[1] == {}
    assert InstanceNorm().init(KEY, (1, 3, 4))[1] == {} and InstanceNorm().init_state((1, 3, 4))[1] == {}  # PyTorch: affine=False
    _, state = InstanceNorm(track_running_stats=True).init_state((1, 3, 4))
    assert state["mean"].tolist() == [0.0] * 4 and state["var"].tolist() == [1.0] * 4


def test_dtype_and_compute_dtype():
    layer = GroupNorm(2, dtype="float32", compute_dtype="bfloat16")
    _, params = layer.init(KEY, (2, 3, 4))
    assert params["gamma"].dtype == jnp.float32
    assert layer.apply(params, jnp.asarray(_x((2, 3, 4)), jnp.float32)).dtype == jnp.bfloat16
    _, state = InstanceNorm(track_running_stats=True, dtype="float32").init_state((2, 3, 4))
    _, new = InstanceNorm(track_running_stats=True, dtype="float32", compute_dtype="bfloat16").apply({}, jnp.ones((2, 3, 4), jnp.bfloat16), state=state, train=True)
    assert new["mean"].dtype == jnp.float32  # running statistics stay in `dtype`


# --------------------------------------------------------------------------- values


@pytest.mark.parametrize("rank", [1, 3])
def test_group_and_layer_norm_against_the_float64_reference(rank):
    x = _x(SHAPES[rank])
    gn, ln, ln_all = GroupNorm(2), LayerNorm(), LayerNorm(rank + 1)
    for layer, ref in (
        (gn, lambda p: reference.norm.group_norm(x, 2, p["gamma"], p["beta"])),
        (ln, lambda p: reference.norm.layer_norm(x, 4, p["gamma"], p["beta"])),
        (ln_all, lambda p: reference.norm.layer_norm(x, x.shape[1:], p["gamma"], p["beta"])),
    ):
        params = _random_affine(layer.init(KEY, x.shape)[1])
        np.testing.assert_allclose(layer.apply(params, jnp.asarray(x)), ref(params), atol=TOL, rtol=0)


def test_instance_norm_train_and_eval_against_the_reference():
    x, layer = _x(SHAPES[2]), InstanceNorm(momentum=0.2, track_running_stats=True)
    _, state = layer.init_state(x.shape)
    y, state1 = layer.apply({}, jnp.asarray(x), state=state, train=True)
    y_ref, mean, var = reference.norm.instance_norm(x, running_mean=np.zeros(4), running_var=np.ones(4), momentum=0.2)
    np.testing.assert_allclose(y, y_ref, atol=TOL, rtol=0)
    np.testing.assert_allclose(state1["mean"], mean, atol=TOL), np.testing.assert_allclose(state1["var"], var, atol=TOL)
    y_eval, same = layer.apply({}, jnp.asarray(x), state=state1, train=False)
    np.testing.assert_allclose(y_eval, reference.norm.instance_norm(x, running_mean=mean, running_var=var, use_input_stats=False)[0], atol=TOL)
    assert same is state1 or jax.tree.all(jax.tree.map(lambda a, b: bool((a == b).all()), same, state1))
    y_train = layer.apply({}, jnp.asarray(x), train=True)  # train mode without state: the instances' statistics
    np.testing.assert_allclose(y_train, y_ref, atol=TOL, rtol=0)


def test_one_example_without_the_batch_axis_with_spatial_dims_and_vmap():
    x = jnp.asarray(_x(SHAPES[2]))
    for layer in (GroupNorm(2, spatial_dims=2), InstanceNorm(affine=True, spatial_dims=2), Upsample(scale_factor=2, mode="bilinear", spatial_dims=2), LayerNorm()):
        _, params = layer.init(KEY, x.shape)
        params = _random_affine(params)
        whole = layer.apply(params, x)
        np.testing.assert_allclose(layer.apply(params, x[1]), whole[1], atol=TOL, rtol=0)
        np.testing.assert_allclose(jax.vmap(lambda xi: layer.apply(params, xi))(x), whole, atol=TOL, rtol=0)


def test_norm_and_upsample_layers_against_torch_modules():
    torch = pytest.importorskip("torch")
    x = RNG.standard_normal((2, 4, 6, 4)).astype(np.float32)  # NHWC
    xt = torch.from_numpy(x).permute(0, 3, 1, 2)  # NCHW

    def nhwc(t):
        return t.detach().permute(0, 2, 3, 1).numpy()

    torch.manual_seed(0)
    cases = [
        (GroupNorm(2, dtype="float32"), torch.nn.GroupNorm(2, 4), nhwc),
        (LayerNorm(3, dtype="float32"), torch.nn.LayerNorm([4, 4, 6]), nhwc),
        (InstanceNorm(affine=True, dtype="float32"), torch.nn.InstanceNorm2d(4, affine=True), nhwc),
        (Upsample(scale_factor=2, mode="bilinear"), torch.nn.Upsample(scale_factor=2, mode="bilinear"), nhwc),
        (Upsample(size=(7, 9), mode="bilinear", align_corners=True), torch.nn.Upsample(size=(7, 9), mode="bilinear", align_corners=True), nhwc),
        (Upsample(scale_factor=1.5), torch.nn.Upsample(scale_factor=1.5), nhwc),
        (PixelUnshuffle(2), torch.nn.PixelUnshuffle(2), nhwc),
    ]
    for layer, module, back in cases:
        _, params = layer.init(KEY, x.shape)
        params = {k: jnp.asarray(v, jnp.float32) for k, v in _random_affine(params).items()}
        with torch.no_grad():
            for k, tk in (("gamma", "weight"), ("beta", "bias")):
                if k in params:  # LayerNorm over (n_H, n_W, n_C) has PyTorch's (n_C, n_H, n_W)
                    getattr(module, tk).copy_(torch.from_numpy(np.moveaxis(np.asarray(params[k]), -1, 0).copy()))
            expected = back(module(xt))
        np.testing.assert_allclose(layer.apply(params, jnp.asarray(x)), expected, atol=TORCH_TOL, rtol=0, err_msg=repr(module))


def test_instance_norm_running_statistics_follow_torch_step_by_step():
    torch = pytest.importorskip("torch")
    layer = InstanceNorm(momentum=0.3, affine=True, track_running_stats=True, dtype="float32")
    module = torch.nn.InstanceNorm2d(3, momentum=0.3, affine=True, track_running_stats=True)
    _, params = layer.init(KEY, (2, 4, 5, 3))
    _, state = layer.init_state((2, 4, 5, 3))
    step = jax.jit(lambda p, x, s: layer.apply(p, x, state=s, train=True))
    for seed in range(3):
        x = (2.0 + 3.0 * np.random.default_rng(seed).standard_normal((2, 4, 5, 3))).astype(np.float32)
        y, state = step(params, jnp.asarray(x), state)
        module.train()
        y_t = module(torch.from_numpy(x).permute(0, 3, 1, 2)).detach().permute(0, 2, 3, 1).numpy()
        np.testing.assert_allclose(y, y_t, atol=TORCH_TOL, rtol=0)
        np.testing.assert_allclose(state["mean"], module.running_mean.numpy(), atol=TORCH_TOL, rtol=0)
        np.testing.assert_allclose(state["var"], module.running_var.numpy(), atol=TORCH_TOL, rtol=0)
    module.eval()
    y_eval, _ = layer.apply(params, jnp.asarray(x), state=state, train=False)
    with torch.no_grad():
        np.testing.assert_allclose(y_eval, module(torch.from_numpy(x).permute(0, 3, 1, 2)).permute(0, 2, 3, 1).numpy(), atol=TORCH_TOL, rtol=0)


def test_in_a_serial_model_state_nests_and_gradients_flow():
    model = serial(("gn", GroupNorm(2)), ("up", Upsample(scale_factor=2)), ("inorm", InstanceNorm(affine=True, track_running_stats=True)))
    x = jnp.asarray(_x((2, 3, 3, 4)))
    _, params = model.init(KEY, x.shape)
    _, state = model.init_state(x.shape)
    assert set(state) == {"gn", "up", "inorm"} and set(state["inorm"]) == {"mean", "var"}

    def J(p):
        y, _ = model.apply(p, x, state=state, train=True)
        return jnp.sum(y * jnp.arange(y.size).reshape(y.shape))

    grads = jax.jit(jax.grad(J))(params)
    assert all(float(jnp.abs(g).sum()) > 0 for g in jax.tree.leaves(grads))


# --------------------------------------------------------------------------- errors


def test_error_messages():
    with pytest.raises(ValueError, match=r"GroupNorm: `num_groups` \(=3\) must divide the channels n_C \(=4\)"):
        GroupNorm(3).init(KEY, (1, 5, 4))
    with pytest.raises(ValueError, match=r"GroupNorm: `num_groups` must be an int >= 1, got 0"):
        GroupNorm(0)
    with pytest.raises(ValueError, match=r"LayerNorm: `n_axes` must be an int >= 1"):
        LayerNorm(0)
    with pytest.raises(ValueError, match=r"LayerNorm: n_axes=3 needs an `input_shape` of at least 4 axes"):
        LayerNorm(3).init(KEY, (1, 4, 4))
    with pytest.raises(ValueError, match=r"InstanceNorm: `eps` must be a number > 0"):
        InstanceNorm(eps=0)
    with pytest.raises(TypeError, match=r"InstanceNorm: `affine` must be True or False, got 1"):
        InstanceNorm(affine=1)
    with pytest.raises(ValueError, match=r"InstanceNorm: `input_shape` must be \(m, \*spatial, n_C\) with at least 1 spatial axis"):
        InstanceNorm().init(KEY, (1, 4))
    layer = InstanceNorm(track_running_stats=True)
    with pytest.raises(ValueError, match=r"InstanceNorm: eval mode \(train=False\) with track_running_stats=True .* no `state` was given"):
        layer.apply({}, jnp.ones((1, 3, 4)))
    with pytest.raises(ValueError, match=r"InstanceNorm: state must be a dict with keys \['mean', 'var'\], got \[\]"):
        layer.apply({}, jnp.ones((1, 3, 4)), state={}, train=True)
    with pytest.raises(ValueError, match=r"GroupNorm: params must be a dict with keys \['beta', 'gamma'\], got \[\]"):
        GroupNorm(2).apply({}, jnp.ones((1, 3, 4)))
    with pytest.raises(ValueError, match=r"GroupNorm: the layer was built with spatial_dims=2, so x must have 4 axes"):
        GroupNorm(2, spatial_dims=2).apply({"gamma": jnp.ones(4), "beta": jnp.zeros(4)}, jnp.ones((1, 3, 3, 3, 4)))
    with pytest.raises(ValueError, match=r"GroupNorm: `input_shape` must be \(m, n_S, n_S, n_C\)"):
        GroupNorm(2, spatial_dims=2).init(KEY, (1, 3, 4))
    with pytest.raises(ValueError, match=r"GroupNorm: `spatial_dims` must be None or an int >= 1"):
        GroupNorm(2, spatial_dims=0)
    with pytest.raises(ValueError, match=r"Upsample: unknown `mode` 'cubic'. It needs to be one of \['nearest'"):
        Upsample(scale_factor=2, mode="cubic")
    with pytest.raises(ValueError, match=r"upsample: give exactly one of `size` and `scale_factor`, got neither"):
        Upsample().init(KEY, (1, 4, 4, 1))
    with pytest.raises(ValueError, match=r"upsample: mode='bilinear' needs x of shape \(m, \*spatial, n_C\) with 2 spatial axes"):
        Upsample(scale_factor=2, mode="bilinear").init(KEY, (1, 4, 4, 4, 1))
    with pytest.raises(ValueError, match=r"Upsample: the layer was built with spatial_dims=1, so `input_shape` must have 3 axes"):
        Upsample(scale_factor=2, spatial_dims=1).init(KEY, (1, 4, 4, 1))
    with pytest.raises(ValueError, match=r"PixelShuffle: `r` must be an int >= 1, got 0"):
        PixelShuffle(0)
    with pytest.raises(ValueError, match=r"pixel_shuffle: the channels of x \(=3\) must be divisible by r² \(=4\)"):
        PixelShuffle(2).init(KEY, (1, 2, 2, 3))
    with pytest.raises(ValueError, match=r"pixel_unshuffle: r=2 must divide the height and width of x \(=3, 4\)"):
        PixelUnshuffle(2).init(KEY, (1, 3, 4, 1))


def test_flatten_of_sequences_needs_spatial_dims():
    """(m, n_W, n_C) has the rank of one image: Flatten() refuses it at init, Flatten(spatial_dims=1) flattens it
    per example, and a single sequence (n_W, n_C) too."""
    import jaxconv as jc

    with pytest.raises(ValueError, match=r"Flatten.init: input_shape \(2, 5, 3\) is a batch of sequences .* Flatten\(spatial_dims=1\)"):
        jc.Flatten().init(jax.random.key(0), (2, 5, 3))
    layer = jc.Flatten(spatial_dims=1)
    out_shape, params = layer.init(jax.random.key(0), (2, 5, 3))
    x = jnp.arange(30.0).reshape(2, 5, 3)
    assert out_shape == (2, 15) and layer.apply(params, x).shape == (2, 15)
    np.testing.assert_array_equal(layer.apply(params, x[0]), np.arange(15.0))
    assert jc.Flatten().init(jax.random.key(0), (2, 4, 4, 3))[0] == (2, 48)  # images as before
