"""The training loop behind `jaxconv train`: data, model, optimizer, epochs, files.

    result = fit(TrainConfig(model="lenet5", data="digits", epochs=20))

It writes to `config.out`: `config.json`, `metrics.jsonl` (one line per
epoch), `checkpoint.npz` (params, optimizer state, step, key, config; written
atomically) and, with matplotlib, `curves.png`. `resume=True` continues from
that checkpoint and gives bit-identical results to an uninterrupted run.
"""

from __future__ import annotations

import dataclasses
import json
import os
import time
from typing import Optional

import jax
import jax.numpy as jnp
import numpy as np
import optax

from jaxconv import checkpoint, data, models, parallel
from jaxconv.train import evaluate, make_eval_step, make_train_step, stack_params

OPTIMIZERS = ("sgd", "momentum", "adam")
DEFAULT_LR = {"sgd": 0.1, "momentum": 0.02, "adam": 2e-3}
SCHEDULES = ("cosine", "constant")
# The keys a checkpoint must agree on to be resumed: a different model, data
# set or optimizer would silently train something else.
RESUME_KEYS = ("model", "data", "impl", "optimizer", "lr", "schedule", "shift", "epochs", "batch_size", "seed", "ensemble", "limit")


@dataclasses.dataclass
class TrainConfig:
    model: str = "lenet5"  # lenet5 | seed_cnn
    data: str = "digits"  # digits | mnist | cifar10
    data_dir: Optional[str] = None  # folder of the MNIST/CIFAR-10 files
    epochs: int = 20  # the bundled digits reach ~98-99% test accuracy by then
    batch_size: int = 32  # 44 full steps per epoch on the 1,438 training digits
    optimizer: str = "adam"
    lr: Optional[float] = None  # peak learning rate; None: DEFAULT_LR of the optimizer
    schedule: str = "cosine"  # cosine decay to 0 over the run, or constant
    shift: int = 2  # augmentation: random shifts of up to this many pixels (0: none)
    impl: str = "auto"  # convolution implementation, see jaxconv.conv2d
    seed: int = 0  # init and shuffling; the train/test split is fixed
    out: str = "runs/latest"
    resume: bool = False
    ensemble: int = 1  # K independently initialised models trained at once
    limit: Optional[int] = None  # use only the first N training images (quick runs)
    checkpoint_every: int = 0  # steps between checkpoints; 0: at the end of each epoch
    devices: Optional[int] = None  # data-parallel over this many devices; None: all (of every process)
    progress: bool = True  # tqdm progress bars

    def validate(self):
        if self.model not in models.MODELS:
            raise ValueError(f"train: unknown `model` {self.model!r}. It needs to be one of {sorted(models.MODELS)}.")
        if self.data not in ("digits", "mnist", "cifar10"):
            raise ValueError(f"train: unknown `data` {self.data!r}. It needs to be one of ['cifar10', 'digits', 'mnist'].")
        if self.data != "digits" and not self.data_dir:
            raise ValueError(f"train: `data`={self.data!r} is read from files; pass their folder with --data-dir PATH.")
        if self.optimizer not in OPTIMIZERS:
            raise ValueError(f"train: unknown `optimizer` {self.optimizer!r}. It needs to be one of {list(OPTIMIZERS)}.")
        if self.schedule not in SCHEDULES:
            raise ValueError(f"train: unknown `schedule` {self.schedule!r}. It needs to be one of {list(SCHEDULES)}.")
        if self.shift < 0:
            raise ValueError(f"train: `shift` must be >= 0 pixels, got {self.shift}.")
        for name in ("epochs", "batch_size", "ensemble"):
            if getattr(self, name) < 1:
                raise ValueError(f"train: `{name}` must be >= 1, got {getattr(self, name)}.")
        if self.lr is not None and not self.lr > 0:
            raise ValueError(f"train: `lr` must be > 0, got {self.lr}.")
        if self.limit is not None and self.limit < 1:
            raise ValueError(f"train: `limit` must be >= 1, got {self.limit}.")
        if self.devices is not None and self.devices < 1:
            raise ValueError(f"train: `devices` must be >= 1, got {self.devices}.")
        if self.checkpoint_every < 0:
            raise ValueError(f"train: `checkpoint_every` must be >= 0, got {self.checkpoint_every}.")
        return self

    @property
    def learning_rate(self) -> float:
        return self.lr if self.lr is not None else DEFAULT_LR[self.optimizer]


class NonFiniteLoss(RuntimeError):
    """Training produced a NaN or Inf loss; the last good checkpoint is kept."""


def load_data(config: TrainConfig) -> data.Dataset:
    """The data set, as 32x32 images with the channels the model expects."""
    if config.data == "digits":
        ds = data.load_digits(size=24, pad_to=32)  # 8x8 -> 24x24 in a 32x32 frame, as MNIST's 20x20 in 28x28
    elif config.data == "mnist":
        ds = data.load_mnist(config.data_dir)  # 28x28 -> pad to 32x32, as LeCun et al. did
        pad = lambda x: np.pad(x, ((0, 0), (2, 2), (2, 2), (0, 0)))  # noqa: E731
        ds = data.Dataset(pad(ds.x_train), ds.y_train, pad(ds.x_test), ds.y_test)
    else:
        ds = data.load_cifar10(config.data_dir)
    if config.model == "seed_cnn" and ds.x_train.shape[3] == 1:  # the notes' network takes 3 channels
        tile = lambda x: np.repeat(x, 3, axis=3)  # noqa: E731
        ds = data.Dataset(tile(ds.x_train), ds.y_train, tile(ds.x_test), ds.y_test)
    if config.limit is not None:
        ds = data.Dataset(ds.x_train[: config.limit], ds.y_train[: config.limit], ds.x_test, ds.y_test)
    return ds


def build_model(config: TrainConfig, in_channels: int):
    if config.model == "lenet5":
        return models.lenet5(in_channels=in_channels, impl=config.impl)
    return models.seed_cnn(impl=config.impl)


def build_optimizer(config: TrainConfig, total_steps: int) -> optax.GradientTransformation:
    lr = config.learning_rate
    if config.schedule == "cosine":
        lr = optax.cosine_decay_schedule(lr, total_steps)
    if config.optimizer == "sgd":
        return optax.sgd(lr)
    if config.optimizer == "momentum":
        return optax.sgd(lr, momentum=0.9)
    return optax.adam(lr)


def _init(model, optimizer, key, input_shape, ensemble):
    """Params and optimizer state; for an ensemble, K of each stacked on a leading axis."""
    keys = jax.random.split(key, ensemble)
    params = [model.init(k, input_shape)[1] for k in keys]
    params = params[0] if ensemble == 1 else stack_params(params)
    opt_state = optimizer.init(params) if ensemble == 1 else jax.vmap(optimizer.init)(params)
    return params, opt_state


def _evaluate_ensemble(apply, params, x, y, batch_size):
    """Accuracy of each of K stacked models, and of the ensemble (mean of their probabilities)."""
    probs = []
    for k in range(jax.tree_util.tree_leaves(params)[0].shape[0]):
        member = jax.tree_util.tree_map(lambda leaf: leaf[k], params)
        probs.append(jax.nn.softmax(evaluate(apply, member, x, y, batch_size)["logits"]))
    probs = np.stack(probs)  # (K, m, classes)
    each = (probs.argmax(-1) == y).mean(axis=1)  # (K,)
    return each, float((probs.mean(0).argmax(-1) == y).mean())


def fit(config: TrainConfig, log=print) -> dict:
    """Train as `config` says; return a summary dict (best and final test accuracy, files, timing).

    With several devices (or processes joined by `parallel.initialize_distributed`,
    which must run first) each batch is split over a data-parallel mesh; only
    process 0 logs and writes files.
    """
    config.validate()
    primary = parallel.is_primary()
    if not primary:
        log = lambda *a, **k: None  # noqa: E731  (one process speaks for all)
    n_devices = config.devices or jax.device_count()
    mesh = parallel.data_mesh(n_devices) if n_devices > 1 or jax.process_count() > 1 else None
    if mesh is not None:
        parallel.check_batch_size(config.batch_size, mesh)
    os.makedirs(config.out, exist_ok=True)
    ds = load_data(config)
    m = len(ds.x_train)
    if config.batch_size > m:
        raise ValueError(f"train: `batch_size` ({config.batch_size}) is larger than the {m} training images; use a smaller one.")
    steps_per_epoch = m // config.batch_size  # full batches: one compiled shape
    dropped = m - steps_per_epoch * config.batch_size
    model = build_model(config, ds.x_train.shape[3])
    optimizer = build_optimizer(config, config.epochs * steps_per_epoch)
    input_shape = (-1, *ds.x_train.shape[1:])

    root = jax.random.key(config.seed)
    init_key, data_key, shift_key = jax.random.split(root, 3)
    params, opt_state = _init(model, optimizer, init_key, input_shape, config.ensemble)
    if mesh is None:
        step_fn = make_train_step(model.apply, optimizer, ensemble=config.ensemble > 1)
    else:
        step_fn = parallel.make_parallel_train_step(model.apply, optimizer, mesh=mesh, ensemble=config.ensemble > 1)
    eval_step = make_eval_step(model.apply)

    ckpt_path = os.path.join(config.out, "checkpoint.npz")
    metrics_path = os.path.join(config.out, "metrics.jsonl")
    config_dict = dataclasses.asdict(config)
    step = 0
    history = []
    if config.resume:
        if not os.path.exists(ckpt_path):
            raise FileNotFoundError(f"train: --resume found no checkpoint at {ckpt_path}; run without --resume first.")
        state = checkpoint.load_checkpoint(
            ckpt_path,
            params_like=params,
            opt_state_like=opt_state,
            config={k: config_dict[k] for k in RESUME_KEYS},
        )
        params, opt_state, step = state["params"], state["opt_state"], int(state["step"])
        if os.path.exists(metrics_path):  # keep the epochs the checkpoint has seen
            with open(metrics_path) as f:
                history = [json.loads(line) for line in f if line.strip()]
            history = [h for h in history if h["step"] <= step]
        log(f"resumed from {ckpt_path} at step {step} (epoch {step // steps_per_epoch + 1})")
    if mesh is not None:
        params, opt_state = parallel.replicate(mesh, (params, opt_state))
    if primary:
        with open(os.path.join(config.out, "config.json"), "w") as f:
            json.dump(config_dict, f, indent=2)

    def save(step):
        host_params, host_opt_state = parallel.to_host((params, opt_state))  # every process takes part
        if primary:
            checkpoint.save_checkpoint(
                ckpt_path, params=host_params, opt_state=host_opt_state, step=step, key=root,
                config={k: config_dict[k] for k in RESUME_KEYS},
            )

    log(
        f"training {config.model} ({config.impl} conv) on {config.data}: {m} train / {len(ds.x_test)} test images "
        f"{ds.x_train.shape[1:]}, {steps_per_epoch} steps of {config.batch_size} per epoch"
        + (f" ({dropped} images left out of each epoch, a different {dropped} each time)" if dropped else "")
        + f", {config.optimizer} lr={config.learning_rate} ({config.schedule}), shifts up to {config.shift} px"
        + f", backend {jax.default_backend()}"
        + (f", data-parallel over {mesh.size} devices in {jax.process_count()} process(es)" if mesh is not None else "")
    )
    if config.progress:
        from tqdm.auto import tqdm
    start_time = time.perf_counter()
    first_epoch = step // steps_per_epoch
    for epoch in range(first_epoch, config.epochs):
        epoch_start = time.perf_counter()
        start_step = step - epoch * steps_per_epoch
        batch_iter = data.batches(
            ds.x_train, ds.y_train, config.batch_size, key=jax.random.fold_in(data_key, epoch),
            start_step=start_step, drop_last=True,
        )
        bar = tqdm(total=steps_per_epoch, initial=start_step, desc=f"epoch {epoch + 1}/{config.epochs}",
                   unit="step", leave=False) if config.progress and primary else None
        losses = []
        for x, y in batch_iter:
            x = data.random_shift(x, config.shift, jax.random.fold_in(shift_key, step))  # whole global batch
            if mesh is not None:
                x, y = parallel.shard_batch(mesh, *parallel.take_process_rows(mesh, x, y))
            params, opt_state, metrics = step_fn(params, opt_state, x, y)
            losses.append(metrics["loss"])
            step += 1
            if bar is not None and (step % 5 == 0 or step % steps_per_epoch == 0):
                loss_now = float(jnp.mean(metrics["loss"]))
                rate = len(losses) * config.batch_size / (time.perf_counter() - epoch_start)
                bar.set_postfix(loss=f"{loss_now:.4f}", img_s=f"{rate:,.0f}")
            if bar is not None:
                bar.update(1)
            if config.checkpoint_every and step % config.checkpoint_every == 0:
                _check_finite(losses, step, epoch, steps_per_epoch)
                save(step)
        if bar is not None:
            bar.close()
        train_loss = _check_finite(losses, step, epoch, steps_per_epoch)  # waits for the epoch's last step
        train_time = time.perf_counter() - epoch_start
        save(step)
        record = {"epoch": epoch + 1, "step": step, "train_loss": train_loss, "train_time_s": train_time,
                  "images_per_s": len(losses) * config.batch_size / train_time}
        if config.ensemble == 1:
            train_eval = evaluate(model.apply, params, ds.x_train, ds.y_train, 256, eval_step=eval_step)
            test_eval = evaluate(model.apply, params, ds.x_test, ds.y_test, 256, eval_step=eval_step)
            record.update(train_accuracy=train_eval["accuracy"], test_loss=test_eval["loss"], test_accuracy=test_eval["accuracy"])
        else:
            train_each, train_ens = _evaluate_ensemble(model.apply, params, ds.x_train, ds.y_train, 256)
            test_each, test_ens = _evaluate_ensemble(model.apply, params, ds.x_test, ds.y_test, 256)
            record.update(train_accuracy=train_ens, test_accuracy=test_ens,
                          test_accuracy_each=[float(a) for a in test_each],
                          train_accuracy_each=[float(a) for a in train_each])
        record["time_s"] = time.perf_counter() - epoch_start  # training, checkpoint and evaluation
        history.append(record)
        if primary:
            with open(metrics_path, "w") as f:  # rewritten whole: a resumed run keeps one line per epoch
                f.writelines(json.dumps(h) + "\n" for h in history)
        log(
            f"epoch {epoch + 1:3d}/{config.epochs}  train loss {train_loss:.4f}  "
            f"train acc {record['train_accuracy']:.4f}  test acc {record['test_accuracy']:.4f}  "
            f"({record['time_s']:.1f} s, {record['images_per_s']:,.0f} images/s)"
            + (f"  members {' '.join(f'{a:.4f}' for a in record['test_accuracy_each'])}" if config.ensemble > 1 else "")
        )
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


def _check_finite(losses, step, epoch, steps_per_epoch) -> float:
    """Mean of the epoch's losses so far; raise NonFiniteLoss naming the first bad step."""
    values = np.asarray(jnp.stack(losses)) if losses else np.zeros((0,))
    bad = np.flatnonzero(~np.isfinite(values.reshape(len(values), -1)).all(axis=1))
    if bad.size:
        bad_step = step - len(values) + int(bad[0]) + 1
        raise NonFiniteLoss(
            f"train: the loss became {values[bad[0]]} at step {bad_step} (epoch {epoch + 1}, step "
            f"{bad_step - epoch * steps_per_epoch} of {steps_per_epoch}); stopped, and the last good checkpoint is kept. "
            f"Try a smaller --lr."
        )
    return float(values.mean()) if values.size else float("nan")


def _plot(history, out) -> Optional[str]:
    """curves.png of loss and accuracy per epoch, when matplotlib is installed."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    if not history:
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
