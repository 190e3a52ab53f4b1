"""Data-parallel training over devices and hosts, on jax.sharding and jax.distributed.

    mesh = data_mesh()                                  # every device, one axis "data"
    step = make_parallel_train_step(model.apply, optax.adam(1e-3), mesh=mesh)
    params, opt_state = replicate(mesh, (params, opt_state))
    for xb, yb in batches:                              # global batches of B examples
        xb, yb = shard_batch(mesh, *take_process_rows(mesh, xb, yb))
        params, opt_state, metrics = step(params, opt_state, xb, yb)

The batch axis m is split over the mesh axis "data" (NamedSharding(mesh,
P("data"))): with D devices each holds m/D examples. Params and optimizer
state are replicated (NamedSharding(mesh, P())). The step is the ordinary
single-device step from `jaxconv.train`, compiled by jax.jit with these
shardings; XLA's SPMD partitioner inserts the all-reduce that averages the
per-device gradients, so there is no hand-written collective and no pmap.

Several processes (one per host, or per GPU): call `initialize_distributed`
before anything else touches JAX. Then `jax.devices()` lists the devices of
every process, the mesh spans them all, each process feeds only its own rows
of each global batch (`process_slice`), and every process ends each step with
the same replicated params. Write metrics and checkpoints only where
`is_primary()`; `to_host` gathers params to numpy in any run, so a checkpoint
from a sharded run restores on one device and the other way round.
"""

from __future__ import annotations

import os
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from jaxconv._args import integer
from jaxconv import compile as compiling
from jaxconv.nn import softmax_cross_entropy
from jaxconv.train import make_train_step

DATA_AXIS = "data"  # the one mesh axis: the batch axis m is split along it

ENV_COORDINATOR = "JAXCONV_COORDINATOR"  # host:port of process 0, or "auto" (TPU pods, Slurm, Open MPI)
ENV_NUM_PROCESSES = "JAXCONV_NUM_PROCESSES"
ENV_PROCESS_ID = "JAXCONV_PROCESS_ID"

_CPU_DEVICES_HINT = (
    "on CPU, set XLA_FLAGS=--xla_force_host_platform_device_count=N in the environment "
    "before JAX starts (or call jax.config.update('jax_num_cpu_devices', N) first) to get N CPU devices"
)


# ----------------------------------------------------------------------------- processes


def _int_arg(value, name: str, op: str, *, minimum: int) -> int:
    """`value` as an int >= minimum: ints, NumPy/JAX integer scalars, or integer strings (from the environment)."""
    if isinstance(value, str):
        try:
            value = int(value.strip())
        except ValueError:
            raise ValueError(f"{op}: `{name}` must be an integer, got {value!r}.") from None
    return integer(value, name, op, minimum=minimum)


def _check_coordinator(address: str, op: str) -> str:
    host, sep, port = address.strip().rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(
            f"{op}: `coordinator` must be HOST:PORT of process 0 (e.g. 10.0.0.1:1234), "
            f"with a port in 1..65535, got {address!r}."
        )
    return address.strip()


def _set_cpu_collectives(name: str) -> None:
    # Only the CPU client reads this, when it starts, so it is set before any JAX
    # computation. jax 0.10.2 already defaults to gloo; setting it explicitly keeps
    # multi-process CPU runs working where a version's default differs.
    jax.config.update("jax_cpu_collectives_implementation", name)


def initialize_distributed(
    coordinator: str | None = None,
    num_processes: int | None = None,
    process_id: int | None = None,
    local_device_ids=None,
    *,
    cpu_collectives: str = "gloo",
    timeout_s: int = 300,
) -> bool:
    """Join this process to a multi-process run (`jax.distributed.initialize`), if one is asked for.

    Each argument left as None falls back to its environment variable
    (JAXCONV_COORDINATOR, JAXCONV_NUM_PROCESSES, JAXCONV_PROCESS_ID). With
    nothing set this is a single-process run: it does nothing and returns
    False. coordinator="auto" lets JAX detect the cluster (Cloud TPU pods,
    Slurm, Open MPI) and needs no other argument.

    Args:
      coordinator: "HOST:PORT" where process 0 serves the coordinator; every
        process passes the same address.
      num_processes: total number of processes N.
      process_id: this process's id, 0 <= process_id < N.
      local_device_ids: restrict this process to these local GPU ids (one GPU
        per process); None: all local devices.
      cpu_collectives: cross-process collectives on CPU ("gloo" or "mpi"); set
        here because it must be chosen before the CPU backend starts.
      timeout_s: how long to wait for all processes to join.

    Must run before any JAX computation (even jax.devices()). Returns True when
    the distributed system was initialised.
    """
    op = "initialize_distributed"
    coordinator = coordinator if coordinator is not None else os.environ.get(ENV_COORDINATOR) or None
    num_processes = num_processes if num_processes is not None else os.environ.get(ENV_NUM_PROCESSES) or None
    process_id = process_id if process_id is not None else os.environ.get(ENV_PROCESS_ID) or None
    if cpu_collectives not in ("gloo", "mpi"):
        raise ValueError(f"{op}: `cpu_collectives` must be one of ['gloo', 'mpi'], got {cpu_collectives!r}.")
    if jax.distributed.is_initialized():
        raise RuntimeError(f"{op}: jax.distributed is already initialised in this process; call it once, at start-up.")
    if coordinator is None and num_processes is None and process_id is None:
        return False  # single process
    if coordinator is not None and coordinator.strip() == "auto":
        _set_cpu_collectives(cpu_collectives)
        jax.distributed.initialize(initialization_timeout=timeout_s)
        return True
    missing = [
        f"`{name}` (or ${env})"
        for name, env, value in [
            ("coordinator", ENV_COORDINATOR, coordinator),
            ("num_processes", ENV_NUM_PROCESSES, num_processes),
            ("process_id", ENV_PROCESS_ID, process_id),
        ]
        if value is None
    ]
    if missing:
        raise ValueError(
            f"{op}: a multi-process run needs the coordinator address, the number of processes and this "
            f"process's id; missing {', '.join(missing)}. Pass all three (or coordinator='auto' on a TPU pod or Slurm)."
        )
    coordinator = _check_coordinator(coordinator, op)
    num_processes = _int_arg(num_processes, "num_processes", op, minimum=1)
    process_id = _int_arg(process_id, "process_id", op, minimum=0)
    if process_id >= num_processes:
        raise ValueError(
            f"{op}: `process_id` (={process_id}) must be < `num_processes` (={num_processes}); "
            f"number the processes 0..{num_processes - 1}."
        )
    _set_cpu_collectives(cpu_collectives)
    jax.distributed.initialize(
        coordinator_address=coordinator,
        num_processes=num_processes,
        process_id=process_id,
        local_device_ids=local_device_ids,
        initialization_timeout=timeout_s,
    )
    return True


def is_primary() -> bool:
    """True in process 0: the one process that prints metrics and writes checkpoints."""
    return jax.process_index() == 0


# ----------------------------------------------------------------------------- mesh


def data_mesh(n_devices: int | None = None) -> Mesh:
    """A 1-D Mesh with axis "data" over n_devices devices (default: every device of every process).

    With several processes, n_devices must be a multiple of the process count;
    each process contributes its first n_devices / jax.process_count() local
    devices, so every process feeds the same number of rows.
    """
    op = "data_mesh"
    devices = jax.devices()  # global: every process's devices
    available, n_proc = len(devices), jax.process_count()
    if n_devices is None:
        n_devices = available
    n_devices = _int_arg(n_devices, "n_devices", op, minimum=1)
    if n_devices > available:
        raise ValueError(
            f"{op}: `n_devices` (={n_devices}) is more than the {available} {devices[0].platform} device(s) "
            f"available; pass n_devices <= {available}, or {_CPU_DEVICES_HINT}."
        )
    if n_proc == 1:
        chosen = devices[:n_devices]
    else:
        if n_devices % n_proc:
            raise ValueError(
                f"{op}: `n_devices` (={n_devices}) must be a multiple of the number of processes (={n_proc}) "
                f"so that each process feeds the same number of devices."
            )
        per_process = n_devices // n_proc
        by_process = {}
        for d in devices:
            by_process.setdefault(d.process_index, []).append(d)
        short = {p: len(ds) for p, ds in by_process.items() if len(ds) < per_process}
        if short:
            raise ValueError(
                f"{op}: `n_devices` (={n_devices}) needs {per_process} devices in each of the {n_proc} "
                f"processes, but these processes have fewer: {short}."
            )
        chosen = [d for p in sorted(by_process) for d in by_process[p][:per_process]]
    return Mesh(np.array(chosen), (DATA_AXIS,))


def check_batch_size(batch_size: int, mesh) -> int:
    """`batch_size` if it splits evenly over the mesh's devices, else a ValueError listing sizes that do.

    mesh: a Mesh, or the number of devices D as an int.
    """
    batch_size = _int_arg(batch_size, "batch_size", "check_batch_size", minimum=1)
    n = mesh.size if isinstance(mesh, Mesh) else _int_arg(mesh, "mesh", "check_batch_size", minimum=1)
    if batch_size % n:
        below = batch_size // n * n
        above = below + n
        near = f"{below} or {above}" if below else f"{above}"
        raise ValueError(
            f"`batch_size` (={batch_size}) must be a multiple of the number of devices (={n}) so that every "
            f"device gets the same number of examples; use {near} (any multiple of {n}), "
            f"or change the number of devices."
        )
    return batch_size


def batch_sharding(mesh: Mesh) -> NamedSharding:
    """Split the first (batch) axis over "data", keep the other axes whole."""
    return NamedSharding(mesh, P(DATA_AXIS))


def replicated_sharding(mesh: Mesh) -> NamedSharding:
    """A full copy on every device of the mesh."""
    return NamedSharding(mesh, P())


# ----------------------------------------------------------------------------- data


def process_slice(mesh: Mesh, global_batch_size: int) -> slice:
    """Rows [start, stop) of each global batch that this process loads.

    Read from the batch sharding itself, so it is right for any device order.
    With one process it is the whole batch.
    """
    global_batch_size = check_batch_size(global_batch_size, mesh)
    indices = batch_sharding(mesh).addressable_devices_indices_map((global_batch_size,))
    rows = sorted((idx[0].start or 0, idx[0].stop if idx[0].stop is not None else global_batch_size) for idx in indices.values())
    start, stop = rows[0][0], rows[-1][1]
    if sum(b - a for a, b in set(rows)) != stop - start:  # pragma: no cover - only for exotic device orders
        raise ValueError(f"process_slice: this process's rows {rows} are not one contiguous block.")
    return slice(start, stop)


def take_process_rows(mesh: Mesh, x, y):
    """This process's rows of a global batch (x, y); the whole batch with one process.

    x: (m, n_H, n_W, n_C), y: (m,) or (m, K). Returns (x[rows], y[rows]).
    """
    rows = process_slice(mesh, len(x))
    return x[rows], y[rows]


def shard_batch(mesh: Mesh, x, y):
    """Global arrays (x, y) split along "data" from this process's rows.

    x: (m_local, n_H, n_W, n_C), y: (m_local,) or (m_local, K): host (numpy)
    arrays holding this process's rows `process_slice(mesh, m)` of the global
    batch of m = m_local · jax.process_count() examples (all m rows with one
    process). Returns jax.Arrays of global shape (m, ...) where each device
    holds m / mesh.size rows.
    """
    x, y = np.asarray(x), np.asarray(y)
    if len(x) != len(y):
        raise ValueError(f"shard_batch: `x` and `y` must hold the same rows, got {len(x)} and {len(y)}.")
    n_local = len(mesh.local_devices)
    if len(x) % n_local:
        raise ValueError(
            f"shard_batch: this process feeds {n_local} device(s) but got {len(x)} rows, not a multiple of "
            f"{n_local}; make the global batch size a multiple of the number of devices (={mesh.size}) "
            f"and pass this process's rows, x[process_slice(mesh, batch_size)]."
        )
    sharding = batch_sharding(mesh)
    return (
        jax.make_array_from_process_local_data(sharding, x),
        jax.make_array_from_process_local_data(sharding, y),
    )


# ----------------------------------------------------------------------------- params


def replicate(mesh: Mesh, tree):
    """A copy of every leaf of `tree` (params, opt_state) on every device of the mesh.

    Every process must pass the same values (e.g. initialised from the same key,
    or loaded from the same checkpoint). The copies are new buffers, so `tree`
    stays valid when the step donates the replicas.
    """
    sharding = replicated_sharding(mesh)
    if mesh.is_multi_process:  # device_put cannot reach other processes' devices
        def put(leaf):
            leaf = np.asarray(leaf)
            return jax.make_array_from_callback(leaf.shape, sharding, lambda index: leaf[index])

        return jax.tree_util.tree_map(put, tree)
    # Copy first: device_put keeps the caller's buffer as the device-0 replica
    # (even with may_alias=False in jax 0.10.2), and a donating step would delete it.
    return jax.device_put(jax.tree_util.tree_map(jnp.array, tree), sharding)


def to_host(tree):
    """Every leaf of `tree` as a numpy array, from a sharded or unsharded, one- or multi-process run.

    Replicated leaves are read from this process's own copy; leaves split over
    several processes are all-gathered (every process must call this then).
    Use it before saving a checkpoint: the result loads into any run.
    """

    def get(leaf):
        if isinstance(leaf, jax.Array) and not leaf.is_fully_addressable and not leaf.is_fully_replicated:
            from jax.experimental import multihost_utils

            return np.asarray(multihost_utils.process_allgather(leaf, tiled=True))
        return np.asarray(leaf)

    return jax.tree_util.tree_map(get, tree)


# ----------------------------------------------------------------------------- step


def make_parallel_train_step(
    apply: Callable,
    optimizer: optax.GradientTransformation,
    loss: Callable = softmax_cross_entropy,
    *,
    mesh: Mesh,
    ensemble: bool = False,
    chunk_size="auto",
    donate: bool = True,
    stateful: bool = False,
) -> Callable:
    """The `jaxconv.train` step compiled for a data-parallel mesh.

    step(params, opt_state, x, y) -> (params, opt_state, metrics), as in
    `make_train_step`: params and opt_state replicated (`replicate`), x
    (m, n_H, n_W, n_C) and y (m,) split over "data" (`shard_batch`; host numpy
    batches also work in a one-process run and are split on the way in).
    Each device computes the gradient of its m/D examples' share of
    J = (1/m) Σᵢ L⁽ⁱ⁾, and the all-reduce XLA inserts sums them: the update
    equals the one-device update on the whole batch, up to float rounding.

    stateful=True (models with BatchNorm / Dropout): step(params, opt_state, x, y,
    state, key) -> (params, opt_state, metrics, state), positional, state
    replicated. BatchNorm's batch statistics are over the GLOBAL batch: under jit
    the mean over the sharded batch axis is a global mean (XLA all-reduces it), so
    the step equals the one-device step on the whole batch.

    chunk_size: as in `make_train_step`, counted in examples of the whole
    (global) batch: "auto" accumulates the gradient over chunks of 128 on CPU
    (64 per device on 2 devices; docs/benchmarks.md#auto-chunk), never on
    GPU/TPU. Chunks are strided, so each
    holds rows of every device's shard and all devices work on every chunk.
    """
    step = make_train_step(apply, optimizer, loss, ensemble=ensemble, chunk_size=chunk_size, jit=False)
    data, whole = batch_sharding(mesh), replicated_sharding(mesh)
    if stateful:
        return compiling.jit(
            lambda params, opt_state, x, y, state, key: step(params, opt_state, x, y, state=state, key=key),
            in_shardings=(whole, whole, data, data, whole, whole),
            out_shardings=(whole, whole, whole, whole),
            donate_argnums=(0, 1) if donate else (),
        )
    return compiling.jit(
        step,
        in_shardings=(whole, whole, data, data),  # shardings broadcast over the params / opt_state pytrees
        out_shardings=(whole, whole, whole),
        donate_argnums=(0, 1) if donate else (),
    )
