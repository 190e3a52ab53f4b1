"""The public-API fuzz, continued: 1-D/3-D ops, normalisation, up-sampling, the file loaders and gradcheck.

Same rules as tests/test_fuzz.py (whose `outcome`, `spec` and `fuzz` this module uses): every
generated call returns a result of the shape lax/NumPy would give, or raises jaxconv's own
one-line ValueError/TypeError whose message starts with the op's name. The loaders get random
bytes and real files with bytes flipped or cut; they must refuse them with a ValueError naming
the file (or load them unchanged), never a raw zipfile/NumPy/safetensors error.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from hypothesis import given
from hypothesis import strategies as st
from jax import lax

import jaxconv as jc
from jaxconv import checkpoint, interop
from test_fuzz import CALLS, DTYPES, FLOATS, dtypes, fuzz, outcome, spec

sizes = st.sampled_from((0, 1, 2, 3, 5))


# --------------------------------------------------------------------------- 1-D and 3-D convolutions and pools


@st.composite
def conv_nd_args(draw):
    k = draw(st.sampled_from((1, 3)))
    m, n_C, n_C_out = draw(sizes), draw(st.sampled_from((0, 1, 2, 4))), draw(st.sampled_from((0, 1, 2)))
    spatial = tuple(draw(st.sampled_from((0, 1, 3, 4))) for _ in range(k))
    x_shape = draw(st.sampled_from(((m, *spatial, n_C), (*spatial, n_C), (m, n_C), (1, 1, m, *spatial, n_C))))
    f = draw(st.sampled_from((1, 2, 3)))
    w_shape = draw(st.sampled_from(((f,) * k + (n_C, n_C_out), (f,) * 2 + (n_C, n_C_out), (f,) * k + (n_C,))))
    kw = dict(
        stride=draw(st.sampled_from((1, 2, 0, (1,) * k, (2,) * (k + 1), 1.5))),
        padding=draw(st.sampled_from((0, 1, -1, "SAME", "VALID", "full", (1,) * k, ((1, 0),) * k, (1, 0)))),
        dilation=draw(st.sampled_from((1, 2, 0))),
        groups=draw(st.sampled_from((1, 2, 0))),
        impl=draw(st.sampled_from(("auto", "lax", "hand", "hand_autodiff", "bad"))),
    )
    return k, x_shape, draw(dtypes), w_shape, kw


@fuzz(500)
@given(conv_nd_args(), st.booleans())
def test_conv_nd_fuzz(args, transposed):
    k, x_shape, dtype, w_shape, kw = args
    if transposed:
        kw = {key: v for key, v in kw.items() if key != "impl" or v != "hand_autodiff"}
    op = f"conv_transpose{k}d" if transposed else f"conv{k}d"
    fn = getattr(jc, op)
    x, w = spec(x_shape, dtype), spec(w_shape, dtype)
    kind, got = outcome(op, lambda: jax.eval_shape(lambda x, w: fn(x, w, **kw), x, w))
    if kind == "ok" and not transposed:  # lax's answer for the same geometry
        layout = jc.LAYOUTS[k]
        batched = len(x_shape) == k + 2
        s = (kw["stride"],) * k if isinstance(kw["stride"], int) else kw["stride"]
        p = kw["padding"]
        p = ((p, p),) * k if isinstance(p, int) else tuple((v, v) if isinstance(v, int) else v for v in p) if not isinstance(p, str) else p
        want = jax.eval_shape(
            lambda x, w: lax.conv_general_dilated(x if batched else x[None], w, s, p, rhs_dilation=(kw["dilation"],) * k,
                                                  dimension_numbers=layout, feature_group_count=kw["groups"]), x, w)
        assert got.shape == (want.shape if batched else want.shape[1:]) and got.dtype == x.dtype, (got, want)


@fuzz(500)
@given(st.sampled_from((1, 3)), st.sampled_from(("max_pool", "avg_pool", "adaptive_avg_pool", "adaptive_max_pool", "global_avg_pool")),
       st.sampled_from(((2, 4, 3), (0, 4, 3), (4, 3), (2, 0, 3), (2, 4, 4, 4, 3), (1, 2, 4, 4, 3), (4, 4, 4, 3), (2, 3))),
       dtypes, st.sampled_from((1, 2, 3, 0, -1, (2, 2, 2), (2,), None, 1.5)), st.sampled_from((0, 1, -1, 2, (1, 0, 1))),
       st.booleans())
def test_pool_nd_fuzz(k, family, shape, dtype, window, padding, ceil_mode):
    op = f"{family}{k}d"
    fn = getattr(jc, op)
    x = spec(shape, dtype)
    if family == "global_avg_pool":
        call = lambda x: fn(x)  # noqa: E731
    elif family.startswith("adaptive"):
        call = lambda x: fn(x, window)  # noqa: E731
    else:
        call = lambda x: fn(x, window, padding=padding, ceil_mode=ceil_mode)  # noqa: E731
    kind, got = outcome(op, lambda: jax.eval_shape(call, x))
    if kind == "ok":
        assert got.shape[-1] == shape[-1] and len(got.shape) in (len(shape), len(shape) - k)


# --------------------------------------------------------------------------- normalisation and up-sampling


@fuzz(400)
@given(st.sampled_from(("group_norm", "layer_norm", "instance_norm")),
       st.sampled_from(((2, 4, 4), (0, 4, 4), (2, 3, 3, 4), (2, 4), (4,), (2, 2, 2, 2, 4), (2, 4, 0))),
       dtypes, st.sampled_from((1, 2, 3, 0, -1, (4,), (3, 4), 2.0)), st.sampled_from((1e-5, 0.0, -1.0, float("nan"), "a")))
def test_norm_fuzz(op, shape, dtype, groups_or_shape, eps):
    fn = getattr(jc, op)
    x = spec(shape, dtype)
    if op == "group_norm":
        call = lambda x: fn(x, groups_or_shape, eps=eps)  # noqa: E731
    elif op == "layer_norm":
        call = lambda x: fn(x, groups_or_shape, eps=eps)  # noqa: E731
    else:
        call = lambda x: fn(x, eps=eps)  # noqa: E731
    kind, got = outcome(op, lambda: jax.eval_shape(call, x))
    if kind == "ok":
        got = got[0] if isinstance(got, tuple) else got
        assert got.shape == tuple(shape) and got.dtype == x.dtype


@fuzz(400)
@given(st.sampled_from(("upsample", "pixel_shuffle", "pixel_unshuffle")),
       st.sampled_from(((1, 2, 2, 4), (0, 2, 2, 4), (1, 3, 4), (1, 2, 2, 2, 4), (2, 4, 4, 1), (4,))), dtypes,
       st.sampled_from((2, 1, 0, -1, 1.5, 0.5, (2, 2), None, "2")), st.sampled_from((None, 4, (4, 4), (0, 4), -1)),
       st.sampled_from(("nearest", "nearest-exact", "linear", "bilinear", "trilinear", "bicubic", 3)),
       st.sampled_from((None, True, False, 1)))
def test_upsampling_fuzz(op, shape, dtype, factor, size, mode, align_corners):
    fn = getattr(jc, op)
    x = spec(shape, dtype)
    if op == "upsample":
        call = lambda x: fn(x, scale_factor=factor, size=size, mode=mode, align_corners=align_corners)  # noqa: E731
    else:
        call = lambda x: fn(x, factor)  # noqa: E731
    kind, got = outcome(op, lambda: jax.eval_shape(call, x))
    if kind == "ok":
        assert len(got.shape) == len(shape) and got.dtype == x.dtype
        if op != "upsample":  # depth-to-space keeps the number of values
            assert math.prod(got.shape) == math.prod(shape)


# --------------------------------------------------------------------------- files: checkpoints and safetensors


@pytest.fixture(scope="module")
def saved_files(tmp_path_factory):
    folder = tmp_path_factory.mktemp("fuzz_files")
    params = {"conv": {"w": jnp.ones((3, 3, 1, 2), jnp.float32), "b": jnp.zeros(2, jnp.float32)}}
    optimizer = optax.adam(1e-3)
    ckpt = checkpoint.save_checkpoint(folder / "c.npz", params=params, opt_state=optimizer.init(params), step=3,
                                      key=jax.random.key(0), config={"model": "x"})
    files = {"checkpoint": (open(ckpt, "rb").read(), params, optimizer.init(params))}
    try:
        st_path = interop.save_safetensors(folder / "p.safetensors", params)
    except ImportError:  # safetensors not installed: the checkpoint is fuzzed alone
        return folder, files
    files["safetensors"] = (open(st_path, "rb").read(), params, None)
    return folder, files


@fuzz(200)
@given(st.sampled_from(("checkpoint", "safetensors")), st.sampled_from(("flip", "cut", "random", "empty")),
       st.integers(0, 2**31 - 1))
def test_loaders_fuzz(saved_files, which, damage, seed):
    folder, files = saved_files
    if which not in files:
        pytest.skip("safetensors not installed")
    raw, params, opt_state = files[which]
    rng = np.random.default_rng(seed)
    if damage == "flip":
        data = bytearray(raw)
        i = int(rng.integers(len(data)))
        data[i] ^= 1 << int(rng.integers(8))
        data = bytes(data)
    elif damage == "cut":
        data = raw[: int(rng.integers(len(raw)))]
    elif damage == "random":
        data = rng.bytes(int(rng.integers(1, 400)))
    else:
        data = b""
    path = folder / f"fuzzed.{which}"
    path.write_bytes(data)
    op = "load_checkpoint" if which == "checkpoint" else "load_safetensors"
    if which == "checkpoint":
        thunk = lambda: checkpoint.load_checkpoint(path, params_like=params, opt_state_like=opt_state)  # noqa: E731
    else:
        thunk = lambda: interop.load_safetensors(path, params)  # noqa: E731
    kind, got = outcome(op, thunk)
    if kind == "ok":  # a flip the format cannot see (e.g. in a value): the structure is intact
        loaded = got["params"] if which == "checkpoint" else got
        assert jax.tree.structure(loaded) == jax.tree.structure(params)
    else:
        assert str(path) in str(got) or "fuzzed" in str(got), got


# --------------------------------------------------------------------------- gradcheck's own arguments


@fuzz(200)
@given(st.sampled_from((1e-6, 0.0, -1e-3, 1e300, float("nan"), "a", None)), st.sampled_from((1e-6, 0.0, 2.0, float("inf"))),
       st.sampled_from(("directional", "full", "fast", 1)), st.sampled_from((0, 1, (0,), (0, 0), 5, -1, None, "0")),
       st.sampled_from(("float", "int", "bool", "list")))
def test_gradcheck_fuzz(eps, rtol, mode, argnums, arg_kind):
    x = {"float": jnp.arange(1.0, 4.0), "int": jnp.arange(3), "bool": jnp.ones(3, bool), "list": [1.0, 2.0]}[arg_kind]
    kind, got = outcome("gradcheck", lambda: jc.gradcheck(lambda x: jnp.sum(jnp.asarray(x, float) ** 2), (x,), eps=eps, rtol=rtol,
                                                           mode=mode, argnums=argnums))
    if kind == "ok":
        assert got.ok


def test_more_fuzz_made_its_calls(request):
    """After the fuzz tests above: each fuzzed op was called (the counts join tests/test_fuzz.py's table)."""
    ran = [i.name for i in request.session.items if i.module is request.module and i.name.endswith("_fuzz")]
    if len(ran) < 6:
        pytest.skip("only part of the fuzz was selected")
    for op in ("conv1d", "conv3d", "conv_transpose1d", "max_pool1d", "group_norm", "upsample", "load_checkpoint", "gradcheck"):
        assert CALLS[op] > 0, op
