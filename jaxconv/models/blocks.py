"""The building blocks several models share: conv + BatchNorm + activation, and ResNet's basic block in any spatial rank."""

from __future__ import annotations

from jaxconv.layers import BatchNorm, Conv2D, Layer, Relu, residual, serial


def conv_bn_relu(n_C, f, impl, dtype, stride=1, groups=1, act=Relu, compute_dtype=None, algorithm="auto") -> Layer:
    """Conv2D of n_C filters f x f ('same' padding for odd f, bias-free) + BatchNorm + act: (m, n_H, n_W, n_C_in) -> (m, n_H/s, n_W/s, n_C)."""
    return serial(
        ("conv", Conv2D(n_C, f, stride=stride, padding=(f - 1) // 2, groups=groups, use_bias=False, impl=impl, algorithm=algorithm, dtype=dtype, compute_dtype=compute_dtype)),
        ("bn", BatchNorm(dtype=dtype, compute_dtype=compute_dtype)),
        (act().kind, act()),
    )


def basic_block(n_C, stride, conv, norm) -> Layer:
    """conv3 -> norm -> ReLU -> conv3 -> norm, + shortcut, -> ReLU (He et al. 2016, fig. 2), in any spatial rank.

    conv(n_C, f, stride, padding) builds the rank's convolution (bias-free: the norm's beta replaces it),
    norm() its BatchNorm.
    """
    block = serial(
        ("conv_a", conv(n_C, 3, stride, 1)),
        ("bn_a", norm()),
        ("relu_a", Relu()),
        ("conv_b", conv(n_C, 3, 1, 1)),
        ("bn_b", norm()),
    )
    # Option B at the downsampling blocks: a 1x1 stride-2 conv + BN projects (m, n_H, n_W, n_C/2)
    # to (m, n_H/2, n_W/2, n_C). Option A (subsample + zero channels) saves 2,752 params in ResNet-20
    # but needs a padding op of its own; B is a plain convolution, and torchvision-style ports use it.
    shortcut = None
    if stride != 1:
        shortcut = serial(("conv", conv(n_C, 1, stride, 0)), ("bn", norm()))
    return residual(block, shortcut, Relu())
