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

Each `--threads` setting runs in a subprocess of this script, with the setting applied
before JAX and PyTorch start: 1 thread is XLA_FLAGS=--xla_cpu_multi_thread_eigen=false
(XLA:CPU's intra-op pool off; jax 0.10.2 rejects an unknown `--` flag and silently ignores
a bare `intra_op_parallelism_threads=1`, so that is not passed) with OMP_NUM_THREADS=1 and
torch.set_num_threads(1); N > 1 is torch.set_num_threads(N) and XLA's default pool (one
thread per core), and on Linux the worker is pinned to that many cores (XLA:CPU otherwise
keeps a thread per core busy whatever its flags say). The "cores" columns (process CPU time /
wall time over each contender's rounds) show what each setting really used.

Within a subprocess every contender (framework x variant) is built, compiled, warmed up
(--warmup steps, excluded) and then timed in interleaved rounds (`_common.interleaved_rounds`:
each contender runs --steps steps per round, in a fresh random order each round, blocking
until its results are ready), the median round reported. Prints one table per thread
setting headed by the machine, and writes ablate_resnet20.csv, .json and .md to --out.
Columns: ms per step of each framework, PyTorch's time / jaxconv's (above 1: jaxconv
faster), each framework's change against its own full step (what removing the component
saves), the gap jaxconv - PyTorch and how much of the full step's gap the variant closes.
"""

from __future__ import annotations

import argparse
import math
import os
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import _common  # noqa: E402

VARIANTS = ("full", "no-bn", "no-residual", "cheap-3x3", "forward-only", "no-update")  # the default list
EXTRA_VARIANTS = ("cheap-3x3-grouped", "cheap-3x3-elementwise")
# The network switches of each variant (resnet20_variant / ResNet20Variant) and what is timed of the step.
NETWORK = {
    "full": {},
    "no-bn": {"bn": False},
    "no-residual": {"residual": False},
    "cheap-3x3": {"conv3x3": "1x1"},
    "cheap-3x3-grouped": {"conv3x3": "grouped"},
    "cheap-3x3-elementwise": {"conv3x3": "elementwise"},
    "forward-only": {},
    "no-update": {},
}
CONV3X3 = ("conv", "1x1", "grouped", "elementwise")  # what stands for ResNet-20's 3x3 convolutions (resnet20_variant)
MODE = {"forward-only": "forward", "no-update": "grad"}  # the rest: "train" (forward, backward, Adam update)
RESNET20_PARAMS = 272_474  # models.resnet20() for 3 channels and 10 classes (its docstring)
ONE_THREAD_XLA_FLAG = "--xla_cpu_multi_thread_eigen=false"


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


def param_counts(variant):
    """(jaxconv's, PyTorch's) parameter count of `variant`'s network (PyTorch's None when it is absent)."""
    import jax

    from jaxconv import count_params

    model = resnet20_variant(**NETWORK[variant])
    n_jaxconv = count_params(jax.eval_shape(lambda key: model.init(key, (-1, 32, 32, 3))[1], jax.random.key(0)))
    if not have_torch():
        return n_jaxconv, None
    return n_jaxconv, sum(w.numel() for w in torch_resnet20_variant(**NETWORK[variant]).parameters())


def check_full_networks():
    """Raise unless the all-switches-on networks have the real models' parameter counts (what 'full' runs)."""
    import jax

    from jaxconv import count_params
    from jaxconv.models import resnet20

    mine, mine_torch = param_counts("full")
    real = count_params(jax.eval_shape(lambda key: resnet20().init(key, (-1, 32, 32, 3))[1], jax.random.key(0)))
    if not mine == real == RESNET20_PARAMS:
        raise RuntimeError(f"ablate_resnet20: resnet20_variant() has {mine:,} params, models.resnet20() {real:,}, "
                           f"expected {RESNET20_PARAMS:,}: rebuild resnet20_variant from jaxconv/models/resnet.py's resnet20.")
    if mine_torch is not None and mine_torch != RESNET20_PARAMS:
        raise RuntimeError(f"ablate_resnet20: torch_resnet20_variant() has {mine_torch:,} params, expected {RESNET20_PARAMS:,} "
                           f"(benchmark.py's torch ResNet-20): rebuild it from benchmark.torch_resnet_step.")


# ---------------------------------------------------------------------------
# Contenders: each a run(n) that runs n steps and waits for their results.
# ---------------------------------------------------------------------------


def _jax_run(fn, params, opt_state, state, x, y):
    """run(n) for fn(params, opt_state, state, x, y) -> (params, opt_state, state, out); waits for all of it."""
    import jax

    box = [params, opt_state, state]

    def run(n):
        p, s, st = box
        for _ in range(n):
            p, s, st, out = fn(p, s, st, x, y)
        jax.block_until_ready((p, s, st, out))
        box[:] = [p, s, st]

    run.state = box  # for tests
    return run


def jaxconv_contender(variant, x, y):
    """run(n) for jaxconv's step of `variant` on (x, y): x (m, 32, 32, 3) float32, y (m,) int32."""
    import jax
    import optax

    import benchmark
    from jaxconv import compile as compiling
    from jaxconv import softmax_cross_entropy
    from jaxconv.train import make_train_step

    if variant == "full":
        return benchmark.jaxconv_resnet_step(x, y)
    model = resnet20_variant(**NETWORK[variant])
    _, params = model.init(jax.random.key(0), (-1, 32, 32, 3))
    _, state = model.init_state((-1, 32, 32, 3))
    optimizer = optax.adam(1e-3)
    opt_state = optimizer.init(params)
    mode = MODE.get(variant, "train")
    if mode == "train":  # as benchmark.jaxconv_resnet_step, on this network
        train_step = make_train_step(model.apply, optimizer)

        def step(p, s, st, x, y):
            p, s, metrics, st = train_step(p, s, x, y, state=st)
            return p, s, st, metrics

        return _jax_run(step, params, opt_state, state, x, y)

    def loss(p, st, x, y):  # J and BatchNorm's new running statistics (train mode)
        logits, st = model.apply(p, x, state=st, train=True)  # (m, 10)
        return softmax_cross_entropy(logits, y).mean(), st

    if mode == "forward":
        forward = compiling.jit(loss)

        def step(p, s, st, x, y):
            value, st = forward(p, st, x, y)
            return p, s, st, value

    else:  # "grad": the gradients are outputs, so XLA cannot drop the backward
        grad = compiling.jit(jax.value_and_grad(loss, has_aux=True))

        def step(p, s, st, x, y):
            (value, st), grads = grad(p, st, x, y)
            return p, s, st, (value, grads)

    return _jax_run(step, params, opt_state, state, x, y)


def torch_contender(variant, x, y):
    """run(n) for PyTorch eager's step of `variant` on the NHWC batch (x, y) (transposed to NCHW once)."""
    import numpy as np
    import torch
    import torch.nn.functional as F

    import benchmark

    if variant == "full":
        return benchmark.torch_resnet_step(x, y)
    torch.manual_seed(0)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    model = torch_resnet20_variant(**NETWORK[variant]).train().to(device)
    try:  # as benchmark.py: fused Adam where this torch has it, else the multi-tensor one
        optimizer = torch.optim.Adam(model.parameters(), 1e-3, fused=True)
    except (RuntimeError, TypeError, ValueError):
        optimizer = torch.optim.Adam(model.parameters(), 1e-3, foreach=True)
    xt = torch.from_numpy(np.ascontiguousarray(np.asarray(x).transpose(0, 3, 1, 2))).to(device)  # (m, 3, 32, 32)
    yt = torch.from_numpy(np.asarray(y).astype(np.int64)).to(device)
    mode = MODE.get(variant, "train")

    def one_step():
        if mode == "forward":
            with torch.no_grad():
                F.cross_entropy(model(xt), yt)  # train mode: batch statistics, running ones updated
            return
        optimizer.zero_grad(set_to_none=True)
        F.cross_entropy(model(xt), yt).backward()
        if mode == "train":
            optimizer.step()

    def run(n):
        for _ in range(n):
            one_step()
        if device.type == "cuda":
            torch.cuda.synchronize()

    run.model = model  # for tests
    return run


# ---------------------------------------------------------------------------
# One thread setting, in this process (the worker).
# ---------------------------------------------------------------------------


def have_torch() -> bool:
    import importlib.util

    return importlib.util.find_spec("torch") is not None


def measure(args, threads):
    """Rows of one thread setting: {threads, variant, jaxconv_ms, torch_ms, ...} per variant."""
    import jax
    import numpy as np

    rng = np.random.default_rng(args.batch)
    x = rng.standard_normal((args.batch, 32, 32, 3), dtype=np.float32)
    y = rng.integers(0, 10, args.batch).astype(np.int32)
    xj, yj = jax.numpy.asarray(x), jax.numpy.asarray(y)
    frameworks = [("jaxconv", jaxconv_contender, xj, yj)] + ([("torch", torch_contender, x, y)] if have_torch() else [])
    runs, first_s = {}, {}
    for variant in args.variants:
        for name, contender, xs, ys in frameworks:
            run = contender(variant, xs, ys)
            start = time.perf_counter()
            run(1)  # first step: trace + compile + one step
            first_s[(name, variant)] = time.perf_counter() - start
            if args.warmup:
                run(args.warmup)  # warm-up, excluded
            runs[(name, variant)] = run
        print(f"threads {threads}: {variant} built", file=sys.stderr, flush=True)
    cores = {}
    times = _common.interleaved_rounds(runs, args.rounds, args.steps, cores=cores)
    rows = [_row(threads, variant, times, cores, first_s) for variant in args.variants]
    for row in rows:
        row["jaxconv_params"], row["torch_params"] = param_counts(row["variant"])
    return rows


def _row(threads, variant, times, cores, first_s):
    """One table row: each framework's median ms (and spread, cores, first step) and the comparisons."""
    import numpy as np

    row = {"threads": threads, "variant": variant}
    for name in ("jaxconv", "torch"):
        ts = times.get((name, variant))
        full = times.get((name, "full"))
        ms = float(np.median(ts)) * 1e3 if ts else None
        row[f"{name}_ms"] = ms
        row[f"{name}_delta_ms"] = ms - float(np.median(full)) * 1e3 if ts and full else None
        row[f"{name}_min_ms"] = float(np.min(ts)) * 1e3 if ts else None
        row[f"{name}_max_ms"] = float(np.max(ts)) * 1e3 if ts else None
        row[f"{name}_cores"] = float(np.median(cores[(name, variant)])) if ts else None
        row[f"{name}_first_s"] = first_s.get((name, variant))
    both = row["jaxconv_ms"] is not None and row["torch_ms"] is not None
    row["speed_vs_torch"] = row["torch_ms"] / row["jaxconv_ms"] if both else None
    row["gap_ms"] = row["jaxconv_ms"] - row["torch_ms"] if both else None
    have_deltas = both and row["jaxconv_delta_ms"] is not None and row["torch_delta_ms"] is not None
    row["gap_closed_ms"] = row["torch_delta_ms"] - row["jaxconv_delta_ms"] if have_deltas else None
    row["rounds"] = len(times.get(("jaxconv", variant), []))
    return row


# ---------------------------------------------------------------------------
# The tables, and the parent that runs one worker per thread setting.
# ---------------------------------------------------------------------------

HEADER = ["threads", "variant", "jaxconv ms", "PyTorch ms", "PyTorch/jaxconv", "Δ jaxconv vs full", "Δ PyTorch vs full",
          "gap ms", "gap closed ms", "cores jaxconv", "cores PyTorch"]


def table_rows(rows):
    """The printed cells of each row ('-' where PyTorch is absent or a delta has no full step)."""

    def cell(x, spec="{:.1f}", signed=False):
        if x is None:
            return "-"
        return ("{:+.1f}" if signed else spec).format(x)

    return [
        [r["threads"], r["variant"], cell(r["jaxconv_ms"]), cell(r["torch_ms"]), cell(r["speed_vs_torch"], "{:.2f}x"),
         cell(r["jaxconv_delta_ms"], signed=True), cell(r["torch_delta_ms"], signed=True), cell(r["gap_ms"], signed=True),
         cell(r["gap_closed_ms"], signed=True), cell(r["jaxconv_cores"], "{:.2f}"), cell(r["torch_cores"], "{:.2f}")]
        for r in rows
    ]


def machine_line() -> str:
    """`_common.machine()` and the PyTorch version."""
    torch_version = "not installed"
    if have_torch():
        import torch

        torch_version = torch.__version__
    return f"{_common.machine()}, torch {torch_version}"


def report(rows, machine, args) -> str:
    lines = [
        f"Machine: {machine}",
        f"ResNet-20 training step, batch {args.batch}, median of {args.rounds} interleaved rounds of {args.steps} steps "
        f"(warm-up {args.warmup} excluded); ms per step. Δ: the variant minus its framework's full step. "
        f"gap: jaxconv - PyTorch; gap closed: the full step's gap minus the variant's.",
        "",
        _common.format_table(HEADER, table_rows(rows), align=["r", "l"] + ["r"] * (len(HEADER) - 2)),
    ]
    return "\n".join(lines)


def thread_env(threads: int) -> dict:
    """The environment of the worker for `threads`: XLA's pool off and one OpenMP thread for 1, defaults otherwise."""
    env = dict(os.environ)
    if threads == 1:
        env["XLA_FLAGS"] = f"{env.get('XLA_FLAGS', '')} {ONE_THREAD_XLA_FLAG}".strip()
        env["OMP_NUM_THREADS"] = "1"
    return env


def _pin(threads: int):
    """A preexec_fn that confines the worker to `threads` cores (Linux), or None. XLA:CPU keeps a pool of one thread
    per core whatever its flags say (the 1-thread worker measured 1.9 cores busy without this); pinned, every
    thread of both frameworks shares the cores it is given."""
    if not hasattr(os, "sched_setaffinity") or threads >= len(os.sched_getaffinity(0)):
        return None
    cores = sorted(os.sched_getaffinity(0))[:threads]
    return lambda: os.sched_setaffinity(0, cores)


def worker_args(args, threads, path):
    """The command line of the worker for one thread setting (the measurement options passed on as given)."""
    out = [sys.executable, os.path.abspath(__file__), "--worker", path, "--threads", str(threads), "--batch", str(args.batch),
           "--rounds", str(args.rounds), "--steps", str(args.steps), "--warmup", str(args.warmup), "--malloc", args.malloc,
           "--variants", *args.variants, "--out", args.out]
    return out


def run_workers(args):
    """Run one worker subprocess per thread setting, in turn; their rows, in order."""
    import json

    rows = []
    for threads in args.threads:
        path = os.path.join(args.out, f"worker_threads{threads}.json")
        proc = subprocess.run(worker_args(args, threads, path), env=thread_env(threads), preexec_fn=_pin(threads))
        if proc.returncode != 0:
            raise SystemExit(f"ablate_resnet20: the worker for --threads {threads} failed (exit {proc.returncode}); its output is above.")
        with open(path) as f:
            rows += json.load(f)["rows"]
        os.remove(path)
    return rows


def worker(args):
    """Apply the thread setting (XLA's comes from the environment the parent set), measure, write the rows."""
    from jaxconv.devices import reuse_host_memory

    threads = args.threads[0]
    check_full_networks()
    if args.malloc == "reuse":
        reuse_host_memory()
    if have_torch():
        import torch

        torch.set_num_threads(threads)
    rows = measure(args, threads)
    print(report(rows, machine_line(), args), flush=True)
    _common.write_json(args.worker, {"rows": rows})


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default="results/ablate_resnet20",
                   help="folder for ablate_resnet20.csv, .json and .md (default: results/ablate_resnet20)")
    p.add_argument("--variants", nargs="+", choices=VARIANTS + EXTRA_VARIANTS, default=list(VARIANTS),
                   help="which variants to time (default: all; 'full' is always added, the deltas need it)")
    p.add_argument("--threads", type=_common.positive_int, nargs="+", default=None,
                   help="thread settings, each in its own subprocess (default: 1 2; with --quick: 1); 1: XLA's intra-op pool off and "
                        "torch.set_num_threads(1); N > 1: XLA's default pool and torch.set_num_threads(N)")
    p.add_argument("--batch", type=_common.positive_int, default=128, help="images per step (default: 128)")
    p.add_argument("--rounds", type=_common.positive_int, default=12, help="interleaved rounds; the median round is reported (default: 12)")
    p.add_argument("--steps", type=_common.positive_int, default=2, help="steps per contender per round (default: 2)")
    p.add_argument("--warmup", type=int, default=2, help="steps run after the first, before timing (default: 2)")
    p.add_argument("--malloc", choices=("reuse", "system"), default="reuse",
                   help="reuse: jaxconv.devices.reuse_host_memory() in each worker, as benchmark.py and `jaxconv train` "
                        "(default); system: glibc's own thresholds")
    p.add_argument("--quick", action="store_true",
                   help="tiny run for tests: batch 8, 1 round of 1 step, no warm-up, --threads 1 unless given "
                        "(the time is the compilations: six ResNet-20 programs per thread setting)")
    p.add_argument("--worker", metavar="JSON", default=None, help=argparse.SUPPRESS)  # internal: the parent's call of itself
    args = p.parse_args(argv)
    if args.quick:
        args.batch, args.rounds, args.steps, args.warmup = 8, 1, 1, 0
    if args.threads is None:
        args.threads = [1] if args.quick else [1, 2]
    args.variants = ["full"] + [v for v in dict.fromkeys(args.variants) if v != "full"]
    if args.worker and len(args.threads) != 1:
        p.error("--worker takes exactly one --threads value")
    return args


def main(argv=None):
    args = parse_args(argv)
    _common.out_dir(args.out)
    if args.worker:
        return worker(args)
    start = time.perf_counter()
    rows = run_workers(args)
    machine = machine_line()
    table = report(rows, machine, args)
    print("\nAll thread settings:\n" + table)
    print(f"({time.perf_counter() - start:.0f} s in all)", file=sys.stderr)
    _common.write_csv(os.path.join(args.out, "ablate_resnet20.csv"), list(rows[0]), [list(r.values()) for r in rows])
    _common.write_json(os.path.join(args.out, "ablate_resnet20.json"), {"machine": machine, "args": vars(args), "rows": rows})
    with open(os.path.join(args.out, "ablate_resnet20.md"), "w") as f:
        f.write(f"Machine: {machine}\n\n" + _common.markdown_table(HEADER, table_rows(rows)) + "\n")
    return rows


if __name__ == "__main__":
    main()
