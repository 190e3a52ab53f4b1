"""PyTorch's own OpInfo sample inputs for conv1d, conv3d, conv_transpose1d and conv_transpose3d, run through jaxconv.

For every sample (float64; channels-first moved last, OIW/OIDHW filters to WIO/DHWIO,
unbatched inputs as one example) and each impl it counts: accepted by jaxconv, forward
equal to PyTorch's, gradient with respect to x, w and b equal to PyTorch's (a random dY
through both), and refused with a message naming the op. Issue #26: jaxconv had no op
for any of these 50 samples.

    PYTHONPATH=$PWD python -m pytest -q -m slow tests/test_conv_nd_opinfo.py -s   # prints the counts
"""

import sys
import types
import unittest
from collections import Counter

import jax
import numpy as np
import pytest

import reference as ref
from jaxconv import conv1d, conv3d, conv_transpose1d, conv_transpose3d

torch = pytest.importorskip("torch")

OURS = {
    "nn.functional.conv1d": conv1d,
    "nn.functional.conv3d": conv3d,
    "nn.functional.conv_transpose1d": conv_transpose1d,
    "nn.functional.conv_transpose3d": conv_transpose3d,
}
# PyTorch's positional arguments after (input, weight, bias), in order.
POSITIONAL = {
    "nn.functional.conv1d": ("stride", "padding", "dilation", "groups"),
    "nn.functional.conv3d": ("stride", "padding", "dilation", "groups"),
    "nn.functional.conv_transpose1d": ("stride", "padding", "output_padding", "groups", "dilation"),
    "nn.functional.conv_transpose3d": ("stride", "padding", "output_padding", "groups", "dilation"),
}


def _op_db():
    """torch's op_db; its test harness imports `expecttest`, a test-only package: stubbed when missing."""
    try:
        import expecttest  # noqa: F401
    except ImportError:
        stub = types.ModuleType("expecttest")
        stub.TestCase = unittest.TestCase
        sys.modules["expecttest"] = stub
    from torch.testing._internal.common_methods_invocations import op_db

    return op_db


def _channels_last(a, batched):
    return np.moveaxis(a, 1 if batched else 0, -1)


def _filter(w):
    """OIW / OIDHW (or a transposed op's (in, out/G, *f)) to WIO / DHWIO: spatial axes first, then axis 1, then axis 0."""
    return np.moveaxis(w, (0, 1), (-1, -2))


def run_samples(name, impl):
    """Counter of 'samples', 'accepted', 'forward', 'gradient' (matching) and 'refused' for one op and impl."""
    (op,) = [o for o in _op_db() if o.name == name]
    counts, failures = Counter(), []
    rng = np.random.default_rng(0)
    for sample in op.sample_inputs("cpu", torch.float64, requires_grad=True):
        counts["samples"] += 1
        wt, bt, *rest = sample.args
        kwargs = dict(zip(POSITIONAL[name], rest), **sample.kwargs)
        xt = sample.input
        yt = op.op(xt, wt, bt, *rest, **sample.kwargs)
        dy_t = torch.from_numpy(rng.standard_normal(tuple(yt.shape)))
        wrt = [t for t in (xt, wt, bt) if t is not None]
        grads_t = [g.numpy() for g in torch.autograd.grad(yt, wrt, dy_t)]
        batched = xt.ndim == wt.ndim
        x, w = _channels_last(xt.detach().numpy(), batched), _filter(wt.detach().numpy())
        b = None if bt is None else bt.detach().numpy()
        try:
            y, vjp = jax.vjp(lambda x, w, b: OURS[name](x, w, b, impl=impl, **kwargs), x, w, b)
        except (ValueError, TypeError) as e:
            assert str(e).startswith(name.split(".")[-1] + ":"), e
            counts["refused"] += 1
            failures.append((name, kwargs, tuple(xt.shape), f"refused: {e}"))
            continue
        counts["accepted"] += 1
        if np.allclose(y, _channels_last(yt.detach().numpy(), batched), **ref.tol(np.float64)):
            counts["forward"] += 1
        else:
            failures.append((name, kwargs, tuple(xt.shape), "forward differs"))
        dx, dw, db = vjp(_channels_last(dy_t.numpy(), batched))
        ours = [dx, dw] + ([db] if b is not None else [])
        theirs = [_channels_last(grads_t[0], batched), _filter(grads_t[1])] + grads_t[2:]
        if all(np.allclose(a, c, **ref.tol(np.float64, grad=True)) for a, c in zip(ours, theirs)):
            counts["gradient"] += 1
        else:
            failures.append((name, kwargs, tuple(xt.shape), "gradient differs"))
    return counts, failures


@pytest.mark.slow
@pytest.mark.parametrize("impl", ["lax", "hand"])
@pytest.mark.parametrize("name", list(OURS))
def test_torch_opinfo_samples(name, impl):
    counts, failures = run_samples(name, impl)
    print(f"\n{name} impl={impl}: {dict(counts)}")
    assert counts["samples"] > 0
    assert not failures, failures[:5]
    assert counts["accepted"] == counts["forward"] == counts["gradient"] == counts["samples"]
