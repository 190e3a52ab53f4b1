"""layer_norm, group_norm and instance_norm: shapes, values against the float64 reference
(itself checked against PyTorch here), gradients against finite differences and PyTorch,
mixed precision, and every error.

Inputs are channels last (m, *spatial, n_C) with 1, 2 and 3 spatial axes; PyTorch gets
them with the channels moved to axis 1.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.test_util import check_grads

import reference as ref
from jaxconv import group_norm, instance_norm, layer_norm

F64 = jnp.float64
N_C = 4
# One tiny shape per spatial rank (m = 2, n_C = 4), reused by every test so JAX compiles few shapes.
SHAPES = {1: (2, 5, N_C), 2: (2, 3, 4, N_C), 3: (2, 2, 3, 2, N_C)}


def jit(f, *args):
    """f(*args) compiled as one program: far quicker than op by op for each new shape."""
    return jax.jit(f)(*args)


def rng_x(shape, seed=0):
    return np.random.default_rng(seed).standard_normal(shape) * 2 + 0.5


def affine(seed=1):
    rng = np.random.default_rng(seed)
    return rng.standard_normal(N_C), rng.standard_normal(N_C)


def to_torch(torch, x):
    """(m, *spatial, n_C) -> (m, n_C, *spatial), float64, requiring grad."""
    return torch.from_numpy(np.ascontiguousarray(np.moveaxis(x, -1, 1))).requires_grad_(True)


def from_torch(t):
    return np.moveaxis(t.detach().numpy(), 1, -1)


# ---------------------------------------------------------------------------
# Values against the float64 reference, every spatial rank.
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("rank", [1, 2, 3])
def test_group_norm_matches_reference(rank):
    x, (w, b) = rng_x(SHAPES[rank]), affine()
    y = jit(lambda x, w, b: group_norm(x, 2, w, b), x, w, b)
    assert y.shape == x.shape and y.dtype == F64
    np.testing.assert_allclose(y, ref.group_norm(x, 2, w, b), **ref.tol(np.float64))


@pytest.mark.parametrize("num_groups", [1, N_C])
def test_group_norm_extreme_groups(num_groups):
    # G = 1: the whole example (layer norm over (n_H, n_W, n_C) without its per-value affine);
    # G = n_C: each channel alone (instance norm).
    x = rng_x(SHAPES[2])
    y = jit(lambda x: group_norm(x, num_groups), x)
    np.testing.assert_allclose(y, ref.group_norm(x, num_groups), **ref.tol(np.float64))
    other = jit(lambda x: layer_norm(x, x.shape[1:]) if num_groups == 1 else instance_norm(x), x)
    np.testing.assert_allclose(y, other, **ref.tol(np.float64))


def test_group_norm_without_spatial_axes():
    x = rng_x((3, N_C))  # (m, n_C), as PyTorch's GroupNorm takes (N, C)
    np.testing.assert_allclose(jit(lambda x: group_norm(x, 2), x), ref.group_norm(x, 2), **ref.tol(np.float64))


@pytest.mark.parametrize("normalized_shape", [N_C, (3, 4, N_C)], ids=str)
def test_layer_norm_matches_reference(normalized_shape):
    x = rng_x(SHAPES[2])
    shape = (normalized_shape,) if isinstance(normalized_shape, int) else normalized_shape
    rng = np.random.default_rng(2)
    w, b = rng.standard_normal(shape), rng.standard_normal(shape)
    y = jit(lambda x, w, b: layer_norm(x, normalized_shape, w, b), x, w, b)
    np.testing.assert_allclose(y, ref.layer_norm(x, normalized_shape, w, b), **ref.tol(np.float64))
    y = jit(lambda x: layer_norm(x, normalized_shape), x)
    np.testing.assert_allclose(y, ref.layer_norm(x, normalized_shape), **ref.tol(np.float64))


@pytest.mark.parametrize("rank", [1, 2, 3])
def test_instance_norm_matches_reference_with_running_statistics(rank):
    x, (w, b) = rng_x(SHAPES[rank]), affine()
    state = {"mean": jnp.zeros(N_C, F64), "var": jnp.ones(N_C, F64)}
    y, new = jit(lambda x, w, b, state: instance_norm(x, w, b, state=state, momentum=0.3), x, w, b, state)
    y_ref, mean_ref, var_ref = ref.instance_norm(x, w, b, running_mean=np.zeros(N_C), running_var=np.ones(N_C), momentum=0.3)
    np.testing.assert_allclose(y, y_ref, **ref.tol(np.float64))
    np.testing.assert_allclose(new["mean"], mean_ref, **ref.tol(np.float64))
    np.testing.assert_allclose(new["var"], var_ref, **ref.tol(np.float64))
    np.testing.assert_allclose(jit(instance_norm, x, w, b), y_ref, **ref.tol(np.float64))  # no state: y only
    # Eval mode: the running statistics normalise, and come back unchanged.
    y_eval, same = jit(lambda x, w, b, state: instance_norm(x, w, b, state=state, use_input_stats=False), x, w, b, new)
    np.testing.assert_allclose(y_eval, ref.instance_norm(x, w, b, running_mean=mean_ref, running_var=var_ref, use_input_stats=False)[0], **ref.tol(np.float64))
    assert same["mean"] is not None and np.array_equal(same["mean"], new["mean"])


def test_normalised_values_have_zero_mean_and_unit_variance():
    # Hand-checkable: without affine parameters every group has mean 0 and variance σ²/(σ² + eps).
    x = rng_x(SHAPES[2])
    y = np.asarray(jit(lambda x: group_norm(x, 2, eps=0.0), x)).reshape(2, -1, 2, 2)
    np.testing.assert_allclose(y.mean(axis=(1, 3)), 0, atol=1e-12)
    np.testing.assert_allclose(y.var(axis=(1, 3)), 1, rtol=1e-12)


# ---------------------------------------------------------------------------
# One example without the batch axis, vmap, jit, mixed precision.
# ---------------------------------------------------------------------------


def test_one_example_without_batch_axis_and_vmap():
    x, (w, b) = rng_x(SHAPES[2]), affine()
    for fn in (lambda v, **k: group_norm(v, 2, w, b, **k), lambda v, **k: instance_norm(v, w, b, **k)):
        batch = jit(fn, x)
        np.testing.assert_allclose(jit(lambda v: fn(v, batched=False), x[1]), batch[1], **ref.tol(np.float64))
        np.testing.assert_allclose(jit(jax.vmap(lambda v: fn(v, batched=False)), x), batch, **ref.tol(np.float64))
    np.testing.assert_allclose(jax.jit(layer_norm, static_argnums=1)(x[0], N_C), layer_norm(x, N_C)[0], **ref.tol(np.float64))


@pytest.mark.parametrize("dtype", [jnp.bfloat16, jnp.float16])
def test_low_precision_inputs_are_normalised_in_float32(dtype):
    # An offset of 100 with unit noise: summed in bfloat16, the mean and x − μ lose the noise.
    x = (rng_x(SHAPES[2]) + 100).astype(dtype)
    x64 = np.asarray(x.astype(jnp.float32), np.float64)  # the values the function really got
    y = jit(lambda x: group_norm(x, 2), x)
    assert y.dtype == dtype
    # Loosened to the output's own rounding: bfloat16 keeps 8 bits (2⁻⁸ relative), float16 11.
    np.testing.assert_allclose(np.asarray(y, np.float64), ref.group_norm(x64, 2), atol=2e-2 if dtype == jnp.bfloat16 else 3e-3)
    state = {"mean": jnp.zeros(N_C, jnp.float32), "var": jnp.ones(N_C, jnp.float32)}
    y, new = jit(lambda x, state: instance_norm(x, state=state), x, state)
    assert y.dtype == dtype and new["mean"].dtype == jnp.float32
    np.testing.assert_allclose(new["mean"], ref.instance_norm(x64, running_mean=np.zeros(N_C), running_var=np.ones(N_C))[1], rtol=1e-5)
    assert jit(lambda x: layer_norm(x, N_C), x).dtype == dtype


# ---------------------------------------------------------------------------
# Gradients: finite differences (float64), and PyTorch's autograd.
# ---------------------------------------------------------------------------


def test_gradients_match_finite_differences():
    x, (w, b) = rng_x((2, 3, N_C)), affine()
    check_grads(jax.jit(lambda x, w, b: group_norm(x, 2, w, b)), (x, w, b), order=1, modes=("rev",))
    check_grads(jax.jit(lambda x, w, b: layer_norm(x, (3, N_C), w[None].repeat(3, 0), b[None].repeat(3, 0))), (x, w, b), order=1, modes=("rev",))
    check_grads(jax.jit(lambda x, w, b: instance_norm(x, w, b)), (x, w, b), order=1, modes=("rev",))


@pytest.mark.parametrize("rank", [1, 2, 3])
def test_forward_and_gradients_match_torch(rank):
    torch = pytest.importorskip("torch")
    F = torch.nn.functional
    x, (w, b) = rng_x(SHAPES[rank]), affine()
    dy = rng_x(SHAPES[rank], seed=3)
    cases = [
        ("group_norm", lambda x, w, b: group_norm(x, 2, w, b), lambda t, wt, bt: F.group_norm(t, 2, wt, bt)),
        ("instance_norm", lambda x, w, b: instance_norm(x, w, b), lambda t, wt, bt: F.instance_norm(t, weight=wt, bias=bt)),
        # Over the channels only: PyTorch's LayerNorm on channels-last data, no transpose.
        ("layer_norm", lambda x, w, b: layer_norm(x, N_C, w, b), None),
    ]
    for name, ours, theirs in cases:
        y, grads = jit(lambda x, w, b, dy: (lambda out: (out[0], out[1](dy)))(jax.vjp(ours, x, w, b)), x, w, b, dy)
        wt, bt = torch.from_numpy(w).requires_grad_(True), torch.from_numpy(b).requires_grad_(True)
        if theirs is None:
            xt = torch.from_numpy(x).requires_grad_(True)
            yt = F.layer_norm(xt, (N_C,), wt, bt)
            yt.backward(torch.from_numpy(dy))
            y_t, dx_t = yt.detach().numpy(), xt.grad.numpy()
        else:
            xt = to_torch(torch, x)
            yt = theirs(xt, wt, bt)
            yt.backward(to_torch(torch, dy).detach())
            y_t, dx_t = from_torch(yt), from_torch(xt.grad)
        np.testing.assert_allclose(y, y_t, **ref.tol(np.float64), err_msg=name)
        np.testing.assert_allclose(ref_fn(name, x, w, b), y_t, **ref.tol(np.float64), err_msg=name)
        for ours_g, theirs_g in zip(grads, (dx_t, wt.grad.numpy(), bt.grad.numpy())):
            np.testing.assert_allclose(ours_g, theirs_g, **ref.tol(np.float64, grad=True), err_msg=name)


def ref_fn(name, x, w, b):
    if name == "group_norm":
        return ref.group_norm(x, 2, w, b)
    if name == "instance_norm":
        return ref.instance_norm(x, w, b)[0]
    return ref.layer_norm(x, N_C, w, b)


def test_layer_norm_over_whole_examples_matches_torch():
    # PyTorch's LayerNorm([C, H, W]) on NCHW is ours over (n_H, n_W, n_C) with γ, β moved channels last.
    torch = pytest.importorskip("torch")
    x = rng_x(SHAPES[2])
    rng = np.random.default_rng(4)
    w, b = rng.standard_normal((N_C, 3, 4)), rng.standard_normal((N_C, 3, 4))
    yt = torch.nn.functional.layer_norm(to_torch(torch, x), (N_C, 3, 4), torch.from_numpy(w), torch.from_numpy(b))
    ours = ref.layer_norm(x, (3, 4, N_C), w.transpose(1, 2, 0), b.transpose(1, 2, 0))
    np.testing.assert_allclose(ours, from_torch(yt), **ref.tol(np.float64))


def test_instance_norm_running_statistics_match_torch_over_steps():
    torch = pytest.importorskip("torch")
    t_in = torch.nn.InstanceNorm2d(N_C, affine=True, track_running_stats=True, momentum=0.2).double()
    w, b = affine()
    with torch.no_grad():
        t_in.weight.copy_(torch.from_numpy(w))
        t_in.bias.copy_(torch.from_numpy(b))
    state = {"mean": jnp.zeros(N_C, F64), "var": jnp.ones(N_C, F64)}
    for step in range(3):
        x = rng_x(SHAPES[2], seed=10 + step)
        y, state = jit(lambda x, state: instance_norm(x, w, b, state=state, momentum=0.2), x, state)
        np.testing.assert_allclose(y, from_torch(t_in(to_torch(torch, x))), **ref.tol(np.float64))
    np.testing.assert_allclose(state["mean"], t_in.running_mean.numpy(), **ref.tol(np.float64))
    np.testing.assert_allclose(state["var"], t_in.running_var.numpy(), **ref.tol(np.float64))
    t_in.eval()
    x = rng_x(SHAPES[2], seed=20)
    y, _ = jit(lambda x, state: instance_norm(x, w, b, state=state, use_input_stats=False), x, state)
    np.testing.assert_allclose(y, from_torch(t_in(to_torch(torch, x))), **ref.tol(np.float64))


# ---------------------------------------------------------------------------
# Errors: raised before XLA sees the arrays, each message matched.
# ---------------------------------------------------------------------------

X = np.zeros(SHAPES[2])
STATE = {"mean": np.zeros(N_C), "var": np.ones(N_C)}


@pytest.mark.parametrize(
    "call, error, match",
    [
        (lambda: group_norm(X, 3), ValueError, r"group_norm: `num_groups` \(=3\) must divide the channels n_C \(=4\)"),
        (lambda: group_norm(X, 0), ValueError, r"group_norm: `num_groups` must be >= 1, got 0"),
        (lambda: group_norm(X, 2.0), TypeError, r"group_norm: `num_groups` must be an int, got 2.0"),
        (lambda: group_norm(np.zeros(N_C), 2), ValueError, r"group_norm: `x` must have shape \(m, \*spatial, n_C\).*batched=False"),
        (lambda: group_norm(X.astype(np.int32), 2), TypeError, r"group_norm: `x` must be a floating-point array.*int32"),
        (lambda: group_norm(X, 2, np.ones(3)), ValueError, r"group_norm: `weight` must have shape \(4,\), got \(3,\)"),
        (lambda: group_norm(X, 2, eps=-1.0), ValueError, r"group_norm: `eps` must be in \[0, inf\], got -1.0"),
        (lambda: group_norm(X, 2, batched=1), TypeError, r"group_norm: `batched` must be True .* or False"),
        (lambda: layer_norm(X, (3, N_C, 1)), ValueError, r"layer_norm: `normalized_shape` \(3, 4, 1\) must equal the trailing sizes of x"),
        (lambda: layer_norm(X, N_C + 1), ValueError, r"layer_norm: .*pass normalized_shape=\(4,\)"),
        (lambda: layer_norm(X, "C"), TypeError, r"layer_norm: `normalized_shape` must be an int or a non-empty tuple of ints"),
        (lambda: layer_norm(X, N_C, bias=np.ones((1, N_C))), ValueError, r"layer_norm: `bias` must have shape \(4,\), got \(1, 4\)"),
        (lambda: instance_norm(np.zeros((2, N_C))), ValueError, r"instance_norm: `x` must have shape \(m, \*spatial, n_C\) with at least one spatial axis"),
        (lambda: instance_norm(np.zeros((2, 1, 1, N_C))), ValueError, r"instance_norm: the instances' statistics need more than 1 position per channel"),
        (lambda: instance_norm(X, use_input_stats=False), ValueError, r"instance_norm: use_input_stats=False .* no `state` was given"),
        (lambda: instance_norm(X, state={"mean": np.zeros(N_C)}), TypeError, r"instance_norm: `state` must be a dict \{'mean'"),
        (lambda: instance_norm(X, state={"mean": np.zeros(3), "var": np.ones(3)}), ValueError, r"instance_norm: state\['mean'\] must have shape \(n_C,\) = \(4,\), got \(3,\)"),
        (lambda: instance_norm(X, state=STATE, momentum=1.5), ValueError, r"instance_norm: `momentum` must be in \[0, 1\], got 1.5"),
        (lambda: instance_norm(X, momentum=None), TypeError, r"instance_norm: `momentum` must be a Python number, got None"),
    ],
    ids=lambda v: v if isinstance(v, str) else "",
)
def test_errors(call, error, match):
    with pytest.raises(error, match=match):
        call()


def test_docstring_examples_run():
    import doctest

    import jaxconv.norm

    assert doctest.testmod(jaxconv.norm, extraglobs={"jnp": jnp}).failed == 0
