"""PyTorch's own OpInfo sample inputs for the 2-D pools, run through jaxconv (NCHW -> NHWC).

For every sample of max_pool2d, avg_pool2d, adaptive_avg_pool2d and
adaptive_max_pool2d (float64) it counts: accepted by jaxconv, forward equal to
PyTorch's (values, and indices where asked), gradient equal to PyTorch's (a
random dY through both). Issue #12: jaxconv refused 2,474 of these before
ceil_mode, dilation, return_indices, divisor_override and adaptive pools.

    PYTHONPATH=$PWD python -m pytest -q -m slow tests/test_pool_opinfo.py -s   # prints the counts
"""

import sys
import types
import unittest
from collections import Counter

import jax
import numpy as np
import pytest

import reference as ref
from jaxconv import adaptive_avg_pool, adaptive_max_pool, avg_pool, max_pool

torch = pytest.importorskip("torch")


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


def _to_nhwc(a):
    return a.transpose(0, 2, 3, 1) if a.ndim == 4 else a.transpose(1, 2, 0)


def _max_pool2d(x, kernel_size, stride=None, padding=0, dilation=1, ceil_mode=False, return_indices=False):
    stride = None if stride is None or (isinstance(stride, (tuple, list)) and len(stride) == 0) else stride
    return max_pool(x, kernel_size, stride, padding, dilation=dilation, ceil_mode=ceil_mode, return_indices=return_indices)


def _avg_pool2d(x, kernel_size, stride=None, padding=0, ceil_mode=False, count_include_pad=True, divisor_override=None):
    stride = None if stride is None or (isinstance(stride, (tuple, list)) and len(stride) == 0) else stride
    return avg_pool(x, kernel_size, stride, padding, count_include_pad=count_include_pad, ceil_mode=ceil_mode,
                    divisor_override=divisor_override)


def _adaptive_max_pool2d(x, output_size, return_indices=False):
    return adaptive_max_pool(x, output_size, return_indices=return_indices)


OURS = {
    "nn.functional.max_pool2d": _max_pool2d,
    "nn.functional.avg_pool2d": _avg_pool2d,
    "nn.functional.adaptive_avg_pool2d": adaptive_avg_pool,
    "nn.functional.adaptive_max_pool2d": _adaptive_max_pool2d,
}


def _pair(v):
    """PyTorch's int-or-tuple argument in jaxconv's form: a 1-tuple (PyTorch repeats it) becomes its int."""
    if isinstance(v, (tuple, list)):
        return v[0] if len(v) == 1 else tuple(v)
    return v


def run_samples(name):
    """Counter of 'samples', 'accepted', 'forward', 'indices', 'gradient' (matching) for one op."""
    (op,) = [o for o in _op_db() if o.name == name]
    ours = OURS[name]
    counts, failures = Counter(), []
    rng = np.random.default_rng(0)
    for sample in op.sample_inputs("cpu", torch.float64, requires_grad=True):
        counts["samples"] += 1
        args = [_pair(a) for a in sample.args]
        kwargs = {k: _pair(v) for k, v in sample.kwargs.items()}
        xt = sample.input
        out_t = op.op(xt, *sample.args, **sample.kwargs)
        y_t, idx_t = out_t if isinstance(out_t, tuple) else (out_t, None)
        dy_t = torch.from_numpy(rng.standard_normal(tuple(y_t.shape)))
        (dx_t,) = torch.autograd.grad(y_t, xt, dy_t)
        x = _to_nhwc(xt.detach().numpy())
        dy = _to_nhwc(dy_t.numpy())
        try:
            out = ours(x, *args, **kwargs)
        except (ValueError, TypeError) as e:
            failures.append((name, args, kwargs, tuple(xt.shape), f"refused: {e}"))
            continue
        counts["accepted"] += 1
        y, idx = out if isinstance(out, tuple) else (out, None)
        if np.allclose(y, _to_nhwc(y_t.detach().numpy()), **ref.tol(np.float64)):
            counts["forward"] += 1
        else:
            failures.append((name, args, kwargs, tuple(xt.shape), "forward differs"))
        if idx_t is not None:
            if np.array_equal(idx, _to_nhwc(idx_t.numpy())):
                counts["indices"] += 1
            else:
                failures.append((name, args, kwargs, tuple(xt.shape), "indices differ"))
        _, vjp = jax.vjp(lambda x: (lambda o: o[0] if isinstance(o, tuple) else o)(ours(x, *args, **kwargs)), x)
        if np.allclose(vjp(dy)[0], _to_nhwc(dx_t.numpy()), **ref.tol(np.float64, grad=True)):
            counts["gradient"] += 1
        else:
            failures.append((name, args, kwargs, tuple(xt.shape), "gradient differs"))
    return counts, failures


@pytest.mark.slow
@pytest.mark.parametrize("name", list(OURS))
def test_torch_opinfo_samples(name):
    counts, failures = run_samples(name)
    print(f"\n{name}: {dict(counts)}")
    assert counts["samples"] > 0
    assert not failures, failures[:5]
    assert counts["accepted"] == counts["forward"] == counts["gradient"] == counts["samples"]
