"""conv2d: known answers from the notes, the three impls against each other and against
the float64 numpy reference (values and gradients), batching, and PyTorch.

Every distinct shape compiles, so the random grid is small and each case compiles
all three impls in ONE jitted function.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import reference as ref
from jaxconv import conv2d, conv_output_size
from jaxconv.conv import IMPLS  # every impl the library offers is checked, not only the three below

assert {"lax", "hand", "hand_autodiff"} <= set(IMPLS)

# The notes' strided example: 7x7 image, 3x3 filter, stride 2.
IMAGE_7x7 = [
    [2, 3, 7, 4, 6, 2, 9],
    [6, 6, 9, 8, 7, 4, 3],
    [3, 4, 8, 3, 8, 9, 7],
    [7, 8, 3, 6, 6, 3, 4],
    [4, 2, 1, 8, 3, 4, 6],
    [3, 2, 4, 1, 9, 8, 3],
    [0, 1, 3, 9, 2, 1, 4],
]
FILTER_3x3 = [[3, 4, 4], [1, 0, 2], [-1, 0, 3]]
ANSWER_7x7_S2 = [[91, 100, 88], [69, 91, 117], [44, 72, 74]]


def _nhwc(a, dtype):
    return jnp.asarray(np.asarray(a, dtype)[None, :, :, None])


def _hwio(a, dtype):
    return jnp.asarray(np.asarray(a, dtype)[:, :, None, None])


# ---------------------------------------------------------------------------
# Known answers.
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_notes_strided_example(impl, dtype):
    z = conv2d(_nhwc(IMAGE_7x7, dtype), _hwio(FILTER_3x3, dtype), stride=2, impl=impl)
    assert z.shape == (1, 3, 3, 1) and z.dtype == dtype
    np.testing.assert_array_equal(np.asarray(z)[0, :, :, 0], ANSWER_7x7_S2)
    np.testing.assert_array_equal(ref.conv2d(_nhwc(IMAGE_7x7, dtype), _hwio(FILTER_3x3, dtype), stride=2)[0, :, :, 0], ANSWER_7x7_S2)


@pytest.mark.parametrize("impl", IMPLS)
def test_notes_vertical_edge(impl):
    image = [[10, 10, 10, 0, 0, 0]] * 6
    edge = [[1, 0, -1]] * 3
    z = conv2d(_nhwc(image, np.float32), _hwio(edge, np.float32), impl=impl)
    np.testing.assert_array_equal(np.asarray(z)[0, :, :, 0], [[0, 30, 30, 0]] * 4)


@pytest.mark.parametrize(
    "args, expected",
    [
        (dict(n=6, f=3), 4),  # the notes' 6x6 * 3x3 -> 4x4
        (dict(n=7, f=3, s=2), 3),  # the strided 7x7 example
        (dict(n=6, f=3, p=1), 6),  # "same": p = (f - 1)/2
        (dict(n=32, f=5), 28),  # LeNet conv1
        (dict(n=28, f=2, s=2), 14),  # LeNet pool1
        (dict(n=8, f=3, s=2), 3),  # floor((8 - 3)/2) + 1 = floor(2.5) + 1
        (dict(n=7, f=2, p=1, s=3), 3),  # floor((7 + 2 - 2)/3) + 1 = floor(2.33) + 1
        (dict(n=5, f=3, d=2), 1),  # dilated span 5 fills the input
        (dict(n=10, f=3, p=2, s=2, d=2), 5),  # floor((10 + 4 - 5)/2) + 1
        (dict(n=1, f=1), 1),
    ],
)
def test_conv_output_size(args, expected):
    assert conv_output_size(**args) == expected
    # It must agree with the shape conv2d actually produces.
    n, f, p, s, d = args["n"], args["f"], args.get("p", 0), args.get("s", 1), args.get("d", 1)
    z = conv2d(jnp.zeros((1, n, 1, 1), jnp.float32), jnp.zeros((f, 1, 1, 1), jnp.float32),
               stride=(s, 1), padding=((p, p), (0, 0)), dilation=(d, 1))
    assert z.shape[1] == expected


@pytest.mark.parametrize(
    "args, match",
    [
        (dict(n=3, f=5), r"output size of -1 < 1"),
        (dict(n=4, f=3, d=2), r"span 5 does not fit in the padded input of 4"),
        (dict(n=4, f=3, s=0), r"`s` must be >= 1, got 0"),
        (dict(n=4, f=3, p=-1), r"`p` must be >= 0, got -1"),
        (dict(n=0, f=1), r"`n` must be >= 1, got 0"),
        (dict(n=4, f=0), r"`f` must be >= 1, got 0"),
        (dict(n=4, f=1, d=0), r"`d` must be >= 1, got 0"),
    ],
)
def test_conv_output_size_errors(args, match):
    with pytest.raises(ValueError, match=match):
        conv_output_size(**args)


def test_conv_output_size_type_error():
    with pytest.raises(TypeError, match=r"`s` must be an int, got 1.5"):
        conv_output_size(5, 3, s=1.5)


# ---------------------------------------------------------------------------
# Differential: lax vs hand vs hand_autodiff vs the float64 numpy reference.
# ---------------------------------------------------------------------------

PADDING_FORMS = ("int", "pair", "pairs", "SAME", "VALID")


def _draw_case(seed):
    """A random valid convolution: shapes, stride, one padding form (cycled), dilation, groups."""
    rng = np.random.default_rng(seed)
    form = PADDING_FORMS[seed % len(PADDING_FORMS)]
    G = int(rng.choice([1, 1, 2, 3]))
    f = tuple(int(v) for v in rng.integers(1, 4, 2))
    s = tuple(int(v) for v in rng.integers(1, 4, 2))
    d = tuple(int(v) for v in rng.integers(1, 3, 2))
    if form == "int":
        padding = int(rng.integers(0, 3))
    elif form == "pair":
        padding = tuple(int(v) for v in rng.integers(0, 3, 2))
    elif form == "pairs":
        padding = tuple(tuple(int(v) for v in rng.integers(0, 3, 2)) for _ in range(2))
    else:
        padding = form
    span = tuple(d_i * (f_i - 1) + 1 for f_i, d_i in zip(f, d))
    n = tuple(int(sp + rng.integers(0, 5)) for sp in span)  # always >= the dilated filter
    return dict(
        m=int(rng.integers(1, 4)),
        n=n,
        n_C=G * int(rng.integers(1, 3)),
        n_C_out=G * int(rng.integers(1, 3)),
        f=f,
        kw=dict(stride=s, padding=padding, dilation=d, groups=G),
        bias=bool(seed % 3),
        dtype=(np.float64, np.float32)[(seed // len(PADDING_FORMS)) % 2],
    )


def _arrays(case, seed):
    rng = np.random.default_rng(1000 + seed)
    dt = case["dtype"]
    x = rng.standard_normal((case["m"], *case["n"], case["n_C"])).astype(dt)
    w = rng.standard_normal((*case["f"], case["n_C"] // case["kw"]["groups"], case["n_C_out"])).astype(dt)
    b = rng.standard_normal(case["n_C_out"]).astype(dt) if case["bias"] else None
    return x, w, b


def _all_impls(kw, has_bias):
    """One jitted function: for each impl, Z and the VJP of dZ w.r.t. (x, w, b)."""

    @jax.jit
    def run(x, w, b, dz):
        out = {}
        for impl in IMPLS:
            fn = (lambda x, w, b, impl=impl: conv2d(x, w, b, impl=impl, **kw)) if has_bias else (
                lambda x, w, b, impl=impl: conv2d(x, w, impl=impl, **kw))
            z, vjp = jax.vjp(fn, x, w, b)
            out[impl] = (z, *vjp(dz))
        return out

    return run


def _check_case(seed):
    case = _draw_case(seed)
    kw, dt = case["kw"], case["dtype"]
    x, w, b = _arrays(case, seed)
    z_ref = ref.conv2d(x, w, b, **kw)
    dz = np.random.default_rng(2000 + seed).standard_normal(z_ref.shape).astype(dt)
    dx_ref, dw_ref, db_ref = ref.conv2d_vjp(x, w, dz, **kw)
    b_in = b if b is not None else np.zeros(case["n_C_out"], dt)
    out = _all_impls(kw, b is not None)(x, w, b_in, dz)
    for impl, (z, dx, dw, db) in out.items():
        msg = f"impl={impl} case={case}"
        assert z.dtype == dt and dx.dtype == dt and dw.dtype == dt, msg
        np.testing.assert_allclose(z, z_ref, **ref.tol(dt), err_msg=msg)
        np.testing.assert_allclose(dx, dx_ref, **ref.tol(dt, grad=True), err_msg=msg)
        np.testing.assert_allclose(dw, dw_ref, **ref.tol(dt, grad=True), err_msg=msg)
        np.testing.assert_allclose(db, db_ref if b is not None else 0.0, **ref.tol(dt, grad=True), err_msg=msg)
    # The impls agree with each other at least as well as with the reference.
    for impl in IMPLS:
        for a, c in zip(out[impl], out["lax"]):
            np.testing.assert_allclose(a, c, **ref.tol(dt, grad=True), err_msg=f"{impl} vs lax, case={case}")


# Seed 6 (x (2, 6, 3, 1), f (2, 2), stride (2, 3), padding 1, dilation (1, 2)) aborts the
# whole process inside XLA when differentiating impl="lax" w.r.t. x: see
# test_lax_grad_xla_abort below. It is left out of the in-process grid.
XLA_ABORT_SEEDS = {6}
N_DEFAULT = 11  # ~1-2 s of compiling each on 2 shared cores; the slow sweep runs 100 more
SEEDS = [seed for seed in range(N_DEFAULT) if seed not in XLA_ABORT_SEEDS]


def test_draw_covers_every_padding_form_and_groups():
    cases = [_draw_case(seed) for seed in SEEDS]
    forms = {type(c["kw"]["padding"]).__name__ + str(c["kw"]["padding"] if isinstance(c["kw"]["padding"], str) else "") for c in cases}
    assert {"int", "tuple", "strSAME", "strVALID"} <= forms
    assert any(isinstance(c["kw"]["padding"], tuple) and isinstance(c["kw"]["padding"][0], tuple) for c in cases)
    assert {c["kw"]["groups"] for c in cases} >= {1, 2, 3}
    assert {c["dtype"] for c in cases} == {np.float32, np.float64}
    assert {c["bias"] for c in cases} == {True, False}
    assert any(max(c["kw"]["stride"]) > 1 for c in cases) and any(max(c["kw"]["dilation"]) > 1 for c in cases)


@pytest.mark.parametrize("seed", SEEDS)
def test_impls_match_reference(seed):
    _check_case(seed)


@pytest.mark.slow
@pytest.mark.parametrize("seed", range(N_DEFAULT, N_DEFAULT + 100))
def test_impls_match_reference_sweep(seed):
    _check_case(seed)


_XLA_ABORT_SCRIPT = """
import jax, numpy as np
from jaxconv import conv2d
x = np.ones((1, 6, 3, 1), np.float32)
w = np.ones((2, 2, 1, 1), np.float32)
kw = dict(stride=(2, 3), padding=((1, 1), (0, 0)), dilation=(1, 2))
dx = jax.grad(lambda x: conv2d(x, w, impl="lax", **kw).sum())(x)
dx_hand = jax.grad(lambda x: conv2d(x, w, impl="hand", **kw).sum())(x)
np.testing.assert_allclose(dx, dx_hand)
"""


@pytest.mark.xfail(
    strict=True,
    reason="XLA CPU (jaxlib 0.10.2) aborts the process (algebraic_simplifier.cc:586 'Window dimensions do not "
    "match RHS shape') compiling the x-gradient of lax.conv_general_dilated for stride (2, 3), dilation (1, 2), "
    "padding ((1, 1), (0, 0)) on a 6x3 input with a 2x2 filter; impl='hand' is fine. Reported upstream-style in "
    "the test-suite report; run in a subprocess so the abort cannot kill pytest.",
)
def test_lax_grad_xla_abort():
    import subprocess
    import sys

    result = subprocess.run([sys.executable, "-c", _XLA_ABORT_SCRIPT], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]


@pytest.mark.parametrize(
    "kw",
    [
        # Rows the forward never reads (the floor in ⌊(n + 2p − f)/s⌋) must get zero gradient.
        dict(stride=3, padding=0),
        dict(stride=(2, 3), padding=((0, 1), (2, 0)), dilation=(2, 1)),
        dict(stride=2, padding="SAME", dilation=2),
    ],
)
def test_hand_grad_of_unread_rows_is_zero(kw):
    rng = np.random.default_rng(7)
    x = rng.standard_normal((1, 8, 9, 2))
    w = rng.standard_normal((2, 2, 2, 3))
    dx = jax.jit(jax.grad(lambda x: conv2d(x, w, impl="hand", **kw).sum()))(x)
    dx_ref, _, _ = ref.conv2d_vjp(x, w, np.ones(ref.conv2d(x, w, **kw).shape), **kw)
    np.testing.assert_allclose(dx, dx_ref, **ref.tol(np.float64, grad=True))


# ---------------------------------------------------------------------------
# One example vs a batch; vmap; jit.
# ---------------------------------------------------------------------------

BATCH_KW = dict(stride=(2, 1), padding=((1, 0), (0, 2)), dilation=(1, 2), groups=2)


@pytest.fixture(scope="module")
def batch_data():
    rng = np.random.default_rng(3)
    x = rng.standard_normal((3, 7, 6, 4)).astype(np.float32)
    w = rng.standard_normal((3, 2, 2, 6)).astype(np.float32)
    b = rng.standard_normal(6).astype(np.float32)
    return x, w, b


@pytest.mark.parametrize("impl", IMPLS)
def test_single_example_equals_batch_of_one(batch_data, impl):
    x, w, b = batch_data
    z1 = conv2d(x[0], w, b, impl=impl, **BATCH_KW)
    zb = conv2d(x[:1], w, b, impl=impl, **BATCH_KW)
    assert z1.shape == zb.shape[1:]
    np.testing.assert_allclose(z1, zb[0], **ref.tol(np.float32))
    np.testing.assert_allclose(z1, ref.conv2d(x[0], w, b, **BATCH_KW), **ref.tol(np.float32))


@pytest.mark.parametrize("impl", IMPLS)
def test_vmap_over_examples_equals_batched_call(batch_data, impl):
    x, w, b = batch_data
    conv = lambda x_i, w: conv2d(x_i, w, b, impl=impl, **BATCH_KW)  # noqa: E731

    @jax.jit
    def run(x, w):
        z_vmap = jax.vmap(conv, in_axes=(0, None))(x, w)
        z_batch = conv2d(x, w, b, impl=impl, **BATCH_KW)
        # Per-example gradients w.r.t. w (vmap of grad) sum to the batch gradient.
        g_each = jax.vmap(jax.grad(lambda w, x_i: conv(x_i, w).sum()), in_axes=(None, 0))(w, x)
        g_batch = jax.grad(lambda w: conv2d(x, w, b, impl=impl, **BATCH_KW).sum())(w)
        return z_vmap, z_batch, g_each, g_batch

    z_vmap, z_batch, g_each, g_batch = run(x, w)
    np.testing.assert_allclose(z_vmap, z_batch, **ref.tol(np.float32))
    np.testing.assert_allclose(g_each.sum(0), g_batch, **ref.tol(np.float32, grad=True))


# ---------------------------------------------------------------------------
# PyTorch cross-check (NCHW / OIHW), where torch is installed.
# ---------------------------------------------------------------------------

TORCH_CASES = [
    dict(stride=2, padding=1, dilation=1, groups=1),
    dict(stride=(2, 3), padding=((1, 2), (0, 1)), dilation=2, groups=3),
    dict(stride=2, padding="SAME", dilation=1, groups=6),  # depthwise
]


@pytest.mark.parametrize("kw", TORCH_CASES)
def test_conv2d_matches_torch(kw):
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(11)
    G = kw["groups"]
    x = rng.standard_normal((2, 9, 10, 6))
    w = rng.standard_normal((3, 3, 6 // G, 6))
    b = rng.standard_normal(6)
    # torch has no asymmetric padding: pad x first with the reference's ((top, bottom), (left, right)).
    (t, bo), (le, r) = ref.pads_of(kw["padding"], x.shape[1:3], (3, 3), ref._pair(kw["stride"]), ref._pair(kw["dilation"]))
    x_pad = np.pad(x, ((0, 0), (t, bo), (le, r), (0, 0)))
    z_torch = torch.nn.functional.conv2d(
        torch.from_numpy(x_pad.transpose(0, 3, 1, 2)),  # NCHW
        torch.from_numpy(w.transpose(3, 2, 0, 1).copy()),  # OIHW
        torch.from_numpy(b),
        stride=kw["stride"],
        dilation=kw["dilation"],
        groups=G,
    ).numpy().transpose(0, 2, 3, 1)  # back to NHWC
    zs = jax.jit(lambda x, w, b: {impl: conv2d(x, w, b, impl=impl, **kw) for impl in IMPLS})(x, w, b)
    for impl, z in zs.items():
        np.testing.assert_allclose(z, z_torch, **ref.tol(np.float64), err_msg=impl)
