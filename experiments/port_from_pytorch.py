"""Port LeNet-5 weights PyTorch -> jaxconv -> PyTorch and show the logits agree.

    python experiments/port_from_pytorch.py --out runs/port_from_pytorch
    python experiments/port_from_pytorch.py --steps 2 --out runs/port_quick     # a smoke test

Needs torch (pip install torch). Steps:
  1. builds LeNet-5 in PyTorch (conv1 6@5x5, pool, conv2 16@5x5, pool, NCHW flatten, fc3 120, fc4 84,
     fc5 10: the architecture of `jaxconv.models.lenet5`) and trains it for --steps Adam steps on the
     bundled digits (`load_digits(pad_to=32)`, digits 8x8 in a 32x32 canvas);
  2. ports its state_dict to jaxconv params with `jaxconv.interop.from_torch` (conv OIHW -> HWIO, dense
     transposed, fc3's inputs reordered from NCHW to NHWC flatten order) and compares the logits of
     both on the test images;
  3. the reverse: trains jaxconv's LeNet-5 for --steps steps, exports it with `to_torch` and through a
     safetensors file (`save_safetensors` with PyTorch names, read by `safetensors.torch.load_file`
     when the safetensors package is installed), loads it into a fresh PyTorch LeNet-5 and compares;
  4. the round trip PyTorch -> jaxconv -> PyTorch, tensor by tensor (bit-identical expected);
  5. once `jaxconv.models.resnet20` exists: ResNet-20 (BatchNorm running statistics included) trained
     --resnet-steps steps in PyTorch, ported, eval-mode logits compared; and a jaxconv-initialised
     ResNet-20 (params and state) exported to PyTorch. --resnet-steps 0 skips training, -1 the part.

Prints the name map and a table (direction, max |logit difference|, test accuracy of each side) and
writes port_from_pytorch.json, port_from_pytorch.md and lenet5.safetensors into --out.
"""

from __future__ import annotations

import collections
import os
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import _common  # noqa: E402

from jaxconv import interop, models  # noqa: E402
from jaxconv.data import batches, load_digits  # noqa: E402
from jaxconv.train import make_train_step  # noqa: E402


def torch_lenet5(num_classes: int = 10, in_channels: int = 1):
    """LeNet-5 in PyTorch with the module names of `models.lenet5`'s params (conv1, conv2, fc3, fc4, fc5)."""
    import torch.nn as tnn

    class LeNet5(tnn.Module):
        def __init__(self):
            super().__init__()
            self.conv1 = tnn.Conv2d(in_channels, 6, 5)
            self.conv2 = tnn.Conv2d(6, 16, 5)
            self.fc3 = tnn.Linear(16 * 5 * 5, 120)
            self.fc4 = tnn.Linear(120, 84)
            self.fc5 = tnn.Linear(84, num_classes)

        def forward(self, x):  # x (m, n_C, 32, 32), NCHW
            f = tnn.functional
            x = f.max_pool2d(f.relu(self.conv1(x)), 2)  # (m, 6, 14, 14)
            x = f.max_pool2d(f.relu(self.conv2(x)), 2)  # (m, 16, 5, 5)
            x = x.flatten(1)  # (m, 400), NCHW order
            return self.fc5(f.relu(self.fc4(f.relu(self.fc3(x)))))

    return LeNet5()


def torch_resnet20(num_classes: int = 10, in_channels: int = 3):
    """ResNet-20 in PyTorch with the module names of `models.resnet20`'s params.

    conv1, bn1, stage{1,2,3}.block{1,2,3}.{conv_a, bn_a, conv_b, bn_b}, a 1x1 conv + BN projection
    stage{2,3}.block1.shortcut.{conv, bn} (option B), global average pool, fc.
    """
    import torch.nn as tnn

    class Shortcut(tnn.Module):
        def __init__(self, n_in, n_out):
            super().__init__()
            self.conv = tnn.Conv2d(n_in, n_out, 1, stride=2, bias=False)
            self.bn = tnn.BatchNorm2d(n_out)

        def forward(self, x):
            return self.bn(self.conv(x))

    class Block(tnn.Module):
        def __init__(self, n_in, n_out, stride):
            super().__init__()
            self.conv_a = tnn.Conv2d(n_in, n_out, 3, stride=stride, padding=1, bias=False)
            self.bn_a = tnn.BatchNorm2d(n_out)
            self.conv_b = tnn.Conv2d(n_out, n_out, 3, padding=1, bias=False)
            self.bn_b = tnn.BatchNorm2d(n_out)
            self.shortcut = Shortcut(n_in, n_out) if stride != 1 else None

        def forward(self, x):
            f = tnn.functional
            y = self.bn_b(self.conv_b(f.relu(self.bn_a(self.conv_a(x)))))
            return f.relu(y + (x if self.shortcut is None else self.shortcut(x)))

    class ResNet20(tnn.Module):
        def __init__(self):
            super().__init__()
            self.conv1 = tnn.Conv2d(in_channels, 16, 3, padding=1, bias=False)
            self.bn1 = tnn.BatchNorm2d(16)
            n_in = 16
            for i, n_C in enumerate((16, 32, 64), start=1):
                blocks = {f"block{j}": Block(n_in if j == 1 else n_C, n_C, 2 if (i > 1 and j == 1) else 1) for j in (1, 2, 3)}
                setattr(self, f"stage{i}", tnn.Sequential(collections.OrderedDict(blocks)))
                n_in = n_C
            self.fc = tnn.Linear(64, num_classes)

        def forward(self, x):  # x (m, n_C, 32, 32), NCHW
            x = tnn.functional.relu(self.bn1(self.conv1(x)))
            x = self.stage3(self.stage2(self.stage1(x)))  # (m, 64, 8, 8)
            return self.fc(x.mean(dim=(2, 3)))

    return ResNet20()


def torch_logits(net, x):
    """Logits of a PyTorch net on NHWC NumPy images (m, n_H, n_W, n_C) -> NumPy (m, num_classes)."""
    import torch

    with torch.no_grad():
        return net(torch.from_numpy(np.ascontiguousarray(x.transpose(0, 3, 1, 2)))).numpy()


def train_torch(net, x, y, steps, batch_size, lr, seed):
    import torch

    torch.manual_seed(seed)
    opt = torch.optim.Adam(net.parameters(), lr=lr)
    rng = np.random.default_rng(seed)
    for _ in range(steps):
        i = rng.choice(len(x), batch_size, replace=False)
        xb = torch.from_numpy(np.ascontiguousarray(x[i].transpose(0, 3, 1, 2)))
        loss = torch.nn.functional.cross_entropy(net(xb), torch.from_numpy(y[i].astype(np.int64)))
        opt.zero_grad()
        loss.backward()
        opt.step()
    return net


def train_jax(model, params, x, y, steps, batch_size, lr, seed):
    opt = optax.adam(lr)
    step = make_train_step(model.apply, opt)
    opt_state, done = opt.init(params), 0
    key = jax.random.key(seed)
    while done < steps:
        key, sub = jax.random.split(key)
        for xb, yb in batches(x, y, batch_size, key=sub, drop_last=True):
            params, opt_state, _ = step(params, opt_state, xb, yb)
            done += 1
            if done == steps:
                break
    return params


def port_resnet20(args, x_train, y_train, x_test, accuracy):
    """ResNet-20 both ways, in eval mode (BatchNorm with running statistics): rows of the table, round trip ok."""
    import torch

    model = models.resnet20(in_channels=1, impl="lax")
    rows = interop.name_map(model, (-1, 32, 32, 1))

    def jax_logits(params, state):
        return np.asarray(jax.jit(lambda p, s, x: model.apply(p, x, state=s, train=False)[0])(params, state, jnp.asarray(x_test)))

    torch.manual_seed(args.seed)
    net = train_torch(torch_resnet20(in_channels=1), x_train, y_train, args.resnet_steps, args.batch_size, args.lr, args.seed).eval()
    sd = net.state_dict()
    params, state = interop.from_torch(sd, rows)
    lt, lj = torch_logits(net, x_test), jax_logits(params, state)
    results = [(f"ResNet-20 PyTorch-trained ({args.resnet_steps} steps) -> jaxconv", float(np.abs(lt - lj).max()), accuracy(lt), accuracy(lj))]
    back = interop.to_torch(params, rows, state, num_batches_tracked=int(sd["bn1.num_batches_tracked"]))
    identical = set(back) == set(sd) and all(np.array_equal(sd[k].numpy(), back[k]) and sd[k].numpy().dtype == back[k].dtype for k in sd)

    _, params_j = model.init(jax.random.key(args.seed), (-1, 32, 32, 1))
    _, state_j = model.init_state((-1, 32, 32, 1))
    net_j = torch_resnet20(in_channels=1)
    net_j.load_state_dict(interop.to_torch(params_j, rows, state_j, tensors=True))
    lt, lj = torch_logits(net_j.eval(), x_test), jax_logits(params_j, state_j)
    results.append(("ResNet-20 jaxconv-initialised -> PyTorch", float(np.abs(lt - lj).max()), accuracy(lt), accuracy(lj)))
    return results, identical


def main(argv=None):
    p = _common.parser(__doc__, "runs/port_from_pytorch")
    p.add_argument("--steps", type=int, default=200, help="training steps on each side (default 200: a few epochs' worth)")
    p.add_argument("--batch-size", type=int, default=32, help="mini-batch size (default 32)")
    p.add_argument("--lr", type=float, default=1e-3, help="Adam learning rate (default 1e-3)")
    p.add_argument("--seed", type=int, default=0, help="seed of both initialisations and batch orders")
    p.add_argument("--resnet-steps", type=int, default=20, help="PyTorch ResNet-20 training steps (default 20: enough to move BatchNorm's statistics; -1 skips ResNet-20)")
    args = p.parse_args(argv)
    try:
        import torch
    except ImportError:
        p.error("needs PyTorch: pip install torch")
    out = _common.out_dir(args.out)
    start = time.perf_counter()
    torch.manual_seed(args.seed)

    data = load_digits(pad_to=32)
    x_train, y_train = np.asarray(data.x_train), np.asarray(data.y_train)
    x_test, y_test = np.asarray(data.x_test), np.asarray(data.y_test)
    model = models.lenet5(impl="lax")
    apply = jax.jit(model.apply)
    rows = interop.lenet5_name_map()
    print(interop.format_name_map(rows), "\n")

    def accuracy(logits):
        return float((np.argmax(logits, axis=1) == y_test).mean())

    results = []

    # 1-2. PyTorch -> jaxconv
    net = train_torch(torch_lenet5(), x_train, y_train, args.steps, args.batch_size, args.lr, args.seed).eval()
    params, _ = interop.from_torch(net.state_dict(), rows)
    lt, lj = torch_logits(net, x_test), np.asarray(apply(params, jnp.asarray(x_test)))
    results.append(("PyTorch-trained -> jaxconv", float(np.abs(lt - lj).max()), accuracy(lt), accuracy(lj)))

    # 4. round trip PyTorch -> jaxconv -> PyTorch, tensor by tensor
    back = interop.to_torch(params, rows)
    sd = net.state_dict()
    identical = all(np.array_equal(sd[k].numpy(), back[k]) and sd[k].numpy().dtype == back[k].dtype for k in sd)
    identical = identical and set(sd) == set(back)

    # 3. jaxconv -> PyTorch, via to_torch and via a safetensors file with PyTorch names
    _, params_j = model.init(jax.random.key(args.seed), (-1, 32, 32, 1))
    params_j = train_jax(model, params_j, x_train, y_train, args.steps, args.batch_size, args.lr, args.seed)
    lj = np.asarray(apply(params_j, jnp.asarray(x_test)))
    net_j = torch_lenet5()
    net_j.load_state_dict(interop.to_torch(params_j, rows, tensors=True))
    lt = torch_logits(net_j.eval(), x_test)
    results.append(("jaxconv-trained -> PyTorch (to_torch)", float(np.abs(lt - lj).max()), accuracy(lt), accuracy(lj)))
    st_path = interop.save_safetensors(os.path.join(out, "lenet5.safetensors"), params_j, rows)
    try:
        import safetensors.torch

        net_s = torch_lenet5()
        net_s.load_state_dict(safetensors.torch.load_file(st_path))
        lt = torch_logits(net_s.eval(), x_test)
        results.append(("jaxconv-trained -> PyTorch (safetensors)", float(np.abs(lt - lj).max()), accuracy(lt), accuracy(lj)))
    except ImportError:
        print("safetensors.torch not importable: the safetensors check is skipped (pip install safetensors)")

    if args.resnet_steps >= 0 and hasattr(models, "resnet20"):
        resnet_results, resnet_identical = port_resnet20(args, x_train, y_train, x_test, accuracy)
        results += resnet_results
        identical = identical and resnet_identical
    elif args.resnet_steps >= 0:
        print("models.resnet20 does not exist yet: the ResNet-20 part is skipped")

    header = ("direction", "max |logit diff|", "PyTorch test acc", "jaxconv test acc")
    table = [(d, _common.fmt(diff), f"{at:.4f}", f"{aj:.4f}") for d, diff, at, aj in results]
    print(_common.format_table(header, table, align="lrrr"))
    print(f"\nround trip PyTorch -> jaxconv -> PyTorch bit-identical: {identical}")
    print(f"max |logit| {float(np.abs(lj).max()):.3g}; float32 rounding of such sums is ~1e-6..1e-5")
    wall = time.perf_counter() - start
    _common.write_json(
        os.path.join(out, "port_from_pytorch.json"),
        {
            "results": [dict(zip(("direction", "max_abs_diff", "torch_acc", "jaxconv_acc"), r)) for r in results],
            "round_trip_bit_identical": identical,
            "settings": vars(args),
            "machine": _common.machine(),
            "wall_s": wall,
        },
    )
    with open(os.path.join(out, "port_from_pytorch.md"), "w") as f:
        f.write(_common.markdown_table(header, table) + "\n")
    print(f"wrote {out} ({wall:.1f} s)")
    return 0 if identical else 1


if __name__ == "__main__":
    sys.exit(main())
