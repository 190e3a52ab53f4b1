"""Test configuration: float64 on, and one compilation cache for the whole run.

float64: the float64 references and finite differences need it. Layers follow
JAX's default float dtype, so models built in the tests are float64 unless a
test passes `dtype=jnp.float32` (the tests of float32 behaviour do).

Compilation cache: JAX compiles every new function and shape, and many tests
build the same step (LeNet-5's, say) again, in this process or in the
`jaxconv train` subprocesses they start. A persistent cache in a temporary
folder, shared through the environment with those subprocesses, compiles each
program once per test run. It changes no result: a cached executable is the
one XLA would compile again.
"""

import atexit
import os
import shutil
import tempfile

import jax

jax.config.update("jax_enable_x64", True)

if "xla_backend_optimization_level" not in os.environ.get("XLA_FLAGS", ""):  # before any backend starts
    os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " --xla_backend_optimization_level=0").strip()

if "JAX_COMPILATION_CACHE_DIR" not in os.environ:
    _cache = tempfile.mkdtemp(prefix="jaxconv-test-cache-")
    atexit.register(shutil.rmtree, _cache, ignore_errors=True)
    os.environ["JAX_COMPILATION_CACHE_DIR"] = _cache  # read by subprocesses' JAX at start
    os.environ["JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS"] = "0.2"
    jax.config.update("jax_compilation_cache_dir", _cache)
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.2)


import pytest  # noqa: E402  (after the configuration above, which must precede any JAX computation)


@pytest.fixture
def interrupt_at_step(monkeypatch):
    """interrupt_at_step(n, message=None): the n-th training step of `fit` raises KeyboardInterrupt (a crash or a
    Ctrl-C mid-epoch, raised as the loop calls its compiled step, `steps.loop_step`'s). Returns a function that takes
    the fault away."""
    from jaxconv import steps

    real_loop_step = steps.loop_step

    def arm(n, message=None):
        calls = []

        def loop_step(*args):
            run = real_loop_step(*args)

            def interrupted(*step_args):
                calls.append(1)
                if len(calls) == n:
                    raise KeyboardInterrupt(*([message] if message else []))
                return run(*step_args)

            return interrupted

        monkeypatch.setattr(steps, "loop_step", loop_step)
        return lambda: monkeypatch.setattr(steps, "loop_step", real_loop_step)

    return arm


def pytest_collection_modifyitems(config, items):
    """Mark the tests listed in tests/slow_tier.txt `slow` (see that file for why they are there)."""
    listed = os.path.join(os.path.dirname(__file__), "slow_tier.txt")
    with open(listed) as f:
        slow = {line.strip() for line in f if line.strip() and not line.startswith("#")}
    for item in items:
        node = item.nodeid.split("tests/", 1)[-1]
        if node in slow:
            item.add_marker(pytest.mark.slow)
