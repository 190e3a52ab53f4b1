"""Which implementation and algorithm a convolution gets, and its tile size.

`resolve_impl` decides impl="auto" (lax or hand-rolled), `hand_algorithm` the
algorithm of impl="hand", and `rows_block` and `taps_chunk` the tiles of the two
fast algorithms. Every tuned threshold they read lives in `TUNED`, an immutable
table; each entry names the benchmark that set it (docs/benchmarks.md), measured
on a 2-core CPU. How jaxconv compiles its steps, which these choices assume, is
`jaxconv.compile`.
"""

from __future__ import annotations

from types import MappingProxyType

import jax

from jaxconv import compile as compiling
from jaxconv.conv.geometry import Plan, out_size, padded_size, patch_elements

ALGORITHMS = ("auto", "im2col", "rows", "taps", "depthwise", "pointwise")

# Read at trace time as `policy.TUNED[name]`: to try other values, set `policy.TUNED` to a new table,
# `MappingProxyType(policy.TUNED | {name: value})`, as the tests do.
TUNED = MappingProxyType({
    # taps: bytes of one chunk's K-fold tap products. Benchmark: docs/benchmarks.md#taps-chunk
    "taps_chunk_bytes": 6 << 20,
    # rows: the widest banded matrix, as n_W_pad / f_W. Benchmark: docs/benchmarks.md#rows-band
    "rows_max_waste": 8,
    # rows: the most elements of the banded matrix (4 MiB in float32). Benchmark: docs/benchmarks.md#rows-band
    "rows_max_band": 1 << 20,
    # rows: the most input channels per group (wider layers take taps). Benchmark: docs/benchmarks.md#rows-channels
    "rows_max_channels": 8,
    # rows: the most input channels for which its forward is the direct sum. Benchmark: docs/benchmarks.md#rows-direct
    "rows_direct_max_channels": 1,
    # rows: the band waste above which it runs in blocks of f_W − 1 columns. Benchmark: docs/benchmarks.md#rows-blocks
    "rows_block_waste": 4,
    # rows: the band waste above which it runs in two halves (n_W' even). Benchmark: docs/benchmarks.md#rows-blocks
    "rows_halves_waste": 2,
    # rows: the most of the band its dX may span to run in two column groups. Benchmark: docs/benchmarks.md#rows-dx
    "rows_dx_max_fraction": 0.75,
    # auto: the most taps f_H·f_W for which taps may beat lax. Benchmark: docs/benchmarks.md#taps-auto
    "taps_auto_max_taps": 9,
    # auto: the most padded pixels per output pixel for taps. Benchmark: docs/benchmarks.md#taps-auto
    "taps_auto_max_waste": 1.3,
    # auto: the fewest channels for taps on a square layer (n_C' = n_C). Benchmark: docs/benchmarks.md#taps-auto
    "taps_auto_square_min_channels": 64,
    # auto: the most patch elements for im2col on a strided layer. Benchmark: docs/benchmarks.md#im2col-auto
    "im2col_auto_max_patch": 5 << 20,
    # auto: the fewest input channels for lax on a stride-1 layer (no buffers). Benchmark: docs/benchmarks.md#lax-channels
    "lax_min_channels": 8,
    # guard: the most patch bytes for its im2col branch over the whole batch. Benchmark: docs/benchmarks.md#guard-chunk
    "guard_whole_batch_bytes": 24 << 20,
    # auto, conv3d on CPU: the most input channels for hand-rolled im2col over lax. Benchmark: docs/benchmarks.md#conv-nd
    "nd_hand_max_channels": 4,
})


def applicable(algorithm: str, w_shape, geom) -> str | None:
    """Why `algorithm` cannot run this geometry (a phrase naming what it needs), or None when it can."""
    _, s, d, groups = geom
    needs = []
    if algorithm in ("rows", "taps") and s != (1, 1):
        needs.append(f"stride 1 (got {s})")
    if algorithm == "rows" and d != (1, 1):
        needs.append(f"dilation 1 (got {d})")
    if algorithm in ("rows", "taps", "pointwise") and groups != 1:
        needs.append(f"groups=1 (got {groups})")
    if algorithm == "depthwise" and (groups == 1 or w_shape[2] != 1):
        needs.append(f"one input channel per group, groups = n_C (got groups={groups} with {w_shape[2]} channels per group)")
    if algorithm == "pointwise" and tuple(w_shape[:2]) != (1, 1):
        needs.append(f"a 1x1 filter (got {w_shape[0]}x{w_shape[1]})")
    return ", ".join(needs) or None


def hand_algorithm(x_shape, w_shape, geom) -> str:
    """The hand-rolled algorithm impl="hand" uses for this layer: "rows", "taps", "depthwise", "pointwise" or "im2col".

    "rows" needs stride 1, dilation 1 and one group, and is chosen for layers of
    at most TUNED["rows_max_channels"] input channels while its banded filter
    matrix is at most TUNED["rows_max_waste"] times wider than the filter and
    holds at most TUNED["rows_max_band"] elements; "depthwise" takes
    layers with one input channel per group (groups = n_C), "pointwise" 1x1
    filters with one group, "taps" the other layers with stride 1 and one group;
    "im2col" handles everything else.
    """
    pads, s, d, groups = geom
    f_H, f_W, n_Cg, n_C_out = w_shape
    n_W_pad = padded_size(x_shape, pads)[1]
    n_W_out = n_W_pad - f_W + 1
    band = f_H * n_W_pad * n_Cg * n_W_out * n_C_out
    narrow = n_Cg <= TUNED["rows_max_channels"]
    if applicable("rows", w_shape, geom) is None and narrow and n_W_pad <= TUNED["rows_max_waste"] * f_W and band <= TUNED["rows_max_band"]:
        return "rows"
    if applicable("depthwise", w_shape, geom) is None:
        return "depthwise"
    if applicable("pointwise", w_shape, geom) is None:
        return "pointwise"
    if applicable("taps", w_shape, geom) is None:
        return "taps"
    return "im2col"


def rows_block(x_shape, w_shape, pads) -> int:
    """B, the output columns per block of the rows algorithm: f_W − 1, half of n_W', or all n_W' of them.

    Blocks of f_W − 1 above TUNED["rows_block_waste"], two halves (n_W' even) above
    TUNED["rows_halves_waste"], at any batch size.
    """
    f_W = w_shape[1]
    n_W_pad = padded_size(x_shape, pads)[1]
    full = n_W_pad - f_W + 1
    if f_W == 1:
        return full
    if n_W_pad > TUNED["rows_block_waste"] * f_W:
        return min(f_W - 1, full)
    if n_W_pad > TUNED["rows_halves_waste"] * f_W and full % 2 == 0:
        return full // 2
    return full


def taps_chunk(x_shape, w_shape, pads) -> int:
    """c, the images per chunk of the taps algorithm: the largest divisor of m whose tap products fit TUNED["taps_chunk_bytes"]."""
    m = max(int(x_shape[0]), 1)
    f_H, f_W, n_C, n_C_out = w_shape
    n_H_pad, n_W_pad = padded_size(x_shape, pads)
    per_image = 4 * n_H_pad * n_W_pad * f_H * f_W * max(n_C, n_C_out)
    fits = max(1, TUNED["taps_chunk_bytes"] // max(per_image, 1))
    return max(c for c in range(1, min(m, fits) + 1) if m % c == 0)


def plan(algorithm: str, x_shape, w_shape, geom) -> Plan:
    """The Plan (geometry and tile) of a hand-rolled `algorithm` (one of ALGORITHMS but "auto") for this layer."""
    pads, s, d, groups = geom
    block = None
    if algorithm == "rows":
        block = rows_block(x_shape, w_shape, pads)
    elif algorithm == "taps":
        block = taps_chunk(x_shape, w_shape, pads)
    return Plan(pads, s, d, groups, block)


def taps_pays(x_shape, w_shape, pads, d) -> bool:
    """Whether taps beats lax forward+backward on CPU: few taps, little padding, and not a narrow layer with as many
    filters as channels (TUNED["taps_auto_*"])."""
    f, (n_C, n_C_out) = w_shape[:2], w_shape[2:]
    n_pad = padded_size(x_shape, pads)
    n_out = out_size(n_pad, f, (1, 1), d)  # the flattened grid's positions that are real outputs
    narrow_square = n_C == n_C_out and n_C < TUNED["taps_auto_square_min_channels"]  # lax's best case on CPU
    return (
        f[0] * f[1] <= TUNED["taps_auto_max_taps"]
        and n_pad[0] * n_pad[1] <= TUNED["taps_auto_max_waste"] * n_out[0] * n_out[1]
        and not narrow_square
    )


def im2col_pays(x_shape, w_shape, geom) -> bool:
    """Whether im2col beats lax forward+backward on CPU for a strided layer: one group, no dilation, at most
    TUNED["taps_auto_max_taps"] taps (3x3), and a patch matrix of at most TUNED["im2col_auto_max_patch"] elements
    (beyond it the patches outgrow the cache)."""
    pads, s, d, groups = geom
    f_H, f_W = w_shape[:2]
    if s == (1, 1) or d != (1, 1) or groups != 1 or f_H * f_W > TUNED["taps_auto_max_taps"]:
        return False  # 5x5 and larger: slower than lax. Benchmark: docs/benchmarks.md#im2col-auto
    return patch_elements(x_shape, w_shape, pads, s, d) <= TUNED["im2col_auto_max_patch"]


def lax_grad_aborts(x_shape, w_shape, geom) -> bool:
    """Whether jaxlib 0.10.2's CPU compiler may abort the process on lax's input gradient of this geometry.

    XLA's algebraic simplifier fails a CHECK ("Window dimensions do not match RHS
    shape") for a strided, padded axis while the other axis has a single output
    position, e.g. x (1, 6, 3, 1), w (2, 2, 1, 1), stride (2, 3), padding
    ((1, 1), (0, 0)), dilation (1, 2). Subprocess probes (tests/test_conv_algorithms.py)
    aborted only when, besides, the strided axis read every padded row; this rule
    leaves that out and so also covers a few geometries that compile, which
    merely run hand-rolled.
    """
    pads, s, d, _ = geom
    n_out = out_size(padded_size(x_shape, pads), w_shape[:2], s, d)
    return any(s[a] > 1 and sum(pads[a]) > 0 and n_out[1 - a] == 1 for a in (0, 1))


def resolve_impl(impl: str, x_shape=None, w_shape=None, geom=None) -> str:
    """The implementation impl="auto" stands for: "lax" on GPU/TPU; on CPU "hand" where it is faster, else "lax".

    Read at trace time (`jax.default_backend()`). On GPU and TPU lax's
    convolution (cuDNN and friends) is fastest. On CPU, the first rule that
    applies decides:

    1. "hand" where rows (narrow layers like LeNet's), depthwise (groups = n_C)
       or pointwise (1x1 filters, one group, any stride) applies: each beats
       lax forward+backward by a wide margin. Benchmark: docs/benchmarks.md#auto-hand
    2. "hand" for geometries whose lax gradient aborts jaxlib's CPU compiler
       (`lax_grad_aborts`).
    3. With `compile.compiler_options()` (lax's convolutions on XLA's
       multi-threaded runtime) and lax's gradient on buffers
       (`compile.lax_grad_on_buffers()`, the default on CPU): "lax" for every
       other layer. Taps and im2col then no longer beat it inside a training
       step, and lax compiles faster. Benchmark: docs/benchmarks.md#lax-channels
    4. With the options but without buffers: "lax" for stride-1 layers of at
       least TUNED["lax_min_channels"] input channels per group. Strided layers
       go on to rule 5: with lax there, XLA fused the BatchNorm/residual chains
       into slow transposes before lax's weight gradient.
    5. The rest, and every layer without the options (a jaxlib that lacks the
       option, or `compiler_options(fusion_types=None)`: YNNPACK's
       convolutions): "hand" where taps pays (`taps_pays`: few taps, little
       padding, not a narrow square layer) or im2col pays (`im2col_pays`:
       strided 3x3 layers with a small patch matrix), else "lax".

    Without shapes, "auto" on CPU means "hand". experiments/bench_conv.py
    measures the layers.
    """
    if impl != "auto":
        return impl
    if jax.default_backend() != "cpu":
        return "lax"
    if geom is None:
        return "hand"
    algorithm = hand_algorithm(x_shape, w_shape, geom)
    if algorithm in ("rows", "depthwise", "pointwise"):
        return "hand"
    if lax_grad_aborts(x_shape, w_shape, geom):
        return "hand"
    if compiling.compiler_options() is not None:  # XLA's multi-threaded convolution, in jaxconv's compiled steps
        if compiling.lax_grad_on_buffers():
            return "lax"
        if geom[1] == (1, 1) and w_shape[2] >= TUNED["lax_min_channels"]:
            return "lax"
    if algorithm == "taps" and taps_pays(x_shape, w_shape, geom[0], geom[2]):
        return "hand"
    if algorithm == "im2col" and im2col_pays(x_shape, w_shape, geom):
        return "hand"
    return "lax"
