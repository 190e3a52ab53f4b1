"""A MobileNetV2-style network (Sandler et al. 2018): inverted residual blocks with depthwise convolutions."""

from __future__ import annotations

from jaxconv.layers import BatchNorm, Conv2D, Dense, GlobalAvgPool, Layer, Relu6, residual, serial
from jaxconv.models.blocks import conv_bn_relu


def inverted_residual(n_in, n_out, expansion, stride, impl="auto", dtype=None, compute_dtype=None, algorithm="auto") -> Layer:
    """MobileNetV2's block (Sandler et al. 2018): 1x1 expand -> 3x3 depthwise -> 1x1 linear project.

    (m, n_H, n_W, n_in) -> (m, n_H/stride, n_W/stride, n_out); a residual (identity shortcut)
    when stride is 1 and n_in == n_out. The depthwise conv is a Conv2D with groups = channels.
    """
    n_hidden = n_in * expansion
    layers = [("expand", conv_bn_relu(n_hidden, 1, impl, dtype, act=Relu6, compute_dtype=compute_dtype, algorithm=algorithm))] if expansion != 1 else []
    layers += [
        ("depthwise", conv_bn_relu(n_hidden, 3, impl, dtype, stride=stride, groups=n_hidden, act=Relu6, compute_dtype=compute_dtype, algorithm=algorithm)),
        ("project", serial(("conv", Conv2D(n_out, 1, use_bias=False, impl=impl, algorithm=algorithm, dtype=dtype, compute_dtype=compute_dtype)), ("bn", BatchNorm(dtype=dtype, compute_dtype=compute_dtype)))),
    ]
    block = serial(*layers)
    return residual(block) if stride == 1 and n_in == n_out else block


def mobilenet(num_classes: int = 10, in_channels: int = 3, impl: str = "auto", dtype=None, compute_dtype=None, algorithm: str = "auto") -> Layer:
    """A small MobileNetV2-style network for 32x32 inputs.

    conv3x3 32 -> inverted residual blocks (expansion t, n_out c, stride s):
    (1,16,1) (6,24,2) (6,24,1) (6,32,2) (6,32,1) (6,64,2) -> 1x1 conv 256 -> global average
    pool -> dense. (m, 32, 32, in_channels) -> (m, num_classes) logits; 81,162 parameters
    for 3 channels and 10 classes.
    """
    del in_channels
    config = [(1, 16, 1), (6, 24, 2), (6, 24, 1), (6, 32, 2), (6, 32, 1), (6, 64, 2)]
    blocks, n_in = [], 32
    for i, (t, c, s) in enumerate(config, start=1):
        blocks.append((f"block{i}", inverted_residual(n_in, c, t, s, impl, dtype, compute_dtype, algorithm)))
        n_in = c
    return serial(
        ("stem", conv_bn_relu(32, 3, impl, dtype, act=Relu6, compute_dtype=compute_dtype, algorithm=algorithm)),  # (m, 32, 32, 32)
        *blocks,  # (m, 4, 4, 64)
        ("head", conv_bn_relu(256, 1, impl, dtype, act=Relu6, compute_dtype=compute_dtype, algorithm=algorithm)),  # (m, 4, 4, 256)
        ("gap", GlobalAvgPool()),  # (m, 256)
        ("fc", Dense(num_classes, dtype=dtype, compute_dtype=compute_dtype)),
    )
