"""How jaxconv compiles its steps: `jit`, the XLA options it passes, and how lax's convolutions are differentiated.

`jit(fun)` is `jax.jit(fun, compiler_options=compiler_options())`: the programs
that `impl="auto"` was tuned for. Use it, or pass `compiler_options()` to your
own `jax.jit`, to get the same programs as `jaxconv.train`'s steps. Nothing
here sets a process-wide flag: the options travel with each compiled program.
"""

from __future__ import annotations

import functools
import inspect

import jax
import jax.numpy as jnp

# XLA:CPU's libraries for jaxconv's programs: dots and reductions on YNNPACK, convolutions on XLA's own
# multi-threaded runtime (jaxlib's default gives YNNPACK the convolutions too, which ran wide layers on one core).
# Benchmark: docs/benchmarks.md#xla-libs.
CPU_LIBRARY_FUSION_TYPES = "LIBRARY_FUSION_TYPE_INDIVIDUAL_DOT,LIBRARY_FUSION_TYPE_REDUCE"

# Backends on which `impl="lax"` takes its gradient from x and dZ as buffers (`conv.buffers.lax_conv`) instead of
# letting XLA recompute the BatchNorm/ReLU/residual chains that produce them inside the weight gradient's
# transposes. Not on GPU/TPU, where the buffers' cond costs a round trip and XLA fuses differently.
# Benchmark: docs/benchmarks.md#lax-buffers.
LAX_GRAD_ON_BUFFERS_BACKENDS = ("cpu",)

_YNN_OPTION = "xla_cpu_experimental_ynn_fusion_type"
_JIT_TAKES_OPTIONS = "compiler_options" in inspect.signature(jax.jit).parameters  # jax >= 0.4.36 or so


def compiler_options(backend: str | None = None, *, fusion_types: str | None = CPU_LIBRARY_FUSION_TYPES) -> dict | None:
    """XLA compiler options for jaxconv's compiled steps (`jax.jit(..., compiler_options=...)`), or None.

    On CPU: which XLA:CPU library runs what (`fusion_types`, default
    `CPU_LIBRARY_FUSION_TYPES`): lax's convolutions go to XLA's own runtime,
    which spreads one convolution over every core. None on GPU/TPU, when
    `fusion_types` is None, and when this jaxlib does not know the
    (experimental) option: then XLA's defaults apply.

    >>> compiler_options("gpu") is None
    True
    """
    if fusion_types is None or (backend or jax.default_backend()) != "cpu" or not _JIT_TAKES_OPTIONS:
        return None
    if not _known(_YNN_OPTION, fusion_types):
        return None
    return {_YNN_OPTION: fusion_types}


def lax_grad_on_buffers(backend: str | None = None) -> bool:
    """Whether `impl="lax"` convolutions take their gradient from buffers on `backend` (default: JAX's backend).

    True on the backends in `LAX_GRAD_ON_BUFFERS_BACKENDS` (CPU). Read at trace time.
    """
    return (backend or jax.default_backend()) in LAX_GRAD_ON_BUFFERS_BACKENDS


def jit(fun, **kwargs):
    """`jax.jit(fun, **kwargs)` with `compiler_options()` when there are any: how jaxconv compiles its steps."""
    options = compiler_options()
    return jax.jit(fun, **kwargs) if options is None else jax.jit(fun, compiler_options=options, **kwargs)


@functools.lru_cache(maxsize=None)
def _known(option: str, value: str) -> bool:
    """Whether this jaxlib's CPU compiler accepts `option`=`value` (one tiny compile, once per process)."""
    try:
        # a shape, not an array: this may run while another function is being traced (conv.policy.resolve_impl)
        jax.jit(lambda x: x + 1).lower(jax.ShapeDtypeStruct((1,), jnp.float32)).compile(compiler_options={option: value})
    except Exception:  # noqa: BLE001  (jaxlib raises XlaRuntimeError / ValueError for an unknown option or value)
        return False
    return True
