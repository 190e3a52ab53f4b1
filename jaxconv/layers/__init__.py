"""Layer constructors over the functional ops, and combinators to compose them.

Every layer follows one contract (stated in full in `jaxconv.layers.core`):
`init(key, input_shape) -> (output_shape, params)`, `init_state(input_shape) -> (output_shape, state)`,
`apply(params, x, *, state=None, key=None, train=False) -> y` (or `(y, new_state)` when `state` is given).

One job per module:

- `core`: the contract, `Layer`, building layers (`make_layer`, `parameter_free`), calling them
  (`call_layer`, `init_state_of`) and the shared argument checks;
- `dtypes`: the dtype policy (`FLOAT_DTYPES`, promotion, `compute_dtype`);
- `conv`: the layers with weights (Conv2D, ConvTranspose2D, Dense) and the builders of every
  convolution layer (`conv_layer`, `conv_transpose_layer`, by the number of spatial axes);
- `conv_nd`: Conv1D, Conv3D, ConvTranspose1D, ConvTranspose3D;
- `pool`: pooling in 1-, 2- and 3-D (MaxPool, MaxPool1D, MaxPool3D, ...), GlobalAvgPool and Flatten;
- `activations`: Relu, LeakyRelu, ..., Softmax;
- `norm`: the normalisations (BatchNorm, LayerNorm, GroupNorm, InstanceNorm) and Dropout;
- `upsample`: the up-sampling layers (Upsample, PixelShuffle, PixelUnshuffle);
- `combinators`: serial, parallel, residual and the branching layers.
"""

from jaxconv.layers.activations import Elu, Gelu, LeakyRelu, LogSoftmax, Relu, Relu6, Sigmoid, Silu, Softmax, Softplus, Tanh
from jaxconv.layers.combinators import fan_in_concat, fan_in_sum, fan_out, identity, parallel, residual, serial
from jaxconv.layers.conv import Conv2D, ConvTranspose2D, Dense
from jaxconv.layers.conv_nd import Conv1D, Conv3D, ConvTranspose1D, ConvTranspose3D
from jaxconv.layers.core import Layer, Params, call_layer, init_state_of
from jaxconv.layers.dtypes import FLOAT_DTYPES
from jaxconv.layers.norm import BatchNorm, Dropout, GroupNorm, InstanceNorm, LayerNorm
from jaxconv.layers.pool import (
    AdaptiveAvgPool,
    AdaptiveAvgPool1D,
    AdaptiveAvgPool3D,
    AdaptiveMaxPool,
    AdaptiveMaxPool1D,
    AdaptiveMaxPool3D,
    AvgPool,
    AvgPool1D,
    AvgPool3D,
    Flatten,
    GlobalAvgPool,
    GlobalAvgPool1D,
    GlobalAvgPool3D,
    MaxPool,
    MaxPool1D,
    MaxPool3D,
)
from jaxconv.layers.upsample import PixelShuffle, PixelUnshuffle, Upsample

__all__ = [
    "FLOAT_DTYPES",
    "AdaptiveAvgPool",
    "AdaptiveAvgPool1D",
    "AdaptiveAvgPool3D",
    "AdaptiveMaxPool",
    "AdaptiveMaxPool1D",
    "AdaptiveMaxPool3D",
    "AvgPool",
    "AvgPool1D",
    "AvgPool3D",
    "BatchNorm",
    "Conv1D",
    "Conv2D",
    "Conv3D",
    "ConvTranspose1D",
    "ConvTranspose2D",
    "ConvTranspose3D",
    "Dense",
    "Dropout",
    "Elu",
    "Flatten",
    "Gelu",
    "GlobalAvgPool",
    "GlobalAvgPool1D",
    "GlobalAvgPool3D",
    "GroupNorm",
    "InstanceNorm",
    "Layer",
    "LayerNorm",
    "LeakyRelu",
    "LogSoftmax",
    "MaxPool",
    "MaxPool1D",
    "MaxPool3D",
    "Params",
    "PixelShuffle",
    "PixelUnshuffle",
    "Relu",
    "Relu6",
    "Sigmoid",
    "Silu",
    "Softmax",
    "Softplus",
    "Tanh",
    "Upsample",
    "call_layer",
    "fan_in_concat",
    "fan_in_sum",
    "fan_out",
    "identity",
    "init_state_of",
    "parallel",
    "residual",
    "serial",
]
