"""Models built from layers: LeNet-5, the notes' example network, ResNet-20, an
Inception-style and a MobileNet-style network (classifiers), a U-Net (image to image), and
a 1-D ResNet over sequences and a C3D-style network over volumes (classifiers).

The classifiers return logits; the softmax lives in the loss (`softmax_cross_entropy`),
where it is computed stably. Models with BatchNorm carry state: build it with
`model.init_state(input_shape)` and pass `state=` to apply (see jaxconv.layers).
`dtype=None` gives params of JAX's default float dtype; `compute_dtype` (e.g. "bfloat16")
runs every convolution, Dense and BatchNorm in that dtype with params kept in `dtype` (mixed
precision: see jaxconv.layers.dtypes); the logits are then of compute_dtype.
`impl` goes to every convolution, `algorithm` to every Conv2D (see `jaxconv.conv2d`): e.g.
lenet5(impl="hand", algorithm="im2col") runs the notes' im2col and its hand-derived backward in both layers; an
algorithm that does not fit some layer (taps on a stride-2 conv) fails naming that layer.

The package, one family per module: `classic` (lenet5, seed_cnn), `resnet` (resnet20), `inception`,
`mobilenet`, `unet`, `nd` (temporal_resnet over sequences, c3d_small over volumes), and `blocks`
(the conv + BN + activation and basic-block builders they share). `MODELS` and `INPUT_SHAPES` are
the image classifiers that `jaxconv train` builds by name.
"""

from __future__ import annotations

from jaxconv.models.blocks import basic_block, conv_bn_relu
from jaxconv.models.classic import lenet5, seed_cnn
from jaxconv.models.inception import inception, inception_module
from jaxconv.models.mobilenet import inverted_residual, mobilenet
from jaxconv.models.nd import c3d_small, temporal_resnet
from jaxconv.models.resnet import resnet20
from jaxconv.models.unet import UNET_NORMS, UNET_UPS, unet

MODELS = {"lenet5": lenet5, "seed_cnn": seed_cnn, "resnet20": resnet20, "inception": inception, "mobilenet": mobilenet}
INPUT_SHAPES = {
    "lenet5": (1, 32, 32, 1),
    "seed_cnn": (1, 32, 32, 3),
    "resnet20": (1, 32, 32, 3),
    "inception": (1, 32, 32, 3),
    "mobilenet": (1, 32, 32, 3),
}

__all__ = [
    "INPUT_SHAPES",
    "MODELS",
    "UNET_NORMS",
    "UNET_UPS",
    "basic_block",
    "c3d_small",
    "conv_bn_relu",
    "inception",
    "inception_module",
    "inverted_residual",
    "lenet5",
    "mobilenet",
    "resnet20",
    "seed_cnn",
    "temporal_resnet",
    "unet",
]
