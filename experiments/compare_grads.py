"""Hand-rolled vs lax convolution: errors of outputs and gradients, and time, over a grid.

    python experiments/compare_grads.py --out runs/compare_grads
    python experiments/compare_grads.py --quick --repeats 5 --out runs/compare_quick   # small grid

For every configuration (shapes, strides, padding forms, dilations, groups, and
LeNet-5's two real convolutions), every impl of `jaxconv.conv2d`
("hand": hand-rolled forward + hand-derived backward, once per hand-rolled
algorithm that applies to the geometry — im2col always, rows and taps for
stride 1 and one group, rows also dilation 1 —, "hand_autodiff": hand-rolled
im2col forward + JAX autodiff, "lax": lax.conv_general_dilated) and
float32 / float64, it computes

    y = conv2d(x, w, b),   (dx, dw, db) = gradient of Σ y·g   (g a fixed random cotangent)

and reports the max absolute error max|a − r| and the relative error
max|a − r| / max|r| of y, dx, dw, db against
  - lax in the same dtype ("vs lax"), and
  - a float64 NumPy reference ("vs f64"): a plain loop over the filter taps,
    written here without jax, run on the same (dtype-rounded) inputs;
and the time of the jitted forward and forward+backward: warm-up (compile)
excluded, block_until_ready, impls interleaved run by run, median of
--repeats runs.

Prints the table, writes compare_grads.csv (every number) and
compare_grads.png (time per impl, float32) into --out.
"""

from __future__ import annotations

import os
import sys
import time
from typing import NamedTuple

import jax

jax.config.update("jax_enable_x64", True)  # the float64 rows need it; every array below has an explicit dtype

import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import _common  # noqa: E402

import jaxconv  # noqa: E402
from jaxconv import conv  # noqa: E402

DTYPES = ("float32", "float64")
QUANTITIES = ("y", "dx", "dw", "db")
# Relative-error bounds the test (and the "ok" column) uses: float32 sums of a few hundred
# products are good to ~1e-6; 1e-4 leaves room for large reductions (dw over m·n_H·n_W terms).
TOLERANCE = {"float32": 1e-4, "float64": 1e-10}


class Config(NamedTuple):
    name: str
    m: int
    n_H: int
    n_W: int
    n_C: int
    f: tuple  # (f_H, f_W)
    n_C_out: int
    stride: object = 1
    padding: object = 0
    dilation: object = 1
    groups: int = 1


def grid(quick: bool, lenet_batch: int) -> list[Config]:
    """The configurations: one change at a time from a base, a few combinations, LeNet-5's layers."""
    if quick:
        # Every option at once, in one configuration: each configuration costs 12 XLA compilations
        # (3 impls x 2 dtypes x forward and forward+backward), the bulk of the run time.
        return [Config("s=(2,1) p=((0,1),(2,0)) d=2 g=2", 2, 9, 8, 4, (3, 3), 4, (2, 1), ((0, 1), (2, 0)), 2, 2)]
    m = 8
    base = dict(m=m, n_H=16, n_W=16, n_C=4, f=(3, 3), n_C_out=8)

    def c(name, **kw):
        return Config(name, **{**base, **kw})

    return [
        c("base 16x16x4->8 f=3"),
        c("s=2", stride=2),
        c("s=(1,2)", stride=(1, 2)),
        c("s=3 (floor)", n_H=17, n_W=17, stride=3),
        c("p=1", padding=1),
        c("p=(1,2)", padding=(1, 2)),
        c("p=((0,1),(2,0))", padding=((0, 1), (2, 0))),
        c("SAME", padding="SAME"),
        c("VALID", padding="VALID"),
        c("SAME s=2 odd n", n_H=15, n_W=15, stride=2, padding="SAME"),
        c("d=2", dilation=2),
        c("d=(1,3) SAME", dilation=(1, 3), padding="SAME"),
        c("g=2", groups=2),
        c("g=4 depthwise x2", groups=4),
        c("f=1x1", f=(1, 1)),
        c("f=3x5", f=(3, 5)),
        c("f=4 even SAME", f=(4, 4), padding="SAME"),
        c("15x20 non-square", n_H=15, n_W=20),
        c("m=1", m=1),
        c("s=2 d=2 g=2 SAME", stride=2, dilation=2, groups=2, padding="SAME"),
        Config("LeNet conv1", lenet_batch, 32, 32, 1, (5, 5), 6),
        Config("LeNet conv2", lenet_batch, 14, 14, 6, (5, 5), 16),
    ]


# --------------------------------------------------------------------------- float64 NumPy reference


def _pair(v):
    return (v, v) if isinstance(v, int) else tuple(v)


def reference_pads(cfg: Config):
    """((top, bottom), (left, right)) for every padding form, worked out here independently."""
    p = cfg.padding
    if isinstance(p, str):
        if p == "VALID":
            return (0, 0), (0, 0)
        out = []
        for n, f, s, d in zip((cfg.n_H, cfg.n_W), cfg.f, _pair(cfg.stride), _pair(cfg.dilation)):
            total = max((-(-n // s) - 1) * s + d * (f - 1) + 1 - n, 0)  # output ⌈n/s⌉
            out.append((total // 2, total - total // 2))
        return tuple(out)
    if isinstance(p, int):
        return (p, p), (p, p)
    if isinstance(p[0], int):
        return (p[0], p[0]), (p[1], p[1])
    return tuple(map(tuple, p))


def _tap_views(x_pad, cfg, n_out):
    """For every filter tap (i, j): the index slices of x_pad that meet it, one per output pixel."""
    (s_H, s_W), (d_H, d_W) = _pair(cfg.stride), _pair(cfg.dilation)
    for i in range(cfg.f[0]):
        for j in range(cfg.f[1]):
            yield i, j, (slice(None), slice(i * d_H, i * d_H + s_H * (n_out[0] - 1) + 1, s_H),
                         slice(j * d_W, j * d_W + s_W * (n_out[1] - 1) + 1, s_W))


def reference(x, w, b, g, cfg: Config):
    """y and the VJP (dx, dw, db) of Σ y·g, in float64 NumPy: a sum over filter taps and groups.

    x: (m, n_H, n_W, n_C); w: (f_H, f_W, n_C/G, n_C'); b: (n_C',); g: like y (m, n_H', n_W', n_C').
    """
    x, w, b, g = (np.asarray(a, np.float64) for a in (x, w, b, g))
    pads = reference_pads(cfg)
    x_pad = np.pad(x, ((0, 0), pads[0], pads[1], (0, 0)))
    (d_H, d_W), (s_H, s_W) = _pair(cfg.dilation), _pair(cfg.stride)
    n_out = ((x_pad.shape[1] - d_H * (cfg.f[0] - 1) - 1) // s_H + 1, (x_pad.shape[2] - d_W * (cfg.f[1] - 1) - 1) // s_W + 1)
    G = cfg.groups
    n_Cg, n_Og = cfg.n_C // G, cfg.n_C_out // G
    y = np.zeros((x.shape[0], *n_out, cfg.n_C_out)) + b  # (m, n_H', n_W', n_C')
    dx_pad, dw = np.zeros_like(x_pad), np.zeros_like(w)
    for i, j, idx in _tap_views(x_pad, cfg, n_out):
        view = x_pad[idx]  # (m, n_H', n_W', n_C): the pixels tap (i, j) sees
        for k in range(G):
            ci, co = slice(k * n_Cg, (k + 1) * n_Cg), slice(k * n_Og, (k + 1) * n_Og)
            y[..., co] += view[..., ci] @ w[i, j, :, co]
            dw[i, j, :, co] += np.einsum("mhwc,mhwo->co", view[..., ci], g[..., co])
            dx_pad[idx + (ci,)] += g[..., co] @ w[i, j, :, co].T
    dx = dx_pad[:, pads[0][0] : pads[0][0] + x.shape[1], pads[1][0] : pads[1][0] + x.shape[2]]
    return {"y": y, "dx": dx, "dw": dw, "db": g.sum(axis=(0, 1, 2))}


# --------------------------------------------------------------------------- jaxconv, timed


def contenders(cfg: Config):
    """[(impl, algorithm)]: impl="hand" with every hand-rolled algorithm that applies to cfg, hand_autodiff, lax last."""
    geom = (None, _pair(cfg.stride), _pair(cfg.dilation), cfg.groups)
    w_shape = (*cfg.f, cfg.n_C // cfg.groups, cfg.n_C_out)
    hand = [("hand", a) for a in conv.ALGORITHMS[1:] if conv.policy.applicable(a, w_shape, geom) is None]
    return [*hand, ("hand_autodiff", "im2col"), ("lax", "-")]


def make_fns(cfg: Config, impl: str, algorithm: str = "auto"):
    """Jitted forward (x, w, b) -> y and forward+backward (x, w, b, g) -> (y, (dx, dw, db))."""
    kw = dict(stride=cfg.stride, padding=cfg.padding, dilation=cfg.dilation, groups=cfg.groups, impl=impl)
    if algorithm not in ("auto", "-"):
        kw["algorithm"] = algorithm

    def fwd(x, w, b):
        return jaxconv.conv2d(x, w, b, **kw)

    def fwd_bwd(x, w, b, g):
        y, vjp = jax.vjp(fwd, x, w, b)
        return y, vjp(g)

    return jax.jit(fwd), jax.jit(fwd_bwd)


def errors(a, r):
    a, r = np.asarray(a, np.float64), np.asarray(r, np.float64)
    err = float(np.max(np.abs(a - r))) if a.size else 0.0
    scale = float(np.max(np.abs(r))) if r.size else 0.0
    return err, err / scale if scale > 0 else err


def run_config(cfg: Config, repeats: int, seed: int = 0):
    """Rows (one per dtype × (impl, algorithm)) of errors and median times."""
    rng = np.random.default_rng(seed)
    x64 = rng.standard_normal((cfg.m, cfg.n_H, cfg.n_W, cfg.n_C))
    w64 = rng.standard_normal((*cfg.f, cfg.n_C // cfg.groups, cfg.n_C_out)) / np.sqrt(cfg.f[0] * cfg.f[1] * cfg.n_C)
    b64 = rng.standard_normal(cfg.n_C_out)
    rows = []
    for dtype in DTYPES:
        x, w, b = (jnp.asarray(a, dtype) for a in (x64, w64, b64))
        y_shape = jax.eval_shape(make_fns(cfg, "lax")[0], x, w, b).shape
        g = jnp.asarray(rng.standard_normal(y_shape), dtype)
        ref = reference(x, w, b, g, cfg)  # float64, on the dtype-rounded inputs
        fns = {(impl, a): make_fns(cfg, impl, a) for impl, a in contenders(cfg)}
        outs = {}
        for impl, (fwd, fwd_bwd) in fns.items():  # warm-up: compile both
            jax.block_until_ready(fwd(x, w, b))
            y, (dx, dw, db) = jax.block_until_ready(fwd_bwd(x, w, b, g))
            outs[impl] = {"y": y, "dx": dx, "dw": dw, "db": db}
        times = {(impl, kind): [] for impl in fns for kind in ("fwd", "fwd_bwd")}
        for _ in range(repeats):  # interleaved, so a noisy neighbour hits every impl alike
            for impl, (fwd, fwd_bwd) in fns.items():
                t0 = time.perf_counter()
                jax.block_until_ready(fwd(x, w, b))
                t1 = time.perf_counter()
                jax.block_until_ready(fwd_bwd(x, w, b, g))
                t2 = time.perf_counter()
                times[impl, "fwd"].append(t1 - t0)
                times[impl, "fwd_bwd"].append(t2 - t1)
        for impl in fns:
            row = {"config": cfg.name, "x_shape": (cfg.m, cfg.n_H, cfg.n_W, cfg.n_C),
                   "w_shape": (*cfg.f, cfg.n_C // cfg.groups, cfg.n_C_out), "stride": cfg.stride,
                   "padding": cfg.padding, "dilation": cfg.dilation, "groups": cfg.groups, "dtype": dtype, "impl": impl[0], "algorithm": impl[1]}
            for q in QUANTITIES:
                row[f"abs_{q}_vs_lax"], row[f"rel_{q}_vs_lax"] = errors(outs[impl][q], outs["lax", "-"][q])
                row[f"abs_{q}_vs_f64"], row[f"rel_{q}_vs_f64"] = errors(outs[impl][q], ref[q])
            row["max_rel_vs_lax"] = max(row[f"rel_{q}_vs_lax"] for q in QUANTITIES)
            row["max_rel_vs_f64"] = max(row[f"rel_{q}_vs_f64"] for q in QUANTITIES)
            row["ok"] = max(row["max_rel_vs_lax"], row["max_rel_vs_f64"]) <= TOLERANCE[dtype]
            row["fwd_ms"] = 1e3 * float(np.median(times[impl, "fwd"]))
            row["fwd_bwd_ms"] = 1e3 * float(np.median(times[impl, "fwd_bwd"]))
            rows.append(row)
        for row in rows[-len(fns):]:
            lax_row = rows[-1]
            row["fwd_vs_lax"] = row["fwd_ms"] / lax_row["fwd_ms"]
            row["fwd_bwd_vs_lax"] = row["fwd_bwd_ms"] / lax_row["fwd_bwd_ms"]
    return rows


def plot(rows, path, plt):
    rows32 = [r for r in rows if r["dtype"] == "float32"]
    configs = list(dict.fromkeys(r["config"] for r in rows32))
    fig, axes = plt.subplots(2, 1, figsize=(max(8, 0.55 * len(configs) + 3), 7), sharex=True)
    labels = list(dict.fromkeys((r["impl"], r["algorithm"]) for r in rows32))
    width = 0.8 / len(labels)
    for ax, kind, title in zip(axes, ("fwd_ms", "fwd_bwd_ms"), ("forward", "forward + backward")):
        for k, label in enumerate(labels):
            vals = [next((r[kind] for r in rows32 if r["config"] == c and (r["impl"], r["algorithm"]) == label), 0) for c in configs]
            ax.bar(np.arange(len(configs)) + (k - (len(labels) - 1) / 2) * width, vals, width, label=" ".join(label).rstrip(" -"))
        ax.set_yscale("log")
        ax.set_ylabel("ms (median, jit)")
        ax.set_title(f"conv2d {title}, float32")
        ax.grid(axis="y", alpha=0.3)
    axes[0].legend()
    axes[1].set_xticks(np.arange(len(configs)))
    axes[1].set_xticklabels(configs, rotation=60, ha="right", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def main(argv=None):
    p = _common.parser(__doc__, "runs/compare_grads")
    p.add_argument("--quick", action="store_true", help="one configuration combining stride, asymmetric padding, dilation and groups (for tests)")
    p.add_argument("--repeats", type=int, default=30, help="timed runs per impl and configuration; the median is reported")
    p.add_argument("--lenet-batch", type=int, default=64, help="batch size m of the LeNet-5 layers (default 64)")
    args = p.parse_args(argv)
    if args.repeats < 1:
        p.error(f"--repeats must be >= 1, got {args.repeats}")
    out = _common.out_dir(args.out)
    print(_common.machine())
    rows = []
    t0 = time.perf_counter()
    for cfg in grid(args.quick, args.lenet_batch):
        rows += run_config(cfg, args.repeats)
    header = ["config", "dtype", "impl", "algorithm", "rel y", "rel dx", "rel dw", "rel db", "max rel vs lax", "max abs vs f64",
              "ok", "fwd ms", "fwd+bwd ms", "fwd+bwd / lax"]
    table = [[r["config"], r["dtype"], r["impl"], r["algorithm"], *(_common.fmt(r[f"rel_{q}_vs_f64"], 2) for q in QUANTITIES),
              _common.fmt(r["max_rel_vs_lax"], 2), _common.fmt(max(r[f"abs_{q}_vs_f64"] for q in QUANTITIES), 2),
              "yes" if r["ok"] else "NO", f"{r['fwd_ms']:.3f}", f"{r['fwd_bwd_ms']:.3f}", f"{r['fwd_bwd_vs_lax']:.2f}"]
             for r in rows]
    print("relative errors max|a − r| / max|r| against the float64 NumPy reference (rel y .. rel db) and against lax;")
    print(f"ok = every relative error <= {TOLERANCE}; times: median of {args.repeats} jitted runs\n")
    print(_common.format_table(header, table, align="llll" + "r" * 10))

    print("\nsummary (over all configurations)")
    summary = []
    for dtype in DTYPES:
        for impl, algorithm in dict.fromkeys((r["impl"], r["algorithm"]) for r in rows):
            sel = [r for r in rows if r["dtype"] == dtype and (r["impl"], r["algorithm"]) == (impl, algorithm)]
            summary.append([dtype, impl, algorithm, _common.fmt(max(r["max_rel_vs_f64"] for r in sel), 2),
                            _common.fmt(max(r["max_rel_vs_lax"] for r in sel), 2),
                            f"{np.median([r['fwd_vs_lax'] for r in sel]):.2f}",
                            f"{np.median([r['fwd_bwd_vs_lax'] for r in sel]):.2f}"])
    print(_common.format_table(["dtype", "impl", "algorithm", "worst rel vs f64", "worst rel vs lax", "median fwd time / lax",
                                "median fwd+bwd time / lax"], summary, align="lllrrrr"))
    print(f"\n{len(rows)} rows, {sum(not r['ok'] for r in rows)} outside tolerance; {time.perf_counter() - t0:.1f} s")

    keys = list(rows[0])
    _common.write_csv(os.path.join(out, "compare_grads.csv"), keys, [[r[k] for k in keys] for r in rows])
    written = ["compare_grads.csv"]
    plt = _common.pyplot(args.no_plot)
    if plt is not None:
        plot(rows, os.path.join(out, "compare_grads.png"), plt)
        written.append("compare_grads.png")
    print(f"wrote {', '.join(os.path.join(out, w) for w in written)}")
    return rows


if __name__ == "__main__":
    main()
