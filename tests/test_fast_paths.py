"""The fast paths equal lax and a float64 numpy reference, in value and gradient.

Covers the two hand-rolled convolution algorithms (rows: banded matrix along
the width; im2col) called directly, impl="auto" and its choice per platform,
the algorithm choice per layer, the tiled max pool (including the first-max
tie policy), and the cpu_devices helper's errors.
"""

import inspect
import os
import re
import subprocess
import sys
from types import MappingProxyType

import numpy as np
import pytest

import jax
import jax.numpy as jnp

from jaxconv import compile as compiling
from jaxconv import conv, pool
from jaxconv import reference as ref
from jaxconv.devices import compile_cache, cpu_devices, reuse_host_memory
from jaxconv.conv import Plan, conv2d, conv_geometry, rows, taps
from jaxconv.pool import max_pool

F64 = jnp.float64
TOL = dict(rtol=1e-10, atol=1e-10)  # float64 throughout: only summation order differs


def conv_reference(x, w, b, pads, s=(1, 1), d=(1, 1), groups=1):
    """Direct float64 cross-correlation (jaxconv.reference: loops over taps, independent of jaxconv's algorithms)."""
    return ref.conv2d(x, w, b, stride=s, padding=pads, dilation=d, groups=groups)


def directional_fd(f, args, index, eps=1e-6, n_probe=4, seed=0):
    """Central differences of scalar f along n_probe random directions u of args[index]: (values, directions)."""
    rng = np.random.default_rng(seed)
    values, directions = [], []
    for _ in range(n_probe):
        u = rng.standard_normal(np.shape(args[index]))
        plus, minus = list(args), list(args)
        plus[index] = args[index] + eps * u
        minus[index] = args[index] - eps * u
        values.append((f(*plus) - f(*minus)) / (2 * eps))
        directions.append(u)
    return np.array(values), directions


def _data(x_shape, w_shape, seed=0):
    k = jax.random.split(jax.random.key(seed), 3)
    x = jax.random.normal(k[0], x_shape, F64)
    w = jax.random.normal(k[1], w_shape, F64)
    b = jax.random.normal(k[2], (w_shape[3],), F64)
    return x, w, b


# (x shape, w shape, conv2d keywords): LeNet's two layers, SAME padding, asymmetric padding
# and non-square inputs, one channel, then layers only im2col handles (stride, dilation, groups).
ROWS_CASES = [
    ((2, 12, 12, 1), (5, 5, 1, 3), {}),  # conv1-like: one input channel
    ((2, 14, 14, 6), (5, 5, 6, 16), {}),  # LeNet's conv2
    ((2, 7, 9, 3), (3, 3, 3, 4), dict(padding="SAME")),
    ((1, 6, 8, 2), (2, 3, 2, 5), dict(padding=((1, 0), (2, 1)))),
]
# Layers rows does not take but taps does (stride 1, one group): wide, dilated, asymmetric padding, 1x1.
TAPS_CASES = [
    ((2, 6, 30, 3), (3, 3, 3, 4), dict(padding="SAME")),  # band 32/3 > ROWS_MAX_WASTE
    ((2, 9, 11, 2), (3, 2, 2, 3), dict(dilation=(2, 1))),
    ((1, 7, 30, 2), (2, 3, 2, 5), dict(padding=((1, 0), (2, 1)), dilation=(1, 2))),
    ((2, 5, 9, 4), (1, 1, 4, 3), {}),
]
IM2COL_ONLY = [
    ((2, 9, 9, 2), (3, 3, 2, 4), dict(stride=2, padding=1)),
    ((2, 8, 8, 4), (3, 3, 2, 6), dict(groups=2, padding="SAME")),
    ((1, 10, 10, 3), (3, 3, 1, 3), dict(groups=3, stride=(2, 1))),  # depthwise
]


def _algorithms(x_shape, w_shape, kw):
    """im2col and the algorithm impl="hand" picks for the layer, forced; taps both in one chunk and one image per chunk."""
    geom = conv_geometry(x_shape, w_shape, **kw)[:4]
    pads, s, d, groups = geom
    algos = {"im2col": lambda x, w, b: conv2d(x, w, b, impl="hand", algorithm="im2col", **kw)}
    if conv.hand_algorithm(x_shape, w_shape, geom) == "taps":
        algos["taps"] = lambda x, w, b: taps.conv(x, w, b, Plan(pads, dilation=d, block=x.shape[0]))
        algos["taps, chunks of 1"] = lambda x, w, b: taps.conv(x, w, b, Plan(pads, dilation=d, block=1))
    if conv.hand_algorithm(x_shape, w_shape, geom) == "rows":
        algos["rows"] = lambda x, w, b: rows.conv(x, w, b, Plan(pads))
    return geom, algos


# Three cases whose feature another default case covers run in the slow tier (~15 s): asymmetric
# padding (TAPS_CASES[2] has it too), dilation along H (TAPS_CASES[2] dilates W), groups (test_conv's sweep).
_SLOW = {id(ROWS_CASES[3]), id(TAPS_CASES[1]), id(IM2COL_ONLY[1])}
GRID = [pytest.param(*c, marks=pytest.mark.slow) if id(c) in _SLOW else c for c in ROWS_CASES + TAPS_CASES + IM2COL_ONLY]


@pytest.mark.parametrize("x_shape,w_shape,kw", GRID)
def test_hand_algorithms_match_numpy_and_lax(x_shape, w_shape, kw):
    geom, algos = _algorithms(x_shape, w_shape, kw)
    pads, s, d, groups = geom
    x, w, b = _data(x_shape, w_shape)
    ref = conv_reference(x, w, b, pads, s, d, groups)
    z_lax = conv2d(x, w, b, impl="lax", **kw)
    np.testing.assert_allclose(z_lax, ref, **TOL)
    # A nonlinear loss so that dZ varies per output.
    loss_lax = lambda x, w, b: jnp.sum(jnp.sin(conv2d(x, w, b, impl="lax", **kw)))
    g_lax = jax.jit(jax.grad(loss_lax, (0, 1, 2)))(x, w, b)  # compiled: one program, not one per op
    for name, fn in algos.items():
        np.testing.assert_allclose(jax.jit(fn)(x, w, b), ref, **TOL, err_msg=name)
        g = jax.jit(jax.grad(lambda x, w, b: jnp.sum(jnp.sin(fn(x, w, b))), (0, 1, 2)))(x, w, b)
        for got, want, arg in zip(g, g_lax, "xwb"):
            np.testing.assert_allclose(got, want, **TOL, err_msg=f"{name} d{arg}")


@pytest.mark.parametrize(
    "x_shape,w_shape,kw,algorithm",
    [(*ROWS_CASES[1], "rows"), (*ROWS_CASES[2], "rows"), (*TAPS_CASES[0], "taps, chunks of 1"), (*TAPS_CASES[2], "taps")],
)
def test_fast_algorithm_gradients_against_finite_differences(x_shape, w_shape, kw, algorithm):
    geom, algos = _algorithms(x_shape, w_shape, kw)
    pads, s, d, groups = geom
    x, w, b = _data(x_shape, w_shape, seed=1)
    loss = lambda x, w, b: float(np.sum(np.sin(conv_reference(x, w, b, pads, s, d, groups))))
    grads = jax.jit(jax.grad(lambda x, w, b: jnp.sum(jnp.sin(algos[algorithm](x, w, b))), (0, 1, 2)))(x, w, b)
    for index in range(3):
        numeric, directions = directional_fd(loss, (np.asarray(x), np.asarray(w), np.asarray(b)), index)
        analytic = [float(np.sum(np.asarray(grads[index]) * u)) for u in directions]
        np.testing.assert_allclose(analytic, numeric, rtol=1e-6, atol=1e-6)


# Block-banded rows: (x shape, w shape, conv2d keywords, B). B = 4 divides conv1's 28 output columns;
# B = 3 does not (the last block is zero-padded on the right); B = 1 is one column per block.
BLOCK_CASES = [
    ((2, 32, 32, 1), (5, 5, 1, 3), {}, 4),
    ((2, 14, 14, 6), (5, 5, 6, 4), {}, 3),
    ((1, 6, 8, 2), (2, 3, 2, 5), dict(padding=((1, 0), (2, 1))), 1),
    ((2, 7, 9, 3), (3, 3, 3, 4), dict(padding="SAME"), 2),
]


@pytest.mark.parametrize("x_shape,w_shape,kw,B", BLOCK_CASES)
def test_block_banded_rows_match_numpy_lax_and_finite_differences(x_shape, w_shape, kw, B):
    pads = conv_geometry(x_shape, w_shape, **kw)[0]
    x, w, b = _data(x_shape, w_shape, seed=5)
    blocked = lambda x, w, b: rows.conv(x, w, b, Plan(pads, block=B))
    np.testing.assert_allclose(jax.jit(blocked)(x, w, b), conv_reference(x, w, b, pads), **TOL)
    loss = lambda fn: (lambda x, w, b: jnp.sum(jnp.sin(fn(x, w, b))))
    g = jax.jit(jax.grad(loss(blocked), (0, 1, 2)))(x, w, b)
    g_lax = jax.jit(jax.grad(loss(lambda x, w, b: conv2d(x, w, b, impl="lax", **kw)), (0, 1, 2)))(x, w, b)
    for got, want, arg in zip(g, g_lax, "xwb"):
        np.testing.assert_allclose(got, want, **TOL, err_msg=f"B={B} d{arg}")
    loss_np = lambda x, w, b: float(np.sum(np.sin(conv_reference(x, w, b, pads))))
    for index in range(3):
        numeric, directions = directional_fd(loss_np, (np.asarray(x), np.asarray(w), np.asarray(b)), index, n_probe=2)
        analytic = [float(np.sum(np.asarray(g[index]) * u)) for u in directions]
        np.testing.assert_allclose(analytic, numeric, rtol=1e-6, atol=1e-6)


def test_rows_dx_groups():
    # LeNet conv2 (14 input columns, 10 outputs, f_W = 5): input columns 0-6 hear from outputs 0-6,
    # columns 7-13 from outputs 3-9 (b in [a - 4, a]); 98 of the 140 column pairs, so two groups.
    assert rows._dx_groups(14, 10, 5) == [(0, 7, 0, 7), (7, 14, 3, 10)]
    # conv1 in blocks of 4 (8 input columns): each half still needs all 4 outputs: one group.
    assert rows._dx_groups(8, 4, 5) == [(0, 8, 0, 4)]
    assert rows._dx_groups(1, 1, 1) == [(0, 1, 0, 1)]
    for n_in, B, f_W in [(14, 10, 5), (11, 9, 3), (12, 8, 5), (7, 3, 5), (2, 2, 1)]:
        groups = rows._dx_groups(n_in, B, f_W)
        assert [a for g in groups for a in range(g[0], g[1])] == list(range(n_in))  # every input column once
        for a0, a1, b0, b1 in groups:  # and every output whose band reaches it
            assert {b for a in range(a0, a1) for b in range(B) if 0 <= a - b < f_W} <= set(range(b0, b1))


def test_rows_block_choice():
    full = ((0, 0), (0, 0))
    # LeNet conv1: the full band is 32/5 = 6.4x the direct FLOPs -> blocks of f_W - 1 = 4 (8/5 = 1.6x)
    # at any batch size (batch 128: 3584 rows; 512: 14336, once one block).
    assert conv.rows_block((128, 32, 32, 1), (5, 5, 1, 6), full) == 4
    assert conv.rows_block((-1, 32, 32, 1), (5, 5, 1, 6), full) == 4  # shape-only init
    assert conv.rows_block((512, 32, 32, 1), (5, 5, 1, 6), full) == 4
    # conv2: 14/5 = 2.8x -> two halves of 5 columns (9/5 = 1.8x); the notes' conv2 has 13 (odd): one block
    assert conv.rows_block((128, 14, 14, 6), (5, 5, 6, 16), full) == 5
    assert conv.rows_block((128, 17, 17, 8), (5, 5, 8, 16), full) == 13
    assert conv.rows_block((128, 12, 12, 6), (5, 5, 6, 16), full) == 4  # 12/5 = 2.4x: halves of 4
    assert conv.rows_block((128, 10, 10, 6), (5, 5, 6, 16), full) == 6  # 10/5 = 2x, not above 2: one block
    assert conv.rows_block((512, 14, 14, 6), (5, 5, 6, 16), full) == 5  # 5120 rows: halves too
    # impl="hand" uses the blocked form for a conv1-like layer at batch 2, and it equals lax.
    assert conv.rows_block((2, 32, 32, 1), (5, 5, 1, 3), full) == 4
    # ... and the halves for a conv2-like layer (dX too: its column groups span the two blocks)
    assert conv.rows_block((2, 14, 14, 2), (5, 5, 2, 3), full) == 5
    for x_shape, w_shape in (((2, 32, 32, 1), (5, 5, 1, 3)), ((2, 14, 14, 2), (5, 5, 2, 3))):
        x, w, b = _data(x_shape, w_shape, seed=6)
        g = jax.grad(lambda x, w: jnp.sum(conv2d(x, w, b, impl="hand") ** 2), argnums=(0, 1))(x, w)
        g_lax = jax.grad(lambda x, w: jnp.sum(conv2d(x, w, b, impl="lax") ** 2), argnums=(0, 1))(x, w)
        for a, r in zip(g, g_lax):
            np.testing.assert_allclose(a, r, **TOL)


def test_rows_direct_forward_for_one_channel(monkeypatch):
    """With one input channel (TUNED["rows_direct_max_channels"]) rows' forward is the direct sum `rows._direct`:
    equal to numpy's float64 direct sum, with padding and in blocks, and to the banded matmul it replaces; the
    backward (the band's, unchanged) still equals lax's."""
    x, w, b = _data((2, 9, 11, 1), (3, 4, 1, 5), seed=7)
    pads = ((1, 2), (2, 1))
    want = ref.conv2d(np.asarray(x), np.asarray(w), np.asarray(b), padding=pads)
    direct = rows.conv(x, w, b, Plan(pads, (1, 1), (1, 1), 1, 3))  # blocks of 3 output columns
    np.testing.assert_allclose(direct, want, **TOL)
    monkeypatch.setattr(conv.policy, "TUNED", MappingProxyType(conv.policy.TUNED | {"rows_direct_max_channels": 0}))
    band = rows.conv(x, w, b, Plan(pads, (1, 1), (1, 1), 1, 3))
    np.testing.assert_allclose(band, want, **TOL)
    monkeypatch.undo()
    loss = lambda impl: lambda x, w, b: jnp.sum(jnp.sin(conv2d(x, w, b, padding=pads, impl=impl)))  # noqa: E731
    got = jax.grad(loss("hand"), argnums=(0, 1, 2))(x, w, b)
    for a, r in zip(got, jax.grad(loss("lax"), argnums=(0, 1, 2))(x, w, b)):
        np.testing.assert_allclose(a, r, **TOL)


def test_hand_algorithm_choice_per_layer():
    choose = lambda xs, ws, **kw: conv.hand_algorithm(xs, ws, conv_geometry(xs, ws, **kw)[:4])
    assert choose((1, 32, 32, 1), (5, 5, 1, 6)) == "rows"  # LeNet conv1: band 6.4x the filter
    assert choose((1, 14, 14, 6), (5, 5, 6, 16)) == "rows"  # LeNet conv2: 2.8x
    assert choose((1, 32, 32, 64), (3, 3, 64, 64), padding="SAME") == "taps"  # band 11x wider than the filter
    assert choose((1, 14, 14, 6), (5, 5, 6, 16), dilation=2) == "taps"
    assert choose((1, 14, 14, 6), (5, 5, 6, 16), stride=2) == "im2col"
    assert choose((1, 14, 14, 6), (5, 5, 3, 16), groups=2) == "im2col"


def test_taps_chunk_choice():
    same = ((1, 1), (1, 1))
    # 64->64 3x3 on 32x32: 34·34 pixels x 9 taps x 64 x 4 bytes = 2.66 MB per image -> 2 images in 6 MiB
    assert conv.taps_chunk((64, 32, 32, 64), (3, 3, 64, 64), same) == 2
    assert conv.taps_chunk((63, 32, 32, 64), (3, 3, 64, 64), same) == 1  # 63 = 3·3·7: the largest divisor <= 2
    assert conv.taps_chunk((6, 8, 8, 4), (3, 3, 4, 4), same) == 6  # small: the whole batch at once
    assert conv.taps_chunk((-1, 8, 8, 4), (3, 3, 4, 4), same) == 1  # shape-only init


def test_tuned_is_a_read_only_table_each_threshold_citing_its_benchmark():
    with pytest.raises(TypeError):
        conv.policy.TUNED["rows_max_channels"] = 1  # read-only: a test swaps the whole table instead
    source = inspect.getsource(conv.policy)
    for name in conv.policy.TUNED:
        assert re.search(rf'\n    # [^\n]+\. Benchmark: docs/benchmarks\.md#[a-z0-9-]+\n    "{name}": ', source), name


def test_auto_is_hand_on_cpu_and_lax_elsewhere(monkeypatch):
    assert conv.resolve_impl("auto") == ("hand" if jax.default_backend() == "cpu" else "lax")
    monkeypatch.setattr(conv.policy.jax, "default_backend", lambda: "gpu")
    assert conv.resolve_impl("auto") == "lax"
    monkeypatch.setattr(conv.policy.jax, "default_backend", lambda: "cpu")
    assert conv.resolve_impl("auto") == "hand"
    assert conv.resolve_impl("lax") == "lax"
    # Without jaxconv's compiler options (YNNPACK's convolutions: a jaxlib without the option, or
    # compiler_options(fusion_types=None)), the taps and im2col rules decide.
    monkeypatch.setattr(compiling, "compiler_options", lambda backend=None: None)
    cases = [
        ((1, 14, 14, 6), (5, 5, 6, 16), {}, "hand"),  # rows
        ((1, 32, 32, 64), (3, 3, 64, 64), {"padding": "SAME"}, "hand"),  # taps, 3x3 on 32x32
        ((1, 56, 56, 64), (1, 1, 64, 128), {}, "hand"),  # taps, 1x1
        ((1, 28, 28, 32), (5, 5, 32, 32), {"padding": "SAME"}, "lax"),  # taps would do 25 tap products per output
        ((1, 8, 8, 128), (3, 3, 128, 128), {"padding": "SAME"}, "lax"),  # 10·10 padded pixels for 8·8 outputs
        ((1, 20, 20, 16), (3, 3, 16, 16), {"padding": "SAME", "dilation": 4}, "lax"),  # 28·28 padded for 20·20 outputs
        ((1, 32, 32, 64), (3, 3, 64, 64), {"padding": "SAME", "stride": 2}, "hand"),  # im2col, 147K patch elements
        ((64, 32, 32, 64), (3, 3, 64, 64), {"padding": "SAME", "stride": 2}, "lax"),  # 9.4M: patches outgrow the cache
        ((128, 32, 32, 16), (3, 3, 16, 32), {"padding": 1, "stride": 2}, "hand"),  # ResNet-20's first strided layer, 4.7M
        ((2, 28, 28, 32), (5, 5, 32, 32), {"padding": 2, "stride": 2}, "lax"),  # 5x5: lax whatever the size
        ((8, 16, 16, 8), (3, 3, 4, 8), {"padding": 1, "stride": 2, "groups": 2}, "lax"),  # groups: lax
        ((1, 32, 32, 16), (3, 3, 16, 16), {"padding": 1}, "lax"),  # ResNet-20's 16@32: as many filters as channels, < 64
        ((1, 16, 16, 32), (3, 3, 32, 32), {"padding": 1}, "lax"),  # ... and 32@16
        ((1, 32, 32, 16), (3, 3, 16, 32), {"padding": 1}, "hand"),  # 16 -> 32 channels: taps
        ((1, 32, 32, 3), (3, 3, 3, 16), {"padding": 1}, "hand"),  # ResNet-20's first layer: taps
    ]
    for xs, ws, kw, want in cases:
        assert conv.resolve_impl("auto", xs, ws, conv_geometry(xs, ws, **kw)[:4]) == want, (xs, ws, kw)
    # With them (lax's convolutions on XLA's multi-threaded runtime) but lax's gradient not on buffers, lax takes
    # every stride-1 layer of at least TUNED["lax_min_channels"] = 8 channels that rows, depthwise and pointwise
    # leave; strided layers as before.
    monkeypatch.setattr(compiling, "compiler_options", lambda backend=None: {"option": "value"})
    monkeypatch.setattr(compiling, "LAX_GRAD_ON_BUFFERS_BACKENDS", ())
    cases = [
        ((1, 14, 14, 6), (5, 5, 6, 16), {}, "hand"),  # rows
        ((1, 32, 32, 64), (3, 3, 64, 64), {"padding": "SAME"}, "lax"),  # was taps
        ((1, 32, 32, 16), (3, 3, 16, 32), {"padding": 1}, "lax"),  # was taps
        ((1, 32, 32, 8), (3, 3, 8, 16), {"padding": 1}, "lax"),  # 8 channels: the threshold
        ((1, 32, 32, 7), (3, 3, 7, 16), {"padding": 1}, "hand"),  # 7: taps still
        ((1, 32, 32, 3), (3, 3, 3, 16), {"padding": 1}, "hand"),  # ResNet-20's first layer: taps
        ((1, 56, 56, 64), (1, 1, 64, 128), {}, "hand"),  # pointwise
        ((4, 16, 16, 32), (3, 3, 1, 32), {"padding": 1, "groups": 32}, "hand"),  # depthwise
        ((128, 32, 32, 16), (3, 3, 16, 32), {"padding": 1, "stride": 2}, "hand"),  # strided: im2col_pays as before
        ((64, 32, 32, 64), (3, 3, 64, 64), {"padding": "SAME", "stride": 2}, "lax"),
    ]
    for xs, ws, kw, want in cases:
        assert conv.resolve_impl("auto", xs, ws, conv_geometry(xs, ws, **kw)[:4]) == want, (xs, ws, kw)
    monkeypatch.setattr(conv.policy, "TUNED", MappingProxyType(conv.policy.TUNED | {"lax_min_channels": 10**9}))  # the threshold is the one knob
    xs, ws = (1, 32, 32, 64), (3, 3, 64, 64)
    assert conv.resolve_impl("auto", xs, ws, conv_geometry(xs, ws, padding="SAME")[:4]) == "hand"
    # With the gradient on buffers as well (the default on CPU), lax takes every layer rows, depthwise and pointwise
    # leave, strided and narrow ones included; the geometries whose lax gradient aborts XLA stay hand-rolled.
    monkeypatch.setattr(compiling, "LAX_GRAD_ON_BUFFERS_BACKENDS", ("cpu",))
    cases = [
        ((1, 14, 14, 6), (5, 5, 6, 16), {}, "hand"),  # rows
        ((1, 56, 56, 64), (1, 1, 64, 128), {}, "hand"),  # pointwise
        ((4, 16, 16, 32), (3, 3, 1, 32), {"padding": 1, "groups": 32}, "hand"),  # depthwise
        ((1, 6, 3, 1), (2, 2, 1, 1), {"padding": ((1, 1), (0, 0)), "stride": (2, 3), "dilation": (1, 2)}, "hand"),  # aborts
        ((1, 32, 32, 3), (3, 3, 3, 16), {"padding": 1}, "lax"),  # ResNet-20's first layer: was taps
        ((1, 32, 32, 7), (3, 3, 7, 16), {"padding": 1}, "lax"),  # below lax_min_channels: was taps
        ((128, 32, 32, 16), (3, 3, 16, 32), {"padding": 1, "stride": 2}, "lax"),  # strided: was im2col
    ]
    for xs, ws, kw, want in cases:
        assert conv.resolve_impl("auto", xs, ws, conv_geometry(xs, ws, **kw)[:4]) == want, (xs, ws, kw)


def test_compiler_options_are_cpu_only_and_known_to_this_jaxlib(monkeypatch):
    """compile.compiler_options: a dict XLA:CPU accepts, on CPU only; None when turned off or not understood."""
    options = compiling.compiler_options("cpu")
    if options is not None:  # this jaxlib knows the option: the compiled step must accept it
        f = jax.jit(lambda x: conv2d(x, jnp.ones((3, 3, 8, 8)), padding=1), compiler_options=options)
        np.testing.assert_allclose(f(jnp.ones((1, 4, 4, 8))), conv2d(jnp.ones((1, 4, 4, 8)), jnp.ones((3, 3, 8, 8)), padding=1, impl="lax"), rtol=1e-5)
    assert compiling.compiler_options("gpu") is None and compiling.compiler_options("tpu") is None
    assert compiling.compiler_options("cpu", fusion_types=None) is None
    assert compiling.compiler_options("cpu", fusion_types="NOT_A_FUSION_TYPE") is None  # refused by XLA: jaxconv compiles with XLA's defaults


@pytest.mark.parametrize("x_shape,w_shape,kw", [ROWS_CASES[1], TAPS_CASES[0], IM2COL_ONLY[1]])
def test_auto_matches_numpy_in_value_and_gradient(x_shape, w_shape, kw):
    x, w, b = _data(x_shape, w_shape, seed=2)
    pads, s, d, groups = conv_geometry(x_shape, w_shape, **kw)[:4]
    np.testing.assert_allclose(conv2d(x, w, b, **kw), conv_reference(x, w, b, pads, s, d, groups), **TOL)
    g_auto = jax.grad(lambda w: jnp.sum(conv2d(x, w, b, **kw) ** 2))(w)
    g_lax = jax.grad(lambda w: jnp.sum(conv2d(x, w, b, impl="lax", **kw) ** 2))(w)
    np.testing.assert_allclose(g_auto, g_lax, **TOL)


def test_float32_fast_paths_stay_float32():
    x, w, b = (a.astype(jnp.float32) for a in _data((2, 14, 14, 6), (5, 5, 6, 16)))
    z = conv2d(x, w, b, impl="hand")
    g = jax.grad(lambda w: conv2d(x, w, b, impl="hand").sum())(w)
    y = max_pool(z)
    assert z.dtype == g.dtype == y.dtype == jnp.float32
    np.testing.assert_allclose(z, conv2d(x, w, b, impl="lax"), rtol=1e-4, atol=1e-4)


# ---------------------------------------------------------------------------
# Tiled max pool.
# ---------------------------------------------------------------------------


def max_pool_reference(x, f):
    """float64 max pool (stride = window) and the mask of each window's first maximum (jaxconv.reference)."""
    y, idx = ref.max_pool(x, window=f, return_indices=True)
    first = ref.max_unpool(np.ones(y.shape), idx, np.shape(x)).astype(bool)
    return y, first


@pytest.mark.parametrize("x_shape,f", [((2, 6, 8, 3), (2, 2)), ((1, 6, 6, 2), (3, 3)), ((2, 4, 6, 1), (2, 3))])
def test_tiled_max_pool_matches_numpy_and_reduce_window(x_shape, f):
    # Few distinct values, so most windows have ties.
    x = jax.random.randint(jax.random.key(3), x_shape, 0, 3).astype(F64)
    dy = jax.random.normal(jax.random.key(4), (x_shape[0], x_shape[1] // f[0], x_shape[2] // f[1], x_shape[3]), F64)
    assert pool.tiles(f, f, ((0, 0), (0, 0)), (1, 1)) and x_shape[1] % f[0] == 0 and x_shape[2] % f[1] == 0
    y_ref, first = max_pool_reference(x, f)
    y, vjp = jax.vjp(lambda x: max_pool(x, f), x)
    np.testing.assert_array_equal(y, y_ref)
    np.testing.assert_array_equal(max_pool(x, f), y_ref)  # without a gradient: the strided slices' max
    np.testing.assert_array_equal(jax.jit(lambda x: max_pool(x, f))(x), y_ref)
    dx = vjp(dy)[0]
    dy_up = np.repeat(np.repeat(np.asarray(dy), f[0], 1), f[1], 2)
    np.testing.assert_array_equal(dx, np.where(first, dy_up, 0.0))
    # reduce_window (the general path) gives the same gradient.
    y_rw, vjp_rw = jax.vjp(lambda x: pool._reduce(x, -jnp.inf, jax.lax.max, f, f, ((0, 0), (0, 0))), x)
    np.testing.assert_array_equal(y_rw, y)
    np.testing.assert_array_equal(vjp_rw(dy)[0], dx)


@pytest.mark.parametrize("x_shape,f", [((2, 7, 5, 3), (2, 2)), ((1, 8, 7, 2), (3, 2))])
def test_tiled_max_pool_of_a_cropped_input(x_shape, f):
    """Sizes the window does not divide (floor mode): the rows/columns no window reads are dropped and the tiled
    path runs on the rest. Values and the first-maximum gradient equal numpy's float64 reference, the dropped
    pixels get zero gradient, and jaxpr shows no reduce_window."""
    x = jax.random.randint(jax.random.key(5), x_shape, 0, 3).astype(F64)  # ties in most windows
    n_out = (x_shape[1] // f[0], x_shape[2] // f[1])
    dy = jax.random.normal(jax.random.key(6), (x_shape[0], *n_out, x_shape[3]), F64)
    y_ref, first = max_pool_reference(x, f)
    y, vjp = jax.vjp(lambda x: max_pool(x, f), x)
    np.testing.assert_array_equal(y, y_ref)
    dy_up = np.zeros(x_shape)
    dy_up[:, : n_out[0] * f[0], : n_out[1] * f[1]] = np.repeat(np.repeat(np.asarray(dy), f[0], 1), f[1], 2)
    np.testing.assert_array_equal(vjp(dy)[0], np.where(first, dy_up, 0.0))
    assert "reduce_window" not in str(jax.make_jaxpr(jax.grad(lambda x: max_pool(x, f).sum()))(x))


def test_tiled_max_pool_hand_computed_ties():
    x = jnp.array([[1.0, 3, 3, 1], [2, 3, 1, 1], [1, 3, 2, 3], [5, 6, 1, 2]], F64)[None, :, :, None]
    dx = jax.grad(lambda x: jnp.sum(max_pool(x) * jnp.array([[1.0, 2], [3, 4]])[None, :, :, None]))(x)
    # window (0,0): 3 at (0,1) and (1,1) -> first is (0,1); window (0,1): 3 at (0,2) only;
    # window (1,0): 6 at (3,1); window (1,1): 3 at (2,3).
    want = [[0, 1, 2, 0], [0, 0, 0, 0], [0, 0, 0, 4], [0, 3, 0, 0]]
    np.testing.assert_array_equal(dx[0, ..., 0], np.array(want, np.float64))


def test_pool_uses_the_tiled_path_only_when_windows_tile():
    zero = ((0, 0), (0, 0))
    assert pool.tiles((2, 2), (2, 2), zero, (1, 1))
    assert not pool.tiles((2, 2), (1, 1), zero, (1, 1))  # overlapping
    assert not pool.tiles((2, 2), (2, 2), ((1, 1), (0, 0)), (1, 1))  # padded (or ceil mode's overhang)
    assert not pool.tiles((2, 2), (2, 2), zero, (2, 2))  # dilated
    # What max_pool runs: the tiled path's backward (reduce_min) or XLA's reduce_window.
    tiled = lambda shape, **kw: "reduce_window" not in str(  # noqa: E731
        jax.make_jaxpr(jax.grad(lambda x: max_pool(x, 2, **kw).sum()))(jnp.zeros(shape)))
    assert tiled((1, 28, 28, 6))
    assert tiled((1, 27, 28, 6))  # not divisible: the row no window reads is sliced off
    assert not tiled((1, 27, 28, 6), ceil_mode=True)  # ... unless ceil mode makes a window overhang it
    assert not tiled((1, 28, 28, 6), stride=1) and not tiled((1, 28, 28, 6), padding=1)


def test_cpu_devices_errors():
    with pytest.raises(ValueError, match=r"cpu_devices: `n` must be an int >= 1 \(CPU devices to create\), got 0"):
        cpu_devices(0)
    jax.devices()  # make sure the backend has started
    have = len(jax.devices("cpu"))
    assert cpu_devices(have) == have  # the count JAX already has: a no-op
    with pytest.raises(RuntimeError, match=rf"JAX has already started with {have} CPU device\(s\), so it cannot switch to n={have + 1}"):
        cpu_devices(have + 1)


_REUSE_SCRIPT = """
import ctypes, os, resource, sys
from jaxconv.devices import reuse_host_memory
libc = ctypes.CDLL("libc.so.6")
libc.malloc.restype, libc.malloc.argtypes = ctypes.c_void_p, [ctypes.c_size_t]
libc.free.argtypes = [ctypes.c_void_p]
applied = reuse_host_memory() if sys.argv[1] == "reuse" else False
size = 48 << 20  # a step's temporary buffer: above glibc's largest default mmap threshold (32 MiB)
faults = []
for _ in range(3):
    p = libc.malloc(size)
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    ctypes.memset(p, 1, size)
    faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
    libc.free(p)
print(applied, faults[-1])
"""


@pytest.mark.skipif(not (hasattr(os, "confstr") and "glibc" in (os.confstr("CS_GNU_LIBC_VERSION") or "")), reason="glibc's mallopt")
def test_reuse_host_memory_stops_the_page_faults_of_a_reallocated_block():
    """Independent observable: the kernel's minor-fault count while a 48 MiB block, freed and allocated again, is written."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MALLOC_", "GLIBC_TUNABLES"))}
    got = {}
    for mode in ("system", "reuse"):
        out = subprocess.run([sys.executable, "-c", _REUSE_SCRIPT, mode], capture_output=True, text=True, env=env, check=True)
        applied, faults = out.stdout.split()
        got[mode] = (applied, int(faults))
    pages = (48 << 20) // os.sysconf("SC_PAGE_SIZE")
    assert got["system"] == ("False", got["system"][1]) and got["system"][1] > pages // 2  # mapped afresh each time
    assert got["reuse"][0] == "True" and got["reuse"][1] < pages // 20  # the same heap block, already faulted in
    with pytest.raises(ValueError, match=r"reuse_host_memory: `limit` must be an int in \[1, 2\*\*31 - 1\] bytes .*got 0"):
        reuse_host_memory(0)
    try:
        os.environ["MALLOC_TRIM_THRESHOLD_"] = "131072"
        assert reuse_host_memory() is False  # the environment tunes malloc already: left alone
    finally:
        del os.environ["MALLOC_TRIM_THRESHOLD_"]


def test_compile_cache_defaults_to_the_user_cache_and_keeps_a_configured_one(tmp_path, monkeypatch):
    configured, min_s = jax.config.jax_compilation_cache_dir, jax.config.jax_persistent_cache_min_compile_time_secs
    monkeypatch.setenv("JAX_COMPILATION_CACHE_DIR", "/somewhere/else")
    assert compile_cache() == "/somewhere/else"  # the user's choice is kept
    monkeypatch.delenv("JAX_COMPILATION_CACHE_DIR")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    try:
        jax.config.update("jax_compilation_cache_dir", None)
        assert compile_cache() == str(tmp_path / "jaxconv" / "xla") == jax.config.jax_compilation_cache_dir
        assert os.path.isdir(tmp_path / "jaxconv" / "xla")
        jax.config.update("jax_compilation_cache_dir", None)
        (tmp_path / "file").write_text("")
        assert compile_cache(str(tmp_path / "file" / "xla")) is None and jax.config.jax_compilation_cache_dir is None  # cannot create it
    finally:
        jax.config.update("jax_compilation_cache_dir", configured)
        jax.config.update("jax_persistent_cache_min_compile_time_secs", min_s)


def test_taps_under_vmap_matches_lax():
    """Ensembles vmap the step over stacked filters, per-example gradients vmap over single images:
    the chunked taps path (lax.map / lax.scan inside a custom_vjp) must batch like lax does."""
    x_shape, w_shape, kw = TAPS_CASES[0]
    pads = conv_geometry(x_shape, w_shape, **kw)[0]
    x, _, b = _data(x_shape, w_shape, seed=7)
    ws = jax.random.normal(jax.random.key(8), (3, *w_shape), F64)  # an ensemble of three filters
    taps = lambda w, x: conv.taps.conv(x, w, b, Plan(pads, block=1))  # one image per chunk: the scan path
    lax_conv = lambda w, x: conv2d(x, w, b, impl="lax", **kw)
    loss = lambda fn: (lambda w, x: jnp.sum(jnp.sin(fn(w, x))))
    ensemble = lambda fn: jax.jit(jax.vmap(jax.grad(loss(fn)), in_axes=(0, None)))(ws, x)
    np.testing.assert_allclose(ensemble(taps), ensemble(lax_conv), **TOL)
    per_example = lambda fn: jax.vmap(jax.grad(loss(fn)), in_axes=(None, 0))(ws[0], x[:, None])
    np.testing.assert_allclose(per_example(taps), per_example(lax_conv), **TOL)
