"""Models over sequences and volumes: a 1-D ResNet (Conv1D) and a C3D-style 3-D network (Conv3D)."""

from __future__ import annotations

from jaxconv.layers import BatchNorm, Conv1D, Conv3D, Dense, GlobalAvgPool1D, GlobalAvgPool3D, Layer, MaxPool3D, Relu, serial
from jaxconv.models.blocks import basic_block


def _check_widths(op, widths):
    if not isinstance(widths, (tuple, list)) or not widths or not all(isinstance(w, int) and not isinstance(w, bool) and w >= 1 for w in widths):
        raise ValueError(f"{op}: `widths` must be a non-empty tuple of ints >= 1 (channels per stage), got {widths!r}.")
    return tuple(widths)


def _check_input(op, net, N, in_channels, form):
    """net with an init that checks the input's rank and channels first, naming the fix."""

    def init(key, input_shape):
        shape = tuple(input_shape)
        if len(shape) != N + 2 or shape[-1] != in_channels:
            raise ValueError(f"{op}: `input_shape` must be {form} with n_C = in_channels = {in_channels}, got {input_shape!r}; "
                             f"put the channels last, or build the model with in_channels equal to the input's n_C.")
        return net.init(key, shape)

    return net._replace(init=init)


def temporal_resnet(in_channels: int = 1, num_classes: int = 10, widths=(16, 32, 64), blocks: int = 1, impl: str = "auto",
                    dtype=None, compute_dtype=None) -> Layer:
    """A small 1-D ResNet for sequences (sensor signals, audio features): ResNet-20's blocks with Conv1D.

    (m, n_W, in_channels) -> conv 7 (padding 3) widths[0] + BN + ReLU -> stage i: `blocks` basic blocks
    (conv 3 + BN + ReLU + conv 3 + BN, + shortcut, ReLU) of widths[i], the first of stages 2, 3, ... with
    stride 2 and a 1x1 conv + BN projection -> global average pool over n_W -> dense num_classes logits.
    With the defaults 28,570 parameters for 1 channel and 10 classes. BatchNorm carries state (see resnet20).
    `params["stage2"]["block1"]["conv_a"]["w"]` is (3, 16, 32).
    """
    op = "temporal_resnet"
    widths = _check_widths(op, widths)
    if isinstance(blocks, bool) or not isinstance(blocks, int) or blocks < 1:
        raise ValueError(f"{op}: `blocks` must be an int >= 1 (basic blocks per stage), got {blocks!r}.")

    def conv(n_C, f, stride, padding):
        return Conv1D(n_C, f, stride=stride, padding=padding, use_bias=False, impl=impl, dtype=dtype, compute_dtype=compute_dtype)

    def norm():
        return BatchNorm(dtype=dtype, compute_dtype=compute_dtype)

    stages = []
    for i, n_C in enumerate(widths, start=1):
        stage = [(f"block{j}", basic_block(n_C, 2 if (i > 1 and j == 1) else 1, conv, norm)) for j in range(1, blocks + 1)]
        stages.append((f"stage{i}", serial(*stage)))
    net = serial(
        ("conv1", conv(widths[0], 7, 1, 3)),  # (m, n_W, widths[0])
        ("bn1", norm()),
        ("relu1", Relu()),
        *stages,  # (m, n_W / 2^(len(widths) − 1), widths[-1])
        ("pool", GlobalAvgPool1D()),  # (m, widths[-1])
        ("fc", Dense(num_classes, dtype=dtype, compute_dtype=compute_dtype)),  # logits (m, num_classes)
    )
    return _check_input(op, net, 1, in_channels, "(m, n_W, n_C)")


def c3d_small(in_channels: int = 1, num_classes: int = 10, widths=(16, 32, 64), impl: str = "auto", dtype=None,
              compute_dtype=None) -> Layer:
    """A small C3D-style network for video clips and volumes (Tran et al. 2015): 3x3x3 convolutions and 3-D max pools.

    (m, n_D, n_H, n_W, in_channels) -> stage i: Conv3D 3x3x3 (padding 1) of widths[i] + ReLU + MaxPool3D,
    the first pool (1, 2, 2) (C3D keeps the early temporal depth), the others 2x2x2 -> global average pool
    -> dense num_classes logits. n_D must survive len(widths) − 1 halvings and n_H, n_W len(widths).
    With the defaults 70,314 parameters for 1 channel and 10 classes. No state.
    """
    op = "c3d_small"
    widths = _check_widths(op, widths)
    stages = []
    for i, n_C in enumerate(widths, start=1):
        stages += [
            (f"conv{i}", Conv3D(n_C, 3, padding=1, impl=impl, dtype=dtype, compute_dtype=compute_dtype)),  # (m, n_D, n_H, n_W, n_C)
            (f"relu{i}", Relu()),
            (f"pool{i}", MaxPool3D((1, 2, 2) if i == 1 else 2)),  # n_H, n_W (and n_D after stage 1) halved
        ]
    net = serial(
        *stages,
        ("gap", GlobalAvgPool3D()),  # (m, widths[-1])
        ("fc", Dense(num_classes, dtype=dtype, compute_dtype=compute_dtype)),  # logits (m, num_classes)
    )
    return _check_input(op, net, 3, in_channels, "(m, n_D, n_H, n_W, n_C)")
