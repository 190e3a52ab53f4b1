"""The training loop behind `jaxconv train`: data, model, optimizer, epochs, files.

    result = fit(TrainConfig(model="lenet5", data="digits", epochs=20))

It writes to `config.out`: `config.json`, `metrics.jsonl` (one line per
epoch), `checkpoint.npz` (params, optimizer state, the model's state, step, key,
config and the metrics history; written atomically) and, with matplotlib, `curves.png`.

Models with BatchNorm or Dropout (`uses_train_mode`) train in train mode with
their state and a per-step key, and are evaluated in eval mode (running
statistics, no dropout); see docs/training.md, "Models with state".

The training set is put on the device once; each epoch's shuffle and shifts are
drawn on the host by NumPy (`data.epoch_draws`, nothing to compile) and each
step's batch is cut from the set inside the compiled step (`jaxconv.steps`),
so the host queues steps without waiting for them. The steps are compiled with
`jaxconv.compile.compiler_options()`.

Runs you can trust:
- The checkpoint is the one source of truth (`jaxconv.resume`): each epoch is
  evaluated, then saved with its metrics line, then `metrics.jsonl` is
  rewritten from that history. A kill at any moment loses no line, and
  `resume=True` continues bit-identically to an uninterrupted run, after
  checking the config and a fingerprint of the data.
- A run directory holds one run, and a lock refuses a second concurrent run
  (`jaxconv.rundir`); `overwrite=True` replaces another run's files.
- A finished run can be extended: resume with a larger `epochs`. With the
  cosine schedule the added epochs get a new cosine cycle from the peak lr
  down to 0 (a warm restart); `schedule_epochs` in config.json lists where
  each cycle ends. An unfinished run must first finish its own epochs.

`fit` is an orchestrator: `_prepare` derives a `Run` from the config (which it
never changes), `_build` makes the model, optimizer and compiled steps,
`_start` opens a fresh or resumed run, and `_train` runs the epochs.
"""
from __future__ import annotations

import dataclasses
import functools
import json
import os
import signal
import threading
import time
from typing import Any, Optional

import jax
import jax.numpy as jnp
import numpy as np

from jaxconv import data, interrupts, parallel, report, resume, rundir, steps
from jaxconv._args import check_labels
# Re-exported: fit raises these errors, and these names have always been public here.
from jaxconv.resume import RESUME_KEYS  # noqa: F401
from jaxconv.rundir import RUN_FILES, RunDirectoryError, WriteError  # noqa: F401
from jaxconv.train import make_eval_step
from jaxconv.config import (  # noqa: F401  (re-exported: these names have always been public here)
    DEFAULT_LR,
    DTYPES,
    OPTIMIZER_HELP,
    OPTIMIZERS,
    SCHEDULES,
    TRAIN_MODE_KINDS,
    TrainConfig,
    build_model,
    build_optimizer,
    channels_for,
    check_against_data,
    fingerprint,
    in_channels_kwargs,
    load_data,
    uses_train_mode,
)

class NonFiniteLoss(RuntimeError):
    """Training produced a NaN or Inf loss; the last good checkpoint (if any) is kept."""


class Interrupted(KeyboardInterrupt):
    """Ctrl-C (SIGINT) or SIGTERM during training; str() is the one-line report (step, checkpoint kept, how to
    resume); `signum` is the signal (SIGINT for a KeyboardInterrupt raised in Python)."""

    def __init__(self, message: str, step: int, checkpoint_step: Optional[int], signum: int = signal.SIGINT):
        super().__init__(message)
        self.step, self.checkpoint_step, self.signum = step, checkpoint_step, signum


@dataclasses.dataclass(frozen=True)
class Run:
    """What `fit` derives from its config before building anything; made once, never changed."""

    config: TrainConfig  # validated, with `lr` (the checkpoint's on resume) and `data_fingerprint` filled in
    primary: bool  # process 0, which logs and writes the files
    header: Optional[dict]  # the checkpoint's header when resuming, else None
    mesh: Any  # the data-parallel mesh, or None on one device
    ds: data.Dataset  # as the model takes it (grey images tiled to RGB for seed_cnn)
    steps_per_epoch: int  # full batches only: one compiled shape
    dropped: int  # images left out of each epoch, a different few each time

    @property
    def ckpt_path(self) -> str:
        return os.path.join(self.config.out, "checkpoint.npz")

    @property
    def metrics_path(self) -> str:
        return os.path.join(self.config.out, "metrics.jsonl")


@dataclasses.dataclass(frozen=True)
class Trainer:
    """The model and what trains it: the compiled steps, the run's keys and its config record."""

    model: Any
    stateful: bool  # BatchNorm / Dropout: state= and key= into every step, eval mode to evaluate
    step: Any  # steps.make_step's loop step
    eval_step: Any  # train.make_eval_step's
    root: Any  # the run's root key, saved in every checkpoint
    dropout_key: Any  # step s draws its dropout masks from fold_in(dropout_key, s)
    record: dict  # config.json: the config, its learning rate, data fingerprint and schedule_epochs
    extension: str  # the log line's note on extending a finished run ("" otherwise)


@dataclasses.dataclass
class Progress:
    """The training state that the loop advances: the weights, the step count and the metrics history."""

    params: Any
    opt_state: Any
    state: Any  # the model's state (BatchNorm's running statistics), or None
    step: int
    history: list
    # The per-step losses of the epoch in progress, from a mid-epoch checkpoint: the resumed epoch's train_loss
    # is their mean with the rest's, as in an uninterrupted run. None: a checkpoint that does not carry them.
    epoch_losses: Optional[list] = dataclasses.field(default_factory=list)

    @property
    def weights(self) -> tuple:
        return self.params, self.opt_state, self.state


def fit(config: TrainConfig, log=print) -> dict:
    """Train as `config` says; return a summary dict (best and final test accuracy, files, timing).

    With several devices (or processes joined by `parallel.initialize_distributed`,
    which must run first) each batch is split over a data-parallel mesh; only
    process 0 logs and writes files. `config` itself is not changed.

    Raises RunDirectoryError (a ValueError) when `config.out` cannot hold the
    run, Interrupted (a KeyboardInterrupt) on Ctrl-C, NonFiniteLoss on a NaN or
    Inf loss, WriteError (an OSError) when the files cannot be written.
    """
    config = config.validate()
    primary = parallel.is_primary()
    if primary:
        rundir.check_out(config.out, fresh=not config.resume, overwrite=config.overwrite)
    run = _prepare(config, primary)  # every check before anything is created: a refused run leaves no trace
    trainer, weights = _build(run)
    log = log if primary else _quiet
    if run.header is not None and run.header["step"] >= run.config.epochs * run.steps_per_epoch:
        return _complete(run, log)
    with interrupts.deferred():  # a signal now waits for the loop's next safe point (jaxconv.interrupts)
        lock = rundir.open_run_directory(config.out) if primary else None
        try:
            return _fit(run, trainer, weights, log)
        finally:
            if lock is not None:
                lock.close()


def _quiet(*args, **kwargs) -> None:
    """The log of processes other than 0: one process speaks for all."""


def _complete(run: Run, log) -> dict:
    """A resume of a run that has done all its epochs: say so and train nothing. Its files are left as they are,
    except a metrics.jsonl that a kill left behind the checkpoint, which is rebuilt from it."""
    history = resume.history_of(run.header, run.metrics_path, run.header["step"])
    rebuild = run.primary and not rundir.metrics_match(run.metrics_path, history)
    if rebuild:
        with interrupts.deferred():
            lock = rundir.open_run_directory(run.config.out)
            try:
                resume.remove_temporaries(run.ckpt_path, run.metrics_path)
                rundir.write_metrics(run.metrics_path, history)
            finally:
                lock.close()
    log(f"the run in {run.config.out} is already complete ({len(history)}/{run.config.epochs} epochs, step "
        f"{run.header['step']}); nothing to train"
        + ("; rebuilt its metrics.jsonl from the checkpoint" if rebuild else "")
        + ". Resume with a larger --epochs to extend it.")
    return {**report.summary(history, run.config.out, 0.0), "epochs_trained": 0}


def _fit(run: Run, trainer: "Trainer", weights: tuple, log) -> dict:
    progress = _start(run, trainer, weights, log)
    done_before = len(progress.history)
    log(report.start_line(run.config, run.ds, run.steps_per_epoch, run.dropped, run.mesh))
    tqdm = report.tqdm_class() if run.config.progress else None
    if run.primary:  # matplotlib's import for the plot at the end, done while the steps compile and run
        threading.Thread(target=report.pyplot, daemon=True).start()
    start_time = time.perf_counter()
    _train(run, trainer, progress, log, tqdm)
    result = report.summary(progress.history, run.config.out, time.perf_counter() - start_time)
    result["epochs_trained"] = len(progress.history) - done_before
    plot_path = report.plot(progress.history, run.config.out) if run.primary else None
    if plot_path:
        result["files"]["plot"] = os.path.basename(plot_path)
    return result


def _prepare(config: TrainConfig, primary: bool) -> Run:
    """The run's checkpoint header (on resume), mesh, data and batches; refuses what cannot run."""
    header = resume.read_header(config)
    if header is not None and config.lr is None:  # resume at the recorded rate, whatever the optimizer's default
        config = dataclasses.replace(config, lr=resume.recorded_lr(header))
    n_devices = config.devices or jax.device_count()
    mesh = parallel.data_mesh(n_devices) if n_devices > 1 or jax.process_count() > 1 else None
    if mesh is not None:
        parallel.check_batch_size(config.batch_size, mesh)
    ds = load_data(config)
    config = dataclasses.replace(config, data_fingerprint=fingerprint(ds))  # the data as loaded, before any tiling
    ds = channels_for(config, ds)
    m = len(ds.x_train)
    check_against_data(config, ds)
    steps_per_epoch = m // config.batch_size
    return Run(config, primary, header, mesh, ds, steps_per_epoch, m - steps_per_epoch * config.batch_size)


def _build(run: Run):
    """(Trainer, first weights): the model, the schedule (a resume's plan), the optimizer and the compiled steps."""
    config = run.config
    model = build_model(config, run.ds.x_train.shape[3])
    stateful = uses_train_mode(model)
    root, init_key, dropout_key = steps.run_keys(config.seed)
    record = {**dataclasses.asdict(config), "lr": config.learning_rate, "data_fingerprint": config.data_fingerprint}
    cycles, extension = ([config.epochs], "") if run.header is None else resume.plan(
        config, run.header, run.steps_per_epoch, run.ckpt_path)
    record["schedule_epochs"] = cycles
    optimizer = build_optimizer(config, run.steps_per_epoch, cycles)
    weights = steps.init(model, optimizer, init_key, (-1, *run.ds.x_train.shape[1:]), config.ensemble, stateful)
    step = steps.make_step(model, optimizer, run.mesh, batch_size=config.batch_size, max_shift=config.shift,
                           ensemble=config.ensemble, stateful=stateful)
    trainer = Trainer(model, stateful, step, make_eval_step(model.apply), root, dropout_key, record, extension)
    _check_labels(run, model, weights)
    return trainer, weights


def _check_labels(run: Run, model, weights) -> None:
    """Refuse labels the model cannot learn, against the width of its logits (found from shapes alone)."""
    config, ds = run.config, run.ds
    params, _, state = weights

    def first_logits(p, s):  # eval mode, one example, member 0 of an ensemble
        if config.ensemble > 1:
            p, s = report.member(p, 0), report.member(s, 0)
        x = jnp.zeros((1, *ds.x_train.shape[1:]), ds.x_train.dtype)
        return model.apply(p, x) if s is None else model.apply(p, x, state=s)[0]

    classes = jax.eval_shape(first_logits, params, state).shape[-1]
    for split, y in (("training", ds.y_train), ("test", ds.y_test)):
        check_labels(y, classes, "train", name=f"{split} labels of --data {config.data}",
                     fix=f"the data set has labels the {classes}-class model cannot learn; fix the files")


def _start(run: Run, trainer: Trainer, weights: tuple, log) -> Progress:
    """A fresh run (another run's files refused or replaced) or the resumed one; config.json written.

    Runs after every argument check: a mistyped option leaves the directory alone.
    """
    config = run.config
    params, opt_state, state = weights
    step, history, epoch_losses = 0, [], []
    if run.header is None and run.primary:
        rundir.start_fresh(config.out, config.overwrite)
        resume.remove_temporaries(run.ckpt_path, run.metrics_path)  # a save killed before the first checkpoint
    if run.header is not None:
        removed = resume.remove_temporaries(run.ckpt_path, run.metrics_path) if run.primary else []
        params, opt_state, state, step, history, epoch_losses = resume.load(
            run.ckpt_path, run.metrics_path, weights, resume.resume_keys(trainer.record, run.header.get("config")),
            trainer.stateful,
            run.steps_per_epoch)
        if run.primary:
            rundir.write_metrics(run.metrics_path, history)  # rebuilt from the checkpoint: one line per epoch it has seen
        log(f"resumed from {run.ckpt_path} at step {step} (epoch {step // run.steps_per_epoch + 1})"
            + (f"; removed {len(removed)} temporary file(s) of a killed save" if removed else "")
            + (f"; {trainer.extension}" if trainer.extension else ""))
    if run.mesh is not None:
        params, opt_state, state = parallel.replicate(run.mesh, (params, opt_state, state))
    if run.primary:
        rundir.write_text(os.path.join(config.out, "config.json"), json.dumps(trainer.record, indent=2))
    return Progress(params, opt_state, state, step, history, epoch_losses)


def _train(run: Run, trainer: Trainer, progress: Progress, log, tqdm) -> None:
    """The epochs left to run; Ctrl-C and a full disk become one-line errors that say what is kept."""
    # The training set lives on the device: each step's batch is cut from it and shifted there, by the
    # epoch's host-side draws (data.epoch_draws, data.cut_batch), so the host never waits for a step to finish.
    training_set = jax.device_put(run.ds.x_train), jax.device_put(run.ds.y_train)
    try:
        for epoch in range(progress.step // run.steps_per_epoch, run.config.epochs):
            _run_epoch(run, trainer, progress, epoch, training_set, log, tqdm)
    except KeyboardInterrupt:
        message, saved = resume.interrupted(run.ckpt_path, progress.step)
        signum = interrupts.pending() or signal.SIGINT
        raise Interrupted(interrupts.describe(message, signum), progress.step, saved, signum) from None
    except OSError as e:
        if e.errno not in rundir.WRITE_ERRNOS:
            raise
        raise rundir.write_error(e, run.config.out, resume.kept(run.ckpt_path)) from None


def _run_epoch(run: Run, trainer: Trainer, progress: Progress, epoch: int, training_set, log, tqdm) -> None:
    """Train one epoch (or its rest), evaluate it, save it with its metrics line, and log that line."""
    config = run.config
    epoch_start = time.perf_counter()
    draws = jax.device_put(data.epoch_draws(config.seed, epoch, len(run.ds.x_train), config.batch_size, config.shift))
    losses, taken = _train_steps(run, trainer, progress, epoch, (*training_set, *draws), epoch_start, tqdm)
    kept = functools.partial(resume.kept, run.ckpt_path)
    values = _check_finite(losses, progress.step, epoch, run.steps_per_epoch, kept)  # waits for the last step
    train_time = time.perf_counter() - epoch_start
    record = {"epoch": epoch + 1, "step": progress.step, "train_loss": float(values.mean()), "train_time_s": train_time,
              "images_per_s": taken * config.batch_size / train_time}
    if len(values) < run.steps_per_epoch:  # resumed from an old mid-epoch checkpoint without the epoch's losses
        record["train_loss_steps"] = len(values)  # the steps its train_loss covers
    record.update(report.evaluate_epoch(trainer.model.apply, trainer.eval_step, progress.params, progress.state,
                                        run.ds, config.ensemble))
    record["time_s"] = time.perf_counter() - epoch_start  # training and evaluation
    progress.history.append(record)
    _save(run, trainer, progress)  # the checkpoint carries the history: the epoch's line and its weights together
    if run.primary:
        rundir.write_metrics(run.metrics_path, progress.history)  # a copy for readers; rebuilt on resume
    log(report.epoch_line(record, config.epochs, config.ensemble))
    interrupts.stop_if_asked()  # a signal that came during the evaluation or the save


def _train_steps(run: Run, trainer: Trainer, progress: Progress, epoch: int, batches, epoch_start, tqdm) -> list:
    """The epoch's steps from where the run stands, with a progress bar and the in-epoch checkpoints.

    batches: (x_all, y_all, order, shifts), on the device: step k cuts its batch k from them.
    Returns (the losses of every step of the epoch so far, those restored from a mid-epoch checkpoint
    included; the number of steps taken here).
    """
    config, steps_per_epoch = run.config, run.steps_per_epoch
    start_step = progress.step - epoch * steps_per_epoch
    bar = report.progress_bar(tqdm, steps_per_epoch, start_step, epoch, config.epochs) if run.primary else None
    losses = list(progress.epoch_losses or []) if start_step else []
    for k in range(start_step, steps_per_epoch):
        metrics = _train_step(trainer, progress, batches, k)
        losses.append(metrics["loss"])
        progress.step += 1
        if bar is not None:
            report.show_step(bar, progress.step, steps_per_epoch, metrics, (k + 1 - start_step) * config.batch_size,
                             epoch_start)
        # The epoch's last step is saved by _run_epoch, with its metrics line.
        if config.checkpoint_every and progress.step % config.checkpoint_every == 0 and progress.step % steps_per_epoch:
            kept = functools.partial(resume.kept, run.ckpt_path)
            losses = list(_check_finite(losses, progress.step, epoch, steps_per_epoch, kept))  # now on the host
            _save(run, trainer, progress, losses)
        interrupts.stop_if_asked()  # a signal's request, answered between steps (jaxconv.interrupts)
    if bar is not None:
        bar.close()
    progress.epoch_losses = []
    return losses, steps_per_epoch - start_step


def _train_step(trainer: Trainer, progress: Progress, batches, k: int) -> dict:
    """Step k of the epoch on the batch it cuts on the device, without waiting for the last step; its metrics."""
    p = progress
    if trainer.stateful:  # train mode: batch statistics, running ones updated; dropout masks from the step's key
        p.params, p.opt_state, metrics, p.state = trainer.step(p.params, p.opt_state, *batches, k, p.state,
                                                               trainer.dropout_key, p.step)
    else:
        p.params, p.opt_state, metrics = trainer.step(p.params, p.opt_state, *batches, k)
    return metrics


def _save(run: Run, trainer: Trainer, progress: Progress, epoch_losses=None) -> None:
    """Checkpoint the run; mid-epoch, with the epoch's losses so far (host arrays), so that a resume reports the
    uninterrupted epoch's train_loss."""
    resume.save(run.ckpt_path, progress.weights, progress.step, trainer.root, resume.checkpoint_config(trainer.record),
                progress.history, run.primary, epoch_losses)


def _check_finite(losses, step, epoch, steps_per_epoch, kept=lambda: "the last good checkpoint is kept") -> np.ndarray:
    """The epoch's losses so far on the host, one row per step; raise NonFiniteLoss naming the first bad step.

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
    return values
