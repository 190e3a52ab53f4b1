"""Why convolutions? The notes' argument, measured: LeNet-5 against a fully connected net on shifted digits.

    python experiments/why_convolutions.py --out runs/why_convolutions
    python experiments/why_convolutions.py --quick --out runs/why_quick     # 2 epochs, for tests

The notes claim parameter sharing and sparse connections give translation
invariance. This trains, with the same data, optimiser, seed and epochs,
  - LeNet-5 (`jaxconv.models.lenet5`, 61,706 parameters), and
  - a fully connected net Flatten -> Dense -> Relu -> ... -> Dense(10) with at
    least as many parameters (--fc-hidden, default 64,64: 70,410 parameters),
on the bundled 8x8 digits zero-padded to 32x32 (`load_digits(pad_to=32)`),
then evaluates both on the test images shifted by 0..--max-shift pixels up,
down, left and right inside the 32x32 canvas (zero fill; the digit never
leaves the canvas for shifts <= 12). --digit-size 16 resizes the digits to
16x16 first (LeNet-5 was designed for 20x20 digits in a 32x32 canvas; an 8x8
digit is barely bigger than its 5x5 filters). --gap adds a third net, small
and all-convolutional with a global-average-pool head (24,202 parameters):
the convolutions are shift-equivariant, and the head averages over space, so
it is invariant to shifts by multiples of its total pooling stride (4 pixels)
and only to those; LeNet-5's fully connected head is not. Neither net sees a shifted image in
training.

Prints the parameter counts, the accuracy-vs-shift table (mean over the four
directions, and per direction), and writes into --out:
  why_convolutions.csv    model, direction, shift, accuracy
  why_convolutions.json   parameter counts, accuracies, settings, wall time
  why_convolutions.png    accuracy vs shift, both nets
  lenet_filters.png       LeNet-5's learned first-layer filters and their feature maps on a few digits
"""

from __future__ import annotations

import os
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import _common  # noqa: E402

import jaxconv  # noqa: E402
from jaxconv import models  # noqa: E402
from jaxconv.data import batches, load_digits  # noqa: E402
from jaxconv.train import evaluate, make_eval_step, make_train_step  # noqa: E402

DIRECTIONS = {"up": (-1, 0), "down": (1, 0), "left": (0, -1), "right": (0, 1)}


def shift(x, dy: int, dx: int):
    """Shift images (m, n_H, n_W, n_C) by dy rows and dx columns, filling with zeros."""
    out = np.zeros_like(x)
    n_H, n_W = x.shape[1:3]
    src_h = slice(max(-dy, 0), n_H - max(dy, 0))
    dst_h = slice(max(dy, 0), n_H - max(-dy, 0))
    src_w = slice(max(-dx, 0), n_W - max(dx, 0))
    dst_w = slice(max(dx, 0), n_W - max(-dx, 0))
    out[:, dst_h, dst_w] = x[:, src_h, src_w]
    return out


def digits(digit_size: int, seed: int):
    """The bundled digits as (m, 32, 32, 1): 8x8 (or resized to digit_size) in the middle of a zero canvas."""
    if digit_size == 8:
        return load_digits(pad_to=32, seed=seed)
    d = load_digits(size=digit_size, seed=seed)  # (m, digit_size, digit_size, 1)
    lo = (32 - digit_size) // 2
    pad = ((0, 0), (lo, 32 - digit_size - lo), (lo, 32 - digit_size - lo), (0, 0))
    return d._replace(x_train=np.pad(d.x_train, pad), x_test=np.pad(d.x_test, pad))


def fully_connected(hidden) -> jaxconv.Layer:
    """Flatten -> (Dense(h) -> Relu) for each h in hidden -> Dense(10) logits."""
    layers = [jaxconv.Flatten()]
    for h in hidden:
        layers += [jaxconv.Dense(h), jaxconv.Relu()]
    return jaxconv.serial(*layers, jaxconv.Dense(10))


def conv_gap() -> jaxconv.Layer:
    """A small all-convolutional net whose head is a global average pool: shift-invariant by construction
    (up to the canvas border and the pooling grid), unlike LeNet-5's fully connected head."""
    return jaxconv.serial(
        jaxconv.Conv2D(16, 5, padding="SAME"), jaxconv.Relu(), jaxconv.MaxPool(2),  # (m, 16, 16, 16)
        jaxconv.Conv2D(32, 3, padding="SAME"), jaxconv.Relu(), jaxconv.MaxPool(2),  # (m, 8, 8, 32)
        jaxconv.Conv2D(64, 3, padding="SAME"), jaxconv.Relu(),  # (m, 8, 8, 64)
        jaxconv.GlobalAvgPool(), jaxconv.Dense(10),  # (m, 64) -> logits (m, 10)
    )


def train(model, data, *, epochs, batch_size, lr, seed, label):
    """Adam on the softmax cross-entropy; returns the trained params and the final epoch's train metrics."""
    key = jax.random.key(seed)
    k_init, k_data = jax.random.split(key)
    _, params = model.init(k_init, (-1, *data.x_train.shape[1:]))
    opt = optax.adam(lr)
    opt_state = opt.init(params)
    step = make_train_step(model.apply, opt)
    t0 = time.perf_counter()
    for epoch in range(epochs):
        losses, accs = [], []
        for xb, yb in batches(data.x_train, data.y_train, batch_size, key=jax.random.fold_in(k_data, epoch), drop_last=True):
            params, opt_state, metrics = step(params, opt_state, xb, yb)
            losses.append(metrics["loss"])
            accs.append(metrics["accuracy"])
        print(f"  {label} epoch {epoch + 1}/{epochs}: loss {float(np.mean(losses)):.4f}, "
              f"train accuracy {float(np.mean(accs)):.3f} ({time.perf_counter() - t0:.1f} s)")
    return params


def accuracy_vs_shift(model, params, x, y, max_shift):
    """{direction: [accuracy at shift 0..max_shift]}."""
    eval_step = make_eval_step(model.apply)
    acc = {}
    for name, (dy, dx) in DIRECTIONS.items():
        acc[name] = [evaluate(model.apply, params, shift(x, dy * k, dx * k), y, batch_size=len(x), eval_step=eval_step)["accuracy"]
                     for k in range(max_shift + 1)]
    return acc


def plot_curves(results, max_shift, path, plt):
    fig, ax = plt.subplots(figsize=(6, 4))
    for (label, res), color in zip(results.items(), ("C0", "C3", "C2")):
        per_dir = np.array(list(res["accuracy"].values()))  # (4, max_shift + 1)
        ks = np.arange(max_shift + 1)
        for row in per_dir:
            ax.plot(ks, row, color=color, alpha=0.25, lw=1)
        ax.plot(ks, per_dir.mean(0), color=color, lw=2.5, marker="o",
                label=f"{label} ({res['params']:,} params)")
    ax.axhline(0.1, color="grey", ls=":", lw=1, label="chance")
    ax.set_xlabel("shift of the test digits (pixels; thin lines: up/down/left/right)")
    ax.set_ylabel("test accuracy")
    ax.set_ylim(0, 1.02)
    ax.set_xticks(range(max_shift + 1))
    ax.set_title("Translation: convolution vs fully connected")
    ax.legend(loc="upper right", fontsize=8)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def plot_filters(params, x, y, path, plt, n_digits=4):
    """Row 0: conv1's filters; then per digit: the input and relu(conv1) feature maps."""
    w, b = np.asarray(params["conv1"]["w"]), np.asarray(params["conv1"]["b"])  # (5, 5, 1, 6), (6,)
    maps = np.asarray(jaxconv.relu(jaxconv.conv2d(jnp.asarray(x[:n_digits]), params["conv1"]["w"], params["conv1"]["b"])))
    n_f = w.shape[-1]
    fig, axes = plt.subplots(n_digits + 1, n_f + 1, figsize=(1.3 * (n_f + 1), 1.3 * (n_digits + 1)))
    crop = slice(6, 26) if x.shape[1] == 32 and np.abs(x[:, :6]).max() == 0 else slice(2, 30)  # the digit's surroundings
    for ax in axes.flat:
        ax.set_xticks([])
        ax.set_yticks([])
    axes[0, 0].axis("off")
    axes[0, 0].text(0.5, 0.5, "conv1\nfilters", ha="center", va="center", fontsize=9)
    lim = np.abs(w).max()
    for k in range(n_f):
        axes[0, k + 1].imshow(w[:, :, 0, k], cmap="RdBu_r", vmin=-lim, vmax=lim)
        axes[0, k + 1].set_title(f"filter {k + 1}", fontsize=8)
    for r in range(n_digits):
        axes[r + 1, 0].imshow(x[r, crop, crop, 0], cmap="gray_r")
        axes[r + 1, 0].set_ylabel(f"digit {y[r]}", fontsize=8)
        for k in range(n_f):  # the 28x28 map is offset by 2 from the input: crop the same region
            axes[r + 1, k + 1].imshow(maps[r, crop.start - 2 : crop.stop - 2, crop.start - 2 : crop.stop - 2, k], cmap="magma")
    fig.suptitle("LeNet-5: learned first-layer filters and their ReLU feature maps (centre)", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)


def main(argv=None):
    p = _common.parser(__doc__, "runs/why_convolutions")
    p.add_argument("--epochs", type=int, default=15, help="training epochs for both nets (default 15)")
    p.add_argument("--quick", action="store_true", help="2 epochs, for tests (overrides --epochs)")
    p.add_argument("--batch-size", type=int, default=32, help="mini-batch size (default 32)")
    p.add_argument("--lr", type=float, default=1e-3, help="Adam learning rate (default 1e-3)")
    p.add_argument("--fc-hidden", default="64,64",
                   help="hidden widths of the fully connected net, comma-separated (default 64,64: 70,410 params)")
    p.add_argument("--max-shift", type=int, default=4, help="largest shift in pixels (default 4)")
    p.add_argument("--digit-size", type=int, default=8, choices=(8, 12, 16, 20),
                   help="size of the digit inside the 32x32 canvas: 8 = the original 8x8 images zero-padded "
                        "(load_digits(pad_to=32), default); 16 or 20 resize them first (LeNet-5 was designed for "
                        "20x20 digits in a 32x32 canvas)")
    p.add_argument("--gap", action="store_true",
                   help="also train a small conv net with a global-average-pool head (invariance by construction)")
    p.add_argument("--seed", type=int, default=0, help="seed of the split, the inits and the batch order")
    args = p.parse_args(argv)
    epochs = 2 if args.quick else args.epochs
    hidden = [int(h) for h in args.fc_hidden.split(",") if h.strip()]
    if epochs < 1 or args.max_shift < 0 or not hidden or min(hidden) < 1:
        p.error(f"need --epochs >= 1, --max-shift >= 0 and positive --fc-hidden; got {epochs}, {args.max_shift}, {args.fc_hidden!r}")
    out = _common.out_dir(args.out)
    print(_common.machine())
    t_start = time.perf_counter()

    data = digits(args.digit_size, args.seed)  # x (m, 32, 32, 1) in [0, 1]
    n = args.digit_size
    print(f"digits: {len(data.x_train)} train, {len(data.x_test)} test, "
          f"{'8x8' if n == 8 else f'8x8 resized to {n}x{n},'} zero-padded to 32x32")
    nets = {"LeNet-5": models.lenet5(), f"fully connected {'-'.join(map(str, [1024, *hidden, 10]))}": fully_connected(hidden)}
    if args.gap:
        nets["conv + global avg pool"] = conv_gap()
    results = {}
    for label, model in nets.items():
        t0 = time.perf_counter()
        params = train(model, data, epochs=epochs, batch_size=args.batch_size, lr=args.lr, seed=args.seed, label=label)
        acc = accuracy_vs_shift(model, params, data.x_test, data.y_test, args.max_shift)
        results[label] = {"params": jaxconv.count_params(params), "accuracy": acc, "trained": params,
                          "seconds": time.perf_counter() - t0}

    print("\nparameters:")
    for label, res in results.items():
        print(f"  {label}: {res['params']:,} ({res['seconds']:.1f} s to train and evaluate)")
    labels = list(results)
    header = ["shift (px)"] + [f"{lab} (mean)" for lab in labels]
    rows = []
    for k in range(args.max_shift + 1):
        rows.append([k] + [f"{np.mean([a[k] for a in results[lab]['accuracy'].values()]):.3f}" for lab in labels])
    print("\ntest accuracy vs shift (mean over up/down/left/right):")
    print(_common.format_table(header, rows, align="r" * len(header)))
    print("\nper direction:")
    dir_header = ["model", "direction"] + [f"{k}px" for k in range(args.max_shift + 1)]
    dir_rows = [[lab, d] + [f"{a:.3f}" for a in results[lab]["accuracy"][d]] for lab in labels for d in DIRECTIONS]
    print(_common.format_table(dir_header, dir_rows, align="ll" + "r" * (args.max_shift + 1)))

    wall = time.perf_counter() - t_start
    csv_rows = [[lab, d, k, results[lab]["accuracy"][d][k]] for lab in labels for d in DIRECTIONS for k in range(args.max_shift + 1)]
    _common.write_csv(os.path.join(out, "why_convolutions.csv"), ["model", "direction", "shift", "accuracy"], csv_rows)
    _common.write_json(os.path.join(out, "why_convolutions.json"), {
        "settings": {"epochs": epochs, "batch_size": args.batch_size, "lr": args.lr, "fc_hidden": hidden,
                     "max_shift": args.max_shift, "seed": args.seed, "digit_size": args.digit_size},
        "models": {lab: {"params": res["params"], "accuracy": res["accuracy"],
                         "mean_accuracy": [float(np.mean([a[k] for a in res["accuracy"].values()])) for k in range(args.max_shift + 1)]}
                   for lab, res in results.items()},
        "wall_seconds": wall,
        "machine": _common.machine(),
    })
    written = ["why_convolutions.csv", "why_convolutions.json"]
    plt = _common.pyplot(args.no_plot)
    if plt is not None:
        plot_curves(results, args.max_shift, os.path.join(out, "why_convolutions.png"), plt)
        plot_filters(results["LeNet-5"]["trained"], data.x_test, data.y_test, os.path.join(out, "lenet_filters.png"), plt)
        written += ["why_convolutions.png", "lenet_filters.png"]
    print(f"\nwall time {wall:.1f} s; wrote {', '.join(os.path.join(out, w) for w in written)}")
    return results


if __name__ == "__main__":
    main()
