"""jaxconv: convolutional neural networks as plain JAX functions.

Layers: pure functions (`conv2d`, `max_pool`, `dense`, ...) at the bottom,
layer constructors over them (`Conv2D`, `MaxPool`, `serial`, ...), models
over layers (`jaxconv.models.lenet5`), training on top (the compiled steps in
`jaxconv.train`, the loop behind `jaxconv train` in `jaxconv.loop`).
The branch combinator `parallel` lives in `jaxconv.layers` (`jaxconv.parallel` is the
multi-device module).
Layout: activations NHWC (m, n_H, n_W, n_C), filters HWIO (f_H, f_W, n_C, n_C').
"""

# First: in the `jaxconv` command, Ctrl-C and SIGTERM are handled from before JAX is imported (jaxconv.interrupts).
from jaxconv import interrupts  # noqa: F401

from jaxconv import checkpoint, compile, data, devices, initializers, layers, models, parallel, reference, train
from jaxconv._args import LAYOUT, conv_output_size
from jaxconv.devices import cpu_devices
from jaxconv.conv import conv2d, conv_transpose2d
from jaxconv.gradcheck import GradcheckError, GradcheckReport, gradcheck
from jaxconv.layers import (
    AdaptiveAvgPool,
    AdaptiveMaxPool,
    AvgPool,
    BatchNorm,
    Conv2D,
    ConvTranspose2D,
    Dense,
    Elu,
    Dropout,
    Flatten,
    Gelu,
    GlobalAvgPool,
    Layer,
    LeakyRelu,
    LogSoftmax,
    MaxPool,
    Relu,
    Relu6,
    Sigmoid,
    Silu,
    Softmax,
    Softplus,
    Tanh,
    fan_in_concat,
    fan_in_sum,
    fan_out,
    identity,
    residual,
    serial,
)
from jaxconv.nn import (
    accuracy,
    cost,
    dense,
    elu,
    flatten,
    gelu,
    leaky_relu,
    log_softmax,
    relu,
    relu6,
    sigmoid,
    silu,
    softmax,
    softmax_cross_entropy,
    softplus,
    swish,
    tanh,
)
from jaxconv.norm import group_norm, instance_norm, layer_norm
from jaxconv.pool import adaptive_avg_pool, adaptive_max_pool, avg_pool, global_avg_pool, max_pool
from jaxconv.summary import SummaryRow, count_params, format_summary, summary
from jaxconv.upsampling import pixel_shuffle, pixel_unshuffle, upsample

__version__ = "0.1.0"

__all__ = [
    "LAYOUT",
    "AdaptiveAvgPool",
    "AdaptiveMaxPool",
    "AvgPool",
    "BatchNorm",
    "Conv2D",
    "ConvTranspose2D",
    "Dense",
    "Elu",
    "Dropout",
    "Flatten",
    "Gelu",
    "GlobalAvgPool",
    "GradcheckError",
    "GradcheckReport",
    "Layer",
    "LeakyRelu",
    "LogSoftmax",
    "MaxPool",
    "Relu",
    "Relu6",
    "Sigmoid",
    "Silu",
    "Softmax",
    "Softplus",
    "SummaryRow",
    "Tanh",
    "accuracy",
    "adaptive_avg_pool",
    "adaptive_max_pool",
    "avg_pool",
    "checkpoint",
    "compile",
    "conv2d",
    "conv_transpose2d",
    "conv_output_size",
    "cost",
    "count_params",
    "cpu_devices",
    "data",
    "devices",
    "dense",
    "elu",
    "fan_in_concat",
    "fan_in_sum",
    "fan_out",
    "flatten",
    "format_summary",
    "gelu",
    "global_avg_pool",
    "gradcheck",
    "group_norm",
    "identity",
    "initializers",
    "instance_norm",
    "leaky_relu",
    "layer_norm",
    "layers",
    "log_softmax",
    "max_pool",
    "models",
    "parallel",
    "pixel_shuffle",
    "pixel_unshuffle",
    "reference",
    "relu",
    "relu6",
    "residual",
    "serial",
    "sigmoid",
    "silu",
    "softmax",
    "softmax_cross_entropy",
    "softplus",
    "summary",
    "swish",
    "tanh",
    "train",
    "upsample",
]
