"""upsample, pixel_shuffle and pixel_unshuffle: shapes, values against the float64 reference
(itself checked against PyTorch's F.interpolate / pixel_shuffle here), hand-computed
answers, gradients against finite differences and PyTorch, dtypes, and every error.

Inputs are channels last (m, *spatial, n_C); PyTorch gets them with the channels moved to axis 1.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.test_util import check_grads

import reference as ref
from jaxconv import pixel_shuffle, pixel_unshuffle, upsample

# One tiny shape per spatial rank, reused by every test so JAX compiles few shapes.
SHAPES = {1: (2, 5, 3), 2: (2, 4, 5, 3), 3: (1, 3, 4, 2, 2)}
LINEAR = {1: "linear", 2: "bilinear", 3: "trilinear"}
# Output sizes that up-sample by integer and fractional factors and down-sample, with
# scale factors whose 1/scale is not exact in binary (1.7, 2.3): PyTorch uses 1/scale_factor
# for the source indices, not n/n'.
RESIZES = [dict(scale_factor=2), dict(scale_factor=1.5), dict(scale_factor=0.5), dict(scale_factor=2.3),
           dict(size=7), dict(size=3)]


def up(x, **kw):
    """upsample compiled as one program: far quicker than op by op for each new shape."""
    return jax.jit(lambda v: upsample(v, **kw))(x)


def rng_x(shape, seed=0):
    return np.random.default_rng(seed).standard_normal(shape)


def modes(rank):
    """(mode, align_corners) pairs for inputs with `rank` spatial axes."""
    return [("nearest", None), ("nearest-exact", None), (LINEAR[rank], False), (LINEAR[rank], True)]


def to_torch(torch, x):
    return torch.from_numpy(np.ascontiguousarray(np.moveaxis(x, -1, 1))).requires_grad_(True)


def from_torch(t):
    return np.moveaxis(t.detach().numpy(), 1, -1)


# ---------------------------------------------------------------------------
# The reference against PyTorch (numpy and torch only: no compilation), every rank and mode.
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("rank", [1, 2, 3])
def test_reference_interpolate_matches_torch(rank):
    torch = pytest.importorskip("torch")
    x = rng_x(SHAPES[rank])
    for mode, align in modes(rank):
        for kw in RESIZES + [dict(scale_factor=(1.5, 2, 0.5)[:rank]), dict(size=(3, 6, 1)[:rank])]:
            yt = torch.nn.functional.interpolate(to_torch(torch, x), mode=mode, align_corners=align, **kw)
            y = ref.interpolate(x, mode=mode, align_corners=align, **kw)
            np.testing.assert_allclose(y, from_torch(yt), **ref.tol(np.float64), err_msg=f"{mode} {align} {kw}")


def test_reference_pixel_shuffle_matches_torch():
    torch = pytest.importorskip("torch")
    x = rng_x((2, 3, 2, 12))  # n_C = 3 with r = 2
    np.testing.assert_array_equal(ref.pixel_shuffle(x, 2), from_torch(torch.nn.functional.pixel_shuffle(to_torch(torch, x), 2)))
    y = rng_x((2, 6, 3, 2))
    np.testing.assert_array_equal(ref.pixel_unshuffle(y, 3), from_torch(torch.nn.functional.pixel_unshuffle(to_torch(torch, y), 3)))


# ---------------------------------------------------------------------------
# upsample against the reference, and hand-computed answers.
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("rank", [1, 2, 3])
@pytest.mark.parametrize("mode, align", [("nearest", None), ("nearest-exact", None), ("linear", False), ("linear", True)], ids=str)
def test_upsample_matches_reference(rank, mode, align):
    x = rng_x(SHAPES[rank])
    mode = LINEAR[rank] if mode == "linear" else mode
    for kw in RESIZES[:4] if rank < 3 else [RESIZES[0], RESIZES[4]]:
        y = up(x, mode=mode, align_corners=align, **kw)
        y_ref = ref.interpolate(x, mode=mode, align_corners=align, **kw)
        assert y.shape == y_ref.shape and y.dtype == x.dtype
        np.testing.assert_allclose(y, y_ref, **ref.tol(np.float64), err_msg=str(kw))


def test_hand_computed_answers():
    x = np.array([0.0, 1.0, 3.0])[None, :, None]  # (m=1, n_W=3, n_C=1)
    values = lambda **kw: np.asarray(up(x, **kw)).ravel().tolist()  # noqa: E731
    assert values(scale_factor=2) == [0, 0, 1, 1, 3, 3]
    assert values(size=2) == [0, 1]  # ⌊i·3/2⌋ = 0, 1 (legacy nearest: not the centres)
    assert values(size=2, mode="nearest-exact") == [0, 3]  # ⌊(i + ½)·3/2⌋ = 0, 2
    assert values(size=5, mode="linear", align_corners=True) == [0, 0.5, 1, 2, 3]  # corners on corners
    # Pixel centres: t = max((i + ½)/2 − ½, 0) = 0, 0.25, 0.75, 1.25, 1.75, 2.25 (clamped at the end).
    assert values(scale_factor=2, mode="linear") == [0, 0.25, 0.75, 1.5, 2.5, 3]


def test_one_example_batched_false_and_vmap():
    x = rng_x(SHAPES[2])
    batch = up(x, scale_factor=2, mode="bilinear")
    np.testing.assert_allclose(up(x[1], scale_factor=2, mode="bilinear", batched=False), batch[1], **ref.tol(np.float64))
    np.testing.assert_allclose(jax.vmap(lambda v: upsample(v, scale_factor=2, mode="bilinear", batched=False))(x), batch,
                               **ref.tol(np.float64))


def test_dtypes():
    x = rng_x(SHAPES[2])
    y = up(x.astype(jnp.bfloat16), scale_factor=2, mode="bilinear")
    assert y.dtype == jnp.bfloat16
    # Loosened to bfloat16's rounding of the input and of the output (8 bits of mantissa).
    np.testing.assert_allclose(np.asarray(y, np.float64), ref.interpolate(x, scale_factor=2, mode="bilinear", align_corners=False),
                               rtol=2e-2, atol=2e-2)
    labels = np.arange(20).reshape(1, 4, 5, 1)  # integer masks: nearest copies them exactly
    y = up(labels, scale_factor=2)
    assert y.dtype == labels.dtype
    np.testing.assert_array_equal(y, labels.repeat(2, 1).repeat(2, 2))


# ---------------------------------------------------------------------------
# pixel_shuffle / pixel_unshuffle.
# ---------------------------------------------------------------------------


def test_pixel_shuffle_matches_reference_and_inverts():
    x = rng_x((2, 3, 2, 12))
    y = pixel_shuffle(x, 2)
    assert y.shape == (2, 6, 4, 3)
    np.testing.assert_array_equal(y, ref.pixel_shuffle(x, 2))
    np.testing.assert_array_equal(pixel_unshuffle(y, 2), x)
    np.testing.assert_array_equal(pixel_unshuffle(x[0], 1), x[0])  # one example, r = 1: the identity
    np.testing.assert_array_equal(pixel_shuffle(x[0], 2), y[0])
    # Hand-computed: the r² channels of one pixel become an r x r block, row-major.
    np.testing.assert_array_equal(pixel_shuffle(np.arange(4.0).reshape(1, 1, 4), 2)[..., 0], [[0, 1], [2, 3]])


# ---------------------------------------------------------------------------
# Gradients: finite differences (float64) and PyTorch's autograd.
# ---------------------------------------------------------------------------


def test_gradients_match_finite_differences():
    x = rng_x((1, 3, 4, 2))
    for kw in (dict(scale_factor=1.5, mode="bilinear"), dict(size=(5, 2), mode="bilinear", align_corners=True), dict(scale_factor=2)):
        check_grads(jax.jit(lambda v: upsample(v, **kw)), (x,), order=1, modes=("rev",))
    check_grads(jax.jit(lambda v: pixel_shuffle(v, 2)), (rng_x((1, 2, 2, 4)),), order=1, modes=("rev",))


@pytest.mark.parametrize("rank", [1, 2, 3])
def test_gradients_match_torch(rank):
    torch = pytest.importorskip("torch")
    x = rng_x(SHAPES[rank])
    for mode, align in modes(rank)[::2] + [(LINEAR[rank], True)]:
        xt = to_torch(torch, x)
        yt = torch.nn.functional.interpolate(xt, scale_factor=1.5, mode=mode, align_corners=align)
        dy = rng_x(from_torch(yt).shape, seed=5)
        yt.backward(to_torch(torch, dy).detach())
        dx = jax.jit(lambda v, d: jax.vjp(lambda u: upsample(u, scale_factor=1.5, mode=mode, align_corners=align), v)[1](d)[0])(x, dy)
        np.testing.assert_allclose(dx, from_torch(xt.grad), **ref.tol(np.float64, grad=True), err_msg=mode)


# ---------------------------------------------------------------------------
# Errors: raised before XLA sees the arrays, each message matched.
# ---------------------------------------------------------------------------

X = np.zeros(SHAPES[2])


@pytest.mark.parametrize(
    "call, error, match",
    [
        (lambda: upsample(X), ValueError, r"upsample: give exactly one of `size` and `scale_factor`, got neither"),
        (lambda: upsample(X, size=4, scale_factor=2), ValueError, r"upsample: give exactly one of `size` and `scale_factor`, got both"),
        (lambda: upsample(X, scale_factor=2, mode="bicubic"), ValueError, r"upsample: unknown `mode` 'bicubic'. It needs to be one of \['nearest'"),
        (lambda: upsample(X, scale_factor=2, mode="linear"), ValueError, r"upsample: mode='linear' needs x .* with 1 spatial axis .* got shape \(2, 4, 5, 3\)"),
        (lambda: upsample(X, scale_factor=2, mode="trilinear"), ValueError, r"upsample: mode='trilinear' needs x .* with 3 spatial axes"),
        (lambda: upsample(np.zeros((2, 3)), scale_factor=2), ValueError, r"upsample: mode='nearest' needs x .* at least one spatial axis"),
        (lambda: upsample(X, scale_factor=2, align_corners=True), ValueError, r"upsample: `align_corners` only applies to the interpolating modes"),
        (lambda: upsample(X, scale_factor=2, mode="bilinear", align_corners=1), TypeError, r"upsample: `align_corners` must be None, True or False"),
        (lambda: upsample(X.astype(np.int32), scale_factor=2, mode="bilinear"), TypeError, r"upsample: mode='bilinear' interpolates and needs a floating-point `x`, got dtype int32"),
        (lambda: upsample(X, scale_factor=(2, 2, 2)), ValueError, r"upsample: `scale_factor` must be one value or 2 \(one per spatial axis of x\)"),
        (lambda: upsample(X, scale_factor=0), ValueError, r"upsample: `scale_factor` must be > 0 along every axis, got 0"),
        (lambda: upsample(X, scale_factor="2"), TypeError, r"upsample: `scale_factor` must be numbers"),
        (lambda: upsample(X, scale_factor=0.1), ValueError, r"upsample: `scale_factor` 0.1 shrinks spatial sizes \(4, 5\) to \(0, 0\)"),
        (lambda: upsample(X, size=(4, 0)), ValueError, r"upsample: `size` must be >= 1 along every axis, got \(4, 0\)"),
        (lambda: upsample(X, size=4.0), TypeError, r"upsample: `size` must be ints"),
        (lambda: upsample(X, size=4, batched="no"), TypeError, r"upsample: `batched` must be True"),
        (lambda: pixel_shuffle(X, 2), ValueError, r"pixel_shuffle: the channels of x \(=3\) must be divisible by r² \(=4\) for r=2"),
        (lambda: pixel_shuffle(np.zeros((4, 4)), 2), ValueError, r"pixel_shuffle: `x` must have shape \(m, n_H, n_W, n_C·r²\)"),
        (lambda: pixel_shuffle(X, 0), ValueError, r"pixel_shuffle: `r` must be >= 1, got 0"),
        (lambda: pixel_shuffle(X, 2.0), TypeError, r"pixel_shuffle: `r` must be an int, got 2.0"),
        (lambda: pixel_unshuffle(X, 2), ValueError, r"pixel_unshuffle: r=2 must divide the height and width of x \(=4, 5\)"),
        (lambda: pixel_unshuffle(np.zeros((4, 4)), 2), ValueError, r"pixel_unshuffle: `x` must have shape \(m, n_H·r, n_W·r, n_C\)"),
    ],
    ids=lambda v: v if isinstance(v, str) else "",
)
def test_errors(call, error, match):
    with pytest.raises(error, match=match):
        call()


def test_docstring_examples_run():
    import doctest

    import jaxconv.upsampling

    assert doctest.testmod(jaxconv.upsampling, extraglobs={"jnp": jnp}).failed == 0
