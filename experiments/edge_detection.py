"""Edge detection with the notes' filters: vertical, horizontal, Sobel and Scharr, on digits and your images.

    python experiments/edge_detection.py --out runs/edges
    python experiments/edge_detection.py --images photo.png array.npy --out runs/edges_mine

Convolves (cross-correlates, as the notes do) each image with the four 3x3
filters of the notes, "valid" padding, with `jaxconv.conv2d`:

    vertical   [[1,0,-1],[1,0,-1],[1,0,-1]]      horizontal [[1,1,1],[0,0,0],[-1,-1,-1]]
    Sobel      [[1,0,-1],[2,0,-2],[1,0,-1]]      Scharr     [[3,0,-3],[10,0,-10],[3,0,-3]]

Images: the notes' 6x6 step image (3 columns of 10, 3 of 0), a few bundled
digits upsampled to --size (load_digits(size=...)), and every file given with
--images (PNG read with matplotlib.image.imread, or .npy arrays (n_H, n_W) or
(n_H, n_W, channels)); colour images are turned grey by averaging R, G, B.

Prints a table of mean and max |response| per image and filter, and writes
into --out: edge_detection.csv (that table), feature_maps.npz (every map,
key "<image>/<filter>") and edge_detection.png (inputs and feature maps).
"""

from __future__ import annotations

import os
import sys

import jax.numpy as jnp
import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import _common  # noqa: E402

import jaxconv  # noqa: E402
from jaxconv.data import load_digits  # noqa: E402

FILTERS = {
    "vertical": [[1, 0, -1], [1, 0, -1], [1, 0, -1]],
    "horizontal": [[1, 1, 1], [0, 0, 0], [-1, -1, -1]],
    "sobel": [[1, 0, -1], [2, 0, -2], [1, 0, -1]],
    "scharr": [[3, 0, -3], [10, 0, -10], [3, 0, -3]],
}
STEP = np.array([[10, 10, 10, 0, 0, 0]] * 6, np.float32)  # the notes' 6x6 image


def feature_maps(image):
    """One grey image (n_H, n_W) -> {filter name: (n_H − 2, n_W − 2) map}, all four filters in one conv2d."""
    w = jnp.asarray(np.stack(list(FILTERS.values()), axis=-1)[:, :, None, :], jnp.float32)  # (3, 3, 1, 4) HWIO
    x = jnp.asarray(image, jnp.float32)[None, :, :, None]  # (1, n_H, n_W, 1)
    z = np.asarray(jaxconv.conv2d(x, w))[0]  # (n_H − 2, n_W − 2, 4)
    return {name: z[..., k] for k, name in enumerate(FILTERS)}


def read_image(path: str):
    """A file -> grey float32 (n_H, n_W). .npy via numpy, anything else via matplotlib.image.imread."""
    if not os.path.isfile(path):
        sys.exit(f"edge_detection: `--images` file `{path}` does not exist; check the path.")
    if path.lower().endswith(".npy"):
        try:
            a = np.load(path, allow_pickle=False)
        except (ValueError, OSError, EOFError) as e:
            sys.exit(f"edge_detection: `--images` file `{path}` is not a readable .npy array ({e}); save it with np.save.")
    else:
        try:
            import matplotlib.image
        except ImportError:
            sys.exit(f"edge_detection: reading `{path}` needs matplotlib ({_common.PLOT_HINT}); or save the image as .npy.")
        a = matplotlib.image.imread(path)
    a = np.asarray(a, np.float32)
    if a.ndim == 3 and a.shape[-1] in (1, 3, 4):
        a = a[..., :3].mean(-1) if a.shape[-1] >= 3 else a[..., 0]  # drop alpha, average R, G, B
    if a.ndim != 2 or min(a.shape) < 3:
        sys.exit(f"edge_detection: `{path}` has shape {a.shape}; expected a grey (n_H, n_W) or colour (n_H, n_W, 3|4) "
                 f"image of at least 3x3 pixels.")
    return a


def plot(images, maps, path, plt):
    names = list(images)
    fig, axes = plt.subplots(len(names), 1 + len(FILTERS), figsize=(2.0 * (1 + len(FILTERS)), 2.0 * len(names)), squeeze=False)
    for r, name in enumerate(names):
        axes[r, 0].imshow(images[name], cmap="gray", interpolation="nearest")
        axes[r, 0].set_ylabel(name, fontsize=8)
        for k, f in enumerate(FILTERS):
            m = maps[name][f]
            lim = float(np.abs(m).max()) or 1.0
            axes[r, k + 1].imshow(m, cmap="RdBu_r", vmin=-lim, vmax=lim, interpolation="nearest")
            if r == 0:
                axes[r, k + 1].set_title(f, fontsize=9)
        if r == 0:
            axes[r, 0].set_title("input", fontsize=9)
    for ax in axes.flat:
        ax.set_xticks([])
        ax.set_yticks([])
    fig.suptitle("Feature maps (red > 0, blue < 0): vertical, horizontal, Sobel and Scharr filters", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=70)
    plt.close(fig)


def main(argv=None):
    p = _common.parser(__doc__, "runs/edges")
    p.add_argument("--images", nargs="*", default=[], help="image files to add: PNG (needs matplotlib) or .npy")
    p.add_argument("--digits", type=int, default=3, help="how many bundled digits to show (different classes; default 3)")
    p.add_argument("--size", type=int, default=32, help="upsample the 8x8 digits to size x size for visibility (default 32)")
    p.add_argument("--no-step", action="store_true", help="leave out the notes' 6x6 step image")
    args = p.parse_args(argv)
    if not 0 <= args.digits <= 10 or args.size < 8:
        p.error(f"need 0 <= --digits <= 10 and --size >= 8, got {args.digits} and {args.size}")
    out = _common.out_dir(args.out)

    images = {}
    if not args.no_step:
        images["notes 6x6 step"] = STEP
    if args.digits:
        data = load_digits(size=args.size) if args.size != 8 else load_digits()
        for c in range(args.digits):
            i = int(np.flatnonzero(data.y_test == c)[0])
            images[f"digit {c} ({args.size}x{args.size})"] = data.x_test[i, :, :, 0]
    for path in args.images:
        images[os.path.basename(path)] = read_image(path)
    if not images:
        p.error("nothing to do: give --images, --digits > 0, or keep the step image")

    maps = {name: feature_maps(img) for name, img in images.items()}
    header = ["image", "shape", "filter", "mean |response|", "max |response|", "min", "max"]
    rows = [[name, "x".join(map(str, m[f].shape)), f, f"{np.abs(m[f]).mean():.3f}", f"{np.abs(m[f]).max():.3f}",
             f"{m[f].min():.3f}", f"{m[f].max():.3f}"] for name, m in maps.items() for f in FILTERS]
    print(_common.format_table(header, rows, align="lll" + "r" * 4))
    if "notes 6x6 step" in maps:
        print("\nthe notes' 6x6 step image, vertical filter (the notes: 30 in the two middle columns):")
        print(maps["notes 6x6 step"]["vertical"].astype(int))
    _common.write_csv(os.path.join(out, "edge_detection.csv"), header, rows)
    np.savez(os.path.join(out, "feature_maps.npz"), **{f"{name}/{f}": m[f] for name, m in maps.items() for f in FILTERS})
    written = ["edge_detection.csv", "feature_maps.npz"]
    plt = _common.pyplot(args.no_plot)
    if plt is not None:
        plot(images, maps, os.path.join(out, "edge_detection.png"), plt)
        written.append("edge_detection.png")
    print(f"wrote {', '.join(os.path.join(out, w) for w in written)}")
    return maps


if __name__ == "__main__":
    main()
