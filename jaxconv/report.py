"""What a training run reports: progress bars, each epoch's evaluation and log line, the run's summary, `curves.png`."""

from __future__ import annotations

import os
import sys
import time
from typing import Optional

import jax
import jax.numpy as jnp
import numpy as np

from jaxconv.train import evaluate

EVAL_BATCH_SIZE = 256  # examples per evaluation batch (one compiled shape, the last batch padded)


def tqdm_class():
    """tqdm's progress bar class (imported only for runs that show bars)."""
    from tqdm.auto import tqdm as bar_class

    return bar_class


def progress_bar(tqdm, steps_per_epoch: int, start_step: int, epoch: int, epochs: int):
    """The epoch's progress bar, or None: no tqdm, or stderr is not a terminal (piped logs get the epoch lines)."""
    if tqdm is None:
        return None
    bar = tqdm(total=steps_per_epoch, initial=start_step, desc=f"epoch {epoch + 1}/{epochs}", unit="step",
               leave=False, disable=None, file=sys.stderr)
    return None if bar.disable else bar


def show_step(bar, step: int, steps_per_epoch: int, metrics: dict, images: int, epoch_start: float) -> None:
    """Advance the bar by one step; every 5th step and the epoch's last, show the loss and images/s."""
    if step % 5 == 0 or step % steps_per_epoch == 0:
        loss_now = float(jnp.mean(metrics["loss"]))
        bar.set_postfix(loss=f"{loss_now:.4f}", img_s=f"{images / (time.perf_counter() - epoch_start):,.0f}")
    bar.update(1)


def member(tree, k):
    """Member k of a tree stacked on a leading axis (None stays None)."""
    return None if tree is None else jax.tree_util.tree_map(lambda leaf: leaf[k], tree)


def evaluate_ensemble(apply, params, x, y, batch_size, state=None, eval_step=None):
    """Accuracy of each of K stacked models, and of the ensemble (mean of their probabilities)."""
    probs = []
    for k in range(jax.tree_util.tree_leaves(params)[0].shape[0]):
        logits = evaluate(apply, member(params, k), x, y, batch_size, state=member(state, k), eval_step=eval_step)["logits"]
        probs.append(jax.nn.softmax(logits))
    probs = np.stack(probs)  # (K, m, classes)
    each = (probs.argmax(-1) == y).mean(axis=1)  # (K,)
    return each, float((probs.mean(0).argmax(-1) == y).mean())


def evaluate_epoch(apply, eval_step, params, state, ds, ensemble: int) -> dict:
    """The epoch's accuracies (and test loss) on the training and test sets, in eval mode: BatchNorm's running
    statistics, no dropout. An ensemble reports the ensemble's accuracy and each member's."""
    if ensemble == 1:
        train = evaluate(apply, params, ds.x_train, ds.y_train, EVAL_BATCH_SIZE, eval_step=eval_step, state=state)
        test = evaluate(apply, params, ds.x_test, ds.y_test, EVAL_BATCH_SIZE, eval_step=eval_step, state=state)
        return {"train_accuracy": train["accuracy"], "test_loss": test["loss"], "test_accuracy": test["accuracy"]}
    train_each, train_ens = evaluate_ensemble(apply, params, ds.x_train, ds.y_train, EVAL_BATCH_SIZE, state, eval_step)
    test_each, test_ens = evaluate_ensemble(apply, params, ds.x_test, ds.y_test, EVAL_BATCH_SIZE, state, eval_step)
    return {"train_accuracy": train_ens, "test_accuracy": test_ens, "test_accuracy_each": [float(a) for a in test_each],
            "train_accuracy_each": [float(a) for a in train_each]}


def start_line(config, ds, steps_per_epoch: int, dropped: int, mesh) -> str:
    """The log line that opens a run: model, data, batches, optimizer, augmentation, backend, devices."""
    dtype = "" if config.dtype == "float32" else ", " + config.dtype + " compute"
    return (
        f"training {config.model} ({config.impl} conv{dtype}) on {config.data}: {len(ds.x_train)} train / "
        f"{len(ds.x_test)} test images "
        f"{ds.x_train.shape[1:]}, {steps_per_epoch} steps of {config.batch_size} per epoch"
        + (f" ({dropped} images left out of each epoch, a different {dropped} each time)" if dropped else "")
        + f", {config.optimizer} lr={config.learning_rate} ({config.schedule}), shifts up to {config.shift} px"
        + f", backend {jax.default_backend()}"
        + (f", data-parallel over {mesh.size} devices in {jax.process_count()} process(es)" if mesh is not None else "")
    )


def epoch_line(record: dict, epochs: int, ensemble: int) -> str:
    """The log line of a finished epoch: losses, accuracies, time and throughput (and each member's accuracy)."""
    return (
        f"epoch {record['epoch']:3d}/{epochs}  train loss {record['train_loss']:.4f}  "
        f"train acc {record['train_accuracy']:.4f}  test acc {record['test_accuracy']:.4f}  "
        f"({record['time_s']:.1f} s, {record['images_per_s']:,.0f} images/s)"
        + (f"  members {' '.join(f'{a:.4f}' for a in record['test_accuracy_each'])}" if ensemble > 1 else "")
    )


def summary(history: list, out: str, elapsed: float) -> dict:
    """fit's result: best and final test accuracy, epochs, wall time, throughput and the files written."""
    # Training throughput without the first epoch, which includes compilation.
    speeds = [h["images_per_s"] for h in history[1:]] or [h["images_per_s"] for h in history]
    return {
        "best_test_accuracy": max((h["test_accuracy"] for h in history), default=float("nan")),
        "final_test_accuracy": history[-1]["test_accuracy"] if history else float("nan"),
        "epochs": len(history),
        "wall_s": elapsed,
        "images_per_s": float(np.median(speeds)) if speeds else float("nan"),
        "out": out,
        "files": {"config": "config.json", "metrics": "metrics.jsonl", "checkpoint": "checkpoint.npz"},
    }


def pyplot():
    """matplotlib.pyplot on the Agg backend, or None when matplotlib is not installed."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    return plt


def plot(history, out) -> Optional[str]:
    """curves.png of loss and accuracy per epoch, when matplotlib is installed."""
    plt = pyplot()  # imported already by the thread `fit` starts, unless it is still at it (then this waits)
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
