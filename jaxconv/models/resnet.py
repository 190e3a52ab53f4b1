"""ResNet-20 for CIFAR (He et al. 2016)."""

from __future__ import annotations

from jaxconv.layers import BatchNorm, Conv2D, Dense, GlobalAvgPool, Layer, Relu, serial
from jaxconv.models.blocks import basic_block


def resnet20(num_classes: int = 10, in_channels: int = 3, impl: str = "auto", dtype=None, compute_dtype=None, algorithm: str = "auto") -> Layer:
    """ResNet-20 for CIFAR (He et al. 2016, sec. 4.2): 6n+2 layers with n = 3.

    (m, 32, 32, in_channels) -> conv3x3 16 + BN + ReLU -> stage1: 3 basic blocks of 16
    (32x32) -> stage2: 3 of 32 (16x16, stride 2 in block1) -> stage3: 3 of 64 (8x8)
    -> global average pool -> dense num_classes logits. Shortcuts: identity, and a
    1x1 conv + BN projection (option B) at the two downsampling blocks.
    272,474 parameters for 3 channels and 10 classes (269,722 with option A).
    `params["stage2"]["block1"]["conv_a"]["w"]`; state (BatchNorm) nested alike.
    """
    def conv(n_C, f, stride, padding):
        return Conv2D(n_C, f, stride=stride, padding=padding, use_bias=False, impl=impl, algorithm=algorithm, dtype=dtype, compute_dtype=compute_dtype)

    def norm():
        return BatchNorm(dtype=dtype, compute_dtype=compute_dtype)

    stages = []
    for i, n_C in enumerate((16, 32, 64), start=1):
        blocks = [(f"block{j}", basic_block(n_C, 2 if (i > 1 and j == 1) else 1, conv, norm)) for j in (1, 2, 3)]
        stages.append((f"stage{i}", serial(*blocks)))
    return serial(
        ("conv1", Conv2D(16, 3, padding=1, use_bias=False, impl=impl, algorithm=algorithm, dtype=dtype, compute_dtype=compute_dtype)),  # (m, 32, 32, 16)
        ("bn1", BatchNorm(dtype=dtype, compute_dtype=compute_dtype)),
        ("relu1", Relu()),
        *stages,  # (m, 8, 8, 64)
        ("pool", GlobalAvgPool()),  # (m, 64)
        ("fc", Dense(num_classes, dtype=dtype, compute_dtype=compute_dtype)),  # logits (m, num_classes)
    )
