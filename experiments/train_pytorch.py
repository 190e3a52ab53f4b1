"""`jaxconv train`'s default run, written in PyTorch: the reference for the end-to-end wall time.

    python experiments/train_pytorch.py --out runs/train_pytorch          # 20 epochs, as `jaxconv train`
    python experiments/train_pytorch.py --epochs 1 --limit 256 --out /tmp/t  # seconds

The same job as `jaxconv train` with its defaults: LeNet-5 (6@5x5 -> max pool 2
-> 16@5x5 -> max pool 2 -> 120 -> 84 -> 10, ReLU) on the bundled digits (8x8
scaled to 24x24 in a 32x32 frame, the same fixed train/test split), He-normal
weights and zero biases, Adam at 2e-3 with cosine decay to 0 over the run
(optax.cosine_decay_schedule, per step), batches of 32 (full batches only, a
fresh shuffle each epoch), random shifts of up to 2 pixels with zero fill, and
after every epoch the train and test accuracy. The clock starts when the
process starts (imports and model building included), so the number it prints
is comparable to the wall time of the `jaxconv train` process, less the time
spent loading the digits through jaxconv (which imports JAX, foreign to a
PyTorch run: reported apart as `data_s`);
experiments/bench_train.py runs the two side by side.

Needs PyTorch (`pip install torch`); the data come from jaxconv's loader.
"""

from __future__ import annotations

import math
import os
import sys
import time

_T0 = time.perf_counter()  # before torch's import: start-up counts

import numpy as np  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import _common  # noqa: E402


def build_parser():
    p = _common.parser(__doc__, "runs/train_pytorch")
    p.add_argument("--epochs", type=int, default=20, help="epochs (default 20, as jaxconv train)")
    p.add_argument("--batch-size", type=int, default=32, help="mini-batch size (default 32, as jaxconv train)")
    p.add_argument("--lr", type=float, default=2e-3, help="Adam's peak learning rate (default 2e-3, as jaxconv train)")
    p.add_argument("--shift", type=int, default=2, help="random shifts of up to this many pixels (default 2)")
    p.add_argument("--limit", type=int, default=None, help="use only the first N training images (quick runs)")
    p.add_argument("--seed", type=int, default=0, help="init and shuffling seed")
    return p


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    for name in ("epochs", "batch_size"):
        if getattr(args, name) < 1:
            raise SystemExit(f"error: --{name.replace('_', '-')} must be >= 1, got {getattr(args, name)}.")
    try:
        import torch
        import torch.nn.functional as F
    except ImportError:
        raise SystemExit("error: this script needs PyTorch; install it with `pip install torch`.")
    out = _common.out_dir(args.out)
    torch.manual_seed(args.seed)
    rng = np.random.default_rng(args.seed)
    data_start = time.perf_counter()
    from jaxconv import data  # imports JAX too: that time is not PyTorch's, so it is reported apart

    ds = data.load_digits(size=24, pad_to=32)  # the same data and split as jaxconv train
    data_s = time.perf_counter() - data_start
    x_train, y_train = ds.x_train, ds.y_train
    if args.limit is not None:
        x_train, y_train = x_train[: args.limit], y_train[: args.limit]
    to_nchw = lambda x: torch.from_numpy(np.ascontiguousarray(x.transpose(0, 3, 1, 2)))  # noqa: E731
    x_test, y_test = to_nchw(ds.x_test), torch.from_numpy(ds.y_test.astype(np.int64))
    m, B = len(x_train), args.batch_size
    if B > m:
        raise SystemExit(f"error: --batch-size ({B}) is larger than the {m} training images; use a smaller one.")
    steps_per_epoch = m // B

    class LeNet5(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.conv1, self.conv2 = torch.nn.Conv2d(1, 6, 5), torch.nn.Conv2d(6, 16, 5)
            self.fc3, self.fc4, self.fc5 = torch.nn.Linear(400, 120), torch.nn.Linear(120, 84), torch.nn.Linear(84, 10)
            for layer in self.modules():
                if isinstance(layer, (torch.nn.Conv2d, torch.nn.Linear)):  # He normal, zero bias: jaxconv's init
                    torch.nn.init.kaiming_normal_(layer.weight, nonlinearity="relu")
                    torch.nn.init.zeros_(layer.bias)

        def forward(self, h):  # (m, 1, 32, 32)
            h = F.max_pool2d(F.relu(self.conv1(h)), 2)  # (m, 6, 14, 14)
            h = F.max_pool2d(F.relu(self.conv2(h)), 2)  # (m, 16, 5, 5)
            h = h.permute(0, 2, 3, 1).flatten(1)  # NHWC order, as jaxconv flattens
            return self.fc5(F.relu(self.fc4(F.relu(self.fc3(h)))))

    model = LeNet5()
    try:
        optimizer = torch.optim.Adam(model.parameters(), args.lr, fused=True)
    except (RuntimeError, TypeError):
        optimizer = torch.optim.Adam(model.parameters(), args.lr, foreach=True)
    total = args.epochs * steps_per_epoch
    # optax.cosine_decay_schedule(lr, total): lr · ½(1 + cos(π·t/total)) at step t.
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda t: 0.5 * (1 + math.cos(math.pi * min(t, total) / total)))

    def shift(x):  # (B, 32, 32, 1) numpy, each image moved by its own (dy, dx), zero fill
        s = args.shift
        if s == 0:
            return x
        padded = np.pad(x, ((0, 0), (s, s), (s, s), (0, 0)))
        d = rng.integers(-s, s + 1, size=(len(x), 2))
        H, W = x.shape[1:3]
        return np.stack([padded[i, s - dy : s - dy + H, s - dx : s - dx + W] for i, (dy, dx) in enumerate(d)])

    @torch.no_grad()
    def accuracy(x, y):
        model.eval()
        correct = sum(int((model(x[i : i + 256]).argmax(1) == y[i : i + 256]).sum()) for i in range(0, len(x), 256))
        model.train()
        return correct / len(x)

    x_train_t, y_train_t = to_nchw(x_train), torch.from_numpy(y_train.astype(np.int64))
    rows = []
    print(f"training LeNet-5 in PyTorch {torch.__version__} on digits: {m} train / {len(x_test)} test images, "
          f"{steps_per_epoch} steps of {B} per epoch, {torch.get_num_threads()} threads "
          f"(start-up {time.perf_counter() - _T0:.1f} s)", flush=True)
    train_start = time.perf_counter()
    for epoch in range(args.epochs):
        t = time.perf_counter()
        order = rng.permutation(m)
        losses = []
        for k in range(steps_per_epoch):
            idx = order[k * B : (k + 1) * B]
            x = to_nchw(shift(x_train[idx]))
            loss = F.cross_entropy(model(x), y_train_t[idx])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            schedule.step()
            losses.append(loss.detach())
        train_s = time.perf_counter() - t
        row = {"epoch": epoch + 1, "train_loss": float(torch.stack(losses).mean()),
               "train_accuracy": accuracy(x_train_t, y_train_t), "test_accuracy": accuracy(x_test, y_test),
               "images_per_s": steps_per_epoch * B / train_s, "time_s": time.perf_counter() - t}
        rows.append(row)
        print(f"epoch {epoch + 1:3d}/{args.epochs}  train loss {row['train_loss']:.4f}  train acc "
              f"{row['train_accuracy']:.4f}  test acc {row['test_accuracy']:.4f}  ({row['time_s']:.1f} s, "
              f"{row['images_per_s']:,.0f} images/s)", flush=True)
    wall = time.perf_counter() - _T0
    result = {"wall_s": wall, "data_s": data_s, "wall_s_without_data": wall - data_s, "train_s": time.perf_counter() - train_start, "final_test_accuracy": rows[-1]["test_accuracy"],
              "best_test_accuracy": max(r["test_accuracy"] for r in rows), "torch": torch.__version__}
    _common.write_json(os.path.join(out, "result.json"), result)
    print(f"done in {wall:.1f} s (process wall time, start-up included; {wall - data_s:.1f} s without loading "
          f"the data through jaxconv, which imports JAX); final test accuracy "
          f"{result['final_test_accuracy']:.4f}, best {result['best_test_accuracy']:.4f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
