"""Convolution microbenchmark: forward and forward+backward, lax vs hand-rolled vs PyTorch.

    python experiments/bench_conv.py --out results/bench_conv
    python experiments/bench_conv.py --quick --out /tmp/bench_conv     # seconds, for tests

Layers (NHWC -> filters): LeNet's conv1 (m, 32, 32, 1) -> 6 @ 5x5, LeNet's conv2
(m, 14, 14, 6) -> 16 @ 5x5, and a wide (64, 32, 32, 64) -> 64 @ 3x3 SAME layer;
with --more also the layers behind impl="auto"'s choice between taps and lax
(3x3 layers from 3 to 128 channels on 32x32 down to 8x8, a 1x1 and a 5x5 layer).
Contenders: impl="lax", impl="hand" (the algorithm `hand_algorithm` picks for
the layer), each other hand-rolled algorithm that applies, forced (rows, taps, im2col),
impl="hand_autodiff", and PyTorch's conv2d (NCHW, eager) when installed.
fwd+bwd is the forward plus the gradient with respect to x, w and b for a
fixed random upstream gradient. Interleaved rounds (a random order each round), warm-up excluded,
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


def layers(batch: int, quick: bool, more: bool = False):
    """(name, x shape, w shape, padding)."""
    if quick:
        return [
            ("conv1", (batch, 32, 32, 1), (5, 5, 1, 6), 0),
            ("conv2", (batch, 14, 14, 6), (5, 5, 6, 16), 0),
            ("wide3x3", (2, 8, 8, 16), (3, 3, 16, 16), "SAME"),
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


def jax_contenders(x_shape, w_shape, padding):
    import jax
    import jax.numpy as jnp

    from jaxconv import conv

    geom = conv.conv_geometry(x_shape, w_shape, padding=padding)[:4]
    _, s, _, groups = geom
    algorithm = conv.hand_algorithm(x_shape, w_shape, geom)
    out = {
        "lax": lambda x, w, b: conv.conv2d(x, w, b, padding=padding, impl="lax"),
        f"hand ({algorithm})": lambda x, w, b: conv.conv2d(x, w, b, padding=padding, impl="hand"),
        "hand, im2col forced": lambda x, w, b: conv.conv2d(x, w, b, padding=padding, impl="hand", algorithm="im2col"),
        "hand_autodiff": lambda x, w, b: conv.conv2d(x, w, b, padding=padding, impl="hand_autodiff"),
    }
    if algorithm != "rows" and geom[1:] == ((1, 1), (1, 1), 1):
        out["hand, rows forced"] = lambda x, w, b: conv.conv2d(x, w, b, padding=padding, impl="hand", algorithm="rows")
    if algorithm != "taps" and s == (1, 1) and groups == 1:
        out["hand, taps forced"] = lambda x, w, b: conv.conv2d(x, w, b, padding=padding, impl="hand", algorithm="taps")
    runs = {}
    k = jax.random.split(jax.random.key(0), 4)
    x = jax.random.normal(k[0], x_shape, jnp.float32)
    w = jax.random.normal(k[1], w_shape, jnp.float32)
    b = jax.random.normal(k[2], (w_shape[3],), jnp.float32)
    for name, fn in out.items():
        fwd = jax.jit(fn)
        dz = jax.random.normal(k[3], fwd(x, w, b).shape, jnp.float32)

        def fwd_bwd(x, w, b, fn=fn, dz=dz):
            z, vjp = jax.vjp(fn, x, w, b)
            return z, vjp(dz)

        fb = jax.jit(fwd_bwd)
        runs[(name, "fwd")] = lambda n, f=fwd: jax.block_until_ready([f(x, w, b) for _ in range(n)])
        runs[(name, "fwd+bwd")] = lambda n, f=fb: jax.block_until_ready([f(x, w, b) for _ in range(n)])
    return runs


def torch_contenders(x_shape, w_shape, padding):
    import torch
    import torch.nn.functional as F

    g = torch.Generator().manual_seed(0)
    m, n_H, n_W, n_C = x_shape
    f_H, f_W, _, n_O = w_shape
    x = torch.randn(m, n_C, n_H, n_W, generator=g, requires_grad=True)
    w = torch.randn(n_O, n_C, f_H, f_W, generator=g, requires_grad=True)
    b = torch.randn(n_O, generator=g, requires_grad=True)
    pad = "same" if padding == "SAME" else padding
    dz = torch.randn_like(F.conv2d(x, w, b, padding=pad))

    def fwd(n):
        with torch.no_grad():
            for _ in range(n):
                F.conv2d(x, w, b, padding=pad)

    def fwd_bwd(n):
        for _ in range(n):
            torch.autograd.grad(F.conv2d(x, w, b, padding=pad), (x, w, b), dz)

    return {("PyTorch", "fwd"): fwd, ("PyTorch", "fwd+bwd"): fwd_bwd}


def measure(args):
    rows = []
    from jaxconv import conv

    for layer, x_shape, w_shape, padding in layers(args.batch, args.quick, args.more):
        auto = conv.resolve_impl("auto", x_shape, w_shape, conv.conv_geometry(x_shape, w_shape, padding=padding)[:4])
        runs = jax_contenders(x_shape, w_shape, padding)
        if not args.no_torch and importlib.util.find_spec("torch"):
            runs.update(torch_contenders(x_shape, w_shape, padding))
        for run in runs.values():
            run(1)  # compile
            run(args.warmup)
        times = _common.interleaved_rounds(runs, args.rounds, args.steps)
        for (name, direction), ts in times.items():
            ms = float(np.median(ts)) * 1e3
            lax_ms = float(np.median(times[("lax", direction)])) * 1e3
            rows.append(
                {"layer": layer, "x": str(x_shape), "w": str(w_shape), "impl": name, "pass": direction, "ms": ms, "vs_lax": ms / lax_ms,
                 "auto": auto}
            )
        print(f"{layer} done", flush=True)
    return rows


def format_table(rows):
    lines = [
        f"| {'layer':9s} | {'impl':22s} | pass    |      ms | time / lax | auto |",
        f"|{'-' * 11}|{'-' * 24}|---------|--------:|-----------:|------|",
    ]
    for r in rows:
        lines.append(f"| {r['layer']:9s} | {r['impl']:22s} | {r['pass']:7s} | {r['ms']:7.2f} | {r['vs_lax']:9.2f}x | {r['auto']:4s} |")
    return "\n".join(lines)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=128, help="m for LeNet's two layers (the wide layer uses 64)")
    parser.add_argument("--rounds", type=int, default=9, help="interleaved rounds; medians reported")
    parser.add_argument("--steps", type=int, default=5, help="calls per contender per round")
    parser.add_argument("--warmup", type=int, default=2, help="calls after compiling, before timing")
    parser.add_argument("--no-torch", action="store_true", help="skip PyTorch")
    parser.add_argument("--more", action="store_true", help="also the layers behind impl='auto''s choice between taps and lax")
    parser.add_argument("--quick", action="store_true", help="tiny shapes and 2 rounds, for tests")
    parser.add_argument("--out", default="results/bench_conv", help="folder for bench_conv.csv/.json")
    args = parser.parse_args(argv)
    if args.quick:
        args.batch, args.rounds, args.steps, args.warmup = 2, 2, 1, 1
    rows = measure(args)
    table = format_table(rows)
    print(table)
    os.makedirs(args.out, exist_ok=True)
    _common.write_csv(os.path.join(args.out, "bench_conv.csv"), list(rows[0]), [list(r.values()) for r in rows])
    _common.write_json(os.path.join(args.out, "bench_conv.json"), {"args": vars(args), "rows": rows})
    return rows


if __name__ == "__main__":
    main()
