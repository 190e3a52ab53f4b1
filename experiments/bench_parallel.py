"""Images/s of the LeNet-5 training step on 1 vs N devices, data-parallel with jaxconv.parallel.

    python experiments/bench_parallel.py                    # 1 vs 2 CPU devices, batch 128 and 512
    python experiments/bench_parallel.py --quick            # a fast look (fewer rounds and steps)
    python experiments/bench_parallel.py --devices 1 2 4 8  # on a machine with 8 GPUs
    python experiments/bench_parallel.py --cpu-devices 4 --devices 1 2 4

Each configuration is the same compiled step (`make_parallel_train_step`) on a
mesh of n devices: the batch m split n ways along "data", params and Adam state
replicated, the gradient all-reduced by XLA. "plain" is `make_train_step`
without a mesh, the one-device baseline. The batch is put on the devices once
before timing, so the numbers are the step itself, not the host-to-device copy.

Configurations run in interleaved rounds (every config once per round, in a
random order), and the table shows the median images/s over rounds, so a busy
shared machine slows all of them alike; p25..p75 shows the spread over rounds. On CPU the N "devices" are N XLA host
devices sharing the machine's cores: expect little gain; it shows the mechanism.
"""

from __future__ import annotations

import argparse
import os
import platform
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import _common  # noqa: E402

from jaxconv.devices import cpu_devices  # noqa: E402


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--devices", type=_common.positive_int, nargs="+", default=None,
                   help="device counts to compare (default: 1 and every available device)")
    p.add_argument("--batch-sizes", type=_common.positive_int, nargs="+", default=[128, 512], help="global batch sizes m")
    p.add_argument("--rounds", type=_common.positive_int, default=7, help="interleaved rounds; the median is reported")
    p.add_argument("--steps", type=_common.positive_int, default=10, help="training steps timed per config per round")
    p.add_argument("--cpu-devices", type=_common.positive_int, default=2,
                   help="XLA host devices to create on CPU (sets XLA_FLAGS before JAX starts; ignored if already set)")
    p.add_argument("--quick", action="store_true", help="3 rounds of 3 steps: a fast look, not a measurement")
    args = p.parse_args(argv)
    if args.quick:
        args.rounds, args.steps = 3, 3
    return args


def machine_line(jax) -> str:
    d = jax.devices()[0]
    return (
        f"{platform.node()} | {platform.processor() or platform.machine()} | {os.cpu_count()} CPU cores | "
        f"{jax.device_count()} x {d.platform}:{d.device_kind} | jax {jax.__version__} | python {platform.python_version()}"
    )


def main(argv=None):
    args = parse_args(argv)
    if "xla_force_host_platform_device_count" not in os.environ.get("XLA_FLAGS", ""):
        cpu_devices(args.cpu_devices)  # before JAX starts
    import jax
    import numpy as np
    import optax

    from jaxconv import models, parallel
    from jaxconv.train import make_train_step

    available = jax.device_count()
    counts = args.devices or sorted({1, available})
    if max(counts) > available:
        sys.exit(
            f"bench_parallel: `--devices` {max(counts)} is more than the {available} device(s) JAX has; pass "
            f"--cpu-devices {max(counts)} on CPU (or set XLA_FLAGS=--xla_force_host_platform_device_count="
            f"{max(counts)}), or ask for at most {available}."
        )
    for m in args.batch_sizes:
        for n in counts:
            if m % n:
                sys.exit(f"bench_parallel: `--batch-sizes` {m} is not a multiple of `--devices` {n}; each device "
                         f"needs the same number of rows, e.g. --batch-sizes {m - m % n or n}.")
    model = models.lenet5()
    optimizer = optax.adam(1e-3)
    # Shapes by tracing init; values from numpy (the timing does not depend on them).
    _, shapes = jax.eval_shape(lambda: model.init(jax.random.key(0), (1, 32, 32, 1)))
    rng = np.random.default_rng(0)
    params0 = jax.tree_util.tree_map(lambda s: (0.05 * rng.standard_normal(s.shape)).astype(np.float32), shapes)

    configs = []  # (name, batch, run(k) -> seconds for k steps)
    for m in args.batch_sizes:
        x = rng.random((m, 32, 32, 1), dtype=np.float32)  # (m, n_H, n_W, n_C)
        y = rng.integers(0, 10, m).astype(np.int32)  # (m,)

        def plain(x=x, y=y):
            step = make_train_step(model.apply, optimizer)
            state = list(jax.device_put((params0, optimizer.init(params0))))
            xd, yd = jax.device_put((x, y))
            return step, state, xd, yd

        configs.append(("plain (no mesh)", 1, m, plain))
        for n in counts:
            parallel.check_batch_size(m, n)

            def sharded(n=n, x=x, y=y):
                mesh = parallel.data_mesh(n)
                step = parallel.make_parallel_train_step(model.apply, optimizer, mesh=mesh)
                state = list(parallel.replicate(mesh, (params0, optimizer.init(params0))))
                xd, yd = parallel.shard_batch(mesh, x, y)
                return step, state, xd, yd

            configs.append((f"mesh of {n}", n, m, sharded))

    print(machine_line(jax))
    print(f"LeNet-5 train step (Adam), float32; {args.rounds} rounds x {args.steps} steps; median images/s\n")
    prepared = []
    for name, n, m, make in configs:
        step, state, xd, yd = make()
        state[0], state[1], metrics = step(state[0], state[1], xd, yd)  # compile + warm up
        jax.block_until_ready(metrics)
        prepared.append((name, n, m, step, state, xd, yd))

    def runner(step, state, xd, yd):
        def run(k):
            for _ in range(k):
                state[0], state[1], metrics = step(state[0], state[1], xd, yd)
            jax.block_until_ready((state[0], metrics))

        return run

    seconds = _common.interleaved_rounds({i: runner(*p[3:]) for i, p in enumerate(prepared)}, args.rounds, args.steps)
    rates = {i: [p[2] / s for s in seconds[i]] for i, p in enumerate(prepared)}  # images/s per round

    print(f"{'batch m':>8} | {'config':<16} | {'devices':>7} | {'rows/device':>11} | {'images/s':>10} | "
          f"{'p25..p75':>15} | {'vs 1 device':>11}")
    print("-" * 98)
    for m in args.batch_sizes:
        rows = [(i, p) for i, p in enumerate(prepared) if p[2] == m]
        base = next(float(np.median(rates[i])) for i, p in rows if p[0] == "mesh of 1") if 1 in counts else None
        for i, (name, n, _, *_rest) in rows:
            med = float(np.median(rates[i]))
            ratio = f"{med / base:.2f}x" if base else "-"
            lo, hi = np.percentile(rates[i], [25, 75])
            spread = f"{lo:,.0f}..{hi:,.0f}"
            print(f"{m:>8} | {name:<16} | {n:>7} | {m // n:>11} | {med:>10,.0f} | {spread:>15} | {ratio:>11}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
