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

`reuse_host_memory()` keeps the host's freed memory for the next step instead of
handing it back to the kernel (glibc); `jaxconv train` and the experiments call it.
`compile_cache()` keeps compiled programs on disk for the next process (`jaxconv
train` turns it on).
"""

from __future__ import annotations

import ctypes
import ctypes.util
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


_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3  # glibc's mallopt parameters (malloc.h)
_MALLOC_ENV = ("MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_", "GLIBC_TUNABLES")


def reuse_host_memory(limit: int = 2**31 - 1) -> bool:
    """Let glibc's malloc reuse freed blocks of up to `limit` bytes instead of mapping fresh pages each time.

    XLA's CPU executables allocate their temporary buffer on every call. glibc
    serves blocks above its mmap threshold (at most 32 MiB by default) with a
    fresh mmap and unmaps them on free, so each training step page-faults its
    whole working set in again and the kernel zeroes it. A LeNet-5 step at batch
    512 spends a large share of its time there, and this call takes it back
    (docs/benchmarks.md#reuse-host-memory); ResNet-20's working set is larger
    still. Raising the mmap and trim thresholds keeps the blocks in the
    heap for the next step; the process's resident memory stays at its peak
    instead of shrinking between steps.

    Process-wide and harmless to repeat; call it once, early (the CLI,
    experiments/ and `benchmark.py` do, for every contender in the process).
    Leaves malloc alone when the environment already tunes it
    (MALLOC_MMAP_THRESHOLD_, MALLOC_TRIM_THRESHOLD_, GLIBC_TUNABLES) and on
    C libraries without glibc's `mallopt` (macOS, musl).
    Returns True when the thresholds were set.
    """
    if isinstance(limit, bool) or not isinstance(limit, int) or not 0 < limit < 2**31:
        raise ValueError(f"reuse_host_memory: `limit` must be an int in [1, 2**31 - 1] bytes (mallopt takes a C int), got {limit!r}.")
    if any(name in os.environ for name in _MALLOC_ENV):
        return False
    try:
        mallopt = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6").mallopt
        gnu = ctypes.CDLL(None).gnu_get_libc_version  # glibc only: musl's mallopt is a no-op
    except (OSError, AttributeError):
        return False
    del gnu
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    return mallopt(_M_MMAP_THRESHOLD, limit) == 1 and mallopt(_M_TRIM_THRESHOLD, limit) == 1


def compile_cache(path: str | None = None, min_compile_s: float = 0.0) -> str | None:
    """Keep compiled XLA programs on disk, so the next process with the same step loads instead of compiling it.

    JAX's persistent compilation cache, in `path` (default
    $XDG_CACHE_HOME/jaxconv/xla, else ~/.cache/jaxconv/xla), for programs that
    took at least `min_compile_s` to compile. A cache the user configured already
    (JAX_COMPILATION_CACHE_DIR, or jax_compilation_cache_dir) is kept as it is.
    `jaxconv train` calls this unless given --no-compile-cache: a second run of
    the same job skips the compilation of its train and eval steps
    (docs/benchmarks.md#compile-cache). Returns the directory in use, or None when
    it cannot be created (the run then compiles as usual).
    """
    configured = os.environ.get("JAX_COMPILATION_CACHE_DIR") or jax.config.jax_compilation_cache_dir
    if configured:
        return configured
    if path is None:
        path = os.path.join(os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache"), "jaxconv", "xla")
    try:
        os.makedirs(path, exist_ok=True)
    except OSError:
        return None
    jax.config.update("jax_compilation_cache_dir", path)
    jax.config.update("jax_persistent_cache_min_compile_time_secs", min_compile_s)
    return path
