"""An Inception-style network (Szegedy et al. 2014): GoogLeNet's module of four concatenated branches."""

from __future__ import annotations

from jaxconv.layers import Dense, GlobalAvgPool, Layer, MaxPool, fan_in_concat, fan_out, parallel, serial
from jaxconv.models.blocks import conv_bn_relu


def inception_module(n_1x1, n_3x3_reduce, n_3x3, n_5x5_reduce, n_5x5, n_pool_proj, impl="auto", dtype=None, compute_dtype=None, algorithm="auto") -> Layer:
    """GoogLeNet's module (Szegedy et al. 2014): four branches concatenated along n_C.

    (m, n_H, n_W, n_C) -> (m, n_H, n_W, n_1x1 + n_3x3 + n_5x5 + n_pool_proj). The 1x1
    reductions shrink n_C before the 3x3 and 5x5 convolutions, which is what makes them cheap.
    """
    return serial(
        ("fan_out", fan_out(4)),
        (
            "branches",
            parallel(
                ("b1x1", conv_bn_relu(n_1x1, 1, impl, dtype, compute_dtype=compute_dtype, algorithm=algorithm)),
                ("b3x3", serial(("reduce", conv_bn_relu(n_3x3_reduce, 1, impl, dtype, compute_dtype=compute_dtype, algorithm=algorithm)), ("conv", conv_bn_relu(n_3x3, 3, impl, dtype, compute_dtype=compute_dtype, algorithm=algorithm)))),
                ("b5x5", serial(("reduce", conv_bn_relu(n_5x5_reduce, 1, impl, dtype, compute_dtype=compute_dtype, algorithm=algorithm)), ("conv", conv_bn_relu(n_5x5, 5, impl, dtype, compute_dtype=compute_dtype, algorithm=algorithm)))),
                ("bpool", serial(("pool", MaxPool(3, stride=1, padding=1)), ("proj", conv_bn_relu(n_pool_proj, 1, impl, dtype, compute_dtype=compute_dtype, algorithm=algorithm)))),
            ),
        ),
        ("concat", fan_in_concat()),
    )


def inception(num_classes: int = 10, in_channels: int = 3, impl: str = "auto", dtype=None, compute_dtype=None, algorithm: str = "auto") -> Layer:
    """A small Inception-style network for 32x32 inputs.

    (m, 32, 32, in_channels) -> conv3x3 32 -> inception (64 ch) -> inception (96) -> max pool 2
    (16x16) -> inception (128) -> global average pool -> dense num_classes logits.
    57,586 parameters for 3 channels and 10 classes.
    """
    del in_channels  # a property of the input, kept for the registry's common signature
    return serial(
        ("stem", conv_bn_relu(32, 3, impl, dtype, compute_dtype=compute_dtype, algorithm=algorithm)),  # (m, 32, 32, 32)
        ("inception1", inception_module(16, 16, 24, 8, 12, 12, impl, dtype, compute_dtype, algorithm)),  # (m, 32, 32, 64)
        ("inception2", inception_module(24, 24, 40, 8, 16, 16, impl, dtype, compute_dtype, algorithm)),  # (m, 32, 32, 96)
        ("pool", MaxPool(2)),  # (m, 16, 16, 96)
        ("inception3", inception_module(32, 32, 48, 12, 24, 24, impl, dtype, compute_dtype, algorithm)),  # (m, 16, 16, 128)
        ("gap", GlobalAvgPool()),  # (m, 128)
        ("fc", Dense(num_classes, dtype=dtype, compute_dtype=compute_dtype)),
    )
