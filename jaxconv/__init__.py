"""jaxconv: convolutional neural networks as plain JAX functions.

Layers: pure functions (`conv2d`, `max_pool`, `dense`, ...) at the bottom,
layer constructors over them (`Conv2D`, `MaxPool`, `serial`, ...), models
over layers (`jaxconv.models.lenet5`), training on top (`jaxconv.train`).
Layout: activations NHWC (m, n_H, n_W, n_C), filters HWIO (f_H, f_W, n_C, n_C').
"""

from jaxconv import checkpoint, data, initializers, models, parallel, train
from jaxconv._args import LAYOUT, conv_output_size
from jaxconv._platform import cpu_devices
from jaxconv.conv import conv2d, conv_transpose2d
from jaxconv.layers import (
    AvgPool,
    Conv2D,
    ConvTranspose2D,
    Dense,
    Flatten,
    GlobalAvgPool,
    Layer,
    LogSoftmax,
    MaxPool,
    Relu,
    Sigmoid,
    Softmax,
    Tanh,
    serial,
)
from jaxconv.nn import (
    accuracy,
    cost,
    dense,
    flatten,
    log_softmax,
    relu,
    sigmoid,
    softmax,
    softmax_cross_entropy,
    tanh,
)
from jaxconv.pool import avg_pool, global_avg_pool, max_pool
from jaxconv.summary import SummaryRow, count_params, format_summary, summary

__version__ = "0.1.0"

__all__ = [
    "LAYOUT",
    "AvgPool",
    "Conv2D",
    "ConvTranspose2D",
    "Dense",
    "Flatten",
    "GlobalAvgPool",
    "Layer",
    "LogSoftmax",
    "MaxPool",
    "Relu",
    "Sigmoid",
    "Softmax",
    "SummaryRow",
    "Tanh",
    "accuracy",
    "avg_pool",
    "checkpoint",
    "conv2d",
    "conv_transpose2d",
    "conv_output_size",
    "cost",
    "cpu_devices",
    "data",
    "count_params",
    "dense",
    "flatten",
    "format_summary",
    "global_avg_pool",
    "initializers",
    "log_softmax",
    "max_pool",
    "models",
    "parallel",
    "relu",
    "serial",
    "sigmoid",
    "softmax",
    "softmax_cross_entropy",
    "summary",
    "tanh",
    "train",
]
