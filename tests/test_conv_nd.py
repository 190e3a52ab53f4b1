"""conv1d, conv3d and their transposes: shapes; values and gradients of every impl against the float64
reference; finite differences (gradcheck); PyTorch; and every error message.

Every distinct shape compiles, so the grids are short lists of hand-picked geometries that
between them cover each padding form, stride, dilation, groups, bias and dtype, and each case
compiles all impls (forward and VJP) in ONE jitted function.
"""

from functools import partial

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import reference as ref
from jaxconv import (
    LAYOUT,
    LAYOUT_1D,
    LAYOUT_3D,
    LAYOUTS,
    conv1d,
    conv2d,
    conv3d,
    conv_nd,
    conv_transpose1d,
    conv_transpose2d,
    conv_transpose3d,
    conv_transpose_nd,
    gradcheck,
)
from jaxconv.conv import nd, transpose_nd

CONV = {1: conv1d, 3: conv3d}
TRANSPOSE = {1: conv_transpose1d, 3: conv_transpose3d}
# bfloat16/float16 sum in float32 and round once: the result is within a few of their ulps of the float64 value.
HALF_TOL = {jnp.bfloat16: dict(rtol=3e-2, atol=3e-2), jnp.float16: dict(rtol=5e-3, atol=5e-3)}


def _data(x_shape, w_shape, dtype, bias, seed=0):
    """x, w and (when `bias`) b of w's last-axis size, seeded standard normals in `dtype`."""
    rng = np.random.default_rng(seed)
    x, w, b = (rng.standard_normal(s).astype(dtype) for s in (x_shape, w_shape, (w_shape[-1],)))
    return x, w, b if bias else None


# ---------------------------------------------------------------------------
# Shapes, layouts, dispatch.
# ---------------------------------------------------------------------------


def test_layouts():
    assert LAYOUTS == {1: LAYOUT_1D, 2: LAYOUT, 3: LAYOUT_3D}
    assert LAYOUT_1D == ("NWC", "WIO", "NWC") and LAYOUT_3D == ("NDHWC", "DHWIO", "NDHWC")


@pytest.mark.parametrize(
    "op, x_shape, w_shape, kw, out",
    [
        (conv1d, (2, 10, 3), (3, 3, 4), dict(stride=2, padding=1), (2, 5, 4)),
        (conv1d, (10, 3), (3, 3, 4), dict(padding="SAME"), (10, 4)),  # one example, no batch axis
        (conv1d, (1, 11, 4), (2, 2, 6), dict(stride=3, padding=((2, 0),), dilation=2, groups=2), (1, 4, 6)),
        (conv3d, (1, 4, 6, 6, 2), (3, 3, 3, 2, 8), dict(padding="SAME"), (1, 4, 6, 6, 8)),
        (conv3d, (4, 6, 6, 2), (3, 3, 3, 2, 8), dict(stride=(1, 2, 3), padding="VALID"), (2, 2, 2, 8)),
        (conv3d, (2, 5, 6, 7, 4), (2, 3, 2, 2, 6), dict(padding=(1, 0, 2), groups=2), (2, 6, 4, 10, 6)),
        (conv_transpose1d, (1, 5, 2), (3, 4, 2), dict(stride=2, padding=1, output_padding=1), (1, 10, 4)),
        (conv_transpose3d, (2, 3, 3, 2), (2, 2, 2, 4, 2), dict(stride=2), (4, 6, 6, 4)),
    ],
)
def test_output_shapes(op, x_shape, w_shape, kw, out):
    assert op(jnp.ones(x_shape), jnp.ones(w_shape), **kw).shape == out


def test_conv_nd_picks_the_op_by_the_filter_rank():
    rng = np.random.default_rng(0)
    both = jax.jit(lambda x, w, nd_op, op, **kw: (nd_op(x, w, **kw), op(x, w, **kw)), static_argnums=(2, 3), static_argnames=("stride", "padding"))
    for x_shape, w_shape, op in [((2, 8, 3), (3, 3, 5), conv1d), ((2, 6, 6, 3), (3, 3, 3, 5), conv2d), ((1, 4, 5, 6, 3), (2, 2, 2, 3, 5), conv3d)]:
        np.testing.assert_array_equal(*both(rng.standard_normal(x_shape), rng.standard_normal(w_shape), conv_nd, op, stride=2, padding=1))
    for x_shape, w_shape, op in [((2, 4, 3), (3, 5, 3), conv_transpose1d), ((2, 3, 3, 3), (3, 3, 5, 3), conv_transpose2d), ((1, 2, 3, 2, 3), (2, 2, 2, 5, 3), conv_transpose3d)]:
        np.testing.assert_array_equal(*both(rng.standard_normal(x_shape), rng.standard_normal(w_shape), conv_transpose_nd, op, stride=2))


def test_empty_batch_and_zero_filters_give_lax_empty_result():
    assert conv1d(jnp.zeros((0, 8, 3)), jnp.ones((3, 3, 4)), impl="hand").shape == (0, 6, 4)
    assert conv3d(jnp.zeros((0, 3, 4, 5, 2)), jnp.ones((2, 2, 2, 2, 4))).shape == (0, 2, 3, 4, 4)
    z = conv1d(jnp.ones((2, 8, 3)), jnp.ones((3, 3, 0)), impl="hand")
    assert z.shape == (2, 6, 0)
    assert conv_transpose1d(jnp.zeros((0, 4, 3)), jnp.ones((3, 5, 3))).shape == (0, 6, 5)


# ---------------------------------------------------------------------------
# Values and gradients: lax vs hand vs hand_autodiff vs the float64 reference.
# ---------------------------------------------------------------------------

# (x shape, w shape, kwargs, bias, dtype): every padding form, stride, dilation and groups in 1-D and 3-D.
CONV_CASES = [
    ((2, 9, 4), (3, 2, 6), dict(stride=2, padding=1, groups=2), True, np.float64),
    ((1, 11, 3), (2, 3, 4), dict(stride=3, padding=((2, 0),), dilation=2), False, np.float32),
    ((3, 7, 2), (3, 2, 3), dict(stride=2, padding="SAME"), True, np.float64),
    ((2, 8, 6), (4, 2, 3), dict(padding="VALID", groups=3), False, np.float32),
    ((2, 5, 6, 4, 2), (2, 3, 2, 2, 4), dict(stride=(1, 2, 1), padding=((1, 0), (2, 1), (0, 0)), dilation=(2, 1, 1)), True, np.float64),
    ((1, 4, 5, 6, 4), (3, 2, 2, 2, 4), dict(stride=2, padding=(1, 0, 1), groups=2), False, np.float32),
    ((2, 4, 4, 5, 3), (3, 3, 3, 3, 2), dict(padding="SAME", dilation=(1, 1, 2)), False, np.float64),
    ((1, 6, 4, 4, 2), (1, 1, 1, 2, 3), dict(stride=(3, 1, 2), padding="VALID"), True, np.float32),
]


@partial(jax.jit, static_argnums=(0, 1, 6))
def _all_impls(N, has_bias, x, w, b, dz, kw_items):
    """For each impl: Z and the VJP of dZ with respect to (x, w, b)."""
    out = {}
    for impl in nd.IMPLS:
        fn = lambda x, w, b, impl=impl: CONV[N](x, w, b if has_bias else None, impl=impl, **dict(kw_items))  # noqa: E731
        z, vjp = jax.vjp(fn, x, w, b)
        out[impl] = (z, *vjp(dz))
    return out


@pytest.mark.parametrize("case", CONV_CASES, ids=lambda c: f"{len(c[0]) - 2}d-{c[2]}-{np.dtype(c[4]).name}")
def test_impls_match_reference(case):
    x_shape, w_shape, kw, bias, dt = case
    x, w, b = _data(x_shape, w_shape, dt, bias)
    z_ref = ref.conv_nd(x, w, b, **kw)
    dz = np.random.default_rng(1).standard_normal(z_ref.shape).astype(dt)
    dx_ref, dw_ref, db_ref = ref.conv_nd_vjp(x, w, dz, **kw)
    b_in = b if bias else np.zeros(w_shape[-1], dt)
    out = _all_impls(len(x_shape) - 2, bias, x, w, b_in, dz, tuple(sorted(kw.items())))
    for impl, (z, dx, dw, db) in out.items():
        assert z.dtype == dt and dx.dtype == dt and dw.dtype == dt, impl
        np.testing.assert_allclose(z, z_ref, **ref.tol(dt), err_msg=impl)
        np.testing.assert_allclose(dx, dx_ref, **ref.tol(dt, grad=True), err_msg=impl)
        np.testing.assert_allclose(dw, dw_ref, **ref.tol(dt, grad=True), err_msg=impl)
        np.testing.assert_allclose(db, db_ref if bias else 0.0, **ref.tol(dt, grad=True), err_msg=impl)


@pytest.mark.parametrize("N", [1, 3])
def test_one_example_equals_batch_of_one(N):
    x_shape, w_shape, kw, _, _ = CONV_CASES[0 if N == 1 else 4]
    x, w, b = _data(x_shape, w_shape, np.float64, True)
    for impl in ("lax", "hand"):
        np.testing.assert_allclose(CONV[N](x[0], w, b, impl=impl, **kw), ref.conv_nd(x[:1], w, b, **kw)[0], **ref.tol(np.float64))


@pytest.mark.parametrize("dtype", [jnp.bfloat16, jnp.float16])
@pytest.mark.parametrize("impl", ["lax", "hand"])
def test_half_precision_sums_in_float32(dtype, impl):
    x, w, b = _data((2, 3, 4, 5, 4), (2, 2, 2, 4, 3), np.float32, True)
    z = conv3d(jnp.asarray(x, dtype), jnp.asarray(w, dtype), jnp.asarray(b, dtype), padding=1, impl=impl)
    assert z.dtype == dtype
    z_ref = ref.conv_nd(np.asarray(jnp.asarray(x, dtype), np.float64), np.asarray(jnp.asarray(w, dtype), np.float64), np.asarray(jnp.asarray(b, dtype), np.float64), padding=1)
    np.testing.assert_allclose(np.asarray(z, np.float64), z_ref, **HALF_TOL[dtype])


@pytest.mark.parametrize("mode", ["reflect", "replicate", "circular"])
def test_padding_modes_equal_padding_first(mode):
    x, w, b = _data((2, 4, 5, 3, 2), (3, 2, 3, 2, 4), np.float64, True)
    pads = ((2, 1), (1, 1), (0, 2))
    x_pad = np.pad(x, ((0, 0), *pads, (0, 0)), mode={"replicate": "edge", "circular": "wrap"}.get(mode, mode))
    z_ref = ref.conv_nd(x_pad, w, b, stride=(1, 2, 1))
    for impl in ("lax", "hand"):
        z = conv3d(x, w, b, stride=(1, 2, 1), padding=pads, padding_mode=mode, impl=impl)
        np.testing.assert_allclose(z, z_ref, **ref.tol(np.float64), err_msg=impl)


# (x shape, w shape, kwargs, bias): symmetric padding per axis, so PyTorch takes them too.
TRANSPOSE_CASES = [
    ((2, 5, 4), (3, 3, 4), dict(stride=2, padding=1, output_padding=1), True),
    ((1, 4, 4), (2, 1, 4), dict(stride=3, padding=(2,), output_padding=2, dilation=2, groups=2), False),
    ((1, 2, 3, 3, 4), (2, 3, 2, 2, 4), dict(stride=(2, 1, 2), padding=(0, 1, 1), output_padding=(1, 0, 0), groups=2), True),
    ((2, 3, 2, 2, 2), (3, 2, 2, 1, 2), dict(padding=1, output_padding=(1, 0, 0), dilation=(2, 1, 1)), False),
]


@partial(jax.jit, static_argnums=(0, 1, 6))
def _transpose_impls(N, has_bias, x, w, b, dy, kw_items):
    out = {}
    for impl in ("lax", "hand"):
        fn = lambda x, w, b, impl=impl: TRANSPOSE[N](x, w, b if has_bias else None, impl=impl, **dict(kw_items))  # noqa: E731
        y, vjp = jax.vjp(fn, x, w, b)
        out[impl] = (y, *vjp(dy))
    return out


@pytest.mark.parametrize("case", TRANSPOSE_CASES, ids=lambda c: f"{len(c[0]) - 2}d-{c[2]}")
def test_transpose_matches_reference_and_is_the_input_gradient(case):
    x_shape, w_shape, kw, bias = case
    N = len(x_shape) - 2
    x, w, _ = _data(x_shape, w_shape, np.float64, False)
    b = np.random.default_rng(2).standard_normal(w_shape[-2] * kw.get("groups", 1)) if bias else None
    y_ref = ref.conv_transpose_nd(x, w, b, **kw)
    dy = np.random.default_rng(3).standard_normal(y_ref.shape)
    conv_kw = {k: v for k, v in kw.items() if k != "output_padding"}
    # The transpose of the transpose is the convolution (cropped to x: with output_padding from the dilation the
    # convolution of y has extra entries at the end), and its weight gradient swaps the roles of x and dZ.
    z = ref.conv_nd(dy, w, None, **conv_kw)
    dx_ref = z[(slice(None), *(slice(0, n) for n in x_shape[1:-1]))]
    x_ext = np.pad(x, ((0, 0), *((0, a - n) for a, n in zip(z.shape[1:-1], x_shape[1:-1])), (0, 0)))
    _, dw_ref, _ = ref.conv_nd_vjp(dy, w, x_ext, **conv_kw)
    b_in = b if bias else np.zeros(w_shape[-2] * kw.get("groups", 1))
    for impl, (y, dx, dw, db) in _transpose_impls(N, bias, x, w, b_in, dy, tuple(sorted(kw.items()))).items():
        np.testing.assert_allclose(y, y_ref, **ref.tol(np.float64), err_msg=impl)
        np.testing.assert_allclose(dx, dx_ref, **ref.tol(np.float64, grad=True), err_msg=impl)
        np.testing.assert_allclose(dw, dw_ref, **ref.tol(np.float64, grad=True), err_msg=impl)
        np.testing.assert_allclose(db, dy.sum(axis=tuple(range(N + 1))) if bias else 0.0, **ref.tol(np.float64, grad=True), err_msg=impl)


def test_auto_takes_hand_for_few_channel_volumes_on_cpu(monkeypatch):
    assert nd.resolve_impl("lax", (2, 4, 4, 4, 1), (3, 3, 3, 1, 8)) == "lax"
    monkeypatch.setattr(nd.jax, "default_backend", lambda: "cpu")
    assert nd.resolve_impl("auto", (2, 4, 4, 4, 3), (3, 3, 3, 3, 8)) == "hand"
    assert nd.resolve_impl("auto", (2, 4, 4, 4, 16), (3, 3, 3, 16, 16)) == "lax"
    assert nd.resolve_impl("auto", (2, 64, 3), (3, 3, 8)) == "lax"  # 1-D: lax
    monkeypatch.setattr(nd.jax, "default_backend", lambda: "gpu")
    assert nd.resolve_impl("auto", (2, 4, 4, 4, 3), (3, 3, 3, 3, 8)) == "lax"


_XLA_ABORT_SCRIPT = """
import jax, numpy as np
jax.config.update("jax_enable_x64", True)
from jaxconv import conv3d
x, w = np.ones((1, 4, 5, 6, 4)), np.ones((3, 2, 2, 2, 4))
kw = dict(stride=2, padding=(1, 0, 1), groups=2)
dx = jax.grad(lambda x: conv3d(x, w, impl="lax", **kw).sum())(x)
np.testing.assert_allclose(dx, jax.grad(lambda x: conv3d(x, w, impl="hand", **kw).sum())(x))
"""


@pytest.mark.xfail(
    strict=True,
    reason="XLA CPU (jaxlib 0.10.2) aborts the process (algebraic_simplifier.cc: 'Window dimensions do not match RHS "
    "shape') compiling the float64 x-gradient of this strided, grouped lax 3-D convolution (CONV_CASES[5] in float64; "
    "in float32 it compiles); impl='hand' is fine. In a subprocess, so the abort cannot kill pytest.",
)
def test_lax_grad_xla_abort_3d():
    import subprocess
    import sys

    result = subprocess.run([sys.executable, "-c", _XLA_ABORT_SCRIPT], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]


# ---------------------------------------------------------------------------
# Gradients against finite differences (float64, tiny shapes): hand's derived backward, lax's as reference.
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("N, kw", [(1, dict(stride=2, padding=1, dilation=2, groups=2)), (3, dict(stride=(2, 1, 1), padding=(1, 0, 1), groups=2))])
def test_gradcheck_hand_vs_lax_vs_finite_differences(N, kw):
    x, w, b = _data((2, *(5,) * N, 4), (*(2,) * N, 2, 4), np.float64, True)
    cost = lambda impl: lambda x, w, b: jnp.sum(jnp.tanh(CONV[N](x, w, b, impl=impl, **kw)))  # noqa: E731
    report = gradcheck(cost("hand"), (x, w, b), argnums=(0, 1, 2), reference=cost("lax"), mode="full")
    assert report.ok, report


@pytest.mark.parametrize("N", [1, 3])
def test_gradcheck_transpose_hand(N):
    x, w, _ = _data((1, *(3,) * N, 2), (*(2,) * N, 3, 2), np.float64, False)
    b = np.linspace(-1.0, 1.0, 3)
    cost = lambda impl: lambda x, w, b: jnp.sum(jnp.tanh(TRANSPOSE[N](x, w, b, stride=2, padding=1, output_padding=1, impl=impl)))  # noqa: E731
    report = gradcheck(cost("hand"), (x, w, b), argnums=(0, 1, 2), reference=cost("lax"), mode="full")
    assert report.ok, report


# ---------------------------------------------------------------------------
# PyTorch (NCW / NCDHW activations, OIW / OIDHW filters), where torch is installed.
# ---------------------------------------------------------------------------


def _per_axis(v, N):
    return (v,) * N if isinstance(v, int) else tuple(v)


def _to_torch_x(x):
    return np.moveaxis(x, -1, 1)  # (m, *n, n_C) -> (m, n_C, *n)


def _to_torch_w(w):
    return np.ascontiguousarray(np.moveaxis(w, (-1, -2), (0, 1)))  # (*f, a, b) -> (b, a, *f): OIW, or (in, out/G, *f) for transposes


@pytest.mark.parametrize("case", [CONV_CASES[i] for i in (0, 2, 4, 6)], ids=lambda c: f"{len(c[0]) - 2}d-{c[2]}")
def test_conv_matches_torch(case):
    torch = pytest.importorskip("torch")
    x_shape, w_shape, kw, _, _ = case
    N = len(x_shape) - 2
    x, w, b = _data(x_shape, w_shape, np.float64, True)
    s, d = (_per_axis(kw.get(k, 1), N) for k in ("stride", "dilation"))
    pads = ref.pads_nd(kw.get("padding", 0), x_shape[1:-1], w_shape[:N], s, d)
    x_pad = np.pad(x, ((0, 0), *pads, (0, 0)))  # torch pads symmetrically only: pad first
    xt, wt, bt = (torch.tensor(a, requires_grad=True) for a in (_to_torch_x(x_pad), _to_torch_w(w), b))
    fn = {1: torch.nn.functional.conv1d, 3: torch.nn.functional.conv3d}[N]
    yt = fn(xt, wt, bt, stride=kw.get("stride", 1), dilation=kw.get("dilation", 1), groups=kw.get("groups", 1))
    dy = np.random.default_rng(4).standard_normal(yt.shape)
    dxt, dwt, dbt = torch.autograd.grad(yt, (xt, wt, bt), torch.from_numpy(dy))
    crop = (slice(None), *(slice(lo, lo + n) for (lo, _), n in zip(pads, x_shape[1:-1])))
    out = _all_impls(N, True, x, w, b, np.moveaxis(dy, 1, -1), tuple(sorted(kw.items())))
    for impl, (y, dx, dw, db) in out.items():
        np.testing.assert_allclose(y, np.moveaxis(yt.detach().numpy(), 1, -1), **ref.tol(np.float64), err_msg=impl)
        np.testing.assert_allclose(dx, np.moveaxis(dxt.numpy(), 1, -1)[crop], **ref.tol(np.float64, grad=True), err_msg=impl)
        np.testing.assert_allclose(_to_torch_w(np.asarray(dw)), dwt.numpy(), **ref.tol(np.float64, grad=True), err_msg=impl)
        np.testing.assert_allclose(db, dbt.numpy(), **ref.tol(np.float64, grad=True), err_msg=impl)


@pytest.mark.parametrize("case", TRANSPOSE_CASES, ids=lambda c: f"{len(c[0]) - 2}d-{c[2]}")
def test_transpose_matches_torch(case):
    torch = pytest.importorskip("torch")
    x_shape, w_shape, kw, _ = case
    N = len(x_shape) - 2
    x, w, _ = _data(x_shape, w_shape, np.float64, False)
    b = np.random.default_rng(2).standard_normal(w_shape[-2] * kw.get("groups", 1))
    xt, wt, bt = (torch.tensor(a, requires_grad=True) for a in (_to_torch_x(x), _to_torch_w(w), b))
    fn = {1: torch.nn.functional.conv_transpose1d, 3: torch.nn.functional.conv_transpose3d}[N]
    tkw = dict(kw, padding=kw.get("padding", 0))
    yt = fn(xt, wt, bt, **tkw)
    dy = np.random.default_rng(4).standard_normal(yt.shape)
    grads_t = torch.autograd.grad(yt, (xt, wt, bt), torch.from_numpy(dy))
    y, dx, dw, db = _transpose_impls(N, True, x, w, b, np.moveaxis(dy, 1, -1), tuple(sorted(kw.items())))["hand"]  # compiled already
    np.testing.assert_allclose(y, np.moveaxis(yt.detach().numpy(), 1, -1), **ref.tol(np.float64))
    np.testing.assert_allclose(dx, np.moveaxis(grads_t[0].numpy(), 1, -1), **ref.tol(np.float64, grad=True))
    np.testing.assert_allclose(_to_torch_w(np.asarray(dw)), grads_t[1].numpy(), **ref.tol(np.float64, grad=True))
    np.testing.assert_allclose(db, grads_t[2].numpy(), **ref.tol(np.float64, grad=True))


@pytest.mark.parametrize("mode", ["reflect", "replicate", "circular"])
def test_padding_modes_match_torch(mode):
    torch = pytest.importorskip("torch")
    x, w, b = _data((2, 7, 3), (3, 3, 4), np.float64, True)
    layer = torch.nn.Conv1d(3, 4, 3, stride=2, padding=2, padding_mode=mode, dtype=torch.float64)
    with torch.no_grad():
        layer.weight.copy_(torch.from_numpy(_to_torch_w(w)))
        layer.bias.copy_(torch.from_numpy(b))
        z_t = layer(torch.from_numpy(_to_torch_x(x))).numpy()
    for impl in ("lax", "hand"):
        np.testing.assert_allclose(conv1d(x, w, b, stride=2, padding=2, padding_mode=mode, impl=impl), np.moveaxis(z_t, 1, -1), **ref.tol(np.float64))


# ---------------------------------------------------------------------------
# Errors: each one names the op and says what to do, before XLA sees the arguments.
# ---------------------------------------------------------------------------

X1, W1 = jnp.ones((2, 8, 4)), jnp.ones((3, 4, 6))
X3, W3 = jnp.ones((1, 4, 5, 6, 4)), jnp.ones((2, 2, 2, 4, 6))
ERRORS = [
    (conv1d, (jnp.ones((2, 8, 8, 4)), W1), {}, ValueError, r"conv1d: `x` must have shape \(m, n_W, n_C\) or one example without m \(NWC\), got shape \(2, 8, 8, 4\)"),
    (conv3d, (X1, W3), {}, ValueError, r"conv3d: `x` must have shape \(m, n_D, n_H, n_W, n_C\) or one example without m \(NDHWC\)"),
    (conv1d, (X1, jnp.ones((3, 3, 2, 6))), {}, ValueError, r"conv1d: `w` must have shape \(f_W, n_C / groups, n_C'\) \(WIO\), got shape \(3, 3, 2, 6\)"),
    (conv3d, (X3, W1), {}, ValueError, r"conv3d: `w` must have shape \(f_D, f_H, f_W, n_C / groups, n_C'\) \(DHWIO\)"),
    (conv1d, (X1, W1), dict(groups=3), ValueError, r"conv1d: `groups` \(=3\) must divide the input channels n_C \(=4\)"),
    (conv1d, (X1, W1), dict(groups=0), ValueError, r"conv1d: `groups` must be an int >= 1, got 0"),
    (conv1d, (X1, jnp.ones((3, 2, 5))), dict(groups=2), ValueError, r"conv1d: `groups` \(=2\) must divide the filter's output channels n_C' \(=5\)"),
    (conv3d, (X3, jnp.ones((2, 2, 2, 3, 6))), {}, ValueError, r"conv3d: input channels n_C \(=4\) must equal the filter's n_C_in \(=3\) \* groups \(=1\) = 3"),
    (conv3d, (X3, jnp.ones((5, 2, 2, 4, 6))), {}, ValueError, r"conv3d: the filter spans 5 pixels in depth \(f=5, d=1\) but the padded input has only 4"),
    (conv1d, (X1, W1), dict(dilation=4), ValueError, r"conv1d: the filter spans 9 pixels in width"),
    (conv3d, (X3, jnp.ones((2, 2, 2, 4, 6))), dict(stride=(1, 2)), TypeError, r"conv3d: `stride` must be an int or a tuple of 3 ints \(one per spatial axis\), got \(1, 2\)"),
    (conv1d, (X1, W1), dict(stride=0), ValueError, r"conv1d: `stride` must be >= 1, got 0"),
    (conv1d, (X1, W1), dict(dilation=1.5), TypeError, r"conv1d: `dilation` must be an int, got 1.5"),
    (conv1d, (X1, W1), dict(padding=-1), ValueError, r"conv1d: `padding` must be non-negative, got -1"),
    (conv1d, (X1, W1), dict(padding=(1, 2)), TypeError, r"conv1d: `padding` must be an int, \(p,\) or \(\(lo, hi\),\), 'SAME' or 'VALID', got \(1, 2\)"),
    (conv3d, (X3, W3), dict(padding=(1, 1)), TypeError, r"conv3d: `padding` must be an int, 3 ints \(p_1, ..., p_3\) or 3 pairs"),
    (conv1d, (X1, W1), dict(padding="full"), ValueError, r"conv1d: unknown `padding` string 'full'"),
    (conv1d, (X1, W1), dict(impl="fast"), ValueError, r"conv1d: unknown `impl` 'fast'. It needs to be one of \['auto', 'lax', 'hand', 'hand_autodiff'\]"),
    (conv3d, (X3, W3), dict(padding_mode="mirror"), ValueError, r"conv3d: unknown `padding_mode` 'mirror'"),
    (conv1d, (X1, W1), dict(padding=8, padding_mode="reflect"), ValueError, r"conv1d: padding_mode='reflect' needs padding smaller than the input, got padding \(8, 8\) on a width of 8"),
    (conv3d, (X3, W3[..., :4, :]), dict(padding=((5, 0), (0, 0), (0, 0)), padding_mode="circular"), ValueError, r"conv3d: padding_mode='circular' needs padding at most the input size, got padding \(5, 0\) on a depth of 4"),
    (conv1d, (X1, W1, jnp.ones(5)), {}, ValueError, r"conv1d: `b` must have shape \(n_C',\) = \(6,\) to match the filter, got \(5,\)"),
    (conv1d, (X1, W1.astype(jnp.float32)), {}, TypeError, r"conv1d: `x` \(float64\) and `w` \(float32\) must have the same dtype"),
    (conv_nd, (X1, jnp.ones((2, 2, 2, 2, 2, 4, 6))), {}, ValueError, r"conv_nd: `w` must be a filter of rank 3 \(WIO\), 4 \(HWIO\) or 5 \(DHWIO\)"),
    (conv_transpose_nd, (X1, jnp.ones((3,))), {}, ValueError, r"conv_transpose_nd: `w` must be a filter of rank 3"),
    (conv_transpose1d, (X1, jnp.ones((3, 2, 5))), {}, ValueError, r"conv_transpose1d: input channels n_C \(=4\) must equal the filter's last axis \(=5\)"),
    (conv_transpose1d, (X1, jnp.ones((3, 2, 4))), dict(output_padding=2, stride=2), ValueError, r"conv_transpose1d: `output_padding` \(=\(2,\)\) must be smaller than the stride or the dilation"),
    (conv_transpose3d, (X3, jnp.ones((2, 2, 2, 3, 4))), dict(padding="SAME"), ValueError, r"conv_transpose3d: `padding` must be an int or one int or \(lo, hi\) pair per axis, got 'SAME'"),
    (conv_transpose1d, (X1, jnp.ones((3, 2, 4))), dict(padding=9), ValueError, r"conv_transpose1d: the output would be \(-8,\) entries"),
    (conv_transpose3d, (X3, jnp.ones((2, 2, 2, 3, 4))), dict(impl="hand_autodiff"), ValueError, r"conv_transpose3d: unknown `impl` 'hand_autodiff'. It needs to be one of \['auto', 'lax', 'hand'\]"),
    (conv_transpose3d, (X1, jnp.ones((2, 2, 2, 3, 4))), {}, ValueError, r"conv_transpose3d: `x` must have shape \(m, n_D, n_H, n_W, n_C\)"),
    (conv_transpose1d, (X1, jnp.ones((3, 3, 4)), jnp.ones(4)), {}, ValueError, r"conv_transpose1d: `b` must have shape \(n_C',\) = \(3,\)"),
    (conv_transpose1d, (X1, jnp.ones((3, 2, 4))), dict(groups=3), ValueError, r"conv_transpose1d: `groups` \(=3\) must divide the input channels n_C \(=4\)"),
]


@pytest.mark.parametrize("op, args, kw, exc, match", ERRORS, ids=[f"{e[0].__name__}-{i}" for i, e in enumerate(ERRORS)])
def test_errors(op, args, kw, exc, match):
    with pytest.raises(exc, match=match):
        op(*args, **kw)
