"""Convolution microbenchmark: forward and forward+backward, lax vs hand-rolled vs PyTorch.

    python experiments/bench_conv.py --out results/bench_conv
    python experiments/bench_conv.py --quick --out /tmp/bench_conv     # seconds, for tests

Layers (NHWC -> filters): LeNet's conv1 (m, 32, 32, 1) -> 6 @ 5x5, LeNet's conv2
(m, 14, 14, 6) -> 16 @ 5x5, and a wide (64, 32, 32, 64) -> 64 @ 3x3 SAME layer;
with --more also the layers behind impl="auto"'s choice between taps and lax
(3x3 layers from 3 to 128 channels on 32x32 down to 8x8, a 1x1 and a 5x5 layer);
with --resnet instead every distinct convolution of ResNet-20 at batch --batch
(3x3 stride 1 and 2, the 1x1 stride-2 projections) and MobileNet-style depthwise
3x3 layers (groups = channels, stride 1 and 2).
Contenders: impl="lax", impl="hand" (the algorithm `hand_algorithm` picks for
the layer), each other hand-rolled algorithm that applies, forced (rows, taps, im2col),
impl="hand_autodiff", and PyTorch's conv2d (NCHW, eager) when installed. Every
jaxconv contender is compiled as jaxconv's steps are, with
`jaxconv.compile.compiler_options()` (on CPU: lax's convolutions on XLA's multi-threaded
runtime instead of YNNPACK); "lax, XLA's default libraries" is lax without them.
fwd+bwd is the forward plus the gradient with respect to x, w and b for a
fixed random upstream gradient. With --parts, each backward alone as well: dX (the
input gradient from w and dZ) and dW (the weight and bias gradients from x and dZ),
for jaxconv a jitted VJP with respect to that argument only (XLA drops the forward it
does not need), for PyTorch `aten.convolution_backward` with that output mask (the
call autograd makes): the per-op split of a layer's time, for lax, jaxconv's choice
and PyTorch. Interleaved rounds (a random order each round), warm-up excluded,
block_until_ready, medians; the ratio column is time / lax's time.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import _common  # noqa: E402


def resnet_layers(batch: int, quick: bool = False):
    """ResNet-20's convolutions and MobileNet-style depthwise ones: (name, x shape, w shape, padding, stride, groups)."""
    if quick:
        return [
            ("r3x3s2", (2, 8, 8, 4), (3, 3, 4, 8), 1, 2, 1),
            ("r1x1s2", (2, 8, 8, 4), (1, 1, 4, 8), 0, 2, 1),
            ("dw3x3", (2, 8, 8, 8), (3, 3, 1, 8), 1, 1, 8),
        ]
    m = batch
    return [
        ("conv1 3->16", (m, 32, 32, 3), (3, 3, 3, 16), 1, 1, 1),
        ("16@32", (m, 32, 32, 16), (3, 3, 16, 16), 1, 1, 1),
        ("16->32 s2", (m, 32, 32, 16), (3, 3, 16, 32), 1, 2, 1),
        ("1x1 16->32 s2", (m, 32, 32, 16), (1, 1, 16, 32), 0, 2, 1),
        ("32@16", (m, 16, 16, 32), (3, 3, 32, 32), 1, 1, 1),
        ("32->64 s2", (m, 16, 16, 32), (3, 3, 32, 64), 1, 2, 1),
        ("1x1 32->64 s2", (m, 16, 16, 32), (1, 1, 32, 64), 0, 2, 1),
        ("64@8", (m, 8, 8, 64), (3, 3, 64, 64), 1, 1, 1),
        ("dw32@32", (m, 32, 32, 32), (3, 3, 1, 32), 1, 1, 32),
        ("dw96@32 s2", (m, 32, 32, 96), (3, 3, 1, 96), 1, 2, 96),
        ("dw144@16", (m, 16, 16, 144), (3, 3, 1, 144), 1, 1, 144),
        ("dw192@8", (m, 8, 8, 192), (3, 3, 1, 192), 1, 1, 192),
    ]


def layers(batch: int, quick: bool, more: bool = False, resnet: bool = False):
    """(name, x shape, w shape, padding, stride, groups)."""
    if resnet:
        return resnet_layers(batch, quick)
    return [(*layer, 1, 1) for layer in _lenet_and_wide(batch, quick, more)]


def _lenet_and_wide(batch: int, quick: bool, more: bool = False):
    """(name, x shape, w shape, padding)."""
    if quick:
        return [
            ("conv1", (batch, 32, 32, 1), (5, 5, 1, 6), 0),
            ("conv2", (batch, 14, 14, 6), (5, 5, 6, 16), 0),
            ("wide3x3", (2, 8, 8, 8), (3, 3, 8, 8), "SAME"),  # 8 channels: rows (TUNED["rows_max_channels"])
        ]
    out = [
        ("conv1", (batch, 32, 32, 1), (5, 5, 1, 6), 0),
        ("conv2", (batch, 14, 14, 6), (5, 5, 6, 16), 0),
        ("wide3x3", (64, 32, 32, 64), (3, 3, 64, 64), "SAME"),
    ]
    if more:
        out += [
            ("3->32", (128, 32, 32, 3), (3, 3, 3, 32), "SAME"),
            ("16->32", (128, 32, 32, 16), (3, 3, 16, 32), "SAME"),
            ("32->64@16", (128, 16, 16, 32), (3, 3, 32, 64), "SAME"),
            ("128@8x8", (128, 8, 8, 128), (3, 3, 128, 128), "SAME"),
            ("1x1", (32, 56, 56, 64), (1, 1, 64, 128), 0),
            ("5x5@28", (64, 28, 28, 32), (5, 5, 32, 32), "SAME"),
        ]
    return out


def jax_contenders(x_shape, w_shape, padding, stride=1, groups=1, autodiff=True, parts=False):
    """{(impl, pass): run(n)} for jaxconv's contenders; parts: also "dX" and "dW" for lax and the default pick."""
    import jax
    import jax.numpy as jnp

    from jaxconv import compile as compiling
    from jaxconv import conv

    kw = {"padding": padding, "stride": stride, "groups": groups}
    geom = conv.conv_geometry(x_shape, w_shape, **kw)[:4]
    algorithm = conv.hand_algorithm(x_shape, w_shape, geom)
    out = {
        "lax": lambda x, w, b: conv.conv2d(x, w, b, **kw, impl="lax"),
        f"hand ({algorithm})": lambda x, w, b: conv.conv2d(x, w, b, **kw, impl="hand"),
    }
    if autodiff:
        out["hand_autodiff"] = lambda x, w, b: conv.conv2d(x, w, b, **kw, impl="hand_autodiff")
    for forced in conv.ALGORITHMS[1:]:
        if forced != algorithm and conv.policy.applicable(forced, w_shape, geom) is None:
            out[f"hand, {forced} forced"] = lambda x, w, b, a=forced: conv.conv2d(x, w, b, **kw, impl="hand", algorithm=a)
    options = compiling.compiler_options()  # what jaxconv's compiled steps use (convolutions off YNNPACK on CPU)
    if options is not None:
        out["lax, XLA's default libraries"] = out["lax"]
    runs = {}
    k = jax.random.split(jax.random.key(0), 4)
    x = jax.random.normal(k[0], x_shape, jnp.float32)
    w = jax.random.normal(k[1], w_shape, jnp.float32)
    b = jax.random.normal(k[2], (w_shape[3],), jnp.float32)
    for name, fn in out.items():
        jit = jax.jit if name.endswith("default libraries") else compiling.jit
        fwd = jit(fn)
        dz = jax.random.normal(k[3], fwd(x, w, b).shape, jnp.float32)

        def fwd_bwd(x, w, b, fn=fn, dz=dz):
            z, vjp = jax.vjp(fn, x, w, b)
            return z, vjp(dz)

        fb = jit(fwd_bwd)
        runs[(name, "fwd")] = lambda n, f=fwd: jax.block_until_ready([f(x, w, b) for _ in range(n)])
        runs[(name, "fwd+bwd")] = lambda n, f=fb: jax.block_until_ready([f(x, w, b) for _ in range(n)])
        if parts and (name == "lax" or name.startswith("hand (")):
            runs.update(_jax_parts(name, fn, jit, x, w, b, dz))
    return runs


def _jax_parts(name, fn, jit, x, w, b, dz):
    """{(name, "dX"): run, (name, "dW"): run}: the input gradient alone, the weight and bias gradients alone."""
    import jax

    def d_x(x, w, b):
        return jax.vjp(lambda x: fn(x, w, b), x)[1](dz)

    def d_wb(x, w, b):
        return jax.vjp(lambda w, b: fn(x, w, b), w, b)[1](dz)

    fx, fw = jit(d_x), jit(d_wb)
    return {(name, "dX"): lambda n: jax.block_until_ready([fx(x, w, b) for _ in range(n)]),
            (name, "dW"): lambda n: jax.block_until_ready([fw(x, w, b) for _ in range(n)])}


def torch_contenders(x_shape, w_shape, padding, stride=1, groups=1, parts=False):
    """{("PyTorch", pass): run(n)}; parts: also "dX" and "dW" (`aten.convolution_backward` with that output mask)."""
    import torch
    import torch.nn.functional as F

    g = torch.Generator().manual_seed(0)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")  # where JAX's default backend is too
    m, n_H, n_W, n_C = x_shape
    f_H, f_W, _, n_O = w_shape
    x = torch.randn(m, n_C, n_H, n_W, generator=g).to(device).requires_grad_()
    w = torch.randn(n_O, n_C // groups, f_H, f_W, generator=g).to(device).requires_grad_()
    b = torch.randn(n_O, generator=g).to(device).requires_grad_()
    kw = {"padding": "same" if padding == "SAME" else padding, "stride": stride, "groups": groups}
    dz = torch.randn_like(F.conv2d(x, w, b, **kw))
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)

    def fwd(n):
        with torch.no_grad():
            for _ in range(n):
                F.conv2d(x, w, b, **kw)
        sync()

    def fwd_bwd(n):
        for _ in range(n):
            torch.autograd.grad(F.conv2d(x, w, b, **kw), (x, w, b), dz)
        sync()

    runs = {("PyTorch", "fwd"): fwd, ("PyTorch", "fwd+bwd"): fwd_bwd}
    if parts:
        args = torch_backward_args(x, w, dz, padding, stride, groups)

        def backward(mask):
            def run(n):
                for _ in range(n):
                    torch.ops.aten.convolution_backward(*args, mask)
                sync()
            return run

        runs[("PyTorch", "dX")] = backward([True, False, False])
        runs[("PyTorch", "dW")] = backward([False, True, True])
    return runs


def torch_backward_args(x, w, dz, padding, stride, groups):
    """The arguments of `aten.convolution_backward` before its output mask (what autograd passes for conv2d), for
    x (m, n_C, n_H, n_W), w (n_C', n_C/groups, f, f), dz the output's gradient; padding an int or "SAME" (odd f)."""
    f_H = w.shape[2]
    pad = f_H // 2 if padding == "SAME" else padding
    return dz, x.detach(), w.detach(), [w.shape[0]], (stride, stride), (pad, pad), (1, 1), False, (0, 0), groups


def measure(args):
    rows = []
    from jaxconv import conv

    chosen = layers(args.batch, args.quick, args.more, args.resnet)
    if args.layers:
        chosen = [c for c in chosen if any(want.lower() in c[0].lower() for want in args.layers)]
        if not chosen:
            names = [c[0] for c in layers(args.batch, args.quick, args.more, args.resnet)]
            raise SystemExit(f"error: --layers {args.layers} matches none of the layers {names}; pass parts of their names.")
    for layer, x_shape, w_shape, padding, stride, groups in chosen:
        geom = conv.conv_geometry(x_shape, w_shape, padding=padding, stride=stride, groups=groups)[:4]
        auto = conv.resolve_impl("auto", x_shape, w_shape, geom)
        runs = jax_contenders(x_shape, w_shape, padding, stride, groups, autodiff=not args.resnet, parts=args.parts)
        if not args.no_torch and importlib.util.find_spec("torch"):
            runs.update(torch_contenders(x_shape, w_shape, padding, stride, groups, parts=args.parts))
        rows += timed_rows(runs, args, auto, layer=layer, x=str(x_shape), w=str(w_shape), stride=stride, groups=groups)
        print(f"{layer} done", flush=True)
    return rows


def timed_rows(runs, args, auto, **layer):
    """Compile and warm up every contender {(impl, pass): run(n)}, time them in interleaved rounds, and return one row
    per contender: the `layer` fields, then impl, pass, median ms, time / lax's, and what `auto` picks."""
    for run in runs.values():
        run(1)  # compile
        run(args.warmup)
    times = _common.interleaved_rounds(runs, args.rounds, args.steps)
    rows = []
    for (name, direction), ts in times.items():
        ms = float(np.median(ts)) * 1e3
        lax_ms = float(np.median(times[("lax", direction)])) * 1e3
        rows.append({**layer, "impl": name, "pass": direction, "ms": ms, "vs_lax": ms / lax_ms, "auto": auto})
    return rows


def format_table(rows, impl_width: int = 22):
    """The rows as a Markdown table: layer, impl, pass, ms, time / lax, what auto picks (also bench_conv_nd.py's)."""
    lines = [
        f"| {'layer':13s} | {'impl':{impl_width}s} | pass    |      ms | time / lax | auto |",
        f"|{'-' * 15}|{'-' * (impl_width + 2)}|---------|--------:|-----------:|------|",
    ]
    for r in rows:
        lines.append(f"| {r['layer']:13s} | {r['impl']:{impl_width}s} | {r['pass']:7s} | {r['ms']:7.2f} | {r['vs_lax']:9.2f}x | {r['auto']:4s} |")
    return "\n".join(lines)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=128, help="m for LeNet's two layers (the wide layer uses 64)")
    parser.add_argument("--rounds", type=int, default=9, help="interleaved rounds; medians reported")
    parser.add_argument("--steps", type=int, default=5, help="calls per contender per round")
    parser.add_argument("--warmup", type=int, default=2, help="calls after compiling, before timing")
    parser.add_argument("--no-torch", action="store_true", help="skip PyTorch")
    parser.add_argument("--more", action="store_true", help="also the layers behind impl='auto''s choice between taps and lax")
    parser.add_argument("--resnet", action="store_true",
                        help="instead: ResNet-20's convolutions (3x3, strided 3x3, 1x1 stride-2) and depthwise 3x3 layers, at --batch")
    parser.add_argument("--layers", nargs="+", metavar="NAME",
                        help="only the layers whose name contains one of these (case-insensitive), e.g. --resnet --layers dw s2")
    parser.add_argument("--parts", action="store_true",
                        help="also each backward alone: dX (input gradient) and dW (weight and bias gradients), for lax, "
                             "jaxconv's pick and PyTorch")
    parser.add_argument("--quick", action="store_true", help="tiny shapes and 2 rounds, for tests")
    parser.add_argument("--out", default="results/bench_conv", help="folder for bench_conv.csv/.json")
    args = parser.parse_args(argv)
    if args.quick:
        args.batch, args.rounds, args.steps, args.warmup = 2, 2, 1, 1
    from jaxconv.devices import reuse_host_memory

    reuse_host_memory()  # as `jaxconv train` does, for every contender in the process
    rows = measure(args)
    table = format_table(rows)
    print(table)
    os.makedirs(args.out, exist_ok=True)
    _common.write_csv(os.path.join(args.out, "bench_conv.csv"), list(rows[0]), [list(r.values()) for r in rows])
    _common.write_json(os.path.join(args.out, "bench_conv.json"), {"args": vars(args), "rows": rows})
    return rows


if __name__ == "__main__":
    main()
