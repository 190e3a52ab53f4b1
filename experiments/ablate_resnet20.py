"""ResNet-20's training step taken apart: jaxconv against PyTorch eager, one component removed at a time.

    python experiments/ablate_resnet20.py --out results/ablate_resnet20         # batch 128, 1 and 2 threads
    python experiments/ablate_resnet20.py --threads 2 --variants no-bn cheap-3x3-grouped --out /tmp/ablate
    python experiments/ablate_resnet20.py --quick --out /tmp/ablate             # batch 8, 1 thread: for tests

What each variant times (both frameworks, ResNet-20 on (m, 32, 32, 3), BatchNorm in
train mode, Adam 1e-3, softmax cross-entropy):

    full          the real step: benchmark.py's jaxconv_resnet_step (models.resnet20 +
                  make_train_step with state) and torch_resnet_step (fused Adam)
    no-bn         every BatchNorm replaced by identity
    no-residual   no residual adds: each block outputs relu(block path); projections dropped
    cheap-3x3     every 3x3 convolution (stride s, n_C -> n_C') replaced by a 1x1 convolution
                  with the same stride and output shape (a ninth of the arithmetic, the same kind
                  of op, so the rest of the step compiles and fuses as in the full one);
                  BatchNorm, ReLU and the adds kept
    forward-only  the loss forward only, BatchNorm in train mode (running statistics updated):
                  a jitted loss / a forward under torch.no_grad()
    no-update     forward + backward, no optimizer: a jitted value_and_grad that returns the
                  gradients (so XLA keeps the backward) / loss.backward() without optimizer.step()

Two more, not in the default list (name them in --variants): cheap ops that do less still,
1x1 convolutions with groups = gcd(n_C, n_C') (depthwise, n_C'/n_C filters per channel; a
3 -> 16 matmul at the stem):
    cheap-3x3-grouped     as the frameworks' grouped convolutions: jaxconv.Conv2D(n_C', 1,
                          stride=s, groups=g) / nn.Conv2d(n_C, n_C', 1, s, groups=g)
    cheap-3x3-elementwise written out as a subsample and a broadcast multiply (`cheap_conv`,
                          and the same in PyTorch)
Both made jaxconv's step slower than the full one in a trial on a loaded 2-core machine
(XLA:CPU's grouped convolution, and perhaps the fusions XLA picks once the convolutions are
gone; worth re-checking on a quiet one), which is why the default cheap-3x3 keeps a dense
1x1 convolution.

Combined variants join components with "+" (`cheap-3x3+no-bn+no-residual`: all at once), and
`--stack cheap-3x3 no-bn no-residual no-update` times full, cheap-3x3, cheap-3x3+no-bn, ... with each
row's change against the one before, so that every millisecond of the gap is attributed:

    python experiments/ablate_resnet20.py --threads 2 --stack cheap-3x3 no-bn no-residual no-update --out /tmp/stack

The thread settings (one worker subprocess each), the interleaved timing and the tables are
experiments/_ablation.py's, shared with ablate_lenet5.py. Columns: ms per step of each framework,
PyTorch's time / jaxconv's (above 1: jaxconv faster), each framework's change against its own full
step (what removing the component saves), the gap jaxconv - PyTorch and how much of the full step's
gap the variant closes; with --stack, the changes against the previous row. Writes
ablate_resnet20.csv, .json and .md to --out.
"""

from __future__ import annotations

import math
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import _ablation  # noqa: E402

VARIANTS = ("full", "no-bn", "no-residual", "cheap-3x3", "forward-only", "no-update")  # the default list
EXTRA_VARIANTS = ("cheap-3x3-grouped", "cheap-3x3-elementwise")
INPUT_SHAPE = (32, 32, 3)  # (n_H, n_W, n_C): CIFAR
# The network switches of each component (resnet20_variant / ResNet20Variant); the modes of the step
# (forward-only, no-update) are _ablation.MODES.
NETWORK = {
    "no-bn": {"bn": False},
    "no-residual": {"residual": False},
    "cheap-3x3": {"conv3x3": "1x1"},
    "cheap-3x3-grouped": {"conv3x3": "grouped"},
    "cheap-3x3-elementwise": {"conv3x3": "elementwise"},
}
CONV3X3 = ("conv", "1x1", "grouped", "elementwise")  # what stands for ResNet-20's 3x3 convolutions (resnet20_variant)
RESNET20_PARAMS = 272_474  # models.resnet20() for 3 channels and 10 classes (its docstring)


# ---------------------------------------------------------------------------
# The networks, with switches.
# ---------------------------------------------------------------------------


def cheap_conv(n_C, stride):
    """A 1x1 convolution, stride s, groups = gcd(n_C_in, n_C), written as a subsample and a broadcast multiply.

    x: (m, n_H, n_W, n_C_in) -> (m, ceil(n_H/s), ceil(n_W/s), n_C), the shape of a 3x3 conv with
    padding 1. params {"w": (1, 1, n_C_in/groups, n_C)}, as Conv2D(n_C, 1, groups=groups) has.
    Output channel o reads input channel o // (n_C/groups) (depthwise), or all of them at groups 1.
    """
    import jax

    from jaxconv import Layer

    def init(key, input_shape):
        m, n_H, n_W, n_C_in = input_shape
        groups = math.gcd(n_C_in, n_C)
        if groups not in (1, n_C_in):
            raise ValueError(f"cheap_conv: groups=gcd({n_C_in}, {n_C})={groups} is neither 1 nor n_C_in; only those are written out.")
        w = jax.random.normal(key, (1, 1, n_C_in // groups, n_C)) * (2 / (n_C_in // groups)) ** 0.5  # He normal
        return (m, -(-n_H // stride), -(-n_W // stride), n_C), {"w": w}

    def apply(params, x, **kwargs):  # kwargs: what a composite may pass (train, ...), unused here
        h = x[:, ::stride, ::stride, :]  # (m, n_H', n_W', n_C_in)
        m, n_H, n_W, n_C_in = h.shape
        w = params["w"][0, 0]  # (n_C_in / groups, n_C)
        if w.shape[0] > 1:  # groups 1: a matmul over the channels
            return h @ w  # (m, n_H', n_W', n_C)
        return (h[..., None] * w.reshape(n_C_in, n_C // n_C_in)).reshape(m, n_H, n_W, n_C)  # depthwise

    return Layer(init, apply, kind="conv")


def resnet20_variant(bn=True, residual=True, conv3x3="conv", num_classes=10):
    """models.resnet20 rebuilt from jaxconv layers, with components switched off.

    bn=False: every BatchNorm is `identity()`. residual=False: each block is serial(block path,
    ReLU), no shortcut (so no projection). conv3x3: what each 3x3 convolution (stride s,
    n_C -> n_C') becomes, the output shape kept: "conv" (itself), "1x1" (Conv2D(n_C', 1,
    stride=s)), "grouped" (that with groups=gcd(n_C, n_C')), "elementwise" (the grouped one
    written out, `cheap_conv`).
    With every switch on, the same layers, names and params as models.resnet20().
    """
    from jaxconv import BatchNorm, Conv2D, Dense, GlobalAvgPool, Relu, identity, serial
    from jaxconv import residual as residual_block

    if conv3x3 not in CONV3X3:
        raise ValueError(f"resnet20_variant: `conv3x3` must be one of {list(CONV3X3)}, got {conv3x3!r}.")

    def norm():
        return BatchNorm() if bn else identity()

    def conv(n_C_in, n_C, stride):  # (m, n_H, n_W, n_C_in) -> (m, n_H/stride, n_W/stride, n_C)
        if conv3x3 == "conv":
            return Conv2D(n_C, 3, stride=stride, padding=1, use_bias=False)
        if conv3x3 == "1x1":
            return Conv2D(n_C, 1, stride=stride, use_bias=False)
        if conv3x3 == "grouped":
            return Conv2D(n_C, 1, stride=stride, groups=math.gcd(n_C_in, n_C), use_bias=False)
        return cheap_conv(n_C, stride)

    def block(n_C_in, n_C, stride):
        path = [("conv_a", conv(n_C_in, n_C, stride)), ("bn_a", norm()), ("relu_a", Relu()), ("conv_b", conv(n_C, n_C, 1)), ("bn_b", norm())]
        if not residual:
            return serial(*path, ("relu", Relu()))
        shortcut = None if stride == 1 else serial(("conv", Conv2D(n_C, 1, stride=stride, use_bias=False)), ("bn", norm()))
        return residual_block(serial(*path), shortcut, Relu())

    stages, n_C_in = [], 16
    for i, n_C in enumerate((16, 32, 64), start=1):
        blocks = []
        for j in (1, 2, 3):
            blocks.append((f"block{j}", block(n_C_in, n_C, 2 if (i > 1 and j == 1) else 1)))
            n_C_in = n_C
        stages.append((f"stage{i}", serial(*blocks)))
    return serial(
        ("conv1", conv(3, 16, 1)),  # (m, 32, 32, 16)
        ("bn1", norm()),
        ("relu1", Relu()),
        *stages,  # (m, 8, 8, 64)
        ("pool", GlobalAvgPool()),  # (m, 64)
        ("fc", Dense(num_classes)),  # logits (m, num_classes)
    )


def torch_resnet20_variant(bn=True, residual=True, conv3x3="conv"):
    """benchmark.py's PyTorch ResNet-20 (torch_resnet_step) with the same switches as `resnet20_variant`.

    With every switch on: the same modules, names and order, so the same parameters under one seed.
    """
    import torch
    import torch.nn.functional as F
    from torch import nn

    def norm(o):
        return nn.BatchNorm2d(o) if bn else nn.Identity()

    class CheapConv(nn.Module):  # as `cheap_conv`: subsample, then a broadcast multiply (or a matmul at groups 1)
        def __init__(self, c, o, stride):
            super().__init__()
            g, self.stride = math.gcd(c, o), stride
            self.weight = nn.Parameter(torch.randn(o, c // g, 1, 1) * (2 / (c // g)) ** 0.5)  # as nn.Conv2d(c, o, 1, groups=g)

        def forward(self, h):
            h = h[:, :, :: self.stride, :: self.stride]  # (m, c, n_H', n_W')
            m, c, n_H, n_W = h.shape
            w = self.weight[:, :, 0, 0]  # (o, c / groups)
            if w.shape[1] > 1:  # groups 1
                return torch.einsum("mchw,oc->mohw", h, w)
            return (h[:, :, None] * w.reshape(c, -1, 1, 1)).reshape(m, -1, n_H, n_W)  # depthwise

    def conv(c, o, stride):  # (m, c, n_H, n_W) -> (m, o, n_H/stride, n_W/stride)
        if conv3x3 == "conv":
            return nn.Conv2d(c, o, 3, stride, 1, bias=False)
        if conv3x3 == "1x1":
            return nn.Conv2d(c, o, 1, stride, bias=False)
        if conv3x3 == "grouped":
            return nn.Conv2d(c, o, 1, stride, groups=math.gcd(c, o), bias=False)
        return CheapConv(c, o, stride)

    class Block(nn.Module):
        def __init__(self, c, o, stride):
            super().__init__()
            self.conv_a, self.bn_a = conv(c, o, stride), norm(o)
            self.conv_b, self.bn_b = conv(o, o, 1), norm(o)
            self.proj = nn.Sequential(nn.Conv2d(c, o, 1, stride, bias=False), norm(o)) if residual and stride != 1 else None

        def forward(self, h):
            z = self.bn_b(self.conv_b(F.relu(self.bn_a(self.conv_a(h)))))
            if not residual:
                return F.relu(z)
            return F.relu(z + (h if self.proj is None else self.proj(h)))

    class ResNet20Variant(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv1, self.bn1 = conv(3, 16, 1), norm(16)
            blocks, c = [], 16
            for o in (16, 32, 64):
                for j in range(3):
                    blocks.append(Block(c, o, 2 if (j == 0 and o != 16) else 1))
                    c = o
            self.blocks, self.fc = nn.Sequential(*blocks), nn.Linear(64, 10)

        def forward(self, h):
            h = self.blocks(F.relu(self.bn1(self.conv1(h))))
            return self.fc(h.mean((2, 3)))

    return ResNet20Variant()


def variant(name: str) -> _ablation.Variant:
    """The parsed variant `name` ("full", "no-bn", "cheap-3x3+no-bn+no-update", ...) of ResNet-20's step."""
    return _ablation.parse_variant(NETWORK, name)


def param_counts(variant):
    """(jaxconv's, PyTorch's) parameter count of `variant`'s network (a Variant; PyTorch's None when it is absent)."""
    return _ablation.param_counts(variant, resnet20_variant, torch_resnet20_variant, INPUT_SHAPE)


def check_full_networks():
    """Raise unless the all-switches-on networks have the real models' parameter counts (what 'full' runs)."""
    from jaxconv.models import resnet20

    mine, mine_torch = param_counts(variant("full"))
    real = _ablation.init_param_count(resnet20(), INPUT_SHAPE)
    if not mine == real == RESNET20_PARAMS:
        raise RuntimeError(f"ablate_resnet20: resnet20_variant() has {mine:,} params, models.resnet20() {real:,}, "
                           f"expected {RESNET20_PARAMS:,}: rebuild resnet20_variant from jaxconv/models/resnet.py's resnet20.")
    if mine_torch is not None and mine_torch != RESNET20_PARAMS:
        raise RuntimeError(f"ablate_resnet20: torch_resnet20_variant() has {mine_torch:,} params, expected {RESNET20_PARAMS:,} "
                           f"(benchmark.py's torch ResNet-20): rebuild it from benchmark.torch_resnet_step.")



# ---------------------------------------------------------------------------
# Contenders: each a run(n) that runs n steps and waits for their results.
# ---------------------------------------------------------------------------


def jaxconv_contender(variant, x, y):
    """run(n) for jaxconv's step of `variant` (a Variant) on (x, y): x (m, 32, 32, 3) float32, y (m,) int32.

    "train": make_train_step with BatchNorm state, as benchmark.jaxconv_resnet_step, on the variant's network;
    "forward": the jitted loss in train mode; "grad": a jitted value_and_grad whose gradients are outputs (so
    XLA keeps the backward), no optimizer.
    """
    import jax
    import optax

    import benchmark
    from jaxconv import compile as compiling
    from jaxconv import softmax_cross_entropy
    from jaxconv.train import make_train_step

    if variant.name == "full":
        return benchmark.jaxconv_resnet_step(x, y)
    model = resnet20_variant(**variant.network)
    _, params = model.init(jax.random.key(0), (-1, *INPUT_SHAPE))
    _, state = model.init_state((-1, *INPUT_SHAPE))
    optimizer = optax.adam(1e-3)
    opt_state = optimizer.init(params)
    if variant.mode == "train":
        train_step = make_train_step(model.apply, optimizer)

        def step(p, s, x, y, st):
            return train_step(p, s, x, y, state=st)  # (params, opt_state, metrics, state)

        return benchmark.stateful_runner(step, params, opt_state, state, x, y)

    def loss(p, st, x, y):  # J and BatchNorm's new running statistics (train mode)
        logits, st = model.apply(p, x, state=st, train=True)  # (m, 10)
        return softmax_cross_entropy(logits, y).mean(), st

    if variant.mode == "forward":
        forward = compiling.jit(loss)

        def step(p, s, x, y, st):
            value, st = forward(p, st, x, y)
            return p, s, value, st

    else:  # "grad": the gradients are outputs, so XLA cannot drop the backward
        grad = compiling.jit(jax.value_and_grad(loss, has_aux=True))

        def step(p, s, x, y, st):
            (value, st), grads = grad(p, st, x, y)
            return p, s, (value, grads), st

    return benchmark.stateful_runner(step, params, opt_state, state, x, y)


def torch_contender(variant, x, y):
    """run(n) for PyTorch eager's step of `variant` (a Variant): benchmark.torch_resnet_step for "full", else `torch_resnet20_variant`."""
    import benchmark

    return _ablation.torch_contender(variant, x, y, benchmark.torch_resnet_step, torch_resnet20_variant)


MODEL = _ablation.Model(
    name="resnet20",
    title="ResNet-20 training step",
    script=__file__,
    doc=__doc__,
    input_shape=INPUT_SHAPE,
    network=NETWORK,
    variants=VARIANTS,
    extra_variants=EXTRA_VARIANTS,
    jaxconv_contender=jaxconv_contender,
    torch_contender=torch_contender,
    param_counts=param_counts,
    check_full_networks=check_full_networks,
    batches=(128,),
    threads=(1, 2),
    quick_note="the time is the compilations: six ResNet-20 programs per thread setting",
)


def parse_args(argv=None):
    return _ablation.parse_args(MODEL, argv)


def main(argv=None):
    return _ablation.main(MODEL, argv)


if __name__ == "__main__":
    main()
