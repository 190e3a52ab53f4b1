"""LeNet-5 (or ResNet-20) training throughput: jaxconv against plain JAX, Flax, Equinox and PyTorch, side by side.

    python experiments/benchmark.py --out results/bench            # batch 128 and 512
    python experiments/benchmark.py --model resnet20 --out results/bench_resnet   # batch 128
    python experiments/benchmark.py --quick --out /tmp/bench        # seconds, for tests

With --model resnet20: ResNet-20 on (m, 32, 32, 3), BatchNorm in train mode
(batch statistics, running ones updated), Adam 1e-3: jaxconv's default and
impl="lax" (models.resnet20 + make_train_step with state), the same network in
plain JAX with lax convolutions and a hand BatchNorm, that plain-JAX network
with jaxconv.conv.conv2d (default impl) for every convolution (the
BatchNorm/combinator overhead check: same algorithms, no jaxconv layers), and
PyTorch eager (fused Adam).

Every contender trains LeNet-5 (32x32x1 -> 6@5x5 -> pool -> 16@5x5 -> pool ->
120 -> 84 -> 10, Adam 1e-3, softmax cross-entropy) on the same random batch.
One process, interleaved rounds (each contender runs `--steps` steps per round,
in turn, in a fresh random order each round, so load from other processes and
PyTorch's spinning threads hit all of them alike), warm-up excluded,
`block_until_ready` before the clock stops, the median round reported.

Also measured in the same run: the first-step compile time (trace + compile +
one step), the machine's float32 matmul peak (numpy's BLAS and XLA's dot), the
model FLOPs per image and the fraction of peak each contender reaches, the cores
each keeps busy (process CPU time / wall time over its rounds, median), and the
default step on all CPU devices (`jaxconv.parallel.make_parallel_train_step`, what
`jaxconv train --cpu-devices N` runs: the batch sharded over a mesh axis "data",
params replicated), and the default step with the gradient accumulated over
chunks of --chunk images for batches above it. Prints a table headed by the machine and writes
benchmark.csv and benchmark.json to --out.
"""

from __future__ import annotations

import argparse
import os
from functools import partial
import platform
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import _common  # noqa: E402

# One CPU device per core, before JAX starts (for the sharded contender).
from jaxconv.devices import cpu_devices, reuse_host_memory

FLOPS_PER_IMAGE = None  # filled by lenet5_flops() or resnet20_flops()
MODEL_CHANNELS = {"lenet5": 1, "resnet20": 3}


def lenet5_flops() -> int:
    """Model FLOPs of one LeNet-5 training step per image (2 per multiply-add, direct convolution).

    Forward: conv1 28·28·6 outputs × 25 taps, conv2 10·10·16 × 150, dense 400·120 + 120·84 + 84·10.
    Backward: dW of every layer (same as forward) and dX of every layer but conv1 (its input is data).
    """
    conv1 = 2 * 28 * 28 * 6 * 25
    conv2 = 2 * 10 * 10 * 16 * 150
    dense = 2 * (400 * 120 + 120 * 84 + 84 * 10)
    forward = conv1 + conv2 + dense
    backward = conv1 + 2 * conv2 + 2 * dense
    return forward + backward  # 2,263,920


def machine_line(torch_version: str | None, malloc: str = "") -> str:
    import jax

    model = _common.cpu_model()
    backend = jax.default_backend()
    parts = [
        f"{model}, {os.cpu_count()} cores",
        f"backend {backend} ({len(jax.devices())} devices"
        + ("" if backend == "cpu" else f": {jax.devices()[0].device_kind}") + ")",
        f"jax {jax.__version__}",
        f"torch {torch_version}" if torch_version else "torch not installed",
        f"python {platform.python_version()}",
    ] + ([f"malloc {malloc}"] if malloc else [])
    return " | ".join(parts)


def matmul_peak(n: int, repeats: int) -> dict:
    """float32 GFLOP/s of an n x n matmul: numpy (BLAS) and XLA's dot, best of `repeats`."""
    import jax
    import jax.numpy as jnp
    import numpy as np

    a = np.random.default_rng(0).standard_normal((n, n), dtype=np.float32)
    flops = 2 * n**3
    a @ a
    best_np = min(_timed(lambda: a @ a) for _ in range(repeats))
    aj = jnp.asarray(a)
    dot = jax.jit(jnp.dot)
    dot(aj, aj).block_until_ready()
    best_xla = min(_timed(lambda: dot(aj, aj).block_until_ready()) for _ in range(repeats))
    return {"numpy": flops / best_np / 1e9, "xla": flops / best_xla / 1e9}


def _timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


# ---------------------------------------------------------------------------
# Contenders: each returns a zero-argument `run(n_steps)` that trains n steps and blocks.
# ---------------------------------------------------------------------------


def runner(step, params, opt_state, x, y):
    """run(n): n training steps of `step` on (x, y), waiting for the result; run.state = [params, opt_state]."""
    import jax

    state = [params, opt_state]

    def run(n):
        p, s = state
        for _ in range(n):
            p, s, out = step(p, s, x, y)
        jax.block_until_ready((p, out))
        state[:] = [p, s]

    run.state = state  # for tests
    return run


def jaxconv_step(x, y, impl=None, sharded=False, chunk_size="auto"):
    """jaxconv's LeNet-5 step (`make_train_step`; on all devices with `sharded`), chunk_size as there."""
    import jax
    import numpy as np
    import optax

    from jaxconv.models import lenet5
    from jaxconv.train import make_train_step

    model = lenet5() if impl is None else lenet5(impl=impl)
    _, params = model.init(jax.random.key(0), (-1, 32, 32, 1))
    optimizer = optax.adam(1e-3)
    opt_state = optimizer.init(params)
    if not sharded:
        return runner(make_train_step(model.apply, optimizer, chunk_size=chunk_size), params, opt_state, x, y)
    from jaxconv import parallel  # what `jaxconv train --cpu-devices N` runs

    mesh = parallel.data_mesh()
    step = parallel.make_parallel_train_step(model.apply, optimizer, mesh=mesh, chunk_size=chunk_size)
    params, opt_state = parallel.replicate(mesh, (params, opt_state))
    return runner(step, params, opt_state, *parallel.shard_batch(mesh, np.asarray(x), np.asarray(y)))


def plain_jax_step(x, y):
    """The floor: LeNet-5 written directly in jax.numpy/lax, no library (lax conv, reduce_window)."""
    import jax
    import jax.numpy as jnp
    import optax
    from jax import lax

    shapes = {"c1": (5, 5, 1, 6), "c2": (5, 5, 6, 16), "f3": (400, 120), "f4": (120, 84), "f5": (84, 10)}
    keys = jax.random.split(jax.random.key(0), len(shapes))
    params = {}
    for k, (name, shape) in zip(keys, shapes.items()):
        fan_in = 1
        for n in shape[:-1]:
            fan_in *= n
        params[name] = {"w": jax.random.normal(k, shape) * (2 / fan_in) ** 0.5, "b": jnp.zeros(shape[-1])}

    def conv(p, h):
        return lax.conv_general_dilated(h, p["w"], (1, 1), "VALID", dimension_numbers=("NHWC", "HWIO", "NHWC")) + p["b"]

    def pool(h):
        return lax.reduce_window(h, -jnp.inf, lax.max, (1, 2, 2, 1), (1, 2, 2, 1), "VALID")

    def loss(params, x, y):
        h = pool(jax.nn.relu(conv(params["c1"], x)))
        h = pool(jax.nn.relu(conv(params["c2"], h))).reshape(x.shape[0], -1)
        h = jax.nn.relu(h @ params["f3"]["w"] + params["f3"]["b"])
        h = jax.nn.relu(h @ params["f4"]["w"] + params["f4"]["b"])
        logits = h @ params["f5"]["w"] + params["f5"]["b"]
        return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()

    optimizer = optax.adam(1e-3)

    @jax.jit
    def step(params, opt_state, x, y):
        value, grads = jax.value_and_grad(loss)(params, x, y)
        updates, opt_state = optimizer.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, value

    return runner(step, params, optimizer.init(params), x, y)


def flax_step(x, y):
    import jax
    import optax
    from flax import linen as fnn

    class LeNet(fnn.Module):
        @fnn.compact
        def __call__(self, h):
            h = fnn.max_pool(fnn.relu(fnn.Conv(6, (5, 5), padding="VALID")(h)), (2, 2), (2, 2))
            h = fnn.max_pool(fnn.relu(fnn.Conv(16, (5, 5), padding="VALID")(h)), (2, 2), (2, 2))
            h = h.reshape(h.shape[0], -1)
            h = fnn.relu(fnn.Dense(120)(h))
            h = fnn.relu(fnn.Dense(84)(h))
            return fnn.Dense(10)(h)

    model = LeNet()
    params = model.init(jax.random.key(0), x[:1])
    optimizer = optax.adam(1e-3)

    @jax.jit
    def step(params, opt_state, x, y):
        def loss(p):
            return optax.softmax_cross_entropy_with_integer_labels(model.apply(p, x), y).mean()

        value, grads = jax.value_and_grad(loss)(params)
        updates, opt_state = optimizer.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, value

    return runner(step, params, optimizer.init(params), x, y)


def equinox_step(x, y):
    import equinox as eqx
    import jax
    import jax.numpy as jnp
    import optax

    class LeNet(eqx.Module):
        c1: eqx.nn.Conv2d
        c2: eqx.nn.Conv2d
        pool: eqx.nn.MaxPool2d
        f3: eqx.nn.Linear
        f4: eqx.nn.Linear
        f5: eqx.nn.Linear

        def __init__(self, key):
            k = jax.random.split(key, 5)
            f32 = {"dtype": jnp.float32}  # the benchmark's dtype, also when x64 is enabled
            self.c1, self.c2 = eqx.nn.Conv2d(1, 6, 5, **f32, key=k[0]), eqx.nn.Conv2d(6, 16, 5, **f32, key=k[1])
            self.pool = eqx.nn.MaxPool2d(2, 2)
            self.f3 = eqx.nn.Linear(400, 120, **f32, key=k[2])
            self.f4, self.f5 = eqx.nn.Linear(120, 84, **f32, key=k[3]), eqx.nn.Linear(84, 10, **f32, key=k[4])

        def __call__(self, h):  # one example, CHW (equinox's layout)
            h = self.pool(jax.nn.relu(self.c1(h)))
            h = self.pool(jax.nn.relu(self.c2(h))).reshape(-1)
            return self.f5(jax.nn.relu(self.f4(jax.nn.relu(self.f3(h)))))

    model = LeNet(jax.random.key(0))
    optimizer = optax.adam(1e-3)
    x_chw = jnp.transpose(x, (0, 3, 1, 2))

    @eqx.filter_jit
    def step(model, opt_state, x, y):
        def loss(m):
            return optax.softmax_cross_entropy_with_integer_labels(jax.vmap(m)(x), y).mean()

        value, grads = eqx.filter_value_and_grad(loss)(model)
        updates, opt_state = optimizer.update(grads, opt_state, eqx.filter(model, eqx.is_array))
        return eqx.apply_updates(model, updates), opt_state, value

    return runner(step, model, optimizer.init(eqx.filter(model, eqx.is_array)), x_chw, y)


def _torch_runner(model, x, y):
    """run(n): n PyTorch Adam steps (lr 1e-3, softmax cross-entropy) of `model` on the NHWC batch (x, y).

    On the GPU when PyTorch sees one (as JAX's default backend then is), waiting for it at the end of run(n).
    """
    import numpy as np
    import torch
    import torch.nn.functional as F

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    model = model.to(device)
    try:  # fused Adam where this torch has it for the device, else the multi-tensor (foreach) one
        optimizer = torch.optim.Adam(model.parameters(), 1e-3, fused=True)
    except (RuntimeError, TypeError, ValueError):
        optimizer = torch.optim.Adam(model.parameters(), 1e-3, foreach=True)
    xt = torch.from_numpy(np.ascontiguousarray(np.asarray(x).transpose(0, 3, 1, 2))).to(device)
    yt = torch.from_numpy(np.asarray(y).astype(np.int64)).to(device)

    def run(n):
        for _ in range(n):
            optimizer.zero_grad(set_to_none=True)
            F.cross_entropy(model(xt), yt).backward()
            optimizer.step()
        if device.type == "cuda":
            torch.cuda.synchronize()

    run.model = model  # for tests
    return run


def torch_step(x, y):
    import torch
    import torch.nn.functional as F

    torch.manual_seed(0)

    class LeNet(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.c1, self.c2 = torch.nn.Conv2d(1, 6, 5), torch.nn.Conv2d(6, 16, 5)
            self.f3, self.f4, self.f5 = torch.nn.Linear(400, 120), torch.nn.Linear(120, 84), torch.nn.Linear(84, 10)

        def forward(self, h):
            h = F.max_pool2d(F.relu(self.c1(h)), 2)
            h = F.max_pool2d(F.relu(self.c2(h)), 2).flatten(1)
            return self.f5(F.relu(self.f4(F.relu(self.f3(h)))))

    return _torch_runner(LeNet(), x, y)


# ---------------------------------------------------------------------------
# ResNet-20 (CIFAR shape, BatchNorm in train mode, Adam): --model resnet20.
# ---------------------------------------------------------------------------

# Every convolution of ResNet-20 on 32x32x3: (n_H_out·n_W_out, f, n_C, n_C'), the order of the forward pass.
RESNET20_CONVS = (
    [(32 * 32, 3, 3, 16)]
    + [(32 * 32, 3, 16, 16)] * 6
    + [(16 * 16, 3, 16, 32), (16 * 16, 3, 32, 32), (16 * 16, 1, 16, 32)] + [(16 * 16, 3, 32, 32)] * 4
    + [(8 * 8, 3, 32, 64), (8 * 8, 3, 64, 64), (8 * 8, 1, 32, 64)] + [(8 * 8, 3, 64, 64)] * 4
)


def resnet20_flops() -> int:
    """Model FLOPs of one ResNet-20 training step per image: convolutions and the dense layer (2 per multiply-add).

    Forward: Σ n_H'·n_W'·n_C'·f²·n_C over the 21 convolutions, + 64·10; backward: dW of every
    layer and dX of every layer but the first (its input is data). BatchNorm/ReLU/adds not counted.
    """
    convs = [2 * n * f * f * c * o for n, f, c, o in RESNET20_CONVS]
    dense = 2 * 64 * 10
    forward = sum(convs) + dense
    return forward + forward + (forward - convs[0])  # 243,994,368


def stateful_runner(step, params, opt_state, state, x, y):
    """run(n) for a step(params, opt_state, x, y, state) -> (params, opt_state, loss, state); run.state as in `runner`."""
    import jax

    box = [params, opt_state, state]

    def run(n):
        p, s, st = box
        for _ in range(n):
            p, s, out, st = step(p, s, x, y, st)
        jax.block_until_ready((p, out, st))
        box[:] = [p, s, st]

    run.state = box
    return run


def jaxconv_resnet_step(x, y, impl="auto", sharded=False):
    """jaxconv's ResNet-20 step: models.resnet20(impl=impl), make_train_step with BatchNorm state (train mode).

    sharded: the batch split over all CPU devices (`make_parallel_train_step(stateful=True)`, what
    `jaxconv train --model resnet20 --cpu-devices N` runs); BatchNorm's statistics stay the whole batch's.
    """
    import jax
    import numpy as np
    import optax

    from jaxconv.models import resnet20
    from jaxconv.train import make_train_step

    model = resnet20(impl=impl)
    _, params = model.init(jax.random.key(0), (-1, 32, 32, 3))
    _, state = model.init_state((-1, 32, 32, 3))
    optimizer = optax.adam(1e-3)
    opt_state = optimizer.init(params)
    if not sharded:
        train_step = make_train_step(model.apply, optimizer)

        def step(p, s, x, y, st):
            return train_step(p, s, x, y, state=st)

        return stateful_runner(step, params, opt_state, state, x, y)
    from jaxconv import parallel

    mesh = parallel.data_mesh()
    parallel_step = parallel.make_parallel_train_step(model.apply, optimizer, mesh=mesh, stateful=True)
    key = jax.random.key(0)  # unused by ResNet-20 (no Dropout), required by the stateful signature

    def step(p, s, x, y, st):
        return parallel_step(p, s, x, y, st, key)

    params, opt_state, state = parallel.replicate(mesh, (params, opt_state, state))
    return stateful_runner(step, params, opt_state, state, *parallel.shard_batch(mesh, np.asarray(x), np.asarray(y)))


def plain_jax_resnet_step(x, y, conv_impl=None, options=False):
    """ResNet-20 written directly in jax.numpy, no jaxconv layers: lax convolutions and BatchNorm written
    out (conv_impl=None), or jaxconv.conv.conv2d(impl=conv_impl) and jaxconv.nn.batch_norm (the functions
    jaxconv's layers run, without the layers: the BatchNorm/combinator overhead check). options=True: compiled with jaxconv's
    `jaxconv.compile.compiler_options()`, as jaxconv's own steps are (the same algorithms), else with XLA's defaults."""
    import jax
    import jax.numpy as jnp
    import optax
    from jax import lax

    from jaxconv.conv import conv2d
    from jaxconv.nn import batch_norm

    def conv(w, h, stride):
        pad = (w.shape[0] - 1) // 2
        if conv_impl is not None:
            return conv2d(h, w, stride=stride, padding=pad, impl=conv_impl)
        return lax.conv_general_dilated(h, w, (stride, stride), [(pad, pad)] * 2, dimension_numbers=("NHWC", "HWIO", "NHWC"))

    def bn(p, st, h):  # train mode: batch statistics, PyTorch's running update (momentum 0.1, unbiased var)
        if conv_impl is not None:  # jaxconv's algorithms: its BatchNorm function (hand-derived backward) too
            y, mean, var = batch_norm(h, p["gamma"], p["beta"], 1e-5)
        else:  # written out, differentiated by JAX
            mean, var = h.mean((0, 1, 2)), h.var((0, 1, 2))
            y = (h - mean) * lax.rsqrt(var + 1e-5) * p["gamma"] + p["beta"]
        n = h.size // h.shape[-1]
        new = {"mean": 0.9 * st["mean"] + 0.1 * lax.stop_gradient(mean),
               "var": 0.9 * st["var"] + 0.1 * lax.stop_gradient(var) * (n / (n - 1))}
        return y, new

    keys = iter(jax.random.split(jax.random.key(0), 32))

    def conv_bn(f, c, o):
        w = jax.random.normal(next(keys), (f, f, c, o)) * (2 / (f * f * c)) ** 0.5
        return {"w": w, "gamma": jnp.ones(o), "beta": jnp.zeros(o)}, {"mean": jnp.zeros(o), "var": jnp.ones(o)}

    params, state = {}, {}
    params["stem"], state["stem"] = conv_bn(3, 3, 16)
    n_in = 16
    for i, n_C in enumerate((16, 32, 64)):
        for j in range(3):
            name = f"s{i}b{j}"
            params[name], state[name] = {}, {}
            params[name]["a"], state[name]["a"] = conv_bn(3, n_in, n_C)
            params[name]["b"], state[name]["b"] = conv_bn(3, n_C, n_C)
            if n_in != n_C:
                params[name]["proj"], state[name]["proj"] = conv_bn(1, n_in, n_C)
            n_in = n_C
    params["fc"] = {"w": jax.random.normal(next(keys), (64, 10)) * (1 / 64) ** 0.5, "b": jnp.zeros(10)}

    def forward(params, state, x):
        new = {}

        def cbn(p, st, h, stride=1):
            z, s = bn(p, st, conv(p["w"], h, stride))
            return z, s

        h, new["stem"] = cbn(params["stem"], state["stem"], x)
        h = jax.nn.relu(h)
        for i in range(3):
            for j in range(3):
                name = f"s{i}b{j}"
                p, st, new[name] = params[name], state[name], {}
                stride = 2 if "proj" in p else 1
                z, new[name]["a"] = cbn(p["a"], st["a"], h, stride)
                z, new[name]["b"] = cbn(p["b"], st["b"], jax.nn.relu(z))
                if "proj" in p:
                    h, new[name]["proj"] = cbn(p["proj"], st["proj"], h, stride)
                h = jax.nn.relu(z + h)
        logits = h.mean((1, 2)) @ params["fc"]["w"] + params["fc"]["b"]
        return logits, new

    def loss(params, state, x, y):
        logits, new = forward(params, state, x)
        return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean(), new

    optimizer = optax.adam(1e-3)

    from jaxconv import compile as compiling

    @partial(compiling.jit if options else jax.jit, donate_argnums=(0, 1, 4))
    def step(params, opt_state, x, y, state):
        (value, new), grads = jax.value_and_grad(loss, has_aux=True)(params, state, x, y)
        updates, opt_state = optimizer.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, value, new

    return stateful_runner(step, params, optimizer.init(params), state, x, y)


def flax_resnet_step(x, y):
    """ResNet-20 as a Flax user writes it: linen Conv (no bias) + BatchNorm (train mode, batch_stats mutable,
    PyTorch's momentum 0.1 and eps 1e-5), 1x1 stride-2 projections, Adam; `jax.jit` with XLA's defaults."""
    import jax
    import optax
    from flax import linen as fnn

    def conv_bn(n_C, f, stride, h):
        pad = (f - 1) // 2
        h = fnn.Conv(n_C, (f, f), (stride, stride), padding=[(pad, pad)] * 2, use_bias=False)(h)
        return fnn.BatchNorm(use_running_average=False, momentum=0.9, epsilon=1e-5)(h)

    class ResNet20(fnn.Module):
        @fnn.compact
        def __call__(self, h):
            h = fnn.relu(conv_bn(16, 3, 1, h))
            n_in = 16
            for n_C in (16, 32, 64):
                for _ in range(3):
                    stride = 2 if n_in != n_C else 1
                    z = conv_bn(n_C, 3, 1, fnn.relu(conv_bn(n_C, 3, stride, h)))
                    if n_in != n_C:
                        h = conv_bn(n_C, 1, stride, h)
                    h, n_in = fnn.relu(z + h), n_C
            return fnn.Dense(10)(h.mean((1, 2)))

    model = ResNet20()
    variables = model.init(jax.random.key(0), x[:1])
    params, state = variables["params"], variables["batch_stats"]
    optimizer = optax.adam(1e-3)

    @partial(jax.jit, donate_argnums=(0, 1, 4))
    def step(params, opt_state, x, y, state):
        def loss(p):
            logits, new = model.apply({"params": p, "batch_stats": state}, x, mutable=["batch_stats"])
            return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean(), new["batch_stats"]

        (value, new), grads = jax.value_and_grad(loss, has_aux=True)(params)
        updates, opt_state = optimizer.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, value, new

    return stateful_runner(step, params, optimizer.init(params), state, x, y)


def equinox_resnet_step(x, y):
    """ResNet-20 as an Equinox user writes it: per-example CHW modules under `jax.vmap(axis_name="batch")`,
    eqx.nn.BatchNorm (EMA mode, momentum 0.9 as PyTorch's 0.1) with its state from `make_with_state`, Adam."""
    import equinox as eqx
    import jax
    import jax.numpy as jnp
    import optax

    f32 = {"dtype": jnp.float32}  # the benchmark's dtype, also when x64 is enabled

    class ConvBN(eqx.Module):
        conv: eqx.nn.Conv2d
        bn: eqx.nn.BatchNorm

        def __init__(self, n_C, n_C_out, f, stride, key):
            self.conv = eqx.nn.Conv2d(n_C, n_C_out, f, stride, padding=(f - 1) // 2, use_bias=False, **f32, key=key)
            self.bn = eqx.nn.BatchNorm(n_C_out, axis_name="batch", momentum=0.9, mode="ema", **f32)

        def __call__(self, h, state):
            return self.bn(self.conv(h), state)

    class Block(eqx.Module):
        a: ConvBN
        b: ConvBN
        proj: ConvBN | None

        def __init__(self, n_C, n_C_out, key):
            k = jax.random.split(key, 3)
            stride = 2 if n_C != n_C_out else 1
            self.a, self.b = ConvBN(n_C, n_C_out, 3, stride, k[0]), ConvBN(n_C_out, n_C_out, 3, 1, k[1])
            self.proj = ConvBN(n_C, n_C_out, 1, stride, k[2]) if n_C != n_C_out else None

        def __call__(self, h, state):
            z, state = self.a(h, state)
            z, state = self.b(jax.nn.relu(z), state)
            if self.proj is not None:
                h, state = self.proj(h, state)
            return jax.nn.relu(z + h), state

    class ResNet20(eqx.Module):
        stem: ConvBN
        blocks: list
        fc: eqx.nn.Linear

        def __init__(self, key):
            k = jax.random.split(key, 11)
            self.stem = ConvBN(3, 16, 3, 1, k[0])
            widths = [16] + [n for n in (16, 32, 64) for _ in range(3)]
            self.blocks = [Block(widths[i], widths[i + 1], k[1 + i]) for i in range(9)]
            self.fc = eqx.nn.Linear(64, 10, **f32, key=k[10])

        def __call__(self, h, state):  # one example, CHW
            h, state = self.stem(h, state)
            h = jax.nn.relu(h)
            for block in self.blocks:
                h, state = block(h, state)
            return self.fc(h.mean((1, 2))), state

    model, state = eqx.nn.make_with_state(ResNet20)(jax.random.key(0))
    optimizer = optax.adam(1e-3)

    @eqx.filter_jit
    def step(model, opt_state, x, y, state):
        def loss(m, state):
            logits, state = jax.vmap(m, axis_name="batch", in_axes=(0, None), out_axes=(0, None))(x, state)
            return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean(), state

        (value, state), grads = eqx.filter_value_and_grad(loss, has_aux=True)(model, state)
        updates, opt_state = optimizer.update(grads, opt_state, eqx.filter(model, eqx.is_array))
        return eqx.apply_updates(model, updates), opt_state, value, state

    return stateful_runner(step, model, optimizer.init(eqx.filter(model, eqx.is_array)), state, jnp.transpose(x, (0, 3, 1, 2)), y)


def torch_resnet_step(x, y):
    """The same ResNet-20 in PyTorch eager (option-B projections, BatchNorm momentum 0.1), fused Adam."""
    import torch
    import torch.nn.functional as F
    from torch import nn

    torch.manual_seed(0)

    class Block(nn.Module):
        def __init__(self, c, o, stride):
            super().__init__()
            self.conv_a, self.bn_a = nn.Conv2d(c, o, 3, stride, 1, bias=False), nn.BatchNorm2d(o)
            self.conv_b, self.bn_b = nn.Conv2d(o, o, 3, 1, 1, bias=False), nn.BatchNorm2d(o)
            self.proj = nn.Sequential(nn.Conv2d(c, o, 1, stride, bias=False), nn.BatchNorm2d(o)) if stride != 1 else None

        def forward(self, h):
            z = self.bn_b(self.conv_b(F.relu(self.bn_a(self.conv_a(h)))))
            return F.relu(z + (h if self.proj is None else self.proj(h)))

    class ResNet20(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv1, self.bn1 = nn.Conv2d(3, 16, 3, 1, 1, bias=False), nn.BatchNorm2d(16)
            blocks, c = [], 16
            for o in (16, 32, 64):
                for j in range(3):
                    blocks.append(Block(c, o, 2 if (j == 0 and o != 16) else 1))
                    c = o
            self.blocks, self.fc = nn.Sequential(*blocks), nn.Linear(64, 10)

        def forward(self, h):
            h = self.blocks(F.relu(self.bn1(self.conv1(h))))
            return self.fc(h.mean((2, 3)))

    return _torch_runner(ResNet20().train(), x, y)


def _peers(args, flax_factory, equinox_factory, torch_factory):
    """The (name, factory) pairs of the installed peers, none with --no-peers."""
    import importlib.util

    if args.no_peers:
        return []
    named = (("flax", "Flax linen", flax_factory), ("equinox", "Equinox", equinox_factory), ("torch", "PyTorch eager", torch_factory))
    return [(name, factory) for module, name, factory in named if importlib.util.find_spec(module)]


def resnet_contenders(batch, args, n_devices):
    """(name, factory) pairs for --model resnet20."""
    out = [
        ("jaxconv default", lambda x, y: jaxconv_resnet_step(x, y)),
        ("jaxconv impl=lax", lambda x, y: jaxconv_resnet_step(x, y, "lax")),
        ("plain JAX (lax conv)", plain_jax_resnet_step),
        ("plain JAX (lax conv), jaxconv's compiler options", lambda x, y: plain_jax_resnet_step(x, y, options=True)),
        ("plain JAX (jaxconv conv2d + batch_norm), jaxconv's compiler options", lambda x, y: plain_jax_resnet_step(x, y, "auto", True)),
    ]
    if n_devices > 1 and batch % n_devices == 0:
        out.append((f"jaxconv default, {n_devices} CPU devices", lambda x, y: jaxconv_resnet_step(x, y, sharded=True)))
    return out + _peers(args, flax_resnet_step, equinox_resnet_step, torch_resnet_step)


# ---------------------------------------------------------------------------
# The measurement.
# ---------------------------------------------------------------------------


def contenders(batch, args, n_devices):
    """(name, factory) pairs; factories build a run(n) for this batch."""
    out = [
        ("jaxconv default", lambda x, y: jaxconv_step(x, y)),
        ("jaxconv impl=lax", lambda x, y: jaxconv_step(x, y, "lax")),
        ("jaxconv impl=hand", lambda x, y: jaxconv_step(x, y, "hand")),
        ("jaxconv impl=hand_autodiff", lambda x, y: jaxconv_step(x, y, "hand_autodiff")),
        ("plain JAX (lax conv)", plain_jax_step),
    ]
    if batch > args.chunk and batch % args.chunk == 0:
        out.append((f"jaxconv default, chunks of {args.chunk}", lambda x, y: jaxconv_step(x, y, chunk_size=args.chunk)))
    if n_devices > 1 and batch % n_devices == 0:
        out.append((f"jaxconv default, {n_devices} CPU devices", lambda x, y: jaxconv_step(x, y, sharded=True)))
    return out + _peers(args, flax_step, equinox_step, torch_step)


def measure_batch(batch, args, n_devices, peak):
    import jax
    import numpy as np

    rng = np.random.default_rng(batch)
    x = rng.standard_normal((batch, 32, 32, MODEL_CHANNELS[args.model]), dtype=np.float32)
    y = rng.integers(0, 10, batch).astype(np.int32)
    runs, compile_s = {}, {}
    for name, factory in (resnet_contenders if args.model == "resnet20" else contenders)(batch, args, n_devices):
        if args.only and not any(part.lower() in name.lower() for part in args.only):
            continue
        xj, yj = (x, y) if name == "PyTorch eager" else (jax.numpy.asarray(x), jax.numpy.asarray(y))
        run = factory(xj, yj)
        compile_s[name] = _timed(lambda: run(1))  # first step: trace + compile + one step
        run(args.warmup)  # warm-up, excluded
        runs[name] = run
    cores = {}
    times = _common.interleaved_rounds(runs, args.rounds, args.steps, cores=cores)
    rows = []
    ref = "PyTorch eager" if "PyTorch eager" in times else None
    for name, ts in times.items():
        step_s = float(np.median(ts))
        images = batch / step_s
        gflops = images * FLOPS_PER_IMAGE / 1e9
        rows.append(
            {
                "name": name,
                "batch": batch,
                "images_per_s": images,
                "ms_per_step": step_s * 1e3,
                "vs_torch": images / (batch / float(np.median(times[ref]))) if ref else None,
                "compile_s": compile_s[name],
                "gflop_per_s": gflops,
                "fraction_of_peak": gflops / max(peak.values()),
                "cores_busy": float(np.median(cores[name])),
                "rounds": len(ts),
                "min_ms": float(np.min(ts)) * 1e3,
                "max_ms": float(np.max(ts)) * 1e3,
            }
        )
    return rows


def format_table(rows, machine, peak, flops, model="LeNet-5"):
    lines = [
        f"Machine: {machine}",
        f"float32 matmul peak: numpy {peak['numpy']:.0f} GFLOP/s, XLA dot {peak['xla']:.0f} GFLOP/s; "
        f"{model} training step: {flops / 1e6:.2f} MFLOP/image",
        "",
        f"| {'contender':38s} | batch | images/s | vs PyTorch | ms/step | first step (s) | GFLOP/s | % of peak | cores busy |",
        f"|{'-' * 40}|------:|---------:|-----------:|--------:|---------------:|--------:|----------:|-----------:|",
    ]
    for r in rows:
        vs = f"{r['vs_torch']:.2f}x" if r["vs_torch"] is not None else "-"
        lines.append(
            f"| {r['name']:38s} | {r['batch']:5d} | {r['images_per_s']:8.0f} | {vs:>10s} | {r['ms_per_step']:7.2f} | "
            f"{r['compile_s']:14.2f} | {r['gflop_per_s']:7.1f} | {100 * r['fraction_of_peak']:8.1f}% | {r['cores_busy']:10.2f} |"
        )
    return "\n".join(lines)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", choices=sorted(MODEL_CHANNELS), default="lenet5",
                        help="lenet5 (default; jaxconv vs plain JAX, Flax, Equinox, PyTorch) or resnet20 (CIFAR shape, "
                             "BatchNorm train mode: jaxconv default and impl=lax vs plain JAX with lax convs or jaxconv.conv2d, Flax, Equinox and PyTorch)")
    parser.add_argument("--batch-sizes", type=_common.positive_int, nargs="+", default=None,
                        help="batch sizes to measure (default: 128 and 512 for lenet5, 128 for resnet20)")
    parser.add_argument("--rounds", type=_common.positive_int, default=15, help="interleaved rounds; the median round is reported")
    parser.add_argument("--steps", type=_common.positive_int, default=10, help="training steps per contender per round")
    parser.add_argument("--warmup", type=int, default=5, help="steps run after the first, before timing")
    parser.add_argument("--devices", type=_common.positive_int, default=os.cpu_count(), help="CPU devices for the sharded contender (1: none)")
    parser.add_argument("--chunk", type=_common.positive_int, default=128, help="images per chunk for the chunked-gradient contender (batches above it)")
    parser.add_argument("--no-peers", action="store_true", help="skip Flax, Equinox and PyTorch")
    parser.add_argument("--only", nargs="+", metavar="NAME", default=None,
                        help="run only the contenders whose name contains one of these (case-insensitive), e.g. --only 'jaxconv default' PyTorch")
    parser.add_argument("--quick", action="store_true", help="tiny run for tests: batch 16, 2 rounds of 2 steps")
    parser.add_argument("--malloc", choices=("reuse", "system"), default="reuse",
                        help="reuse: jaxconv.devices.reuse_host_memory() for every contender in the process, as `jaxconv train` "
                             "does (default); system: glibc's own thresholds")
    parser.add_argument("--out", default="results/benchmark", help="folder for benchmark.csv and benchmark.json")
    args = parser.parse_args(argv)
    malloc = "reuse (mallopt)" if args.malloc == "reuse" and reuse_host_memory() else "system"
    if args.batch_sizes is None:
        args.batch_sizes = [128] if args.model == "resnet20" else [128, 512]
    if args.quick:
        args.batch_sizes, args.rounds, args.steps, args.warmup = [4 if args.model == "resnet20" else 16], 2, 2, 1
    n_devices = cpu_devices(args.devices) if args.devices > 1 else 1

    global FLOPS_PER_IMAGE
    FLOPS_PER_IMAGE = resnet20_flops() if args.model == "resnet20" else lenet5_flops()
    try:
        import torch

        torch_version = torch.__version__
    except ImportError:
        torch_version = None
    machine = machine_line(torch_version, malloc)
    print(machine, flush=True)
    peak = matmul_peak(512 if args.quick else 2048, 3 if args.quick else 5)
    rows = []
    for batch in args.batch_sizes:
        rows += measure_batch(batch, args, n_devices, peak)
        print(f"batch {batch} done", file=sys.stderr, flush=True)
    table = format_table(rows, machine, peak, FLOPS_PER_IMAGE, "ResNet-20" if args.model == "resnet20" else "LeNet-5")
    print(table)
    os.makedirs(args.out, exist_ok=True)
    _common.write_csv(os.path.join(args.out, "benchmark.csv"), list(rows[0]), [list(r.values()) for r in rows])
    _common.write_json(
        os.path.join(args.out, "benchmark.json"),
        {"machine": machine, "peak_gflop_per_s": peak, "flops_per_image": FLOPS_PER_IMAGE, "args": vars(args), "rows": rows},
    )
    with open(os.path.join(args.out, "benchmark.md"), "w") as f:
        f.write(table + "\n")
    return rows


if __name__ == "__main__":
    main()
