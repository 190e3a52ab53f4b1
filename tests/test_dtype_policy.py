"""The mixed-precision policy: bfloat16 compute, float32 params and gradients, float32 sums,
loss and BatchNorm statistics (issue #15).

References: the float64 convolution and dense of the same bfloat16-rounded inputs (what a
float32 sum rounded once to bfloat16 must match to half a bfloat16 ulp), a sequential
bfloat16 sum (what accumulating in bfloat16 would give: far off on these cases), a float64
numpy BatchNorm, and the float32 model on the same params.
"""

import json
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from jaxconv import models, nn, train
from jaxconv.conv import conv2d, conv_transpose2d
from jaxconv.layers import FLOAT_DTYPES, BatchNorm, Conv2D, ConvTranspose2D, Dense, Flatten, Relu, serial
from jaxconv.loop import TrainConfig

KEY = jax.random.key(0)
BF16, F32, F64 = jnp.bfloat16, jnp.float32, jnp.float64
# A float32 (or wider) sum rounded once to bfloat16 is within half an ulp, 2^-9 relative; allow one ulp.
BF16_ULP = 2.0**-8
LAYOUT = ("NHWC", "HWIO", "NHWC")


def _positive_bf16(key, shape):
    """Values in [1, 1.25) rounded to bfloat16: products of about 1 that never cancel, so sums only grow."""
    return (1 + 0.25 * jax.random.uniform(key, shape)).astype(BF16)


def _sequential_bf16_sum(terms):
    """Σ terms added one at a time with each partial sum rounded to bfloat16 (a bfloat16 accumulator)."""
    total = np.asarray(0, BF16)
    for t in np.asarray(terms, np.float32):
        total = (total + np.asarray(t, BF16)).astype(BF16)
    return float(total)


def _conv64(x, w):
    x, w = (jnp.asarray(a).astype(F64) for a in (x, w))
    return jax.lax.conv_general_dilated(x, w, (1, 1), "VALID", dimension_numbers=LAYOUT, precision="highest")


# 3·3·256 = 2,304 products of about 1.3 per output: a bfloat16 accumulator stalls near 512 (its ulp
# there is 4, and each term rounds away), about a sixth of the true sum of about 2,900.
X_SHAPE, W_SHAPE = (2, 6, 6, 256), (3, 3, 256, 2)


def test_the_case_loses_precision_when_summed_in_bfloat16():
    x, w = _positive_bf16(jax.random.key(1), X_SHAPE), _positive_bf16(jax.random.key(2), W_SHAPE)
    products = np.asarray(x[0, :3, :3, :], np.float64) * np.asarray(w[..., 0], np.float64)  # Z[0, 0, 0, 0]'s terms
    exact = products.sum()
    assert abs(_sequential_bf16_sum(products.ravel()) - exact) > 0.5 * exact


@pytest.mark.parametrize("impl", ["lax", "hand"])
def test_conv_sums_bfloat16_in_float32(impl):
    x, w = _positive_bf16(jax.random.key(1), X_SHAPE), _positive_bf16(jax.random.key(2), W_SHAPE)
    z, vjp = jax.vjp(lambda x, w: conv2d(x, w, impl=impl), x, w)
    assert z.dtype == BF16
    exact = _conv64(x, w)
    np.testing.assert_array_less(np.abs(np.asarray(z, np.float64) - exact), BF16_ULP * np.abs(exact))
    # backward: dW sums 2·4·4 = 32 products per entry, dX up to 9·2 = 18; against float64's vjp
    g = _positive_bf16(jax.random.key(3), z.shape)
    dx, dw = vjp(g)
    _, vjp64 = jax.vjp(_conv64, np.asarray(x, np.float64), np.asarray(w, np.float64))
    for got, want in zip((dx, dw), vjp64(np.asarray(g, np.float64))):
        assert got.dtype == BF16
        np.testing.assert_array_less(np.abs(np.asarray(got, np.float64) - want), BF16_ULP * np.abs(want) + 1e-30)


@pytest.mark.parametrize("op", [conv2d, conv_transpose2d])
def test_lax_conv_asks_for_float32_sums(op):
    """On CPU XLA sums bfloat16 convolutions in float32 anyway; the request is what other backends follow."""
    x, w = jnp.zeros((1, 4, 4, 2), BF16), jnp.zeros((3, 3, 2, 2), BF16)
    jaxpr = str(jax.make_jaxpr(lambda x, w: op(x, w, impl="lax"))(x, w))
    assert "preferred_element_type=float32" in jaxpr and jax.eval_shape(lambda: op(x, w, impl="lax")).dtype == BF16
    jaxpr32 = str(jax.make_jaxpr(lambda x, w: op(x, w, impl="lax"))(x.astype(F32), w.astype(F32)))
    assert "preferred_element_type=None" in jaxpr32  # float32 convolutions are left as they were


def test_conv_transpose_layer_computes_in_bfloat16():
    layer = ConvTranspose2D(2, 3, stride=2, dtype=F32, compute_dtype="bfloat16")
    _, params = layer.init(KEY, (-1, 3, 3, 4))
    x = jax.random.normal(jax.random.key(9), (1, 3, 3, 4), F32)
    y = layer.apply(params, x)
    want = conv_transpose2d(x.astype(F64), params["w"].astype(BF16).astype(F64), params["b"].astype(F64), stride=2)
    assert y.dtype == BF16
    np.testing.assert_allclose(np.asarray(y, np.float64), want, rtol=2**-7, atol=2**-7)  # inputs rounded to bfloat16


def test_dense_sums_bfloat16_in_float32():
    x, w = _positive_bf16(jax.random.key(4), (3, 2048)), _positive_bf16(jax.random.key(5), (2048, 4))
    y = nn.dense(x, w)
    assert y.dtype == BF16
    exact = np.asarray(x, np.float64) @ np.asarray(w, np.float64)
    assert abs(_sequential_bf16_sum(np.asarray(x[0], np.float64) * np.asarray(w[:, 0], np.float64)) - exact[0, 0]) > 0.5 * exact[0, 0]
    np.testing.assert_array_less(np.abs(np.asarray(y, np.float64) - exact), BF16_ULP * exact)


@pytest.mark.slow  # two LeNet gradients compiled: ~6 s idle, 25 s on busy cores; the small net below covers the step in the default tier
def test_lenet_bfloat16_step_keeps_float32_params_grads_and_loss():
    net, net32 = models.lenet5(dtype=F32, compute_dtype="bfloat16"), models.lenet5(dtype=F32)
    _, params = net.init(KEY, (-1, 32, 32, 1))
    x, y = jax.random.normal(jax.random.key(6), (8, 32, 32, 1), F32), jnp.arange(8)
    optimizer = optax.adam(1e-3)

    @jax.jit
    def step_and_reference(params, opt_state):  # one compile: a bfloat16 step, and float32 on the same params
        grad = lambda apply: jax.value_and_grad(train.make_cost(apply), has_aux=True)(params, x, y)  # noqa: E731
        (J, logits), grads = grad(net.apply)
        updates, opt_state = optimizer.update(grads, opt_state, params)
        return net.apply(params, x), (J, logits), grads, optax.apply_updates(params, updates), grad(net32.apply)

    raw_logits, (J, logits), grads, new_params, ((J32, _), grads32) = step_and_reference(params, optimizer.init(params))
    assert raw_logits.dtype == BF16  # the compute dtype, up to the logits
    assert J.dtype == F32 and logits.dtype == F32  # the loss and the metrics in float32
    for tree in (grads, new_params):  # optax updates float32 params with float32 gradients
        assert {leaf.dtype for leaf in jax.tree_util.tree_leaves(tree)} == {jnp.dtype(F32)}
    # against float32: the loss to bfloat16's precision, the gradient in the same direction
    assert abs(float(J) - float(J32)) < 0.02 * float(J32)
    g, g32 = (jnp.concatenate([a.ravel() for a in jax.tree_util.tree_leaves(t)]) for t in (grads, grads32))
    assert float(g @ g32 / jnp.linalg.norm(g) / jnp.linalg.norm(g32)) > 0.99


def test_stateful_step_and_eval_step_keep_float32():
    """The train-mode cost (BatchNorm state) and the eval step cast bfloat16 logits to float32 too."""
    net = serial(
        Conv2D(2, 3, dtype=F32, compute_dtype=BF16), BatchNorm(dtype=F32, compute_dtype=BF16), Relu(), Flatten(),
        Dense(3, dtype=F32, compute_dtype=BF16),
    )
    _, params = net.init(KEY, (-1, 5, 5, 1))
    _, state = net.init_state((-1, 5, 5, 1))
    x, y = jax.random.normal(jax.random.key(8), (4, 5, 5, 1), F32), jnp.array([0, 1, 2, 0])
    optimizer = optax.sgd(0.1)
    step = train.make_train_step(net.apply, optimizer, donate=False)
    new_params, _, metrics, new_state = step(params, optimizer.init(params), x, y, state=state, key=KEY)
    for tree in (new_params, new_state):
        assert {leaf.dtype for leaf in jax.tree_util.tree_leaves(tree)} == {jnp.dtype(F32)}
    assert metrics["loss"].dtype == F32
    loss_sum, correct, logits = train.make_eval_step(net.apply)(params, x, y, jnp.ones(4, F32), state)
    assert logits.dtype == F32 and loss_sum.dtype == F32


def test_batchnorm_statistics_in_float32():
    bn = BatchNorm(momentum=0.1, dtype=F32, compute_dtype="bfloat16")
    _, params = bn.init(KEY, (-1, 4, 4, 3))
    _, state = bn.init_state((-1, 4, 4, 3))
    # about 3 ± 0.05: bfloat16's ulp at 3 is 1/64, so a mean or variance rounded to it is off by up to 3e-3 relative
    x = (3 + 0.05 * jax.random.normal(jax.random.key(7), (8, 4, 4, 3))).astype(BF16)
    y, new = bn.apply(params, x, state=state, train=True)
    assert y.dtype == BF16 and new["mean"].dtype == F32 and new["var"].dtype == F32
    x64 = np.asarray(x, np.float64)
    mean, var = x64.mean((0, 1, 2)), x64.var((0, 1, 2))
    n = x64.size // 3
    np.testing.assert_allclose(new["mean"], 0.9 * 0 + 0.1 * mean, rtol=1e-6)
    np.testing.assert_allclose(new["var"], 0.9 * 1 + 0.1 * var * n / (n - 1), rtol=1e-6)
    y64 = (x64 - mean) / np.sqrt(var + 1e-5)
    np.testing.assert_allclose(np.asarray(y, np.float64), y64, rtol=BF16_ULP, atol=BF16_ULP * 0.01)
    # eval mode with float32 running statistics, output in the compute dtype
    y_eval, _ = bn.apply(params, x, state=new, train=False)
    want = (x64 - np.asarray(new["mean"], np.float64)) / np.sqrt(np.asarray(new["var"], np.float64) + 1e-5)
    assert y_eval.dtype == BF16
    np.testing.assert_allclose(np.asarray(y_eval, np.float64), want, rtol=BF16_ULP, atol=BF16_ULP * 0.01)


def test_default_policy_promotes_as_before():
    """compute_dtype=None: a float32 layer given float64 input computes in float64 (the common dtype)."""
    layer = Dense(3, dtype=F32)
    _, params = layer.init(KEY, (-1, 4))
    assert layer.apply(params, jnp.ones((2, 4), F64)).dtype == F64
    assert Dense(3, dtype=F32, compute_dtype="float32").apply(params, jnp.ones((2, 4), F64)).dtype == F32


def test_dtype_names_types_and_dtypes_are_accepted():
    assert FLOAT_DTYPES == ("float32", "bfloat16", "float16", "float64")
    for dt in ("bfloat16", jnp.bfloat16, jnp.dtype("bfloat16")):
        _, params = Conv2D(2, 3, dtype=F32, compute_dtype=dt).init(KEY, (-1, 5, 5, 1))
        assert Conv2D(2, 3, dtype=F32, compute_dtype=dt).apply(params, jnp.ones((1, 5, 5, 1))).dtype == BF16


@pytest.mark.parametrize(
    "make, error, match",
    [
        (lambda: Conv2D(2, 3, compute_dtype="bf16"), ValueError, r"Conv2D: unknown `compute_dtype` 'bf16'\. It needs to be one of \['float32', 'bfloat16', 'float16', 'float64'\] or None \(e\.g\. compute_dtype=\"bfloat16\"\)"),
        (lambda: Dense(2, dtype="int32"), ValueError, r"Dense: unknown `dtype` 'int32'\. It needs to be one of \[.*\] or None \(e\.g\. dtype=\"float32\"\)"),
        (lambda: BatchNorm(compute_dtype=16), TypeError, r"BatchNorm: `compute_dtype` must be a dtype or its name, got int 16; pass one of \['float32'"),
        (lambda: models.lenet5(compute_dtype="half-precision"), ValueError, r"Conv2D: unknown `compute_dtype` 'half-precision'"),
        (lambda: TrainConfig(dtype="float16").validate(), ValueError, r"train: unknown `dtype` 'float16'\. It needs to be one of \['float32', 'bfloat16'\]"),
    ],
)
def test_unknown_dtypes_name_the_choices(make, error, match):
    with pytest.raises(error, match=match):
        make()


@pytest.mark.slow  # ~5 s subprocess: the loop's dtype plumbing; the bfloat16 step itself is checked above
def test_cli_train_bfloat16_end_to_end(tmp_path):
    """`jaxconv train --dtype bfloat16` in a fresh interpreter (float32 by default, as users run it)."""
    out = tmp_path / "bf16"
    run = subprocess.run(
        [sys.executable, "-m", "jaxconv.cli", "train", "--dtype", "bfloat16", "--limit", "64", "--epochs", "1",
         "--batch-size", "32", "--impl", "lax", "--no-progress", "--out", str(out)],
        cwd=tmp_path, capture_output=True, text=True, timeout=240,
    )
    assert run.returncode == 0, run.stderr
    assert "(lax conv, bfloat16 compute)" in run.stdout and "best test accuracy" in run.stdout
    assert json.load(open(out / "config.json"))["dtype"] == "bfloat16"
    saved = np.load(out / "checkpoint.npz", allow_pickle=False)
    params = [k for k in saved.files if k.startswith("params")]
    assert params and {saved[k].dtype for k in params} == {np.dtype(np.float32)}  # float32 params on disk
