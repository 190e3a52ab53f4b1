"""What a training run is: its config (`TrainConfig`), and the data, model and optimizer built from it.

`jaxconv.loop.fit` trains a `TrainConfig`; `jaxconv train` builds one from its arguments. Every
name here is also importable from `jaxconv.loop`, where it has always been.
"""

from __future__ import annotations

import dataclasses
import hashlib
import inspect
from typing import Optional

import numpy as np
import optax

from jaxconv import conv, data, models
from jaxconv._args import integer

OPTIMIZERS = ("sgd", "momentum", "adam")
DEFAULT_LR = {"sgd": 0.1, "momentum": 0.02, "adam": 2e-3}
SCHEDULES = ("cosine", "constant")
DTYPES = ("float32", "bfloat16")  # compute dtypes; params, loss and optimizer stay float32 (see docs/interop.md, the dtype policy)


@dataclasses.dataclass
class TrainConfig:
    """The settings of a training run. `fit` reads them and never changes them: what it derives (the checked
    whole numbers, the resumed run's learning rate, the data's fingerprint) goes into copies and a `Run`."""

    model: str = "lenet5"  # a name in models.MODELS
    data: str = "digits"  # a name in data.DATASETS
    data_dir: Optional[str] = None  # folder of the MNIST/CIFAR-10 files
    epochs: int = 20  # the bundled digits' test accuracy levels off by then (docs/benchmarks.md#digits-epochs)
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

    def validate(self) -> "TrainConfig":
        """Check every setting; return a copy with the whole numbers as Python ints (this config is left as it is)."""
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
        whole = {name: integer(getattr(self, name), name, "train", minimum=minimum)
                 for name, minimum in (("shift", 0), ("epochs", 1), ("batch_size", 1), ("ensemble", 1), ("seed", None),
                                       ("checkpoint_every", 0))}
        whole.update({name: integer(getattr(self, name), name, "train", minimum=1)
                      for name in ("limit", "devices") if getattr(self, name) is not None})
        if self.lr is not None and not self.lr > 0:
            raise ValueError(f"train: `lr` must be > 0, got {self.lr}.")
        if self.resume and self.overwrite:
            raise ValueError("train: `resume` and `overwrite` exclude each other; pass --resume to continue the run "
                             "in --out, or --overwrite to replace it.")
        return dataclasses.replace(self, **whole)

    @property
    def learning_rate(self) -> float:
        return self.lr if self.lr is not None else DEFAULT_LR[self.optimizer]


def load_data(config: TrainConfig) -> data.Dataset:
    """The data set (`data.DATASETS[config.data]`), as 32x32 images with the channels the model expects."""
    ds = data.DATASETS[config.data].load(config.data_dir)
    if config.limit is not None:
        ds = data.Dataset(ds.x_train[: config.limit], ds.y_train[: config.limit], ds.x_test, ds.y_test)
    return ds


def check_against_data(config: TrainConfig, ds: data.Dataset) -> None:
    """Refuse settings the data set cannot serve: a batch larger than the training set, a shift as large as
    the images (every pixel shifted out)."""
    m, n_H, n_W = ds.x_train.shape[:3]
    if config.batch_size > m:
        raise ValueError(f"train: `batch_size` ({config.batch_size}) is larger than the {m} training images; use a smaller one.")
    if config.shift >= min(n_H, n_W):
        raise ValueError(f"train: `shift` ({config.shift}) must be smaller than the {n_H}x{n_W} images of --data "
                         f"{config.data} (a shift that large moves every pixel out); pass --shift {min(n_H, n_W) - 1} "
                         f"or less (default {TrainConfig.shift}).")


def channels_for(config: TrainConfig, ds: data.Dataset) -> data.Dataset:
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


def in_channels_kwargs(model: str, in_channels: int) -> dict:
    """{"in_channels": in_channels} for a model of `models.MODELS` built for any number of input channels,
    {} for one that takes RGB only (seed_cnn): the keyword arguments that build it for `in_channels`."""
    return {"in_channels": in_channels} if "in_channels" in inspect.signature(models.MODELS[model]).parameters else {}


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
    return constructor(**kwargs, **in_channels_kwargs(config.model, in_channels))


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
    result unravels them). Per parameter, XLA would compile three small loops for
    every leaf; flattened, the step compiles in less time and runs no slower
    (docs/benchmarks.md#flat-optimizer).
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
