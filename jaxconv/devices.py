"""Use every CPU core: one JAX CPU device per core, configured before JAX starts.

XLA's CPU convolution and its elementwise loops run on one core; a matmul
uses all of them. Splitting the batch over several CPU devices (one per
core) lets the single-threaded parts run side by side, with the same
sharding machinery as multi-GPU data parallelism:

    from jaxconv.devices import cpu_devices
    cpu_devices()                    # first, before any JAX computation
    import jax
    jax.devices()                    # [CpuDevice(id=0), CpuDevice(id=1), ...]

Then shard the batch over a mesh axis "data" and replicate the params
(`jaxconv.parallel`, or jax.sharding by hand: experiments/benchmark.py).
The command-line equivalent, for programs you do not edit, is the environment
variable XLA_FLAGS=--xla_force_host_platform_device_count=N.
"""

from __future__ import annotations

import os

import jax


def _backends_initialized() -> bool:
    try:
        from jax._src import xla_bridge
    except ImportError:  # pragma: no cover - private module moved; assume not started
        return False
    return bool(xla_bridge.backends_are_initialized())


def cpu_devices(n: int | None = None) -> int:
    """Make JAX's CPU backend expose `n` devices (default: one per core). Returns n.

    Must run before JAX initialises its backends, i.e. before the first JAX
    computation, `jax.devices()` or array creation in this process. Calling it
    again afterwards with the number JAX already has is a no-op.

    Raises:
      ValueError: n is not an int >= 1.
      RuntimeError: JAX's backends are already initialised with another number
        of CPU devices (the count cannot change inside a running process).
    """
    if n is None:
        n = os.cpu_count() or 1
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ValueError(f"cpu_devices: `n` must be an int >= 1 (CPU devices to create), got {n!r}.")
    if _backends_initialized():
        have = len(jax.devices("cpu"))
        if have == n:
            return n
        raise RuntimeError(
            f"cpu_devices: JAX has already started with {have} CPU device(s), so it cannot switch to n={n}; "
            f"call cpu_devices({n}) before the first JAX computation in this process "
            f"(right after the imports), or start Python with "
            f"XLA_FLAGS=--xla_force_host_platform_device_count={n}."
        )
    jax.config.update("jax_num_cpu_devices", n)
    return n
