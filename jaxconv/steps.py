"""The compiled pieces of `jaxconv train`'s loop: the run's keys, the first weights, and the per-step program.

The training set lives on the device; each step's batch is cut from it and
shifted there (`data.cut_batch`) by the epoch's host-side draws
(`data.epoch_draws`), inside the step's own program, so the host queues steps
without waiting for them.
"""

from __future__ import annotations

import functools

import jax

from jaxconv import compile as compiling
from jaxconv import data, parallel
from jaxconv.train import make_train_step, stack_params


KEY_SEEDS = 2**32  # jax.random.key takes a seed of 32 bits: larger seeds are folded into them (key_seed)


def key_seed(seed: int) -> int:
    """The run's seed as `jax.random.key` takes it: a seed in [-2**31, 2**31) as it is, any other int folded
    into that range modulo 2**32 (so seeds 2**32 apart start from the same weights; their data order, drawn
    from the whole seed by `data.epoch_draws`, differs)."""
    return (int(seed) + KEY_SEEDS // 2) % KEY_SEEDS - KEY_SEEDS // 2


def run_keys(seed: int):
    """The run's keys from its seed (any int, see `key_seed`), in one compiled program (eagerly, each key op
    would compile its own).

    Returns (root, init, dropout); step s draws its dropout masks from fold_in(dropout, s), so a resumed
    run draws what the uninterrupted one did. The data's shuffle and shifts come from the seed through
    NumPy (`data.epoch_draws`).
    """
    return _run_keys(key_seed(seed))


@jax.jit
def _run_keys(seed):
    root = jax.random.key(seed)
    return root, jax.random.fold_in(root, 0), jax.random.fold_in(root, 1)


fold_in = jax.jit(jax.random.fold_in)  # a sharded step's dropout key: one compiled call, not an eager dispatch


def init(model, optimizer, key, input_shape, ensemble, stateful=False):
    """Params, optimizer state and model state (None for models without train mode).

    For an ensemble, K of each stacked on a leading axis (the K states start equal).
    """
    keys = [key] if ensemble == 1 else jax.random.split(key, ensemble)  # (one split: two programs to compile)
    params = [model.init(k, input_shape)[1] for k in keys]
    params = params[0] if ensemble == 1 else stack_params(params)
    init_fn = optimizer.init if ensemble == 1 else jax.vmap(optimizer.init)
    opt_state = jax.jit(init_fn)(params)  # one compiled program, not one per parameter leaf and op
    state = None
    if stateful:
        state = model.init_state(input_shape)[1]  # BatchNorm: running mean 0, var 1
        state = state if ensemble == 1 else stack_params([state] * ensemble)
    return params, opt_state, state


def loop_step(raw_step, batch_size: int, max_shift: int, stateful: bool):
    """The loop's compiled step: cut batch k from the device-resident training set and train on it, in one program.

    `raw_step` is `make_train_step(..., jit=False)`; params and opt_state are donated as there.
    run(params, opt_state, x_all, y_all, order, shifts, k) -> (params, opt_state, metrics), and with
    `stateful`, run(..., k, state, dropout_key, step) -> (..., state), the step's dropout key
    fold_in(dropout_key, step). One program and one dispatch per step, where cutting the batch, deriving
    the step's key and the step itself would be three (docs/benchmarks.md#loop-step).
    """

    def run(params, opt_state, x_all, y_all, order, shifts, k, state=None, dropout_key=None, step=None):
        x, y = data.cut_batch(x_all, y_all, order, shifts, k, batch_size, max_shift)
        if not stateful:
            return raw_step(params, opt_state, x, y)
        return raw_step(params, opt_state, x, y, state, jax.random.fold_in(dropout_key, step))

    return compiling.jit(run, donate_argnums=(0, 1))


def sharded_loop_step(sharded_step, mesh, batch_size: int, max_shift: int, stateful: bool):
    """`loop_step`'s call, for a batch split over `mesh`: the whole global batch is cut (one compiled
    program), then each process's rows are sharded and `sharded_step` (make_parallel_train_step) runs."""
    cut = jax.jit(functools.partial(data.cut_batch, batch_size=batch_size, max_shift=max_shift))

    def run(params, opt_state, x_all, y_all, order, shifts, k, state=None, dropout_key=None, step=None):
        x, y = parallel.shard_batch(mesh, *parallel.take_process_rows(mesh, *cut(x_all, y_all, order, shifts, k)))
        if not stateful:
            return sharded_step(params, opt_state, x, y)
        return sharded_step(params, opt_state, x, y, state, fold_in(dropout_key, step))

    return run


def make_step(model, optimizer, mesh, *, batch_size: int, max_shift: int, ensemble: int, stateful: bool):
    """The loop's step for `model`: `loop_step` on one device, `sharded_loop_step` over a mesh."""
    if mesh is None:
        raw_step = make_train_step(model.apply, optimizer, ensemble=ensemble > 1, jit=False)
        return loop_step(raw_step, batch_size, max_shift, stateful)
    sharded_step = parallel.make_parallel_train_step(model.apply, optimizer, mesh=mesh, ensemble=ensemble > 1,
                                                     stateful=stateful)
    return sharded_loop_step(sharded_step, mesh, batch_size, max_shift, stateful)
