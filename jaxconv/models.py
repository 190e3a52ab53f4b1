"""Models built from layers: LeNet-5, the notes' example network, ResNet-20, an
Inception-style and a MobileNet-style network (classifiers), and a U-Net (image to image).

The classifiers return logits; the softmax lives in the loss (`softmax_cross_entropy`),
where it is computed stably. Models with BatchNorm carry state: build it with
`model.init_state(input_shape)` and pass `state=` to apply (see jaxconv.layers).
`dtype=None` gives params of JAX's default float dtype; `compute_dtype` (e.g. "bfloat16")
runs every Conv2D, Dense and BatchNorm in that dtype with params kept in `dtype` (mixed
precision: see jaxconv.layers.dtypes); the logits are then of compute_dtype.
`impl` and `algorithm` go to every Conv2D (see `jaxconv.conv2d`): e.g. lenet5(impl="hand",
algorithm="im2col") runs the notes' im2col and its hand-derived backward in both layers; an
algorithm that does not fit some layer (taps on a stride-2 conv) fails naming that layer.
"""

from __future__ import annotations

from jaxconv.layers import (
    BatchNorm,
    Conv2D,
    ConvTranspose2D,
    Dense,
    Flatten,
    GlobalAvgPool,
    GroupNorm,
    Layer,
    MaxPool,
    Relu,
    Relu6,
    Upsample,
    fan_in_concat,
    fan_out,
    identity,
    parallel,
    residual,
    serial,
)


def _lenet_like(n_filters1, n_filters2, num_classes, impl, dtype, compute_dtype, algorithm) -> Layer:
    return serial(
        ("conv1", Conv2D(n_filters1, 5, impl=impl, algorithm=algorithm, dtype=dtype, compute_dtype=compute_dtype)),  # (m, 28, 28, n_filters1)
        ("relu1", Relu()),
        ("pool1", MaxPool(2)),  # (m, 14, 14, n_filters1)
        ("conv2", Conv2D(n_filters2, 5, impl=impl, algorithm=algorithm, dtype=dtype, compute_dtype=compute_dtype)),  # (m, 10, 10, n_filters2)
        ("relu2", Relu()),
        ("pool2", MaxPool(2)),  # (m, 5, 5, n_filters2)
        ("flatten", Flatten()),  # (m, 25·n_filters2)
        ("fc3", Dense(120, dtype=dtype, compute_dtype=compute_dtype)),
        ("relu3", Relu()),
        ("fc4", Dense(84, dtype=dtype, compute_dtype=compute_dtype)),
        ("relu4", Relu()),
        ("fc5", Dense(num_classes, dtype=dtype, compute_dtype=compute_dtype)),  # logits (m, num_classes)
    )


def lenet5(num_classes: int = 10, in_channels: int = 1, impl: str = "auto", dtype=None, compute_dtype=None, algorithm: str = "auto") -> Layer:
    """LeNet-5 (LeCun et al. 1998) with ReLU and max pooling, for 32x32 inputs.

    (m, 32, 32, in_channels) -> conv 6@5x5 -> pool 2 -> conv 16@5x5 -> pool 2
    -> 120 -> 84 -> num_classes logits. 61,706 parameters for 1 channel and 10 classes.
    `in_channels` is a property of the input: `init` checks it.
    """
    net = _lenet_like(6, 16, num_classes, impl, dtype, compute_dtype, algorithm)

    def init(key, input_shape):
        if len(input_shape) == 4 and input_shape[3] != in_channels:
            raise ValueError(
                f"lenet5: input has n_C={input_shape[3]} channels but the model was built with "
                f"in_channels={in_channels}; pass lenet5(in_channels={input_shape[3]})."
            )
        return net.init(key, input_shape)

    return net._replace(init=init)


def seed_cnn(num_classes: int = 10, impl: str = "auto", dtype=None, compute_dtype=None, algorithm: str = "auto") -> Layer:
    """The notes' "CNN example" (Andrew Ng, CNN week 1), for 32x32x3 inputs.

    CONV1 f=5 s=1 8 filters (28,28,8) -> POOL1 (14,14,8) -> CONV2 f=5 s=1 16 filters
    (10,10,16) -> POOL2 (5,5,16) -> FC3 120 -> FC4 84 -> softmax 10 (logits here).
    True parameter counts: 608, 3216, 48120, 10164, 850.
    """
    return _lenet_like(8, 16, num_classes, impl, dtype, compute_dtype, algorithm)


# ----------------------------------------------------------------------------- ResNet-20


def _basic_block(n_C, stride, impl, dtype, compute_dtype=None, algorithm="auto") -> Layer:
    """conv3x3 -> BN -> ReLU -> conv3x3 -> BN, + shortcut, -> ReLU (He et al. 2016, fig. 2)."""
    block = serial(
        ("conv_a", Conv2D(n_C, 3, stride=stride, padding=1, use_bias=False, impl=impl, algorithm=algorithm, dtype=dtype, compute_dtype=compute_dtype)),
        ("bn_a", BatchNorm(dtype=dtype, compute_dtype=compute_dtype)),
        ("relu_a", Relu()),
        ("conv_b", Conv2D(n_C, 3, padding=1, use_bias=False, impl=impl, algorithm=algorithm, dtype=dtype, compute_dtype=compute_dtype)),
        ("bn_b", BatchNorm(dtype=dtype, compute_dtype=compute_dtype)),
    )
    # Option B at the downsampling blocks: a 1x1 stride-2 conv + BN projects (m, n_H, n_W, n_C/2)
    # to (m, n_H/2, n_W/2, n_C). Option A (subsample + zero channels) saves 2,752 params but needs
    # a padding op of its own; B is a plain Conv2D, and torchvision-style ports use it.
    shortcut = None
    if stride != 1:
        shortcut = serial(
            ("conv", Conv2D(n_C, 1, stride=stride, use_bias=False, impl=impl, algorithm=algorithm, dtype=dtype, compute_dtype=compute_dtype)),
            ("bn", BatchNorm(dtype=dtype, compute_dtype=compute_dtype)),
        )
    return residual(block, shortcut, Relu())


def resnet20(num_classes: int = 10, in_channels: int = 3, impl: str = "auto", dtype=None, compute_dtype=None, algorithm: str = "auto") -> Layer:
    """ResNet-20 for CIFAR (He et al. 2016, sec. 4.2): 6n+2 layers with n = 3.

    (m, 32, 32, in_channels) -> conv3x3 16 + BN + ReLU -> stage1: 3 basic blocks of 16
    (32x32) -> stage2: 3 of 32 (16x16, stride 2 in block1) -> stage3: 3 of 64 (8x8)
    -> global average pool -> dense num_classes logits. Shortcuts: identity, and a
    1x1 conv + BN projection (option B) at the two downsampling blocks.
    272,474 parameters for 3 channels and 10 classes (269,722 with option A).
    params["stage2"]["block1"]["conv_a"]["w"]; state (BatchNorm) nested alike.
    """
    stages = []
    for i, n_C in enumerate((16, 32, 64), start=1):
        blocks = [(f"block{j}", _basic_block(n_C, 2 if (i > 1 and j == 1) else 1, impl, dtype, compute_dtype, algorithm)) for j in (1, 2, 3)]
        stages.append((f"stage{i}", serial(*blocks)))
    return serial(
        ("conv1", Conv2D(16, 3, padding=1, use_bias=False, impl=impl, algorithm=algorithm, dtype=dtype, compute_dtype=compute_dtype)),  # (m, 32, 32, 16)
        ("bn1", BatchNorm(dtype=dtype, compute_dtype=compute_dtype)),
        ("relu1", Relu()),
        *stages,  # (m, 8, 8, 64)
        ("pool", GlobalAvgPool()),  # (m, 64)
        ("fc", Dense(num_classes, dtype=dtype, compute_dtype=compute_dtype)),  # logits (m, num_classes)
    )


# ----------------------------------------------------------------------------- Inception-style


def _conv_bn_relu(n_C, f, impl, dtype, stride=1, groups=1, act=Relu, compute_dtype=None, algorithm="auto"):
    return serial(
        ("conv", Conv2D(n_C, f, stride=stride, padding=(f - 1) // 2, groups=groups, use_bias=False, impl=impl, algorithm=algorithm, dtype=dtype, compute_dtype=compute_dtype)),
        ("bn", BatchNorm(dtype=dtype, compute_dtype=compute_dtype)),
        (act().kind, act()),
    )


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
                ("b1x1", _conv_bn_relu(n_1x1, 1, impl, dtype, compute_dtype=compute_dtype, algorithm=algorithm)),
                ("b3x3", serial(("reduce", _conv_bn_relu(n_3x3_reduce, 1, impl, dtype, compute_dtype=compute_dtype, algorithm=algorithm)), ("conv", _conv_bn_relu(n_3x3, 3, impl, dtype, compute_dtype=compute_dtype, algorithm=algorithm)))),
                ("b5x5", serial(("reduce", _conv_bn_relu(n_5x5_reduce, 1, impl, dtype, compute_dtype=compute_dtype, algorithm=algorithm)), ("conv", _conv_bn_relu(n_5x5, 5, impl, dtype, compute_dtype=compute_dtype, algorithm=algorithm)))),
                ("bpool", serial(("pool", MaxPool(3, stride=1, padding=1)), ("proj", _conv_bn_relu(n_pool_proj, 1, impl, dtype, compute_dtype=compute_dtype, algorithm=algorithm)))),
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
        ("stem", _conv_bn_relu(32, 3, impl, dtype, compute_dtype=compute_dtype, algorithm=algorithm)),  # (m, 32, 32, 32)
        ("inception1", inception_module(16, 16, 24, 8, 12, 12, impl, dtype, compute_dtype, algorithm)),  # (m, 32, 32, 64)
        ("inception2", inception_module(24, 24, 40, 8, 16, 16, impl, dtype, compute_dtype, algorithm)),  # (m, 32, 32, 96)
        ("pool", MaxPool(2)),  # (m, 16, 16, 96)
        ("inception3", inception_module(32, 32, 48, 12, 24, 24, impl, dtype, compute_dtype, algorithm)),  # (m, 16, 16, 128)
        ("gap", GlobalAvgPool()),  # (m, 128)
        ("fc", Dense(num_classes, dtype=dtype, compute_dtype=compute_dtype)),
    )


# ----------------------------------------------------------------------------- MobileNet-style

def inverted_residual(n_in, n_out, expansion, stride, impl="auto", dtype=None, compute_dtype=None, algorithm="auto") -> Layer:
    """MobileNetV2's block (Sandler et al. 2018): 1x1 expand -> 3x3 depthwise -> 1x1 linear project.

    (m, n_H, n_W, n_in) -> (m, n_H/stride, n_W/stride, n_out); a residual (identity shortcut)
    when stride is 1 and n_in == n_out. The depthwise conv is a Conv2D with groups = channels.
    """
    n_hidden = n_in * expansion
    layers = [("expand", _conv_bn_relu(n_hidden, 1, impl, dtype, act=Relu6, compute_dtype=compute_dtype, algorithm=algorithm))] if expansion != 1 else []
    layers += [
        ("depthwise", _conv_bn_relu(n_hidden, 3, impl, dtype, stride=stride, groups=n_hidden, act=Relu6, compute_dtype=compute_dtype, algorithm=algorithm)),
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
        ("stem", _conv_bn_relu(32, 3, impl, dtype, act=Relu6, compute_dtype=compute_dtype, algorithm=algorithm)),  # (m, 32, 32, 32)
        *blocks,  # (m, 4, 4, 64)
        ("head", _conv_bn_relu(256, 1, impl, dtype, act=Relu6, compute_dtype=compute_dtype, algorithm=algorithm)),  # (m, 4, 4, 256)
        ("gap", GlobalAvgPool()),  # (m, 256)
        ("fc", Dense(num_classes, dtype=dtype, compute_dtype=compute_dtype)),
    )


# ----------------------------------------------------------------------------- U-Net

UNET_NORMS = ("group", "batch", None)
UNET_UPS = ("transpose", "upsample")


def _unet_norm(norm, num_groups, dtype, compute_dtype):
    if norm == "group":
        return GroupNorm(num_groups, dtype=dtype, compute_dtype=compute_dtype)
    return BatchNorm(dtype=dtype, compute_dtype=compute_dtype)


def _double_conv(n_C, norm, num_groups, impl, dtype, compute_dtype) -> Layer:
    """(conv3x3 'same' -> norm -> ReLU) twice; the convs have a bias only without a norm (the norm's beta replaces it)."""
    layers = []
    for part in ("a", "b"):
        layers.append((f"conv_{part}", Conv2D(n_C, 3, padding=1, use_bias=norm is None, impl=impl, dtype=dtype, compute_dtype=compute_dtype)))
        if norm is not None:
            layers.append((f"norm_{part}", _unet_norm(norm, num_groups, dtype, compute_dtype)))
        layers.append((f"relu_{part}", Relu()))
    return serial(*layers)


def _unet_up(n_C, up, impl, dtype, compute_dtype) -> Layer:
    """(m, n_H, n_W, 2·n_C) -> (m, 2·n_H, 2·n_W, n_C): a 2x2 stride-2 transposed conv, or bilinear up-sampling + conv3x3."""
    if up == "transpose":
        return ConvTranspose2D(n_C, 2, stride=2, impl=impl, dtype=dtype, compute_dtype=compute_dtype)
    return serial(
        ("upsample", Upsample(scale_factor=2, mode="bilinear")),
        ("conv", Conv2D(n_C, 3, padding=1, impl=impl, dtype=dtype, compute_dtype=compute_dtype)),
    )


def _unet_level(d, depth, widths, make_block, make_up) -> Layer:
    """Level d of the U-Net on (m, n_H/2^d, n_W/2^d, widths[d − 1] or in_channels) -> (..., widths[d]).

    enc -> [skip | pool -> level d + 1 -> up] concatenated along n_C -> dec; the bottom level is one block.
    """
    if d == depth:
        return make_block(widths[d])
    down = serial(("pool", MaxPool(2)), ("level", _unet_level(d + 1, depth, widths, make_block, make_up)), ("up", make_up(widths[d])))
    return serial(
        ("enc", make_block(widths[d])),  # (m, n_H, n_W, w_d)
        ("fan_out", fan_out(2)),
        ("branches", parallel(("skip", identity()), ("down", down))),  # (m, n_H, n_W, w_d) twice
        ("concat", fan_in_concat()),  # (m, n_H, n_W, 2·w_d)
        ("dec", make_block(widths[d])),  # (m, n_H, n_W, w_d)
    )


def unet(in_channels: int = 1, out_channels: int = 1, depth: int = 2, base_width: int = 16, norm="group", num_groups: int = 8,
         up: str = "transpose", impl: str = "auto", dtype=None, compute_dtype=None) -> Layer:
    """A U-Net (Ronneberger et al. 2015): an encoder-decoder with the encoder's maps concatenated into the decoder.

    (m, n_H, n_W, in_channels) -> (m, n_H, n_W, out_channels), n_H and n_W divisible by 2^depth.
    Level d (0 .. depth − 1) has w_d = base_width·2^d channels: two conv3x3 (+ norm) + ReLU, then a
    2x2 max pool down to level d + 1, whose output comes back up (`up`: "transpose", a 2x2 stride-2
    ConvTranspose2D; "upsample", bilinear up-sampling then a conv3x3) to w_d channels, is concatenated
    after the level's own maps (the skip connection) and goes through two more conv3x3. The bottom
    level (d = depth) is two conv3x3 of base_width·2^depth. A 1x1 conv ("head") maps to out_channels.
    norm: "group" (GroupNorm(num_groups)), "batch" (BatchNorm: the model then carries state) or None.
    Paths: params["enc"]["conv_a"], params["branches"]["down"]["level"]["enc"]["conv_a"], ...,
    params["branches"]["down"]["up"], params["head"].
    """
    op = "unet"
    if norm not in UNET_NORMS:
        raise ValueError(f"{op}: unknown `norm` {norm!r}. It needs to be one of {list(UNET_NORMS)}.")
    if up not in UNET_UPS:
        raise ValueError(f"{op}: unknown `up` {up!r}. It needs to be one of {list(UNET_UPS)}.")
    for name, value in (("in_channels", in_channels), ("out_channels", out_channels), ("depth", depth), ("base_width", base_width), ("num_groups", num_groups)):
        if isinstance(value, bool) or not isinstance(value, int) or value < (0 if name == "depth" else 1):
            raise ValueError(f"{op}: `{name}` must be an int >= {0 if name == 'depth' else 1}, got {value!r}.")
    if norm == "group" and base_width % num_groups:
        raise ValueError(f"{op}: `num_groups` (={num_groups}) must divide `base_width` (={base_width}) for norm='group'; pick num_groups among the divisors of {base_width}.")
    widths = [base_width * 2**d for d in range(depth + 1)]
    levels = _unet_level(0, depth, widths, lambda n_C: _double_conv(n_C, norm, num_groups, impl, dtype, compute_dtype),
                         lambda n_C: _unet_up(n_C, up, impl, dtype, compute_dtype))
    net = serial(
        *levels.children,  # (m, n_H, n_W, base_width)
        ("head", Conv2D(out_channels, 1, impl=impl, dtype=dtype, compute_dtype=compute_dtype)),  # (m, n_H, n_W, out_channels)
    )

    def init(key, input_shape):
        shape = tuple(input_shape)
        tile = 2**depth
        if len(shape) != 4 or shape[3] != in_channels or shape[1] % tile or shape[2] % tile:
            raise ValueError(f"{op}: `input_shape` must be (m, n_H, n_W, in_channels={in_channels}) with n_H and n_W divisible by 2^depth = {tile}, got {input_shape!r}; pad the images (e.g. load_digits(pad_to=16)) or lower `depth`.")
        return net.init(key, shape)

    return net._replace(init=init)


MODELS = {"lenet5": lenet5, "seed_cnn": seed_cnn, "resnet20": resnet20, "inception": inception, "mobilenet": mobilenet}
INPUT_SHAPES = {
    "lenet5": (1, 32, 32, 1),
    "seed_cnn": (1, 32, 32, 3),
    "resnet20": (1, 32, 32, 3),
    "inception": (1, 32, 32, 3),
    "mobilenet": (1, 32, 32, 3),
}
