"""The training loop behind `jaxconv train`: data, model, optimizer, epochs, files.

    result = fit(TrainConfig(model="lenet5", data="digits", epochs=20))

It writes to `config.out`: `config.json`, `metrics.jsonl` (one line per
epoch), `checkpoint.npz` (params, optimizer state, the model's state, step, key,
config and the metrics history; written atomically) and, with matplotlib, `curves.png`.

Models with BatchNorm or Dropout (`uses_train_mode`) train in train mode with
their state and a per-step key, and are evaluated in eval mode (running
statistics, no dropout); see README, "Training models with state".

The training set is put on the device once; each epoch's shuffle and shifts are
drawn on the host by NumPy (`data.epoch_draws`, nothing to compile) and each
step's batch is cut from the set inside the compiled step (`data.cut_batch`),
so the host queues steps without waiting for them. The steps are compiled with
`jaxconv.compile.compiler_options()`.

Runs you can trust:
- The checkpoint is the one source of truth. Each epoch is evaluated before
  it is saved, and its metrics line is saved inside the checkpoint; then
  `metrics.jsonl` is rewritten (atomically) from that history. A kill at any
  moment loses no line: `resume=True` rebuilds `metrics.jsonl` from the
  checkpoint and continues bit-identically to an uninterrupted run.
- A run directory holds one run: a new run into a directory with another run's
  files is refused (pass `resume=True`, or `overwrite=True` to replace it), and
  a lock (`.lock`, `fcntl.flock`, released by the kernel when the process
  ends, so a killed run leaves no stale lock) refuses a second concurrent run.
- Resume checks the config (model, optimizer, lr, ...) and a fingerprint of
  the data, and removes temporary files a killed save left.
- A finished run can be extended: resume with a larger `epochs`. With the
  cosine schedule the added epochs get a new cosine cycle from the peak lr
  down to 0 (a warm restart); `schedule_epochs` in config.json lists where
  each cycle ends. An unfinished run must first finish its own epochs.
"""

from __future__ import annotations

import dataclasses
import errno
import functools
import hashlib
import inspect
import json
import os
import sys
import threading
import time
from typing import Optional

import jax
import jax.numpy as jnp
import numpy as np
import optax

from jaxconv import checkpoint, conv, data, models, parallel
from jaxconv import compile as compiling
from jaxconv._args import check_labels, integer
from jaxconv.train import evaluate, make_eval_step, make_train_step, stack_params

OPTIMIZERS = ("sgd", "momentum", "adam")
DEFAULT_LR = {"sgd": 0.1, "momentum": 0.02, "adam": 2e-3}
SCHEDULES = ("cosine", "constant")
DTYPES = ("float32", "bfloat16")  # compute dtypes; params, loss and optimizer stay float32 (see README, Conventions)
# The keys a checkpoint must agree on to be resumed: a different model, data
# set or optimizer would silently train something else. `epochs` may grow (to
# extend a finished run); `data_fingerprint` is checked first, with its own message.
RESUME_KEYS = ("model", "data", "data_fingerprint", "impl", "optimizer", "lr", "schedule", "shift", "batch_size", "seed",
               "ensemble", "limit")
RUN_FILES = ("checkpoint.npz", "metrics.jsonl", "config.json", "curves.png")  # what a run writes to its directory


@dataclasses.dataclass
class TrainConfig:
    model: str = "lenet5"  # a name in models.MODELS
    data: str = "digits"  # a name in data.DATASETS
    data_dir: Optional[str] = None  # folder of the MNIST/CIFAR-10 files
    epochs: int = 20  # the bundled digits reach ~98-99% test accuracy by then
    batch_size: int = 32  # 44 full steps per epoch on the 1,438 training digits
    optimizer: str = "adam"
    lr: Optional[float] = None  # peak learning rate; None: DEFAULT_LR of the optimizer
    schedule: str = "cosine"  # cosine decay to 0 over the run, or constant
    shift: int = 2  # augmentation: random shifts of up to this many pixels (0: none)
    impl: str = "auto"  # convolution implementation, see jaxconv.conv2d
    algorithm: str = "auto"  # the hand-rolled algorithm of every conv (auto: the policy's choice per layer)
    dtype: str = "float32"  # compute dtype; bfloat16: mixed precision, params stay float32
    seed: int = 0  # init and shuffling; the train/test split is fixed
    out: str = "runs/latest"
    resume: bool = False
    overwrite: bool = False  # replace another run's files in `out` (else refused)
    ensemble: int = 1  # K independently initialised models trained at once
    limit: Optional[int] = None  # use only the first N training images (quick runs)
    checkpoint_every: int = 0  # steps between checkpoints; 0: at the end of each epoch
    devices: Optional[int] = None  # data-parallel over this many devices; None: all (of every process)
    data_fingerprint: Optional[str] = None  # filled in by fit: a hash of the data set, checked on resume
    progress: bool = True  # tqdm progress bars, on a terminal only (piped logs get the epoch lines alone)

    def validate(self):
        if self.model not in models.MODELS:
            raise ValueError(f"train: unknown `model` {self.model!r}. It needs to be one of {sorted(models.MODELS)}.")
        if self.data not in data.DATASETS:
            raise ValueError(f"train: unknown `data` {self.data!r}. It needs to be one of {sorted(data.DATASETS)}.")
        if data.DATASETS[self.data].needs_dir and not self.data_dir:
            raise ValueError(f"train: `data`={self.data!r} is read from files; pass their folder with --data-dir PATH.")
        if self.optimizer not in OPTIMIZERS:
            raise ValueError(f"train: unknown `optimizer` {self.optimizer!r}. It needs to be one of {list(OPTIMIZERS)}.")
        conv.check_impl(self.impl, self.algorithm, "train")  # e.g. --algorithm rows with --impl lax
        if self.dtype not in DTYPES:
            raise ValueError(f"train: unknown `dtype` {self.dtype!r}. It needs to be one of {list(DTYPES)}.")
        if self.schedule not in SCHEDULES:
            raise ValueError(f"train: unknown `schedule` {self.schedule!r}. It needs to be one of {list(SCHEDULES)}.")
        for name, minimum in (("shift", 0), ("epochs", 1), ("batch_size", 1), ("ensemble", 1), ("seed", None),
                              ("checkpoint_every", 0)):
            setattr(self, name, integer(getattr(self, name), name, "train", minimum=minimum))
        for name in ("limit", "devices"):
            if getattr(self, name) is not None:
                setattr(self, name, integer(getattr(self, name), name, "train", minimum=1))
        if self.lr is not None and not self.lr > 0:
            raise ValueError(f"train: `lr` must be > 0, got {self.lr}.")
        if self.resume and self.overwrite:
            raise ValueError("train: `resume` and `overwrite` exclude each other; pass --resume to continue the run "
                             "in --out, or --overwrite to replace it.")
        return self

    @property
    def learning_rate(self) -> float:
        return self.lr if self.lr is not None else DEFAULT_LR[self.optimizer]


class NonFiniteLoss(RuntimeError):
    """Training produced a NaN or Inf loss; the last good checkpoint (if any) is kept."""


class Interrupted(KeyboardInterrupt):
    """Ctrl-C (SIGINT) during training; str() is the one-line report (step, checkpoint kept, how to resume)."""

    def __init__(self, message: str, step: int, checkpoint_step: Optional[int]):
        super().__init__(message)
        self.step, self.checkpoint_step = step, checkpoint_step


class RunDirectoryError(ValueError):
    """`out` cannot hold this run: a file, not writable, another run's files, or locked by a running process."""


class WriteError(OSError):
    """Writing the run's files failed (e.g. a full disk); the last checkpoint written whole is kept."""


def load_data(config: TrainConfig) -> data.Dataset:
    """The data set (`data.DATASETS[config.data]`), as 32x32 images with the channels the model expects."""
    ds = data.DATASETS[config.data].load(config.data_dir)
    if config.limit is not None:
        ds = data.Dataset(ds.x_train[: config.limit], ds.y_train[: config.limit], ds.x_test, ds.y_test)
    return ds


def _channels_for(config: TrainConfig, ds: data.Dataset) -> data.Dataset:
    """Grey images repeated over 3 channels for the notes' network, which takes RGB."""
    if config.model == "seed_cnn" and ds.x_train.shape[3] == 1:
        tile = lambda x: np.repeat(x, 3, axis=3)  # noqa: E731
        ds = data.Dataset(tile(ds.x_train), ds.y_train, tile(ds.x_test), ds.y_test)
    return ds


def fingerprint(ds: data.Dataset) -> str:
    """A short hash of a data set's arrays (shapes, dtypes and bytes): resume refuses other data."""
    h = hashlib.blake2b(digest_size=8)
    for a in ds:
        a = np.ascontiguousarray(a)
        h.update(f"{a.shape}{a.dtype}".encode())
        h.update(a.data)
    return h.hexdigest()


def build_model(config: TrainConfig, in_channels: int, num_classes: int = 10):
    """`models.MODELS[config.model]` for inputs with `in_channels` channels and `num_classes` classes.

    Constructors without an `in_channels` argument (seed_cnn, which takes RGB) get
    inputs tiled to their channels by `_channels_for`.
    """
    constructor = models.MODELS[config.model]
    kwargs = {"num_classes": num_classes, "impl": config.impl}
    if config.algorithm != "auto":
        kwargs["algorithm"] = config.algorithm
    if config.dtype != "float32":  # float32: the model as it always was
        kwargs["compute_dtype"] = config.dtype
    if "in_channels" in inspect.signature(constructor).parameters:
        kwargs["in_channels"] = in_channels
    return constructor(**kwargs)


TRAIN_MODE_KINDS = ("bn", "dropout")  # layers that behave differently in train and eval mode


def uses_train_mode(layer) -> bool:
    """Whether a model has layers (BatchNorm, Dropout) that need state= / key= and train=True while training."""
    return layer.kind in TRAIN_MODE_KINDS or any(uses_train_mode(child) for _, child in layer.children)


def build_optimizer(config: TrainConfig, steps_per_epoch: int, schedule_epochs=None) -> optax.GradientTransformation:
    """The optax optimizer; with the cosine schedule, one cosine cycle (peak lr -> 0) per entry of schedule_epochs.

    schedule_epochs: the epochs at which each cycle ends, e.g. [20] (default:
    [config.epochs]) or [20, 30] for a 20-epoch run extended to 30.

    Wrapped in `optax.flatten`: the update runs once over all parameters raveled
    into one vector, and its state (Adam's mu and nu, momentum's trace) holds one
    flat vector each, in `jax.flatten_util.ravel_pytree(params)` order (its second
    result unravels them). Per parameter, XLA compiled three small loops for every
    leaf: LeNet-5's step compiled in 1.28-1.40 s, flattened in 1.00-1.03 s, and ran
    0.97x the time at batch 32 (the same at 128; ResNet-20 compiled and ran as before).
    """
    lr = config.learning_rate
    if config.schedule == "cosine":
        ends = [e * steps_per_epoch for e in (schedule_epochs or [config.epochs])]
        starts = [0] + ends[:-1]
        cycles = [optax.cosine_decay_schedule(lr, end - start) for start, end in zip(starts, ends)]
        lr = cycles[0] if len(cycles) == 1 else optax.join_schedules(cycles, starts[1:])
    if config.optimizer == "sgd":
        return optax.flatten(optax.sgd(lr))
    if config.optimizer == "momentum":
        return optax.flatten(optax.sgd(lr, momentum=0.9))
    return optax.flatten(optax.adam(lr))


OPTIMIZER_HELP = {"sgd": "plain SGD", "momentum": "SGD with momentum 0.9", "adam": "Adam"}


def _init(model, optimizer, key, input_shape, ensemble, stateful=False):
    """Params, optimizer state and model state (None for models without train mode).

    For an ensemble, K of each stacked on a leading axis (the K states start equal).
    """
    keys = [key] if ensemble == 1 else jax.random.split(key, ensemble)  # (one split: two programs to compile)
    params = [model.init(k, input_shape)[1] for k in keys]
    params = params[0] if ensemble == 1 else stack_params(params)
    init = optimizer.init if ensemble == 1 else jax.vmap(optimizer.init)
    opt_state = jax.jit(init)(params)  # one compiled program, not one per parameter leaf and op (0.4 s at start-up)
    state = None
    if stateful:
        state = model.init_state(input_shape)[1]  # BatchNorm: running mean 0, var 1
        state = state if ensemble == 1 else stack_params([state] * ensemble)
    return params, opt_state, state


@jax.jit
def _run_keys(seed):
    """The run's keys from its seed, in one compiled program (eagerly, each key op compiles its own: ~0.3 s).

    Returns (root, init, dropout); step s draws its dropout masks from fold_in(dropout, s), so a resumed
    run draws what the uninterrupted one did. The data's shuffle and shifts come from the seed through
    NumPy (`data.epoch_draws`).
    """
    root = jax.random.key(seed)
    return root, jax.random.fold_in(root, 0), jax.random.fold_in(root, 1)


_fold_in = jax.jit(jax.random.fold_in)  # a sharded step's dropout key: one compiled call, not eager dispatch (~0.9 ms)


def _loop_step(raw_step, batch_size: int, max_shift: int, stateful: bool):
    """The loop's compiled step: cut batch k from the device-resident training set and train on it, in one program.

    `raw_step` is `make_train_step(..., jit=False)`; params and opt_state are donated as there.
    run(params, opt_state, x_all, y_all, order, shifts, k) -> (params, opt_state, metrics), and with
    `stateful`, run(..., k, state, dropout_key, step) -> (..., state), the step's dropout key
    fold_in(dropout_key, step). One program and one dispatch per step where there were three (the
    batch cut, the step's key, the step): with the host's draws (`data.epoch_draws`), LeNet-5's 44
    steps of 32 took 87 ms an epoch instead of 100, and a first run compiled ~0.8 s less.
    """

    def run(params, opt_state, x_all, y_all, order, shifts, k, state=None, dropout_key=None, step=None):
        x, y = data.cut_batch(x_all, y_all, order, shifts, k, batch_size, max_shift)
        if not stateful:
            return raw_step(params, opt_state, x, y)
        return raw_step(params, opt_state, x, y, state, jax.random.fold_in(dropout_key, step))

    return compiling.jit(run, donate_argnums=(0, 1))


def _sharded_loop_step(sharded_step, mesh, batch_size: int, max_shift: int, stateful: bool):
    """`_loop_step`'s call, for a batch split over `mesh`: the whole global batch is cut (one compiled
    program), then each process's rows are sharded and `sharded_step` (make_parallel_train_step) runs."""
    cut = jax.jit(functools.partial(data.cut_batch, batch_size=batch_size, max_shift=max_shift))

    def run(params, opt_state, x_all, y_all, order, shifts, k, state=None, dropout_key=None, step=None):
        x, y = parallel.shard_batch(mesh, *parallel.take_process_rows(mesh, *cut(x_all, y_all, order, shifts, k)))
        if not stateful:
            return sharded_step(params, opt_state, x, y)
        return sharded_step(params, opt_state, x, y, state, _fold_in(dropout_key, step))

    return run


def _member(tree, k):
    """Member k of a tree stacked on a leading axis (None stays None)."""
    return None if tree is None else jax.tree_util.tree_map(lambda leaf: leaf[k], tree)


def _evaluate_ensemble(apply, params, x, y, batch_size, state=None, eval_step=None):
    """Accuracy of each of K stacked models, and of the ensemble (mean of their probabilities)."""
    probs = []
    for k in range(jax.tree_util.tree_leaves(params)[0].shape[0]):
        member = _member(params, k)
        logits = evaluate(apply, member, x, y, batch_size, state=_member(state, k), eval_step=eval_step)["logits"]
        probs.append(jax.nn.softmax(logits))
    probs = np.stack(probs)  # (K, m, classes)
    each = (probs.argmax(-1) == y).mean(axis=1)  # (K,)
    return each, float((probs.mean(0).argmax(-1) == y).mean())


def _write_atomic(path: str, text: str) -> None:
    """Write text to path atomically (`checkpoint.write_atomic`): a reader sees the old or the new file."""
    checkpoint.write_atomic(path, lambda f: f.write(text), mode="w")


def _write_metrics(path: str, history: list) -> None:
    """metrics.jsonl: one JSON line per epoch, rewritten whole from the history the checkpoint holds."""
    _write_atomic(path, "".join(json.dumps(h) + "\n" for h in history))


def _open_run_directory(out: str):
    """Create `out` if needed and take its lock; returns the open lock file (close it to release)."""
    if os.path.isfile(out):
        raise RunDirectoryError(f"train: `--out` {out!r} is a file, not a directory; pick another --out.")
    try:
        os.makedirs(out, exist_ok=True)
    except (NotADirectoryError, FileExistsError):
        raise RunDirectoryError(
            f"train: `--out` {out!r} cannot be created because a part of its path is a file; pick another --out."
        ) from None
    except OSError as e:
        raise RunDirectoryError(f"train: `--out` {out!r} cannot be created ({e.strerror}); pick another --out.") from None
    lock_path = os.path.join(out, ".lock")
    try:
        lock = open(lock_path, "a+")
    except OSError as e:
        raise RunDirectoryError(
            f"train: `--out` {out!r} is not writable ({e.strerror}); pick a directory you can write to."
        ) from None
    try:
        import fcntl
    except ImportError:  # pragma: no cover - Windows: no advisory locks
        return lock
    try:
        fcntl.flock(lock.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        lock.seek(0)
        holder = lock.read().strip() or "another process"
        lock.close()
        raise RunDirectoryError(
            f"train: another run (process {holder}) is writing to `--out` {out!r}; wait for it to finish, "
            f"or pick another --out."
        ) from None
    lock.seek(0)
    lock.truncate()
    lock.write(str(os.getpid()))
    lock.flush()
    return lock  # the kernel drops the lock when the process ends, killed or not: no stale locks


def _start_fresh(out: str, overwrite: bool) -> None:
    """Refuse to mix a new run with another run's files in `out`, or remove them when overwrite=True."""
    present = [n for n in RUN_FILES if os.path.exists(os.path.join(out, n))]
    if not present:
        return
    # Without checkpoint.npz and metrics.jsonl (written only after it), the run was stopped before its first
    # checkpoint: there is nothing to resume or lose, so a new run replaces its config.json.
    started = any(n in present for n in ("checkpoint.npz", "metrics.jsonl"))
    if started and not overwrite:
        raise RunDirectoryError(
            f"train: `--out` {out!r} already holds a run ({', '.join(present)}); continue it with --resume, "
            f"replace it with --overwrite, or pick another --out."
        )
    for name in present:
        os.unlink(os.path.join(out, name))


def _resume_plan(config: TrainConfig, header: dict, steps_per_epoch: int, ckpt_path: str):
    """(schedule_epochs, log line) for resuming from a checkpoint header; refuses data and epoch mismatches."""
    stored = header.get("config") or {}
    settings = {k: v for k, v in dataclasses.asdict(config).items() if k in RESUME_KEYS and k != "data_fingerprint"}
    checkpoint._check_config(stored, {**settings, "lr": config.learning_rate}, ckpt_path, "train")
    if "data_fingerprint" in stored and stored["data_fingerprint"] != config.data_fingerprint:
        raise ValueError(
            f"train: the checkpoint `{ckpt_path}` was trained on other data (--data {stored.get('data')} from "
            f"{stored.get('data_dir')!r}, fingerprint {stored['data_fingerprint']}) than this run's --data "
            f"{config.data} from {config.data_dir!r} (fingerprint {config.data_fingerprint}); resume with the same "
            f"data, or start a new run in another --out."
        )
    before = stored.get("epochs", config.epochs)
    cycles = list(stored.get("schedule_epochs") or [before])
    finished = header["step"] >= before * steps_per_epoch
    if config.epochs == before:
        return cycles, ""
    if config.epochs > before and finished:
        return cycles + [config.epochs], (
            f"extending the finished {before}-epoch run to {config.epochs} epochs"
            + (f" (a new cosine cycle from lr {config.learning_rate} over the added epochs)" if config.schedule == "cosine" else "")
        )
    if config.epochs > before:
        raise ValueError(
            f"train: the run in `{config.out}` has not finished its {before} epochs (checkpoint at step "
            f"{header['step']} of {before * steps_per_epoch}); resume it with --epochs {before} first, then extend it "
            f"with a larger --epochs."
        )
    raise ValueError(
        f"train: `--epochs` {config.epochs} is fewer than the {before} epochs of the run in `{config.out}`; resume with "
        f"--epochs {before}, or more to extend a finished run."
    )


def _history_of(state: dict, metrics_path: str, step: int) -> list:
    """The metrics history a checkpoint carries (or, for checkpoints without one, metrics.jsonl's lines up to step)."""
    metadata = state.get("metadata") or {}
    if "history" in metadata:
        return list(metadata["history"])
    if not os.path.exists(metrics_path):
        return []
    with open(metrics_path) as f:
        lines = [line for line in f if line.strip()]
    history = []
    for i, line in enumerate(lines, 1):
        try:
            history.append(json.loads(line))
        except json.JSONDecodeError as e:
            raise ValueError(
                f"train: `{metrics_path}` is damaged at line {i} ({e}); delete it to resume without the earlier "
                f"epochs' metrics lines (the checkpoint itself is fine)."
            ) from None
    return [h for h in history if h.get("step", 0) <= step]


def fit(config: TrainConfig, log=print) -> dict:
    """Train as `config` says; return a summary dict (best and final test accuracy, files, timing).

    With several devices (or processes joined by `parallel.initialize_distributed`,
    which must run first) each batch is split over a data-parallel mesh; only
    process 0 logs and writes files.

    Raises RunDirectoryError (a ValueError) when `config.out` cannot hold the
    run, Interrupted (a KeyboardInterrupt) on Ctrl-C, NonFiniteLoss on a NaN or
    Inf loss, WriteError (an OSError) when the files cannot be written.
    """
    config.validate()
    primary = parallel.is_primary()
    lock = _open_run_directory(config.out) if primary else None
    try:
        return _fit(config, log, primary)
    finally:
        if lock is not None:
            lock.close()


def _fit(config: TrainConfig, log, primary: bool) -> dict:
    if not primary:
        log = lambda *a, **k: None  # noqa: E731  (one process speaks for all)
    ckpt_path = os.path.join(config.out, "checkpoint.npz")
    metrics_path = os.path.join(config.out, "metrics.jsonl")
    header = None
    if config.resume:
        if not os.path.exists(ckpt_path):
            raise FileNotFoundError(f"train: --resume found no checkpoint at {ckpt_path}; run without --resume first.")
        header = checkpoint.read_header(ckpt_path)
        if config.lr is None:  # resume at the recorded rate, whatever the optimizer's default
            config.lr = (header.get("config") or {}).get("lr")
    n_devices = config.devices or jax.device_count()
    mesh = parallel.data_mesh(n_devices) if n_devices > 1 or jax.process_count() > 1 else None
    if mesh is not None:
        parallel.check_batch_size(config.batch_size, mesh)
    ds = load_data(config)
    config.data_fingerprint = fingerprint(ds)  # of the data as loaded, before the model's channel tiling
    ds = _channels_for(config, ds)
    m = len(ds.x_train)
    if config.batch_size > m:
        raise ValueError(f"train: `batch_size` ({config.batch_size}) is larger than the {m} training images; use a smaller one.")
    steps_per_epoch = m // config.batch_size  # full batches: one compiled shape
    dropped = m - steps_per_epoch * config.batch_size
    model = build_model(config, ds.x_train.shape[3])
    stateful = uses_train_mode(model)  # BatchNorm / Dropout: state= and key= into every step, eval mode to evaluate
    input_shape = (-1, *ds.x_train.shape[1:])
    root, init_key, dropout_key = _run_keys(config.seed)
    config_dict = {**dataclasses.asdict(config), "lr": config.learning_rate, "data_fingerprint": config.data_fingerprint}
    cycles, extension = ([config.epochs], "") if header is None else _resume_plan(config, header, steps_per_epoch, ckpt_path)
    config_dict["schedule_epochs"] = cycles
    optimizer = build_optimizer(config, steps_per_epoch, cycles)

    params, opt_state, state = _init(model, optimizer, init_key, input_shape, config.ensemble, stateful)
    if mesh is None:
        step_fn = _loop_step(make_train_step(model.apply, optimizer, ensemble=config.ensemble > 1, jit=False),
                             config.batch_size, config.shift, stateful)
    else:
        step_fn = _sharded_loop_step(parallel.make_parallel_train_step(
            model.apply, optimizer, mesh=mesh, ensemble=config.ensemble > 1, stateful=stateful),
            mesh, config.batch_size, config.shift, stateful)
    eval_step = make_eval_step(model.apply)

    def first_logits(p, s):  # eval mode, one example, member 0 of an ensemble
        if config.ensemble > 1:
            p, s = _member(p, 0), _member(s, 0)
        x = jnp.zeros((1, *ds.x_train.shape[1:]), ds.x_train.dtype)
        return model.apply(p, x) if s is None else model.apply(p, x, state=s)[0]

    logits_shape = jax.eval_shape(first_logits, params, state).shape
    for split, y in (("training", ds.y_train), ("test", ds.y_test)):
        check_labels(y, logits_shape[-1], "train", name=f"{split} labels of --data {config.data}",
                     fix=f"the data set has labels the {logits_shape[-1]}-class model cannot learn; fix the files")

    if header is None and primary:  # after every argument check: a mistyped option leaves the directory alone
        _start_fresh(config.out, config.overwrite)
        checkpoint.remove_temporaries(ckpt_path)  # a save killed before the first checkpoint; we hold the lock
        checkpoint.remove_temporaries(metrics_path)
    resume_keys = {k: config_dict[k] for k in RESUME_KEYS}
    step = 0
    history = []
    if header is not None:
        removed = checkpoint.remove_temporaries(ckpt_path) + checkpoint.remove_temporaries(metrics_path) if primary else []
        loaded = checkpoint.load_checkpoint(ckpt_path, params_like=params, opt_state_like=opt_state, config=resume_keys,
                                            state_like=state)
        params, opt_state, step = loaded["params"], loaded["opt_state"], int(loaded["step"])
        state = loaded.get("state") if stateful else None
        history = _history_of(loaded, metrics_path, step)
        if primary:
            _write_metrics(metrics_path, history)  # rebuilt from the checkpoint: one line per epoch it has seen
        log(f"resumed from {ckpt_path} at step {step} (epoch {step // steps_per_epoch + 1})"
            + (f"; removed {len(removed)} temporary file(s) of a killed save" if removed else "")
            + (f"; {extension}" if extension else ""))
    if mesh is not None:
        params, opt_state, state = parallel.replicate(mesh, (params, opt_state, state))
    if primary:
        _write_atomic(os.path.join(config.out, "config.json"), json.dumps(config_dict, indent=2))

    def save(step):
        host_params, host_opt_state, host_state = parallel.to_host((params, opt_state, state))  # every process takes part
        if primary:
            checkpoint.save_checkpoint(
                ckpt_path, params=host_params, opt_state=host_opt_state, step=step, key=root,
                config={**resume_keys, "epochs": config.epochs, "schedule_epochs": cycles, "data_dir": config.data_dir},
                metadata={"history": history}, state=host_state,
            )

    def kept() -> str:
        if not os.path.exists(ckpt_path):
            return "no checkpoint was written yet"
        return f"the last good checkpoint (step {checkpoint.read_header(ckpt_path)['step']}) is kept at {ckpt_path}"

    log(
        f"training {config.model} ({config.impl} conv{'' if config.dtype == 'float32' else ', ' + config.dtype + ' compute'}) on {config.data}: {m} train / {len(ds.x_test)} test images "
        f"{ds.x_train.shape[1:]}, {steps_per_epoch} steps of {config.batch_size} per epoch"
        + (f" ({dropped} images left out of each epoch, a different {dropped} each time)" if dropped else "")
        + f", {config.optimizer} lr={config.learning_rate} ({config.schedule}), shifts up to {config.shift} px"
        + f", backend {jax.default_backend()}"
        + (f", data-parallel over {mesh.size} devices in {jax.process_count()} process(es)" if mesh is not None else "")
    )
    if config.progress:
        from tqdm.auto import tqdm
    if primary:  # matplotlib's import (0.4 s) for the plot at the end, done while the steps compile and run
        threading.Thread(target=_pyplot, daemon=True).start()
    start_time = time.perf_counter()
    first_epoch = step // steps_per_epoch
    # The training set lives on the device: each step's batch is cut from it and shifted there, by the
    # epoch's host-side draws (data.epoch_draws, data.cut_batch), so the host never waits for a step to finish.
    x_all, y_all = jax.device_put(ds.x_train), jax.device_put(ds.y_train)
    try:
        for epoch in range(first_epoch, config.epochs):
            epoch_start = time.perf_counter()
            start_step = step - epoch * steps_per_epoch
            order, shifts = jax.device_put(data.epoch_draws(config.seed, epoch, m, config.batch_size, config.shift))
            # disable=None: bars on a terminal only; piped logs get the epoch lines alone.
            bar = tqdm(total=steps_per_epoch, initial=start_step, desc=f"epoch {epoch + 1}/{config.epochs}",
                       unit="step", leave=False, disable=None, file=sys.stderr) if config.progress and primary else None
            if bar is not None and bar.disable:
                bar = None
            losses = []
            for k in range(start_step, steps_per_epoch):
                # batch k is cut on the device, without waiting for the last step
                if stateful:  # train mode: batch statistics, running ones updated; dropout masks from the step's key
                    params, opt_state, metrics, state = step_fn(params, opt_state, x_all, y_all, order, shifts, k,
                                                                state, dropout_key, step)
                else:
                    params, opt_state, metrics = step_fn(params, opt_state, x_all, y_all, order, shifts, k)
                losses.append(metrics["loss"])
                step += 1
                if bar is not None and (step % 5 == 0 or step % steps_per_epoch == 0):
                    loss_now = float(jnp.mean(metrics["loss"]))
                    rate = len(losses) * config.batch_size / (time.perf_counter() - epoch_start)
                    bar.set_postfix(loss=f"{loss_now:.4f}", img_s=f"{rate:,.0f}")
                if bar is not None:
                    bar.update(1)
                # The epoch's last step is saved below, with its metrics line.
                if config.checkpoint_every and step % config.checkpoint_every == 0 and step % steps_per_epoch:
                    _check_finite(losses, step, epoch, steps_per_epoch, kept)
                    save(step)
            if bar is not None:
                bar.close()
            train_loss = _check_finite(losses, step, epoch, steps_per_epoch, kept)  # waits for the epoch's last step
            train_time = time.perf_counter() - epoch_start
            record = {"epoch": epoch + 1, "step": step, "train_loss": train_loss, "train_time_s": train_time,
                      "images_per_s": len(losses) * config.batch_size / train_time}
            if config.ensemble == 1:
                # eval mode: BatchNorm's running statistics, no dropout
                train_eval = evaluate(model.apply, params, ds.x_train, ds.y_train, 256, eval_step=eval_step, state=state)
                test_eval = evaluate(model.apply, params, ds.x_test, ds.y_test, 256, eval_step=eval_step, state=state)
                record.update(train_accuracy=train_eval["accuracy"], test_loss=test_eval["loss"],
                              test_accuracy=test_eval["accuracy"])
            else:
                train_each, train_ens = _evaluate_ensemble(model.apply, params, ds.x_train, ds.y_train, 256, state, eval_step)
                test_each, test_ens = _evaluate_ensemble(model.apply, params, ds.x_test, ds.y_test, 256, state, eval_step)
                record.update(train_accuracy=train_ens, test_accuracy=test_ens,
                              test_accuracy_each=[float(a) for a in test_each],
                              train_accuracy_each=[float(a) for a in train_each])
            record["time_s"] = time.perf_counter() - epoch_start  # training and evaluation
            history.append(record)
            save(step)  # the checkpoint carries the history: the epoch's line and its weights are saved together
            if primary:
                _write_metrics(metrics_path, history)  # a copy for readers; rebuilt from the checkpoint on resume
            log(
                f"epoch {epoch + 1:3d}/{config.epochs}  train loss {train_loss:.4f}  "
                f"train acc {record['train_accuracy']:.4f}  test acc {record['test_accuracy']:.4f}  "
                f"({record['time_s']:.1f} s, {record['images_per_s']:,.0f} images/s)"
                + (f"  members {' '.join(f'{a:.4f}' for a in record['test_accuracy_each'])}" if config.ensemble > 1 else "")
            )
    except KeyboardInterrupt:
        saved = checkpoint.read_header(ckpt_path)["step"] if os.path.exists(ckpt_path) else None
        where = (f"checkpoint kept at {ckpt_path} (step {saved}); resume with --resume" if saved is not None
                 else "no checkpoint was written yet; start the run again")
        raise Interrupted(f"interrupted at step {step}; {where}", step, saved) from None
    except OSError as e:
        if e.errno not in (errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM, errno.EIO):
            raise
        error = WriteError(f"train: cannot write to `{config.out}` ({e.strerror}); free some space or pick another "
                           f"--out; {kept()}.")
        error.errno = e.errno
        raise error from None
    elapsed = time.perf_counter() - start_time
    # Training throughput without the first epoch, which includes compilation.
    speeds = [h["images_per_s"] for h in history[1:]] or [h["images_per_s"] for h in history]
    result = {
        "best_test_accuracy": max((h["test_accuracy"] for h in history), default=float("nan")),
        "final_test_accuracy": history[-1]["test_accuracy"] if history else float("nan"),
        "epochs": len(history),
        "wall_s": elapsed,
        "images_per_s": float(np.median(speeds)) if speeds else float("nan"),
        "out": config.out,
        "files": {"config": "config.json", "metrics": "metrics.jsonl", "checkpoint": "checkpoint.npz"},
    }
    plot_path = _plot(history, config.out) if primary else None
    if plot_path:
        result["files"]["plot"] = os.path.basename(plot_path)
    return result


def _check_finite(losses, step, epoch, steps_per_epoch, kept=lambda: "the last good checkpoint is kept") -> float:
    """Mean of the epoch's losses so far; raise NonFiniteLoss naming the first bad step.

    kept() says what is left on disk (the last good checkpoint, or that none was written yet).
    """
    values = np.stack(jax.device_get(losses)) if losses else np.zeros((0,))  # (jnp.stack: a program to compile)
    bad = np.flatnonzero(~np.isfinite(values.reshape(len(values), -1)).all(axis=1))
    if bad.size:
        bad_step = step - len(values) + int(bad[0]) + 1
        raise NonFiniteLoss(
            f"train: the loss became {values[bad[0]]} at step {bad_step} (epoch {epoch + 1}, step "
            f"{bad_step - epoch * steps_per_epoch} of {steps_per_epoch}); stopped, and {kept()}. "
            f"Try a smaller --lr."
        )
    return float(values.mean()) if values.size else float("nan")


def _pyplot():
    """matplotlib.pyplot on the Agg backend, or None when matplotlib is not installed."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    return plt


def _plot(history, out) -> Optional[str]:
    """curves.png of loss and accuracy per epoch, when matplotlib is installed."""
    plt = _pyplot()  # imported already by the thread `_fit` starts, unless it is still at it (then this waits)
    if plt is None or not history:
        return None
    epochs = [h["epoch"] for h in history]
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(9, 3.5))
    ax1.plot(epochs, [h["train_loss"] for h in history], label="train")
    if "test_loss" in history[0]:
        ax1.plot(epochs, [h["test_loss"] for h in history], label="test")
    ax1.set(xlabel="epoch", ylabel="loss J", title="cost")
    ax1.legend()
    ax2.plot(epochs, [h["train_accuracy"] for h in history], label="train")
    ax2.plot(epochs, [h["test_accuracy"] for h in history], label="test")
    ax2.set(xlabel="epoch", ylabel="accuracy", title="accuracy")
    ax2.legend()
    fig.tight_layout()
    path = os.path.join(out, "curves.png")
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
