"""A U-Net (Ronneberger et al. 2015): an encoder-decoder with skip concatenations, image to image."""

from __future__ import annotations

from jaxconv.layers import BatchNorm, Conv2D, ConvTranspose2D, GroupNorm, Layer, MaxPool, Relu, Upsample, fan_in_concat, fan_out, identity, parallel, serial


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
