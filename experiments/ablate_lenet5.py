"""LeNet-5's training step taken apart: jaxconv against PyTorch eager, one component removed at a time.

    python experiments/ablate_lenet5.py --out results/ablate_lenet5                # batch 128 and 512, 2 threads
    python experiments/ablate_lenet5.py --threads 2 --batch 512 --stack cheap-conv2 cheap-conv1 no-pool cheap-dense no-update --out /tmp/stack
    python experiments/ablate_lenet5.py --quick --out /tmp/ablate                  # batch 8, 1 thread: for tests

What each variant times (both frameworks, LeNet-5 on (m, 32, 32, 1) as jaxconv/models/classic.py
builds it: conv 6@5x5 VALID -> ReLU -> max pool 2 -> conv 16@5x5 VALID -> ReLU -> max pool 2 ->
120 -> 84 -> 10, Adam 1e-3, softmax cross-entropy):

    full          the real step: benchmark.py's jaxconv_step (models.lenet5 + make_train_step,
                  jaxconv's compiler options, the gradient accumulated over chunks of 128 above
                  a batch of 128 on CPU) and torch_step (fused Adam)
    cheap-conv1   conv1 (5x5, 1 -> 6) replaced by a 1x1 convolution of the input cropped by 2 on
                  each side: the same (m, 28, 28, 6) output, a 25th of the arithmetic, the same kind
                  of op (so the rest of the step compiles and fuses as in the full one)
    cheap-conv2   conv2 (5x5, 6 -> 16) replaced alike: crop by 2, 1x1 convolution, (m, 10, 10, 16)
    no-pool       each 2x2 max pool replaced by the stride-2 subsample x[:, ::2, ::2, :] (same shape)
    cheap-dense   each dense layer (n -> n') replaced by a scale and shift of its first n' inputs
                  (n' weights, n' biases): the three matmuls gone, the shapes kept
    forward-only  the loss forward only: a jitted J (in the same chunks as the train step) / a
                  forward under torch.no_grad()
    no-update     forward + backward, no optimizer: make_train_step with an optax transformation that
                  moves nothing and keeps the gradients as its state (so XLA keeps the backward, and
                  the chunks are the train step's) / loss.backward() without optimizer.step()

Variants combine with "+" (`cheap-conv1+cheap-conv2+no-update`), and `--stack A B C` times full,
A, A+B, A+B+C with each row's change against the one before, so the gap's milliseconds are
attributed component by component (the gaps closed plus the last row's gap sum to the full gap).

--batch takes one or more sizes (default 128 and 512: the chunked step starts above 128); each
is timed on its own, one table each. --threads as in ablate_resnet20.py (default 2; 1 turns
XLA's intra-op pool off and sets torch.set_num_threads(1)). The thread settings, the interleaved
timing and the tables are experiments/_ablation.py's. Writes ablate_lenet5.csv, .json and .md to --out.
"""

from __future__ import annotations

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import _ablation  # noqa: E402

VARIANTS = ("full", "cheap-conv1", "cheap-conv2", "no-pool", "cheap-dense", "forward-only", "no-update")  # the default list
EXTRA_VARIANTS = ()
# The network switches of each component (lenet5_variant / torch_lenet5_variant); the modes are _ablation.MODES.
NETWORK = {
    "cheap-conv1": {"conv1": "1x1"},
    "cheap-conv2": {"conv2": "1x1"},
    "no-pool": {"pool": "subsample"},
    "cheap-dense": {"dense": "cheap"},
}
CONV5X5 = ("5x5", "1x1")  # a 5x5 convolution, or a 1x1 one of the input cropped by 2
POOL = ("max", "subsample")
DENSE = ("dense", "cheap")
LENET5_PARAMS = 61_706  # models.lenet5() for 1 channel and 10 classes (its docstring)
INPUT_SHAPE = (32, 32, 1)  # (n_H, n_W, n_C)


# ---------------------------------------------------------------------------
# The networks, with switches.
# ---------------------------------------------------------------------------


def cropped(layer, p):
    """`layer` applied to its input cropped by p on each side: (m, n_H, n_W, n_C) -> layer's output on (m, n_H-2p, n_W-2p, n_C).

    The params are `layer`'s own (no extra level of names), so a cropped Conv2D(n_C', 1) stands where a
    VALID Conv2D(n_C', 2p+1) stood, with the same output shape.
    """
    from jaxconv import Layer

    def init(key, input_shape):
        m, n_H, n_W, n_C = input_shape
        return layer.init(key, (m, n_H - 2 * p, n_W - 2 * p, n_C))

    def apply(params, x, **kwargs):  # kwargs: what a composite may pass (train, ...), unused by a stateless layer
        return layer.apply(params, x[:, p:-p, p:-p, :])

    return Layer(init, apply, kind=layer.kind)


def subsample(s):
    """x[:, ::s, ::s, :]: (m, n_H, n_W, n_C) -> (m, ceil(n_H/s), ceil(n_W/s), n_C), the shape of an s x s pool, no params."""
    from jaxconv import Layer

    def init(key, input_shape):
        m, n_H, n_W, n_C = input_shape
        return (m, -(-n_H // s), -(-n_W // s), n_C), {}

    def apply(params, x, **kwargs):
        return x[:, ::s, ::s, :]

    return Layer(init, apply, kind="pool")


def cheap_dense(n_out):
    """(m, n) -> (m, n_out): the first n_out features scaled and shifted, x[:, :n_out] * w + b; params {"w": (n_out,), "b": (n_out,)}."""
    import jax.numpy as jnp

    from jaxconv import Layer

    def init(key, input_shape):
        m, n = input_shape
        if n < n_out:
            raise ValueError(f"cheap_dense: needs at least n_out={n_out} input features, got {n}.")
        return (m, n_out), {"w": jnp.ones(n_out), "b": jnp.zeros(n_out)}

    def apply(params, x, **kwargs):
        return x[:, :n_out] * params["w"] + params["b"]  # (m, n_out)

    return Layer(init, apply, kind="dense")


def lenet5_variant(conv1="5x5", conv2="5x5", pool="max", dense="dense", num_classes=10):
    """models.lenet5 rebuilt from jaxconv layers, with components made cheap.

    conv1 / conv2: "5x5" (itself) or "1x1" (`cropped(Conv2D(n_C', 1), 2)`, the same output shape).
    pool: "max" (MaxPool(2)) or "subsample" (`subsample(2)`). dense: "dense" or "cheap" (`cheap_dense`).
    With every switch on, the same layers, names and params as models.lenet5().
    """
    from jaxconv import Conv2D, Dense, Flatten, MaxPool, Relu, serial

    for name, value, allowed in (("conv1", conv1, CONV5X5), ("conv2", conv2, CONV5X5), ("pool", pool, POOL), ("dense", dense, DENSE)):
        if value not in allowed:
            raise ValueError(f"lenet5_variant: `{name}` must be one of {list(allowed)}, got {value!r}.")

    def conv(n_C, which):
        return Conv2D(n_C, 5) if which == "5x5" else cropped(Conv2D(n_C, 1), 2)

    def pool_layer():
        return MaxPool(2) if pool == "max" else subsample(2)

    def fc(n):
        return Dense(n) if dense == "dense" else cheap_dense(n)

    return serial(
        ("conv1", conv(6, conv1)),  # (m, 28, 28, 6)
        ("relu1", Relu()),
        ("pool1", pool_layer()),  # (m, 14, 14, 6)
        ("conv2", conv(16, conv2)),  # (m, 10, 10, 16)
        ("relu2", Relu()),
        ("pool2", pool_layer()),  # (m, 5, 5, 16)
        ("flatten", Flatten()),  # (m, 400)
        ("fc3", fc(120)),
        ("relu3", Relu()),
        ("fc4", fc(84)),
        ("relu4", Relu()),
        ("fc5", fc(num_classes)),  # logits (m, num_classes)
    )


def torch_lenet5_variant(conv1="5x5", conv2="5x5", pool="max", dense="dense"):
    """benchmark.py's PyTorch LeNet-5 (torch_step) with the same switches as `lenet5_variant`.

    With every switch on: the same modules, names and order, so the same parameters under one seed.
    """
    import torch
    import torch.nn.functional as F
    from torch import nn

    class CheapDense(nn.Module):  # as `cheap_dense`: h[:, :n_out] * w + b
        def __init__(self, n_out):
            super().__init__()
            self.weight, self.bias = nn.Parameter(torch.ones(n_out)), nn.Parameter(torch.zeros(n_out))

        def forward(self, h):
            return h[:, : self.weight.shape[0]] * self.weight + self.bias

    def conv(c, o, which):
        return nn.Conv2d(c, o, 5 if which == "5x5" else 1)

    def fc(n, n_out):
        return nn.Linear(n, n_out) if dense == "dense" else CheapDense(n_out)

    def crop(h, which):
        return h if which == "5x5" else h[:, :, 2:-2, 2:-2]

    def pool_(h):
        return F.max_pool2d(h, 2) if pool == "max" else h[:, :, ::2, ::2]

    class LeNet5Variant(nn.Module):
        def __init__(self):
            super().__init__()
            self.c1, self.c2 = conv(1, 6, conv1), conv(6, 16, conv2)
            self.f3, self.f4, self.f5 = fc(400, 120), fc(120, 84), fc(84, 10)

        def forward(self, h):  # (m, 1, 32, 32)
            h = pool_(F.relu(self.c1(crop(h, conv1))))  # (m, 6, 14, 14)
            h = pool_(F.relu(self.c2(crop(h, conv2)))).flatten(1)  # (m, 400)
            return self.f5(F.relu(self.f4(F.relu(self.f3(h)))))  # (m, 10)

    return LeNet5Variant()


def variant(name: str) -> _ablation.Variant:
    """The parsed variant `name` ("full", "cheap-conv1", "cheap-conv1+no-pool+no-update", ...) of LeNet-5's step."""
    return _ablation.parse_variant(NETWORK, name)


def param_counts(variant):
    """(jaxconv's, PyTorch's) parameter count of `variant`'s network (a Variant; PyTorch's None when it is absent)."""
    return _ablation.param_counts(variant, lenet5_variant, torch_lenet5_variant, INPUT_SHAPE)


def check_full_networks():
    """Raise unless the all-switches-on networks have the real models' parameter counts (what 'full' runs)."""
    from jaxconv.models import lenet5

    mine, mine_torch = param_counts(variant("full"))
    real = _ablation.init_param_count(lenet5(), INPUT_SHAPE)
    if not mine == real == LENET5_PARAMS:
        raise RuntimeError(f"ablate_lenet5: lenet5_variant() has {mine:,} params, models.lenet5() {real:,}, "
                           f"expected {LENET5_PARAMS:,}: rebuild lenet5_variant from jaxconv/models/classic.py's lenet5.")
    if mine_torch is not None and mine_torch != LENET5_PARAMS:
        raise RuntimeError(f"ablate_lenet5: torch_lenet5_variant() has {mine_torch:,} params, expected {LENET5_PARAMS:,} "
                           f"(benchmark.py's torch LeNet-5): rebuild it from benchmark.torch_step.")


# ---------------------------------------------------------------------------
# Contenders: each a run(n) that runs n steps and waits for their results.
# ---------------------------------------------------------------------------


def keep_gradients():
    """An optax transformation that moves nothing and keeps the gradients as its state.

    make_train_step with it is the train step without an optimizer: the same forward, backward and
    chunks, and the gradients an output (the new opt_state), so XLA cannot drop the backward.
    """
    import jax
    import jax.numpy as jnp
    import optax

    def init(params):
        return jax.tree.map(jnp.zeros_like, params)

    def update(grads, state, params=None):
        return jax.tree.map(jnp.zeros_like, grads), grads

    return optax.GradientTransformation(init, update)


def forward_loss(apply):
    """The compiled J(params, x, y), in the chunks make_train_step would use for x's batch (jaxconv.train.num_chunks)."""
    from jax import lax

    from jaxconv import chunks
    from jaxconv import compile as compiling
    from jaxconv.train import CHUNK_UNROLL, make_cost, num_chunks

    J = make_cost(apply)  # J(params, x, y) -> (J, logits)

    def loss(params, x, y):
        n = num_chunks(x.shape[0], "auto")
        if n == 1:
            return J(params, x, y)[0]
        xs, ys = chunks.split(x, x.shape[0] // n), chunks.split(y, y.shape[0] // n)  # (n, m/n, ...)
        _, values = lax.scan(lambda carry, xy: (carry, J(params, *xy)[0]), None, (xs, ys), unroll=CHUNK_UNROLL)
        return values.mean()  # the mean of the equal chunks' means

    return compiling.jit(loss)  # jax.jit with jaxconv's compiler options, as make_train_step


def jaxconv_contender(variant, x, y):
    """run(n) for jaxconv's step of `variant` (a Variant) on (x, y): x (m, 32, 32, 1) float32, y (m,) int32.

    "full": benchmark.jaxconv_step. Otherwise `lenet5_variant` under the same key: "train" in make_train_step
    with Adam 1e-3, "grad" in make_train_step with `keep_gradients`, "forward" in `forward_loss`.
    """
    import jax
    import optax

    import benchmark
    from jaxconv.train import make_train_step

    if variant.name == "full":
        return benchmark.jaxconv_step(x, y)
    model = lenet5_variant(**variant.network)
    _, params = model.init(jax.random.key(0), (-1, *INPUT_SHAPE))
    optimizer = keep_gradients() if variant.mode == "grad" else optax.adam(1e-3)
    opt_state = optimizer.init(params)
    if variant.mode == "forward":
        forward = forward_loss(model.apply)

        def step(p, s, x, y):
            return p, s, forward(p, x, y)

    else:
        step = make_train_step(model.apply, optimizer)  # (params, opt_state, metrics)

    return benchmark.runner(step, params, opt_state, x, y)


def torch_contender(variant, x, y):
    """run(n) for PyTorch eager's step of `variant` (a Variant): benchmark.torch_step for "full", else `torch_lenet5_variant`."""
    import benchmark

    return _ablation.torch_contender(variant, x, y, benchmark.torch_step, torch_lenet5_variant)


MODEL = _ablation.Model(
    name="lenet5",
    title="LeNet-5 training step",
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
    batches=(128, 512),
    threads=(2,),
    quick_note="the time is the compilations: seven LeNet-5 programs per thread setting",
)


def parse_args(argv=None):
    return _ablation.parse_args(MODEL, argv)


def main(argv=None):
    return _ablation.main(MODEL, argv)


if __name__ == "__main__":
    main()
