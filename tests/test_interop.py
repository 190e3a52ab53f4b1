"""jaxconv.interop: PyTorch state_dicts and safetensors files in and out, checked against PyTorch itself.

The NumPy-only tests need neither torch nor safetensors; the others importorskip them. One LeNet-5
input shape (4, 32, 32, 1) throughout, so JAX compiles it once.
"""

from __future__ import annotations

import os
import subprocess
import sys
import types

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxconv import interop, models
from jaxconv.layers import Conv2D, Dense, Layer, serial

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ATOL = 1e-5  # float32 logits of LeNet-5 (|logit| ~ 1): summation order differs between PyTorch and XLA
X = np.random.default_rng(0).normal(size=(4, 32, 32, 1)).astype(np.float32)  # NHWC

LENET_ROWS = [  # (torch name, torch shape, jaxconv path, jaxconv shape), by hand from models.lenet5
    ("conv1.weight", (6, 1, 5, 5), "conv1.w", (5, 5, 1, 6)),
    ("conv1.bias", (6,), "conv1.b", (6,)),
    ("conv2.weight", (16, 6, 5, 5), "conv2.w", (5, 5, 6, 16)),
    ("conv2.bias", (16,), "conv2.b", (16,)),
    ("fc3.weight", (120, 400), "fc3.w", (400, 120)),
    ("fc3.bias", (120,), "fc3.b", (120,)),
    ("fc4.weight", (84, 120), "fc4.w", (120, 84)),
    ("fc4.bias", (84,), "fc4.b", (84,)),
    ("fc5.weight", (10, 84), "fc5.w", (84, 10)),
    ("fc5.bias", (10,), "fc5.b", (10,)),
]


def _numpy_state_dict(seed=0):
    rng = np.random.default_rng(seed)
    return {name: rng.normal(size=shape).astype(np.float32) for name, shape, _, _ in LENET_ROWS}


@pytest.fixture(scope="module")
def lenet():
    model = models.lenet5(impl="lax")
    return model, jax.jit(model.apply), interop.lenet5_name_map()


def _torch_lenet():
    pytest.importorskip("torch")
    if os.path.join(ROOT, "experiments") not in sys.path:
        sys.path.insert(0, os.path.join(ROOT, "experiments"))  # experiments/_common.py, imported by the script
    from port_from_pytorch import torch_lenet5, torch_logits

    return torch_lenet5, torch_logits


# --------------------------------------------------------------------------- name map, NumPy only


def test_lenet5_name_map_rows_and_flatten_order_from_summary(lenet):
    _, _, rows = lenet
    assert [(r.torch_name, r.torch_shape, r.path, r.jax_shape) for r in rows] == LENET_ROWS
    assert [r.conversion for r in rows][::2] == ["conv", "conv", "dense", "dense", "dense"]
    assert [r.flatten for r in rows] == [None] * 4 + [(5, 5, 16)] + [None] * 5  # conv2's pooled (n_H, n_W, n_C)
    table = interop.format_name_map(rows)
    assert "fc3.weight" in table and "NCHW-flattened (16, 5, 5) -> NHWC (5, 5, 16)" in table
    assert len(table.splitlines()) == 2 + len(LENET_ROWS)


def test_flatten_permutation_matches_nchw_flatten_by_hand():
    # One dense layer after a (n_H, n_W, n_C) = (2, 3, 4) activation: PyTorch multiplies its
    # CHW-flattened vector, jaxconv the HWC-flattened one; the outputs must be equal.
    rng = np.random.default_rng(1)
    a = rng.normal(size=(2, 3, 4))
    w_torch = rng.normal(size=(5, 24))
    w_jax = interop.CONVERSIONS["dense"][0](w_torch, (2, 3, 4))
    np.testing.assert_allclose(a.reshape(-1) @ w_jax, w_torch @ a.transpose(2, 0, 1).reshape(-1), rtol=1e-12)
    assert np.array_equal(interop.CONVERSIONS["dense"][1](w_jax, (2, 3, 4)), w_torch)


def test_numpy_round_trip_is_bit_identical_without_torch(lenet):
    _, _, rows = lenet
    sd = _numpy_state_dict()
    params, state = interop.from_torch(sd, rows)
    assert params["conv1"]["w"].shape == (5, 5, 1, 6) and params["relu1"] == {} and jax.tree.leaves(state) == []
    np.testing.assert_array_equal(params["conv1"]["w"][1, 2, 0, 3], sd["conv1.weight"][3, 0, 1, 2])  # OIHW[o,i,h,w]
    back = interop.to_torch(params, rows)
    assert list(back) == list(sd)
    for name in sd:
        assert back[name].dtype == sd[name].dtype and np.array_equal(back[name], sd[name]), name


def test_generic_mapping_sequential_names(lenet):
    model, apply, rows = lenet
    mapping = {"features.0": "conv1", "features.3": "conv2", "classifier.0": "fc3", "classifier.2": "fc4", "classifier.4": "fc5"}
    seq_rows = interop.name_map(model, (-1, 32, 32, 1), mapping)
    assert [r.torch_name for r in seq_rows][:3] == ["features.0.weight", "features.0.bias", "features.3.weight"]
    assert [r[1:] for r in seq_rows] == [r[1:] for r in rows]  # same paths, conversions and shapes
    sd = {r2.torch_name: v for r2, v in zip(seq_rows, _numpy_state_dict().values())}
    p1, _ = interop.from_torch(sd, seq_rows)
    p2, _ = interop.from_torch(_numpy_state_dict(), rows)
    assert jax.tree.all(jax.tree.map(lambda a, b: bool(jnp.array_equal(a, b)), p1, p2))


# --------------------------------------------------------------------------- PyTorch


def test_torch_round_trip_bit_identical_and_logits_agree_both_ways(lenet):
    torch = pytest.importorskip("torch")

    torch_lenet5, torch_logits = _torch_lenet()
    model, apply, rows = lenet
    torch.manual_seed(0)
    net = torch_lenet5().eval()
    sd = net.state_dict()
    params, _ = interop.from_torch(sd, rows)  # torch tensors in
    np.testing.assert_allclose(np.asarray(apply(params, X)), torch_logits(net, X), atol=ATOL, rtol=0)
    back = interop.to_torch(params, rows, tensors=True)
    assert list(back) == list(sd)
    for name in sd:
        assert back[name].dtype == sd[name].dtype and torch.equal(back[name], sd[name]), name
    naive = dict(params, fc3=dict(params["fc3"], w=jnp.asarray(sd["fc3.weight"].numpy().T)))  # no NCHW reorder
    assert float(np.abs(np.asarray(apply(naive, X)) - torch_logits(net, X)).max()) > 100 * ATOL  # the silent bug

    _, params_j = model.init(jax.random.key(3), (-1, 32, 32, 1))  # jaxconv -> PyTorch
    net_j = torch_lenet5()
    net_j.load_state_dict(interop.to_torch(params_j, rows, tensors=True))  # strict: every name matches
    np.testing.assert_allclose(torch_logits(net_j.eval(), X), np.asarray(apply(params_j, X)), atol=ATOL, rtol=0)


def test_safetensors_with_torch_names_loads_into_torch_module(lenet, tmp_path):
    torch = pytest.importorskip("torch")

    st_torch = pytest.importorskip("safetensors.torch")
    torch_lenet5, torch_logits = _torch_lenet()
    model, apply, rows = lenet
    _, params = model.init(jax.random.key(4), (-1, 32, 32, 1))
    path = interop.save_safetensors(tmp_path / "lenet5.safetensors", params, rows)
    assert os.listdir(tmp_path) == ["lenet5.safetensors"]  # no temporary file left behind
    net = torch_lenet5()
    net.load_state_dict(st_torch.load_file(path))
    np.testing.assert_allclose(torch_logits(net.eval(), X), np.asarray(apply(params, X)), atol=ATOL, rtol=0)
    p2, _ = interop.load_safetensors(path, rows=rows)
    assert jax.tree.all(jax.tree.map(lambda a, b: bool(jnp.array_equal(a, b)), p2, params))
    assert torch.equal(st_torch.load_file(path)["fc3.weight"], interop.to_torch(params, rows, tensors=True)["fc3.weight"])


def test_conv_transpose_weight_is_the_hwio_filter_of_the_transposed_conv2d():
    # Shared decision 2: ConvTranspose2d(n_C=3 -> n_C'=2) equals the input gradient of the conv2d
    # that maps n_C'=2 -> n_C=3 with our filter w (f_H, f_W, n_C'/g, n_C) = weight.permute(2, 3, 1, 0).
    torch = pytest.importorskip("torch")
    from jaxconv.conv import conv2d

    torch.manual_seed(0)
    convt = torch.nn.ConvTranspose2d(3, 2, 3, stride=2, padding=1)

    def init(key, input_shape):
        return (input_shape[0], 7, 7, 2), {"w": jnp.zeros((3, 3, 2, 3), jnp.float32), "b": jnp.zeros(2, jnp.float32)}

    layer = types.SimpleNamespace(kind="conv_transpose", children=(), init=init)
    model = types.SimpleNamespace(kind="serial", children=(("up", layer),), init=lambda k, s: (s, {"up": init(k, s)[1]}))
    rows = interop.name_map(model, (-1, 4, 4, 3))
    assert [(r.torch_name, r.conversion, r.torch_shape) for r in rows] == [("up.weight", "conv_transpose", (3, 2, 3, 3)), ("up.bias", "copy", (2,))]
    params, _ = interop.from_torch({f"up.{k}": v for k, v in convt.state_dict().items()}, rows)
    w, b = params["up"]["w"], params["up"]["b"]
    x = X[:1, :4, :4, :1].repeat(3, axis=3) * np.array([1.0, -0.5, 2.0], np.float32)  # (1, 4, 4, 3)
    _, vjp = jax.vjp(lambda z: conv2d(z, w, stride=2, padding=1, impl="lax"), jnp.zeros((1, 7, 7, 2), jnp.float32))
    y = vjp(jnp.asarray(x))[0] + b  # (1, 7, 7, 2)
    with torch.no_grad():
        ref = convt(torch.from_numpy(x.transpose(0, 3, 1, 2).copy())).numpy().transpose(0, 2, 3, 1)
    np.testing.assert_allclose(np.asarray(y), ref, atol=1e-5, rtol=0)
    back = interop.to_torch(params, rows, tensors=True)
    assert torch.equal(back["up.weight"], convt.weight.detach())


def test_batchnorm_leaves_against_torch_batchnorm2d():
    torch = pytest.importorskip("torch")
    torch.manual_seed(0)
    bn = torch.nn.BatchNorm2d(3)
    with torch.no_grad():
        bn.weight.uniform_(0.5, 2.0)
        bn.bias.uniform_(-1.0, 1.0)
    for _ in range(2):  # train mode: running statistics move away from 0 / 1
        bn(torch.randn(4, 3, 5, 5) * 2 + 1)
    params, state = interop.batchnorm_from_torch(bn.state_dict())
    assert set(params) == {"gamma", "beta"} and set(state) == {"mean", "var"}
    # BatchNorm in eval mode by the formula, in float64 NumPy, against PyTorch.
    x = np.random.default_rng(2).normal(size=(2, 5, 5, 3)).astype(np.float32)  # NHWC
    ref = (x - state["mean"].astype(np.float64)) / np.sqrt(state["var"].astype(np.float64) + bn.eps) * params["gamma"] + params["beta"]
    with torch.no_grad():
        y = bn.eval()(torch.from_numpy(x.transpose(0, 3, 1, 2).copy())).numpy().transpose(0, 2, 3, 1)
    np.testing.assert_allclose(y, ref, atol=1e-5, rtol=0)
    sd = interop.batchnorm_to_torch(params, state, num_batches_tracked=2)
    fresh = torch.nn.BatchNorm2d(3)
    fresh.load_state_dict({k: torch.from_numpy(v) for k, v in sd.items()})
    for name, value in bn.state_dict().items():
        assert torch.equal(fresh.state_dict()[name], value), name


def _conv_bn_model():
    """A conv followed by a hand-built BatchNorm layer with the shared param/state names."""

    def bn_init(key, input_shape):
        n_C = input_shape[-1]
        return tuple(input_shape), {"gamma": jnp.ones(n_C), "beta": jnp.zeros(n_C)}

    conv = Conv2D(3, 3)
    bn = types.SimpleNamespace(kind="batchnorm", children=(), init=bn_init)
    children = (("conv", conv), ("bn", bn))

    def init(key, input_shape):
        shape, p_conv = conv.init(key, input_shape)
        return shape, {"conv": p_conv, "bn": bn_init(key, shape)[1]}

    def init_state(input_shape):
        return tuple(input_shape), {"conv": {}, "bn": {"mean": jnp.zeros(3), "var": jnp.ones(3)}}

    return types.SimpleNamespace(kind="serial", children=children, init=init, init_state=init_state)


def test_batchnorm_in_a_model_name_map_and_num_batches_tracked():
    torch = pytest.importorskip("torch")
    torch.manual_seed(0)
    seq = torch.nn.Sequential(torch.nn.Conv2d(2, 3, 3), torch.nn.BatchNorm2d(3))
    seq(torch.randn(2, 2, 6, 6))  # moves the running statistics, num_batches_tracked = 1
    rows = interop.name_map(_conv_bn_model(), (-1, 6, 6, 2), {"0": "conv", "1": "bn"})
    assert [(r.torch_name, r.collection, r.path) for r in rows][2:] == [
        ("1.weight", "params", "bn.gamma"),
        ("1.bias", "params", "bn.beta"),
        ("1.running_mean", "state", "bn.mean"),
        ("1.running_var", "state", "bn.var"),
        ("1.num_batches_tracked", "count", ""),
    ]
    params, state = interop.from_torch(seq.state_dict(), rows)
    assert state["conv"] == {} and np.array_equal(state["bn"]["var"], seq[1].running_var.numpy())
    back = interop.to_torch(params, rows, state, num_batches_tracked=1, tensors=True)
    for name, value in seq.state_dict().items():
        assert back[name].dtype == value.dtype and torch.equal(back[name], value), name
    assert int(interop.to_torch(params, rows, state)["1.num_batches_tracked"]) == 0  # the default count
    with pytest.raises(ValueError, match=r"to_torch: the model has BatchNorm running statistics, so `state` is required"):
        interop.to_torch(params, rows)


def test_resnet20_round_trip_and_eval_logits_agree():
    # Runs once the state helper's BatchNorm and models.resnet20 are merged; skips before.
    torch = pytest.importorskip("torch")

    if not hasattr(models, "resnet20"):
        pytest.skip("models.resnet20 arrives with the BatchNorm/state merge")
    _torch_lenet()
    from port_from_pytorch import torch_resnet20

    torch.manual_seed(0)
    net = torch_resnet20(in_channels=1)
    with torch.no_grad():
        for _ in range(2):  # train mode: BatchNorm running statistics move away from 0 / 1
            net(torch.randn(4, 1, 32, 32))
        for m in net.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.weight.uniform_(0.5, 1.5), m.bias.uniform_(-0.5, 0.5)
    net.eval()
    sd = net.state_dict()
    model = models.resnet20(in_channels=1, impl="lax")
    rows = interop.name_map(model, (-1, 32, 32, 1))
    assert {r.torch_name for r in rows} == set(sd)
    params, state = interop.from_torch(sd, rows)
    back = interop.to_torch(params, rows, state, num_batches_tracked=2, tensors=True)
    for name in sd:
        assert back[name].dtype == sd[name].dtype and torch.equal(back[name], sd[name]), name
    y, _ = model.apply(params, X[:2], state=state, train=False)
    np.testing.assert_allclose(np.asarray(y), _torch_lenet()[1](net, X[:2]), atol=ATOL, rtol=0)


# --------------------------------------------------------------------------- safetensors, jaxconv names


def test_safetensors_jaxconv_names_round_trip(lenet, tmp_path):
    st = pytest.importorskip("safetensors.numpy")
    model, _, _ = lenet
    _, params = model.init(jax.random.key(5), (-1, 32, 32, 1))
    path = str(tmp_path / "p.safetensors")
    interop.save_safetensors(path, params)
    assert sorted(st.load_file(path)) == sorted(f"{layer}.{k}" for layer in ("conv1", "conv2", "fc3", "fc4", "fc5") for k in "wb")
    with open(path, "rb") as f:
        assert b'"names":"jaxconv"' in f.read(4096)  # the JSON header's metadata
    loaded = interop.load_safetensors(path, params)
    assert loaded["pool1"] == {}
    assert jax.tree.all(jax.tree.map(lambda a, b: bool(jnp.array_equal(a, b)) and a.dtype == b.dtype, loaded, params))
    assert jnp.array_equal(interop.load_safetensors(path)["fc4"]["w"], params["fc4"]["w"])  # without params_like
    interop.save_safetensors(path, jax.tree.map(lambda a: a + 1, params))  # overwrite in place
    assert jnp.array_equal(interop.load_safetensors(path, params)["fc5"]["b"], params["fc5"]["b"] + 1)
    assert os.listdir(tmp_path) == ["p.safetensors"]


# --------------------------------------------------------------------------- errors


def test_from_torch_names_every_missing_unexpected_and_misshaped_tensor(lenet):
    _, _, rows = lenet
    sd = _numpy_state_dict()
    del sd["fc4.bias"], sd["conv2.bias"]
    sd["fc6.weight"] = np.zeros((2, 2), np.float32)
    sd["conv1.weight"] = np.zeros((6, 1, 3, 3), np.float32)
    with pytest.raises(
        ValueError,
        match=r"from_torch: the state_dict does not match the name map: missing \['conv2.bias', 'fc4.bias'\], "
        r"unexpected \['fc6.weight'\], mis-shaped \['conv1.weight \(6, 1, 3, 3\) \(expected \(6, 1, 5, 5\)\)'\]; "
        r"build the name map",
    ):
        interop.from_torch(sd, rows)
    with pytest.raises(TypeError, match=r"from_torch: `state_dict` must be a dict of name -> tensor or array, got list"):
        interop.from_torch([], rows)
    with pytest.raises(TypeError, match=r"from_torch: `rows` must be the NameMap that name_map returns, got dict"):
        interop.from_torch(sd, {})


def test_to_torch_names_missing_and_misshaped_leaves(lenet):
    _, _, rows = lenet
    params, _ = interop.from_torch(_numpy_state_dict(), rows)
    del params["fc5"]["b"]
    params["conv2"]["w"] = jnp.zeros((3, 3, 6, 16))
    with pytest.raises(
        ValueError,
        match=r"to_torch: params/state do not match the name map: missing \['params:fc5.b'\], "
        r"mis-shaped \['params:conv2.w \(3, 3, 6, 16\) \(expected \(5, 5, 6, 16\)\)'\]",
    ):
        interop.to_torch(params, rows)
    with pytest.raises(TypeError, match=r"to_torch: `params` must be the model's params dict, got list"):
        interop.to_torch([], rows)


def test_name_map_errors(lenet):
    model, _, _ = lenet
    with pytest.raises(
        ValueError,
        match=r"name_map: `mapping` must name each jaxconv layer with params once: unmapped \['fc4', 'fc5'\], "
        r"unknown jaxconv paths \['fc9'\], mapped more than once \['conv1'\]",
    ):
        interop.name_map(model, (-1, 32, 32, 1), {"a": "conv1", "a2": "conv1", "b": "conv2", "c": "fc3", "d": "fc9"})
    with pytest.raises(TypeError, match=r"name_map: `mapping` must be a dict \{torch module name: jaxconv path\}, got list"):
        interop.name_map(model, (-1, 32, 32, 1), [("a", "conv1")])
    with pytest.raises(ValueError, match=r"name_map: `input_shape` must be a tuple of ints such as \(-1, 32, 32, 1\), got '32'"):
        interop.name_map(model, "32")
    odd = Layer(lambda key, shape: (shape, {"kernel": jnp.zeros(3)}), lambda p, x: x)
    with pytest.raises(ValueError, match=r"name_map: no PyTorch conversion known for layer `odd` with params \{'kernel': \(3,\)\}"):
        interop.name_map(serial(("odd", odd), ("fc", Dense(2))), (-1, 3))
    no_state = _conv_bn_model()
    del no_state.init_state
    with pytest.raises(ValueError, match=r"name_map: BatchNorm layer `bn` needs state \{'mean', 'var'\} from the model's init_state, got \[\]"):
        interop.name_map(no_state, (-1, 6, 6, 2))


def test_batchnorm_leaf_errors():
    with pytest.raises(ValueError, match=r"batchnorm_from_torch: `state_dict` must have keys \['bias', 'running_mean', 'running_var', 'weight'\]"):
        interop.batchnorm_from_torch({"weight": np.ones(2), "bias": np.ones(2)})
    with pytest.raises(ValueError, match=r"batchnorm_to_torch: expected params keys \['beta', 'gamma'\] and state keys \['mean', 'var'\], got \['w'\] and \[\]"):
        interop.batchnorm_to_torch({"w": np.ones(2)}, {})


def test_bfloat16_torch_tensor_is_refused():
    torch = pytest.importorskip("torch")
    with pytest.raises(TypeError, match=r"interop: bfloat16 torch tensors have no NumPy dtype; call .float\(\) on them first"):
        interop.batchnorm_from_torch({k: torch.ones(2, dtype=torch.bfloat16) for k in ("weight", "bias", "running_mean", "running_var")})


def test_safetensors_errors(lenet, tmp_path):
    pytest.importorskip("safetensors.numpy")
    model, _, _ = lenet
    _, params = model.init(jax.random.key(5), (-1, 32, 32, 1))
    path = str(tmp_path / "p.safetensors")
    interop.save_safetensors(path, {"conv1": params["conv1"], "fc3": {"w": params["fc3"]["w"]}, "extra": {"w": jnp.ones(2)}})
    with pytest.raises(
        ValueError,
        match=r"load_safetensors: .*p.safetensors does not match `params_like`: missing \['conv2.b', 'conv2.w', 'fc3.b', "
        r"'fc4.b', 'fc4.w', 'fc5.b', 'fc5.w'\], unexpected \['extra.w'\], mis-shaped \[\]",
    ):
        interop.load_safetensors(path, params)
    bad = dict(params, conv1={"w": params["conv1"]["w"][:3], "b": params["conv1"]["b"].astype(jnp.float16)})
    interop.save_safetensors(path, bad)
    dtype = np.dtype(params["conv1"]["w"].dtype)  # float32 (or JAX's default float, if the layers follow it)
    with pytest.raises(
        ValueError,
        match=rf"mis-shaped \['conv1.b \(6,\) float16 \(expected \(6,\) {dtype}\)', "
        rf"'conv1.w \(3, 5, 1, 6\) {dtype} \(expected \(5, 5, 1, 6\) {dtype}\)'\]",
    ):
        interop.load_safetensors(path, params)
    with pytest.raises(ValueError, match=r"save_safetensors: param key 'a.b' at conv1 must be a non-empty str without '.'; rename it"):
        interop.save_safetensors(path, {"conv1": {"a.b": jnp.ones(1)}})
    with pytest.raises(TypeError, match=r"save_safetensors: `params` must be a nested dict of arrays, got list"):
        interop.save_safetensors(path, [1])


def test_safetensors_truncated_or_foreign_file_is_a_one_line_value_error(lenet, tmp_path):
    pytest.importorskip("safetensors.numpy")
    model, _, _ = lenet
    _, params = model.init(jax.random.key(5), (-1, 32, 32, 1))
    path = tmp_path / "p.safetensors"
    interop.save_safetensors(str(path), params)
    whole = path.read_bytes()
    cases = {"truncated": whole[: len(whole) // 2], "header only": whole[:8], "empty": b"", "foreign": b"PK\x03\x04 a zip file"}
    for what, raw in cases.items():
        path.write_bytes(raw)
        with pytest.raises(ValueError, match=r"load_safetensors: '.*p.safetensors' is not a readable safetensors file .*; it may be truncated"):
            interop.load_safetensors(str(path), params)


def test_from_torch_refuses_integer_tensors_for_float_parameters():
    rows = interop.lenet5_name_map()
    sd = _numpy_state_dict()
    sd["conv1.bias"] = np.arange(6, dtype=np.int64)
    with pytest.raises(TypeError, match=r"from_torch: parameters and running statistics must be floating-point tensors, got \['conv1.bias \(int64\)'\]; convert"):
        interop.from_torch(sd, rows)


def test_conv_conversion_is_the_layout_permutation_in_any_spatial_rank():
    """PyTorch's O I *spatial -> jaxconv's *spatial I O for 1-D (OIW), 2-D (OIHW) and 3-D (OIDHW) filters, and back."""
    conv_from, conv_to, _ = interop.CONVERSIONS["conv"]
    rng = np.random.default_rng(0)
    for shape in ((4, 3, 5), (4, 3, 5, 2), (4, 3, 5, 2, 6)):
        w = rng.normal(size=shape)
        got = conv_from(w)
        want = np.moveaxis(np.moveaxis(w, 0, -1), 0, -2)  # O to the end, then I before it
        np.testing.assert_array_equal(got, want)
        np.testing.assert_array_equal(conv_to(got), w)


# --------------------------------------------------------------------------- the experiment script


@pytest.mark.slow  # ~15-30 s on 2 cores: a subprocess importing torch and compiling a training step
def test_port_from_pytorch_script_quick(tmp_path):
    pytest.importorskip("torch")
    out = tmp_path / "port"
    run = subprocess.run(
        [sys.executable, os.path.join(ROOT, "experiments", "port_from_pytorch.py"), "--steps", "2", "--resnet-steps", "2", "--out", str(out)],
        cwd=tmp_path, capture_output=True, text=True, timeout=600, env={**os.environ, "PYTHONPATH": ROOT},
    )
    assert run.returncode == 0, run.stdout + run.stderr
    assert "round trip PyTorch -> jaxconv -> PyTorch bit-identical: True" in run.stdout
    import json

    with open(out / "port_from_pytorch.json") as f:
        report = json.load(f)
    assert report["round_trip_bit_identical"] is True and len(report["results"]) >= 2
    for r in report["results"]:
        assert r["max_abs_diff"] < ATOL and r["torch_acc"] == r["jaxconv_acc"], r
    assert (out / "lenet5.safetensors").exists() and (out / "port_from_pytorch.md").exists()
