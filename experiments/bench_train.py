"""The main job end to end: `jaxconv train` against the same training in PyTorch, wall time side by side.

    python experiments/bench_train.py --out runs/bench_train                 # defaults: 20 epochs, 3 rounds
    python experiments/bench_train.py --quick --out /tmp/bench_train         # seconds

Each round runs, in a random order, the `jaxconv train` command (defaults: LeNet-5
on the bundled digits, 20 epochs, batch 32, Adam with cosine decay, shifts of 2
px) and experiments/train_pytorch.py (the same job in PyTorch) as fresh
processes, and times each process from start to exit. `jaxconv train` runs
twice per round: with an empty compilation cache (a first run on a machine:
its steps compile) and with the cache an earlier run wrote (every later run of
the job: `jaxconv train` keeps compiled steps on disk by default; matplotlib's font cache, built
once before the rounds, is kept in both). Timed: start-up, compilation,
training, evaluation and file writing included. PyTorch's time leaves out its
loading of the digits through jaxconv (which imports JAX, a cost PyTorch alone
would not pay), so the comparison is generous to PyTorch. Prints the medians,
their ratio and the test accuracies, headed by the machine; writes
bench_train.csv and bench_train.json to --out.
"""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
import tempfile
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import _common  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))


def build_parser():
    p = _common.parser(__doc__, "runs/bench_train")
    p.add_argument("--rounds", type=int, default=3, help="runs of each contender (default 3)")
    p.add_argument("--epochs", type=int, default=20, help="epochs per run (default 20, jaxconv train's default)")
    p.add_argument("--limit", type=int, default=None, help="use only the first N training images")
    p.add_argument("--quick", action="store_true", help="1 round of 1 epoch on 256 images (for tests)")
    return p


def _run(cmd, env=None) -> tuple[float, str]:
    t = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
    wall = time.perf_counter() - t
    if proc.returncode:
        raise SystemExit(f"error: {' '.join(cmd)} failed with exit code {proc.returncode}:\n{proc.stderr[-2000:]}")
    return wall, proc.stdout


def jaxconv_run(args, work, cache_home) -> dict:
    """`jaxconv train` in a fresh process with its default compilation cache, put under `cache_home`
    (XDG_CACHE_HOME: the cache a user's runs share, `devices.compile_cache()`)."""
    out = tempfile.mkdtemp(dir=work)
    cmd = [sys.executable, "-m", "jaxconv.cli", "train", "--epochs", str(args.epochs), "--out", out, "--no-progress"]
    if args.limit:
        cmd += ["--limit", str(args.limit)]
    env = {k: v for k, v in os.environ.items() if k != "JAX_COMPILATION_CACHE_DIR"}  # jaxconv's own cache settings
    # matplotlib's font cache lives apart from XDG_CACHE_HOME, built once (`_warm_matplotlib`): emptying the
    # compilation cache for a first run must not also charge jaxconv matplotlib's first use on the machine
    # (~0.4 s, whatever program makes it; the PyTorch script draws no plot).
    wall, _ = _run(cmd, env={**env, "XDG_CACHE_HOME": cache_home, "MPLCONFIGDIR": _mpl_dir(work)})
    with open(os.path.join(out, "metrics.jsonl")) as f:
        last = [json.loads(line) for line in f if line.strip()][-1]
    return {"wall_s": wall, "test_accuracy": last["test_accuracy"]}


def jaxconv_cold(args, work) -> dict:
    """A first run on this machine: an empty compilation cache, so both steps compile."""
    return jaxconv_run(args, work, tempfile.mkdtemp(dir=work))


def jaxconv_warm(args, work) -> dict:
    """Any later run of the same job: the steps come from the cache the first run wrote (`jaxconv train`'s default)."""
    cache = os.path.join(work, "warm-cache")
    if not os.path.isdir(cache):
        jaxconv_run(args, work, cache)  # fills it, untimed: the cold row times a first run
    return jaxconv_run(args, work, cache)


def _mpl_dir(work: str) -> str:
    """matplotlib's config and font cache (MPLCONFIGDIR) for every jaxconv run, beside the runs' folder."""
    return os.path.join(os.path.dirname(work), "mpl")


def _warm_matplotlib(work: str) -> None:
    """Build matplotlib's font cache in `_mpl_dir(work)`, untimed."""
    subprocess.run([sys.executable, "-c", "import matplotlib.pyplot"], capture_output=True,
                   env={**os.environ, "MPLCONFIGDIR": _mpl_dir(work)})


def pytorch_run(args, work) -> dict:
    out = tempfile.mkdtemp(dir=work)
    cmd = [sys.executable, os.path.join(HERE, "train_pytorch.py"), "--epochs", str(args.epochs), "--out", out]
    if args.limit:
        cmd += ["--limit", str(args.limit)]
    wall, _ = _run(cmd)
    with open(os.path.join(out, "result.json")) as f:
        result = json.load(f)
    return {"wall_s": wall - result["data_s"], "test_accuracy": result["final_test_accuracy"]}


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    if args.quick:
        args.rounds, args.epochs, args.limit = 1, 1, 256
    for name in ("rounds", "epochs"):
        if getattr(args, name) < 1:
            raise SystemExit(f"error: --{name} must be >= 1, got {getattr(args, name)}.")
    try:
        import torch  # noqa: F401
    except ImportError:
        raise SystemExit("error: this benchmark needs PyTorch beside jaxconv; install it with `pip install torch`.")
    out = _common.out_dir(args.out)
    contenders = {
        "jaxconv train (first run: compiles)": jaxconv_cold,
        "jaxconv train (later runs: cached steps)": jaxconv_warm,
        "PyTorch (experiments/train_pytorch.py)": pytorch_run,
    }
    results = {name: [] for name in contenders}
    rng = random.Random(0)
    with tempfile.TemporaryDirectory() as top:
        work = os.path.join(top, "runs")
        os.makedirs(work)
        _warm_matplotlib(work)
        for r in range(args.rounds):
            order = list(contenders)
            rng.shuffle(order)
            for name in order:
                results[name].append(contenders[name](args, work))
                print(f"round {r + 1}/{args.rounds}  {name}: {results[name][-1]['wall_s']:.1f} s, "
                      f"test accuracy {results[name][-1]['test_accuracy']:.4f}", flush=True)
    ref = float(np.median([x["wall_s"] for x in results["PyTorch (experiments/train_pytorch.py)"]]))
    header = ("contender", "wall s (median)", "min", "max", "PyTorch time / this", "test accuracy (median)")
    rows = []
    for name, runs in results.items():
        walls = [x["wall_s"] for x in runs]
        med = float(np.median(walls))
        rows.append((name, f"{med:.1f}", f"{min(walls):.1f}", f"{max(walls):.1f}", f"{ref / med:.2f}x",
                     f"{float(np.median([x['test_accuracy'] for x in runs])):.4f}"))
    print(f"\n{_common.machine()}\n{args.rounds} rounds of {args.epochs} epochs"
          + (f" on {args.limit} images" if args.limit else "") + "\n")
    print(_common.format_table(header, rows, align=["l", "r", "r", "r", "r", "r"]))
    _common.write_csv(os.path.join(out, "bench_train.csv"), header, rows)
    _common.write_json(os.path.join(out, "bench_train.json"), {"args": vars(args), "machine": _common.machine(), "runs": results})
    return 0


if __name__ == "__main__":
    sys.exit(main())
