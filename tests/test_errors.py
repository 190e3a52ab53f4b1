"""Every error the library raises on user input, matched against its message, and
raised before XLA sees the arguments (also while tracing under jax.jit).
"""

import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxconv import (
    AvgPool,
    Conv2D,
    Dense,
    Flatten,
    MaxPool,
    Relu,
    avg_pool,
    conv2d,
    cost,
    dense,
    flatten,
    global_avg_pool,
    max_pool,
    serial,
    softmax_cross_entropy,
)
from jaxconv.conv import IMPLS
from jaxconv.models import lenet5

KEY = jax.random.key(0)
F32 = jnp.float32
X = jnp.zeros((2, 6, 6, 4), F32)  # (m, n_H, n_W, n_C)
W = jnp.zeros((3, 3, 4, 2), F32)  # (f_H, f_W, n_C, n_C')


def _raises(exc, fragment):
    """pytest.raises matching a literal fragment of the message."""
    return pytest.raises(exc, match=re.escape(fragment))


# (callable, exception, message fragment). Each is also run under jax.jit below.
CONV_ERRORS = {
    "rank_2": (lambda x, w: conv2d(x[0, 0], w), ValueError, "conv2d: `x` must have shape (m, n_H, n_W, n_C) or (n_H, n_W, n_C) (NHWC), got shape (6, 4)"),
    "rank_5": (lambda x, w: conv2d(x[None], w), ValueError, "got shape (1, 2, 6, 6, 4); reshape it to NHWC"),
    "w_rank": (lambda x, w: conv2d(x, w[0]), ValueError, "`w` must have shape (f_H, f_W, n_C / groups, n_C') (HWIO), got shape (3, 4, 2)"),
    "channels": (lambda x, w: conv2d(x, w[:, :, :3]), ValueError, "input channels n_C (=4) must equal the filter's n_C_in (=3) * groups (=1) = 3"),
    "channels_groups": (lambda x, w: conv2d(x, w, groups=2), ValueError, "input channels n_C (=4) must equal the filter's n_C_in (=4) * groups (=2) = 8"),
    "groups_divide_in": (lambda x, w: conv2d(x, w[:, :, :1], groups=3), ValueError, "`groups` (=3) must divide the input channels n_C (=4)"),
    "groups_divide_out": (lambda x, w: conv2d(x, jnp.zeros((3, 3, 2, 3), F32), groups=2), ValueError, "`groups` (=2) must divide the filter's output channels n_C' (=3)"),
    "groups_zero": (lambda x, w: conv2d(x, w, groups=0), ValueError, "`groups` must be an int >= 1, got 0"),
    "filter_too_big": (lambda x, w: conv2d(x, jnp.zeros((7, 3, 4, 2), F32)), ValueError, "the filter spans 7 pixels in height (f=7, d=1) but the padded input has only 6 (n=6, padding=(0, 0))"),
    "dilated_too_big": (lambda x, w: conv2d(x, w, dilation=(1, 3)), ValueError, "the filter spans 7 pixels in width (f=3, d=3) but the padded input has only 6"),
    "stride_zero": (lambda x, w: conv2d(x, w, stride=0), ValueError, "conv2d: `stride` must be >= 1, got 0; use stride=1 or larger"),
    "stride_pair": (lambda x, w: conv2d(x, w, stride=(1, 0)), ValueError, "`stride` must be >= 1, got (1, 0)"),
    "dilation_zero": (lambda x, w: conv2d(x, w, dilation=0), ValueError, "conv2d: `dilation` must be >= 1, got 0"),
    "padding_negative": (lambda x, w: conv2d(x, w, padding=-1), ValueError, "`padding` must be non-negative, got -1; crop the input"),
    "padding_negative_pairs": (lambda x, w: conv2d(x, w, padding=((0, 1), (-1, 0))), ValueError, "`padding` must be non-negative, got ((0, 1), (-1, 0))"),
    "padding_string": (lambda x, w: conv2d(x, w, padding="FULL"), ValueError, "conv2d: unknown `padding` string 'FULL'. It needs to be one of ['SAME', 'VALID']"),
    "impl": (lambda x, w: conv2d(x, w, impl="fft"), ValueError, f"conv2d: unknown `impl` 'fft'. It needs to be one of {list(IMPLS)}"),
    "bias_shape": (lambda x, w: conv2d(x, w, jnp.zeros((3,), F32)), ValueError, "conv2d: `b` must have shape (n_C',) = (2,) to match the filter, got (3,)"),
    "bias_rank": (lambda x, w: conv2d(x, w, jnp.zeros((1, 2), F32)), ValueError, "`b` must have shape (n_C',) = (2,) to match the filter, got (1, 2)"),
    "dtype": (lambda x, w: conv2d(x, w.astype(jnp.float64)), TypeError, "conv2d: `x` (float32) and `w` (float64) must have the same dtype"),
}

POOL_ERRORS = {
    "max_rank": (lambda x: max_pool(x[0, 0]), ValueError, "max_pool: `x` must have shape (m, n_H, n_W, n_C) or (n_H, n_W, n_C)"),
    "avg_rank": (lambda x: avg_pool(x[None]), ValueError, "avg_pool: `x` must have shape"),
    "gap_rank": (lambda x: global_avg_pool(x[0, 0]), ValueError, "global_avg_pool: `x` must have shape"),
    "max_window_too_big": (lambda x: max_pool(x, 7), ValueError, "max_pool: the window spans 7 pixels in height (f=7, d=1) but the padded input has only 6"),
    "avg_window_too_big": (lambda x: avg_pool(x, (2, 9), padding=1), ValueError, "avg_pool: the window spans 9 pixels in width (f=9, d=1) but the padded input has only 8"),
    "stride_zero": (lambda x: max_pool(x, 2, 0), ValueError, "max_pool: `stride` must be >= 1, got 0"),
    "window_zero": (lambda x: avg_pool(x, 0), ValueError, "avg_pool: `window` must be >= 1, got 0"),
    "padding_negative": (lambda x: max_pool(x, 2, padding=(0, -1)), ValueError, "max_pool: `padding` must be non-negative, got (0, -1)"),
    "padding_string": (lambda x: avg_pool(x, 2, padding="same-ish"), ValueError, "avg_pool: unknown `padding` string 'same-ish'"),
    "padding_ge_window": (lambda x: max_pool(x, 2, padding=2), ValueError, "max_pool: padding (2, 2) in height must be smaller than the window (=2)"),
}


@pytest.mark.parametrize("name", CONV_ERRORS)
def test_conv2d_errors(name):
    fn, exc, fragment = CONV_ERRORS[name]
    with _raises(exc, fragment):
        fn(X, W)


@pytest.mark.parametrize("name", CONV_ERRORS)
def test_conv2d_errors_raised_while_tracing(name):
    # Under jit the arguments are tracers: the check must still fire, with our message,
    # before anything reaches XLA.
    fn, exc, fragment = CONV_ERRORS[name]
    with _raises(exc, fragment):
        jax.jit(fn)(X, W)


@pytest.mark.parametrize("name", POOL_ERRORS)
def test_pool_errors(name):
    fn, exc, fragment = POOL_ERRORS[name]
    with _raises(exc, fragment):
        fn(X)
    with _raises(exc, fragment):
        jax.jit(fn)(X)


def test_hand_impls_raise_the_same_errors():
    for impl in ("hand", "hand_autodiff"):
        with _raises(ValueError, "the filter spans 7 pixels in height"):
            conv2d(X, jnp.zeros((7, 3, 4, 2), F32), impl=impl)
        with _raises(ValueError, "must equal the filter's n_C_in (=3) * groups (=1)"):
            jax.grad(lambda w: conv2d(X, w, impl=impl).sum())(W[:, :, :3])


@pytest.mark.parametrize(
    "kw, exc, fragment",
    [
        (dict(stride=1.5), TypeError, "`stride` must be an int or a pair of ints (h, w), got 1.5"),
        (dict(stride=True), TypeError, "`stride` must be an int or a pair of ints (h, w), got True"),
        (dict(stride=(1, 2, 3)), TypeError, "`stride` must be an int or a pair of ints (h, w), got (1, 2, 3)"),
        (dict(padding=1.0), TypeError, "`padding` must be an int, (p_h, p_w), ((top, bottom), (left, right)), 'SAME' or 'VALID', got 1.0"),
        (dict(padding=((1, 1), 1)), TypeError, "got ((1, 1), 1)"),
        (dict(padding=True), TypeError, "`padding` must be an int, a pair, a pair of pairs or 'SAME'/'VALID', got True"),
    ],
)
def test_argument_type_errors(kw, exc, fragment):
    with _raises(exc, fragment):
        conv2d(X, W, **kw)


# ---------------------------------------------------------------------------
# Layers and models.
# ---------------------------------------------------------------------------


def test_conv2d_layer_unknown_impl():
    assert {"lax", "hand", "hand_autodiff"} <= set(IMPLS)
    with _raises(ValueError, f"Conv2D: unknown `impl` 'cuda'. It needs to be one of {list(IMPLS)}"):
        Conv2D(4, 3, impl="cuda")


@pytest.mark.parametrize("n_filters", [0, 2.0, True])
def test_conv2d_layer_bad_n_filters(n_filters):
    with _raises(ValueError, f"Conv2D: `n_filters` must be an int >= 1, got {n_filters!r}"):
        Conv2D(n_filters, 3)


def test_conv2d_layer_bad_filter_size():
    with _raises(ValueError, "Conv2D: `f` must be >= 1, got 0"):
        Conv2D(4, 0)


def test_conv2d_layer_params_missing_b():
    layer = Conv2D(2, 3)
    _, params = layer.init(KEY, (1, 6, 6, 4))
    with _raises(ValueError, "Conv2D: params must be a dict with keys ['b', 'w'], got ['w']; pass the params that this layer's init returned"):
        layer.apply({"w": params["w"]}, X)
    with _raises(ValueError, "Conv2D: params must be a dict with keys ['w'], got ['b', 'w']"):
        Conv2D(2, 3, use_bias=False).apply(params, X)


def test_conv2d_layer_init_errors():
    with _raises(ValueError, "Conv2D: `groups` (=3) must divide the input channels n_C (=4)"):
        Conv2D(3, 3, groups=3).init(KEY, (1, 6, 6, 4))
    with _raises(ValueError, "Conv2D: the filter spans 7 pixels in height"):
        Conv2D(3, 7).init(KEY, (-1, 6, 6, 4))
    with _raises(ValueError, "Conv2D: `input_shape` must be (m, n_H, n_W, n_C) (batch axis first, -1 allowed), got (6, 6, 4)"):
        Conv2D(3, 3).init(KEY, (6, 6, 4))
    with _raises(ValueError, "Conv2D: unknown `padding` string 'HALF'"):
        Conv2D(3, 3, padding="HALF").init(KEY, (1, 6, 6, 4))


def test_pool_layer_errors():
    with _raises(ValueError, "MaxPool: the window spans 8 pixels in height"):
        MaxPool(8).init(KEY, (-1, 6, 6, 4))
    with _raises(ValueError, "AvgPool: `stride` must be >= 1, got 0"):
        AvgPool(2, 0).init(KEY, (-1, 6, 6, 4))
    with _raises(ValueError, "MaxPool: params must be a dict with keys [], got ['w']"):
        MaxPool(2).apply({"w": W}, X)


def test_dense_layer_errors():
    with _raises(ValueError, "Dense: `input_shape` must be (m, n_in), got (1, 6, 6, 4); put Flatten() before Dense"):
        Dense(3).init(KEY, (1, 6, 6, 4))
    with _raises(ValueError, "Dense: `n_out` must be an int >= 1, got 0"):
        Dense(0)


def test_serial_params_missing_and_unexpected_layers():
    net = serial(Conv2D(2, 3), Relu(), Flatten(), Dense(3))
    _, params = net.init(KEY, (1, 6, 6, 4))
    missing = {k: v for k, v in params.items() if k != "fc1"}
    with _raises(ValueError, "serial: params do not match the layers: missing ['fc1'], unexpected []"):
        net.apply(missing, X)
    extra = {**params, "conv9": params["conv1"]}
    with _raises(ValueError, "serial: params do not match the layers: missing [], unexpected ['conv9']"):
        net.apply(extra, X)
    with _raises(ValueError, "missing ['conv1', 'fc1', 'flatten1', 'relu1'], unexpected [] (got list)"):
        net.apply([params], X)
    # Under jit too.
    with _raises(ValueError, "missing ['fc1'], unexpected []"):
        jax.jit(net.apply)(missing, X)


def test_serial_construction_errors():
    with _raises(ValueError, "serial: layer names must be unique, got ['a'] more than once; rename them"):
        serial(("a", Relu()), ("a", Flatten()))
    with _raises(TypeError, "serial: each argument must be a Layer or a (name, Layer) pair, got 3"):
        serial(Relu(), 3)


def test_lenet5_channel_mismatch():
    with _raises(ValueError, "lenet5: input has n_C=3 channels but the model was built with in_channels=1; pass lenet5(in_channels=3)"):
        lenet5().init(KEY, (1, 32, 32, 3))


# ---------------------------------------------------------------------------
# nn functions.
# ---------------------------------------------------------------------------


def test_dense_errors():
    x = jnp.zeros((2, 5), F32)
    with _raises(ValueError, "dense: `x` has n_in=5 features but `w` expects 4 (w has shape (4, 3)); give w the shape (5, n_out)"):
        dense(x, jnp.zeros((4, 3), F32))
    with _raises(ValueError, "dense: `x` must have shape (m, n_in) or (n_in,), got shape (2, 6, 6, 4); flatten"):
        dense(X, jnp.zeros((4, 3), F32))
    with _raises(ValueError, "dense: `w` must have shape (n_in, n_out), got shape (5,)"):
        dense(x, jnp.zeros((5,), F32))
    with _raises(ValueError, "dense: `b` must have shape (n_out,) = (3,), got (2,)"):
        dense(x, jnp.zeros((5, 3), F32), jnp.zeros((2,), F32))
    with _raises(ValueError, "dense: `x` has n_in=5 features but `w` expects 4"):
        jax.jit(dense)(x, jnp.zeros((4, 3), F32))


def test_softmax_cross_entropy_label_shape_errors():
    logits = jnp.zeros((4, 3), F32)
    with _raises(ValueError, "softmax_cross_entropy: integer `labels` must have shape (4,) (one class index per example), got (3,)"):
        softmax_cross_entropy(logits, jnp.array([0, 1, 2]))
    with _raises(ValueError, "softmax_cross_entropy: one-hot `labels` must have the shape of `logits` (4, 3), got (4, 2)"):
        softmax_cross_entropy(logits, jnp.zeros((4, 2), F32))
    with _raises(ValueError, "softmax_cross_entropy: `logits` must have shape (m, K) or (K,) with K >= 1, got (2, 6, 6, 4)"):
        softmax_cross_entropy(X, jnp.array([0, 1]))
    with _raises(ValueError, "integer `labels` must have shape (4,)"):
        jax.jit(softmax_cross_entropy)(logits, jnp.array([0, 1, 2]))


def test_cost_and_flatten_errors():
    with _raises(ValueError, "cost: `losses` must be per-example values of shape (m,), got shape (2, 3)"):
        cost(jnp.zeros((2, 3)))
    with _raises(ValueError, "flatten: `x` must have a batch axis and features, got shape (5,)"):
        flatten(jnp.zeros((5,)))


def test_errors_say_how_to_fix():
    # Spot check of the style rule: the message names the argument and a fix.
    with pytest.raises(ValueError) as info:
        conv2d(X, W, padding=-2)
    message = str(info.value)
    assert "`padding`" in message and "-2" in message and "crop" in message
    assert np.char.count(message, "conv2d:") == 1
