"""1-D and 3-D convolution benchmark: forward and forward+backward, lax vs hand-rolled im2col vs PyTorch.

    python experiments/bench_conv_nd.py --out results/bench_conv_nd
    python experiments/bench_conv_nd.py --quick --out /tmp/bench_conv_nd      # seconds, for tests

Layers (channels last -> filters): a 1-D sequence layer (32, 1024, 64) -> 64, f = 3, SAME,
and a 3-D volume layer (8, 16, 32, 32, 16) -> 16, f = 3, SAME (the issue's typical sizes);
a 3-D first layer on a 3-channel volume (4, 8, 16, 16, 3) -> 8 (the case impl="auto" sends to
hand on CPU: policy.TUNED["nd_hand_max_channels"]); and a strided 1-D layer.
Contenders: impl="lax", impl="hand" (the notes' im2col with its hand-derived backward,
`jaxconv.conv.im2col_nd`), impl="hand_autodiff", and PyTorch's conv1d/conv3d (channels first,
eager) when installed. jaxconv is compiled as its steps are (`jaxconv.compile.jit`). fwd+bwd
is the forward plus the gradient with respect to x, w and b for a fixed random upstream
gradient. Interleaved rounds (a random order each round), warm-up excluded, medians; the
ratio column is time / lax's time; the machine is printed above the table.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import sys


sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import _common  # noqa: E402
import bench_conv  # noqa: E402  (its table format)


def layers(quick: bool):
    """(name, x shape, w shape, stride): channels last, filters (*f, n_C, n_C'), SAME padding."""
    if quick:
        return [("1d", (2, 16, 4), (3, 4, 4), 1), ("3d", (1, 4, 6, 6, 2), (3, 3, 3, 2, 4), 1)]
    return [
        ("1d 64->64", (32, 1024, 64), (3, 64, 64), 1),
        ("1d 16->32 s2", (32, 1024, 16), (5, 16, 32), 2),
        ("3d 16->16", (8, 16, 32, 32, 16), (3, 3, 3, 16, 16), 1),
        ("3d 3->8", (4, 8, 16, 16, 3), (3, 3, 3, 3, 8), 1),
    ]


def jax_contenders(x_shape, w_shape, stride):
    import jax
    import jax.numpy as jnp

    from jaxconv import compile as compiling
    from jaxconv import conv_nd

    k = jax.random.split(jax.random.key(0), 4)
    x = jax.random.normal(k[0], x_shape, jnp.float32)
    w = jax.random.normal(k[1], w_shape, jnp.float32)
    b = jax.random.normal(k[2], (w_shape[-1],), jnp.float32)
    runs = {}
    for impl in ("lax", "hand", "hand_autodiff"):
        fn = lambda x, w, b, impl=impl: conv_nd(x, w, b, stride=stride, padding="SAME", impl=impl)  # noqa: E731
        fwd = compiling.jit(fn)
        dz = jax.random.normal(k[3], fwd(x, w, b).shape, jnp.float32)

        def fwd_bwd(x, w, b, fn=fn, dz=dz):
            z, vjp = jax.vjp(fn, x, w, b)
            return z, vjp(dz)

        fb = compiling.jit(fwd_bwd)
        runs[(impl, "fwd")] = lambda n, f=fwd: jax.block_until_ready([f(x, w, b) for _ in range(n)])
        runs[(impl, "fwd+bwd")] = lambda n, f=fb: jax.block_until_ready([f(x, w, b) for _ in range(n)])
    return runs


def torch_contenders(x_shape, w_shape, stride):
    import torch
    import torch.nn.functional as F

    g = torch.Generator().manual_seed(0)
    N = len(x_shape) - 2
    conv = {1: F.conv1d, 3: F.conv3d}[N]
    x = torch.randn(x_shape[0], x_shape[-1], *x_shape[1:-1], generator=g).requires_grad_()
    w = torch.randn(w_shape[-1], w_shape[-2], *w_shape[:-2], generator=g).requires_grad_()
    b = torch.randn(w_shape[-1], generator=g).requires_grad_()
    kw = {"stride": stride, "padding": tuple(f // 2 for f in w_shape[:-2])}  # PyTorch's "same" needs stride 1
    dz = torch.randn_like(conv(x, w, b, **kw))

    def fwd(n):
        with torch.no_grad():
            for _ in range(n):
                conv(x, w, b, **kw)

    def fwd_bwd(n):
        for _ in range(n):
            torch.autograd.grad(conv(x, w, b, **kw), (x, w, b), dz)

    return {("PyTorch", "fwd"): fwd, ("PyTorch", "fwd+bwd"): fwd_bwd}


def measure(args):
    from jaxconv.conv import nd

    rows = []
    for layer, x_shape, w_shape, stride in layers(args.quick):
        auto = nd.resolve_impl("auto", x_shape, w_shape)
        runs = jax_contenders(x_shape, w_shape, stride)
        if not args.no_torch and importlib.util.find_spec("torch"):
            runs.update(torch_contenders(x_shape, w_shape, stride))
        rows += bench_conv.timed_rows(runs, args, auto, layer=layer, x=str(x_shape), w=str(w_shape))
        print(f"{layer} done", flush=True)
    return rows


def format_table(rows):
    return bench_conv.format_table(rows, impl_width=13)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5, help="interleaved rounds; medians reported")
    parser.add_argument("--steps", type=int, default=2, help="calls per contender per round")
    parser.add_argument("--warmup", type=int, default=1, help="calls after compiling, before timing")
    parser.add_argument("--no-torch", action="store_true", help="skip PyTorch")
    parser.add_argument("--quick", action="store_true", help="tiny shapes and 2 rounds, for tests")
    parser.add_argument("--out", default="results/bench_conv_nd", help="folder for bench_conv_nd.csv/.json")
    args = parser.parse_args(argv)
    if args.quick:
        args.rounds, args.steps, args.warmup = 2, 1, 1
    rows = measure(args)
    print(f"machine: {_common.machine()}")
    print(format_table(rows))
    os.makedirs(args.out, exist_ok=True)
    _common.write_csv(os.path.join(args.out, "bench_conv_nd.csv"), list(rows[0]), [list(r.values()) for r in rows])
    _common.write_json(os.path.join(args.out, "bench_conv_nd.json"), {"args": vars(args), "machine": _common.machine(), "rows": rows})
    return rows


if __name__ == "__main__":
    main()
