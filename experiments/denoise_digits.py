"""Denoise the bundled digits with a U-Net and report the PSNR of noisy vs denoised test images.

    python experiments/denoise_digits.py --out runs/denoise
    python experiments/denoise_digits.py --quick --out runs/denoise_quick   # a few seconds, for a test

The 8x8 digits are resized bilinearly to --size x --size (load_digits(size=...), values in
[0, 1]); each image gets Gaussian noise of standard deviation --sigma, clipped to [0, 1], a new
draw every epoch for the training set and one fixed draw for the test set. `models.unet`
(GroupNorm, transposed-conv up-sampling) learns clean = f(noisy) by minimising the mean squared
error with Adam. PSNR = 10·log10(1 / MSE) in dB (peak value 1), averaged over test images.

Prints a table per epoch (train loss, test PSNR) and a final table (noisy, denoised, gain), and
writes into --out: denoise_digits.csv (the final table), history.csv (per epoch) and, with
matplotlib, denoise_digits.png (rows: noisy, denoised, clean).
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

from jaxconv import models  # noqa: E402
from jaxconv.data import load_digits  # noqa: E402


def psnr(a, b):
    """PSNR in dB of each image pair, peak 1: a, b (m, n_H, n_W, n_C) -> (m,)."""
    mse = np.mean((np.asarray(a, np.float64) - np.asarray(b, np.float64)) ** 2, axis=(1, 2, 3))
    return 10 * np.log10(1.0 / np.maximum(mse, 1e-12))


def add_noise(x, sigma, rng):
    """x + N(0, sigma²) per pixel, clipped to the image range [0, 1]."""
    return np.clip(x + sigma * rng.standard_normal(x.shape).astype(np.float32), 0.0, 1.0)


def make_step(model, optimizer):
    """One compiled Adam step on the mean squared error J = (1/m) Σ ||f(noisy) − clean||² / (n_H·n_W)."""

    def J(params, noisy, clean):
        return jnp.mean(jnp.square(model.apply(params, noisy) - clean))

    @jax.jit
    def step(params, opt_state, noisy, clean):
        loss, grads = jax.value_and_grad(J)(params, noisy, clean)
        updates, opt_state = optimizer.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, loss

    return step


def denoise(model, params, x, batch_size=256):
    apply = jax.jit(model.apply)
    return np.concatenate([np.asarray(apply(params, x[i : i + batch_size])) for i in range(0, len(x), batch_size)])


def train(args, data, rng):
    """Train the U-Net; returns (model, params, history rows)."""
    model = models.unet(depth=args.depth, base_width=args.width, num_groups=min(8, args.width))
    _, params = model.init(jax.random.key(args.seed), (-1, *data.x_train.shape[1:]))
    optimizer = optax.adam(args.lr)
    opt_state, step = optimizer.init(params), make_step(model, optimizer)
    noisy_test = add_noise(data.x_test, args.sigma, np.random.default_rng(args.seed + 1))
    history, m = [], len(data.x_train)
    for epoch in range(1, args.epochs + 1):
        order, losses = rng.permutation(m), []
        for i in range(0, m - args.batch_size + 1, args.batch_size):  # full batches only: one compiled shape
            clean = data.x_train[order[i : i + args.batch_size]]
            params, opt_state, loss = step(params, opt_state, add_noise(clean, args.sigma, rng), clean)
            losses.append(float(loss))
        test_psnr = psnr(denoise(model, params, noisy_test), data.x_test).mean()
        history.append([epoch, f"{np.mean(losses):.5f}", f"{test_psnr:.2f}"])
        print(f"epoch {epoch:3d}  train MSE {np.mean(losses):.5f}  test PSNR {test_psnr:.2f} dB", flush=True)
    return model, params, noisy_test, history


def plot(noisy, denoised, clean, path, plt, n=8):
    fig, axes = plt.subplots(3, n, figsize=(1.2 * n, 3.8), squeeze=False)
    for r, (name, images) in enumerate((("noisy", noisy), ("denoised", denoised), ("clean", clean))):
        for k in range(n):
            axes[r, k].imshow(images[k, :, :, 0], cmap="gray", vmin=0, vmax=1, interpolation="nearest")
            axes[r, k].set_xticks([])
            axes[r, k].set_yticks([])
        axes[r, 0].set_ylabel(name, fontsize=9)
    fig.suptitle("U-Net denoising of the bundled digits (test set)", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)


def main(argv=None):
    p = _common.parser(__doc__, "runs/denoise")
    p.add_argument("--epochs", type=_common.positive_int, default=15, help="passes over the training set (default 15)")
    p.add_argument("--quick", action="store_true", help="a tiny run for tests: at most 2 epochs, 8x8 images, depth 1, width 8, 256 training images")
    p.add_argument("--sigma", type=float, default=0.3, help="standard deviation of the Gaussian noise (default 0.3)")
    p.add_argument("--size", type=_common.positive_int, default=16, help="resize the 8x8 digits to size x size (default 16; divisible by 2^depth)")
    p.add_argument("--depth", type=int, default=2, help="U-Net depth: number of 2x2 poolings (default 2)")
    p.add_argument("--width", type=_common.positive_int, default=16, help="channels at the top level, doubled per level (default 16)")
    p.add_argument("--batch-size", type=_common.positive_int, default=32, help="mini-batch size (default 32)")
    p.add_argument("--lr", type=float, default=2e-3, help="Adam learning rate (default 2e-3)")
    p.add_argument("--seed", type=int, default=0, help="seed of the init, the noise and the order (default 0)")
    args = p.parse_args(argv)
    if args.quick:
        args.epochs, args.size, args.depth, args.width = min(args.epochs, 2), 8, 1, 8
    if not 0 < args.sigma <= 1 or args.size % 2**args.depth:
        p.error(f"need 0 < --sigma <= 1 and --size divisible by 2^--depth, got {args.sigma}, {args.size}, {args.depth}")
    out = _common.out_dir(args.out)
    data = load_digits(size=args.size) if args.size != 8 else load_digits()
    if args.quick:
        data = data._replace(x_train=data.x_train[:256], y_train=data.y_train[:256])
    rng = np.random.default_rng(args.seed)

    start = time.perf_counter()
    model, params, noisy_test, history = train(args, data, rng)
    seconds = time.perf_counter() - start
    denoised = denoise(model, params, noisy_test)
    noisy_db, denoised_db = psnr(noisy_test, data.x_test).mean(), psnr(denoised, data.x_test).mean()
    header = ["test images", "size", "sigma", "PSNR noisy (dB)", "PSNR denoised (dB)", "gain (dB)", "epochs", "train time (s)"]
    rows = [[len(data.x_test), f"{args.size}x{args.size}", args.sigma, f"{noisy_db:.2f}", f"{denoised_db:.2f}",
             f"{denoised_db - noisy_db:.2f}", args.epochs, f"{seconds:.0f}"]]
    print()
    print(_common.format_table(header, rows, align="r" * len(header)))
    _common.write_csv(os.path.join(out, "denoise_digits.csv"), header, rows)
    _common.write_csv(os.path.join(out, "history.csv"), ["epoch", "train MSE", "test PSNR (dB)"], history)
    written = ["denoise_digits.csv", "history.csv"]
    plt = _common.pyplot(args.no_plot)
    if plt is not None:
        plot(noisy_test, denoised, data.x_test, os.path.join(out, "denoise_digits.png"), plt)
        written.append("denoise_digits.png")
    print(f"wrote {', '.join(os.path.join(out, w) for w in written)}")
    return noisy_db, denoised_db


if __name__ == "__main__":
    main()
