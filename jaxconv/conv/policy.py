"""Which implementation and algorithm a convolution gets, and its tile size.

Every tuned threshold lives in `TUNED`, each with the benchmark row behind it
(2-core EPYC; the measurements themselves are in the README's convolution
tables). `resolve_impl` decides impl="auto"; `hand_algorithm` the algorithm of
impl="hand"; `rows_block` and `taps_chunk` the fast algorithms' tiles;
`compiler_options` which XLA:CPU library runs lax's convolutions inside
jaxconv's compiled steps, `lax_grad_on_buffers` whether their gradient reads
buffers (`buffers.lax_conv`), and `jit` compiles with them (use it, or pass
`compiler_options=policy.compiler_options()` to your own `jax.jit`, to get the
programs `auto` is tuned for).
"""

from __future__ import annotations

import jax

from jaxconv import compile as compiling
from jaxconv.conv.geometry import Plan, out_size, padded_size, patch_elements

ALGORITHMS = ("auto", "im2col", "rows", "taps", "depthwise", "pointwise")

TUNED = {
    # taps: bytes of one chunk's K-fold tap products. Row: bench_conv.py 64->64 3x3 SAME, m=64, chunk sweep.
    "taps_chunk_bytes": 6 << 20,
    # rows: widest banded matrix, as n_W_pad / f_W. Row: bench_conv.py LeNet conv1/conv2 (6.4x, 2.8x) vs im2col.
    "rows_max_waste": 8,
    # rows: most elements of the banded matrix (4 MiB in float32). Row: bench_conv.py LeNet conv2 band.
    "rows_max_band": 1 << 20,
    # rows: most input channels per group; wider layers take taps. Rows: bench_conv.py --resnet 32@16 (rows 2.77x lax,
    # taps 1.45x) and 64@8 (rows 1.83x, taps 1.01x); LeNet conv1/conv2 (1 and 6 channels) keep rows.
    "rows_max_channels": 8,
    # rows' forward as the direct sum (f_H·f_W·n_C shifted multiply-adds) for at most this many input channels.
    # Rows: same-process step A/Bs, LeNet-5 (conv1, one channel): 0.93-0.96x the step's time at batch 128,
    # 0.935-0.947x at 512, 0.985x at 32; conv1's forward alone at batch 256 0.64 ms against 1.50.
    "rows_direct_max_channels": 1,
    # rows in blocks of f_W - 1 above this band waste. Row: benchmark.py LeNet-5 step, conv1 blocked vs not. At any
    # batch: the blocks were kept to matmuls of <= 4096 rows m·n_H' until session 8's same-process A/Bs had them
    # faster at every size: LeNet-5's eval step at batch 256 0.84-0.86x, 1024 0.92x; its unchunked training step at
    # 256 0.85x, 512 0.96x, 1024 0.94x; the notes' network's step at batch 256 0.89x.
    "rows_block_waste": 4,
    # rows in two halves of n_W'/2 columns (n_W' even) above this band waste. Rows: LeNet-5 step A/Bs, conv2
    # (14 padded columns, 5x5: waste 2.8) in halves 0.91x the unblocked step's time at batch 512 (blocks of 4: 0.92x,
    # of 2: 0.96x, of 3 with padding: 1.01x); the notes' network's conv2 (13 columns, odd) in blocks of 4: 1.17x, of 7: 1.02x.
    "rows_halves_waste": 2,
    # rows dX in two column groups when they skip >= 1/4 of the band. Row: benchmark.py LeNet-5 A/B, conv2.
    "rows_dx_max_fraction": 0.75,
    # auto uses taps only for at most this many taps f_H·f_W. Row: bench_conv.py --more, 5x5 wide layers.
    "taps_auto_max_taps": 9,
    # ... and at most this many padded pixels per output pixel. Row: bench_conv.py --more, 128->128 on 8x8.
    "taps_auto_max_waste": 1.3,
    # ... and, for layers with as many filters as channels, at least this many channels. Rows: bench_conv.py
    # --resnet 16@32 (taps 1.38-1.44x lax) and 32@16 (1.01-1.02x; lax also compiles faster), --more wide3x3
    # 64@32 (0.66-0.77x).
    "taps_auto_square_min_channels": 64,
    # im2col for a strided layer (one group, no dilation) only while its patch matrix m·n_H'·n_W'·f_H·f_W·n_C has at
    # most this many elements. Rows: bench_conv.py --resnet strided 3x3 (4.7M and 2.4M: 0.56-0.81x lax), an A/B of
    # (128,16,16,64)->128 s2 (4.7M: 0.81x), (64,32,32,64)->64 s2 (9.4M: 1.53x), 5x5 (64,28,28,32) s2 (10M: 2.9x);
    # a second A/B: 2.4M 0.92x, 4.7M 0.66x and 0.77x, 9.4M 1.34x and 1.12x, and one miss, (16,64,64,32)->64 s2
    # (4.7M: 1.07x).
    "im2col_auto_max_patch": 5 << 20,
    # With `compiler_options` in effect, auto takes lax for stride-1 layers of at least this many input channels per
    # group that rows, depthwise and pointwise do not take: XLA's multi-threaded convolution beat taps on every such
    # layer measured. Rows: bench_conv.py --resnet and --more with the options (taps / lax, fwd+bwd: 16@32 1.39x,
    # 32@16 1.65x, 64@8 1.96x, 64@32 1.48x, 16->32 1.54x, 32->64@16 1.93x), an A/B of 8->16 and 8->8 @32 (1.69x,
    # 1.82x) and 12->24 (1.56x); but 3->16 @32 taps 0.90x and 3->32 @32 im2col 0.68x (kept). The inception step
    # (batch 64): 780 ms against 819 with taps. Strided layers keep `im2col_pays`: alone, lax beat im2col on them
    # with the options (1.01-2.04x, six layers), but the ResNet-20 step with lax there ran 803 ms against 639 ms
    # (9-round A/B): XLA then fused the BatchNorm/residual chains into slow transposes for lax's weight gradient.
    # With the gradient on buffers (`compile.lax_grad_on_buffers`) that no longer happens, and `resolve_impl` gives lax
    # every layer rows, depthwise and pointwise leave (this threshold then goes unused). Rows: step A/Bs of lax on the
    # strided layers and the 3-channel stems against im2col and taps there: ResNet-20 (batch 128) 0.976x and 0.984x,
    # Inception (64) 1.030x and 0.955x, MobileNet (64) 1.001x and 0.990x, the notes' network (128) 0.941x: ties in
    # the noise, but the first step compiles faster (ResNet-20 3.70 -> 2.83 s, Inception 6.45 -> 5.67, MobileNet
    # 4.96 -> 4.36, the notes' network 1.85 -> 1.68).
    "lax_min_channels": 8,
    # The NaN guard's im2col branch (never run on finite data) over the whole batch while its patches take at most
    # this many bytes, else in chunks of 16 examples. Rows: LeNet-5's step compiles in 1.18 s at batch 32 (patches
    # 2.5 MB) against 1.42-1.55 s in chunks; first step at batch 128 (conv1's patches 10 MB) 1.65 -> 1.27 s and at 512
    # (chunks of 128) 2.17 -> 1.78 s, step time 0.98x, with or without `reuse_host_memory` (minor faults per step
    # 26-73, not the 4,454 of the whole-batch branch at batch 512, 40 MB, which made the step 1.28x slower). The
    # step's temporary buffer: 21 MB at batch 128 (10 MB chunked), 29 MB at 512 (18): under glibc's 32 MiB mmap ceiling.
    "guard_whole_batch_bytes": 24 << 20,
}


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
        return False  # 5x5 and larger: 2.9x lax's time on the one strided 5x5 layer measured
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
    convolution (cuDNN and friends) is fastest. On CPU, in this order:
    "hand" where its rows algorithm applies (narrow layers like LeNet's: 2-6x
    faster than lax forward+backward), for depthwise layers (groups = n_C: 4-9x,
    bench_conv.py --resnet dw rows) and 1x1 layers with one group (pointwise, any
    stride: 2x on ResNet-20's stride-2 projections); "hand" for geometries whose
    lax gradient aborts jaxlib's CPU compiler (`lax_grad_aborts`); "lax" for
    every other layer while `compiler_options()` gives lax's convolutions XLA's
    multi-threaded runtime (in jaxconv's compiled steps: 1.4-2x faster than taps
    on stride-1 layers of 8 or more channels) and their gradient reads buffers
    (`lax_grad_on_buffers`: then taps on ResNet's 3-channel stem and im2col on its
    strided layers no longer beat lax in a step, and lax compiles faster). With
    the options but without buffers, "lax" for stride-1 layers of at least
    TUNED["lax_min_channels"] input channels per group. The rest, and every layer
    without the options (a jaxlib that lacks the option, or
    `compiler_options(fusion_types=None)`: YNNPACK's convolutions), take "hand"
    where taps pays (`taps_pays`: 3x3 and 1x1 filters
    on images larger than about 16x16, not square layers of fewer than 64
    channels) or im2col pays (`im2col_pays`: strided 3x3 layers with a small
    patch matrix), else "lax". experiments/bench_conv.py measures them.
    Without shapes, "auto" on CPU means "hand".
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
