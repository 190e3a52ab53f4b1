"""PyTorch's own OpInfo sample inputs for the 1-D and 3-D pools, the norms, interpolate and pixel (un)shuffle,
run through jaxconv (channels moved last), forward and gradient.

Every float64 sample of each op is either accepted, with the forward (values, indices, running
statistics) and the input gradient (a random dY through both) equal to PyTorch's, or refused with
jaxconv's own ValueError/TypeError, whose message starts with the op's name. The counts print per op:

    PYTHONPATH=$PWD python -m pytest -q -s tests/test_opinfo_nd.py              # a subset of every op
    PYTHONPATH=$PWD python -m pytest -q -s -m slow tests/test_opinfo_nd.py      # every sample
"""

import math
import re
from collections import Counter

import jax
import numpy as np
import pytest

import reference as ref
from test_pool_opinfo import _op_db
from jaxconv import (
    adaptive_avg_pool1d,
    adaptive_avg_pool3d,
    adaptive_max_pool1d,
    adaptive_max_pool3d,
    avg_pool1d,
    avg_pool3d,
    group_norm,
    instance_norm,
    layer_norm,
    max_pool1d,
    max_pool3d,
    pixel_shuffle,
    pixel_unshuffle,
    upsample,
)

torch = pytest.importorskip("torch")


def _np(t):
    return None if t is None else t.detach().numpy().copy()


def _stride(stride):
    """PyTorch's stride: None or () mean 'the window'."""
    return None if stride is None or (isinstance(stride, (tuple, list)) and len(stride) == 0) else stride


# ---------------------------------------------------------------------------
# Adapters: each turns one PyTorch sample into (channel axis of the input, jaxconv's call on the
# channels-last input, and a thunk giving what else PyTorch returned, read after PyTorch ran).
# ---------------------------------------------------------------------------


def _max_pool(ours, k):
    def adapt(sample):
        kw = dict(sample.kwargs)
        args = list(sample.args)
        window = kw.pop("kernel_size", args[0] if args else None)
        stride = _stride(kw.pop("stride", args[1] if len(args) > 1 else None))

        def call(x):
            return ours(x, window, stride, kw.get("padding", 0), kw.get("dilation", 1), kw.get("ceil_mode", False),
                        kw.get("return_indices", False))

        return 1 if sample.input.ndim == k + 2 else 0, call

    return adapt


def _avg_pool(ours, k):
    def adapt(sample):
        kw = dict(sample.kwargs)
        window = sample.args[0] if sample.args else kw.pop("kernel_size")
        call = lambda x: ours(x, window, _stride(kw.get("stride")), kw.get("padding", 0),  # noqa: E731
                              kw.get("count_include_pad", True), kw.get("ceil_mode", False), kw.get("divisor_override"))
        return 1 if sample.input.ndim == k + 2 else 0, call

    return adapt


def _adaptive(ours, k):
    def adapt(sample):
        args = list(sample.args) + [v for name, v in sample.kwargs.items() if name in ("output_size", "return_indices")]
        return 1 if sample.input.ndim == k + 2 else 0, lambda x: ours(x, *args)

    return adapt


def _layer_norm(sample):
    shape, *rest = sample.args
    weight, bias = (_np(t) for t in (rest + [None, None])[:2])
    return None, lambda x: layer_norm(x, tuple(shape), weight, bias, **sample.kwargs)


def _group_norm(sample):
    (G,) = sample.args
    kw = {name: _np(v) if name in ("weight", "bias") else v for name, v in sample.kwargs.items()}
    return 1, lambda x: group_norm(x, G, **kw)


def _instance_norm(sample):
    kw = dict(sample.kwargs)
    mean, var = _np(kw.pop("running_mean", None)), _np(kw.pop("running_var", None))  # copies before PyTorch updates them
    state = None if mean is None else {"mean": mean, "var": var}
    weight, bias = _np(kw.pop("weight", None)), _np(kw.pop("bias", None))
    call = lambda x: instance_norm(x, weight, bias, state=state, **kw)  # noqa: E731
    if state is None:
        return 1, call
    after = lambda: {"mean": _np(sample.kwargs["running_mean"]), "var": _np(sample.kwargs["running_var"])}  # noqa: E731
    return 1, call, after


def _interpolate(sample):
    kw = dict(sample.kwargs)
    size = sample.args[0] if sample.args else kw.get("size")
    factor = kw.get("scale_factor")
    if kw.get("recompute_scale_factor") and factor is not None:  # PyTorch then reads the sizes ⌊n·s⌋ as given
        spatial = sample.input.shape[2:]
        factors = factor if isinstance(factor, (tuple, list)) else (factor,) * len(spatial)
        size, factor = tuple(math.floor(n * f) for n, f in zip(spatial, factors)), None
    return 1, lambda x: upsample(x, scale_factor=factor, size=size, mode=kw.get("mode", "nearest"), align_corners=kw.get("align_corners"))


def _pixel(ours):
    def adapt(sample):
        return sample.input.ndim - 3, lambda x: ours(x, *sample.args, *sample.kwargs.values())

    return adapt


ADAPTERS = {
    "max_pool1d": _max_pool(max_pool1d, 1),
    "max_pool3d": _max_pool(max_pool3d, 3),
    "avg_pool1d": _avg_pool(avg_pool1d, 1),
    "avg_pool3d": _avg_pool(avg_pool3d, 3),
    "adaptive_avg_pool1d": _adaptive(adaptive_avg_pool1d, 1),
    "adaptive_avg_pool3d": _adaptive(adaptive_avg_pool3d, 3),
    "adaptive_max_pool1d": _adaptive(adaptive_max_pool1d, 1),
    "adaptive_max_pool3d": _adaptive(adaptive_max_pool3d, 3),
    "layer_norm": _layer_norm,
    "group_norm": _group_norm,
    "instance_norm": _instance_norm,
    "interpolate": _interpolate,
    "pixel_shuffle": _pixel(pixel_shuffle),
    "pixel_unshuffle": _pixel(pixel_unshuffle),
}
VARIANTS = {"interpolate": ["nearest", "nearest-exact", "linear", "bilinear", "trilinear", "bicubic", "area"]}
OPS = [(name, v) for name in ADAPTERS for v in VARIANTS.get(name, [""])]


def _last(a, axis):
    return a if axis is None or a is None else np.moveaxis(a, axis, -1)


def _close(a, b, grad=False):
    a, b = np.asarray(a), np.asarray(b)
    return a.shape == b.shape and np.allclose(a, b, equal_nan=True, **ref.tol(np.float64, grad=grad))


def run_samples(name, variant, limit=None):
    """Counter of samples, accepted, refused, forward and gradient (matching), and the failures, over every
    sample of the op, or `limit` of them spread evenly (the first and the last among them)."""
    (op,) = [o for o in _op_db() if o.name == f"nn.functional.{name}" and o.variant_test_name == variant]
    samples = list(op.sample_inputs("cpu", torch.float64, requires_grad=True))
    if limit is not None and limit < len(samples):
        samples = [samples[i] for i in np.linspace(0, len(samples) - 1, limit).round().astype(int)]
    counts, failures = Counter(), []
    rng = np.random.default_rng(0)
    for sample in samples:
        counts["samples"] += 1
        axis, call, *after = ADAPTERS[name](sample)
        xt = sample.input
        out_t = op.op(xt, *sample.args, **sample.kwargs)
        y_t, aux_t = out_t if isinstance(out_t, tuple) else (out_t, None)
        aux_t = after[0]() if after else _last(_np(aux_t), axis)
        x = _last(_np(xt), axis)
        where = (name, variant, tuple(xt.shape), sample.args, sample.kwargs)
        try:
            out = call(x)
        except (ValueError, TypeError) as e:
            counts["refused"] += 1
            if not re.match(r"^[a-z_0-9]+: ", str(e)):
                failures.append((*where, f"refused without jaxconv's message: {e!r}"))
            continue
        counts["accepted"] += 1
        y, aux = out if isinstance(out, tuple) else (out, None)
        same_aux = aux_t is None or all(_close(a, b) for a, b in zip(jax.tree.leaves(aux), jax.tree.leaves(aux_t)))
        if _close(y, _last(_np(y_t), axis)) and same_aux:
            counts["forward"] += 1
        else:
            failures.append((*where, "forward differs"))
        if not y_t.requires_grad or y_t.numel() == 0:
            counts["gradient"] += 1  # nothing to differentiate (an empty output)
            continue
        dy_t = torch.from_numpy(rng.standard_normal(tuple(y_t.shape)))
        (dx_t,) = torch.autograd.grad(y_t, xt, dy_t)
        first = lambda o: o[0] if isinstance(o, tuple) else o  # noqa: E731
        _, vjp = jax.vjp(lambda x: first(call(x)), x)
        if _close(vjp(_last(dy_t.numpy(), axis))[0], _last(_np(dx_t), axis), grad=True):
            counts["gradient"] += 1
        else:
            failures.append((*where, "gradient differs"))
    return counts, failures


def _check(name, variant, limit=None):
    counts, failures = run_samples(name, variant, limit)
    print(f"\n{name}{'/' + variant if variant else ''}: {dict(counts)}")
    assert counts["samples"] > 0
    assert not failures, failures[:5]
    assert counts["accepted"] + counts["refused"] == counts["samples"]
    assert counts["forward"] == counts["gradient"] == counts["accepted"]


# Each sample compiles anew: the default run takes the first of each op (and a refused one where the op refuses
# some), -m slow all of them.
SUBSET = 1
REFUSED = [("layer_norm", "", 1), ("group_norm", "", 4), ("instance_norm", "", 2), ("interpolate", "area", 0)]


@pytest.mark.parametrize("name, variant", OPS, ids=lambda v: v or None)
def test_opinfo_subset(name, variant):
    _check(name, variant, SUBSET)


@pytest.mark.parametrize("name, variant, i", REFUSED, ids=str)
def test_opinfo_refusals_name_the_op(name, variant, i):
    """Samples jaxconv refuses (a negative eps or momentum, an interpolation mode it lacks), each with its message."""
    (op,) = [o for o in _op_db() if o.name == f"nn.functional.{name}" and o.variant_test_name == variant]
    sample = list(op.sample_inputs("cpu", torch.float64, requires_grad=True))[i]
    axis, call, *_ = ADAPTERS[name](sample)
    with pytest.raises((ValueError, TypeError), match=r"^(layer_norm|group_norm|instance_norm|upsample): `(eps|momentum|mode)`|^upsample: unknown `mode`"):
        call(_last(_np(sample.input), axis))


@pytest.mark.slow
@pytest.mark.parametrize("name, variant", OPS, ids=lambda v: v or None)
def test_opinfo_every_sample(name, variant):
    _check(name, variant)
