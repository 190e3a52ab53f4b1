"""Fault injection (slow tier): SIGKILL and SIGINT `jaxconv train` at exact points and random times, then resume.

Each faulty run is a child process whose hooks (installed by _HARNESS, not by
jaxconv) send the signal at the n-th call of a function: a training step
(mid-epoch), the .npz write inside save_checkpoint (mid-save: the temporary
file exists, the rename has not happened), the metrics write (between the save
and metrics.jsonl) or just after it. After `--resume`, the final params must
be bit-identical to an uninterrupted run, metrics.jsonl must hold every epoch
exactly once, and no temporary file may be left.

    python -m pytest -m slow tests/test_faults.py
"""

import json
import os
import random
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

pytestmark = pytest.mark.slow

ARGS = ["train", "--limit", "96", "--batch-size", "32", "--epochs", "3", "--checkpoint-every", "2", "--impl", "lax",
        "--no-progress"]  # 3 steps an epoch, 9 in all; checkpoints at steps 2, 3, 4, 6, 8, 9 (epoch ends: 3, 6, 9)

_HARNESS = r"""
import os, signal, sys
import numpy as np
from jaxconv import checkpoint, cli, rundir, steps

where, n, sig = sys.argv[1], int(sys.argv[2]), getattr(signal, sys.argv[3])
calls = [0]

def hit():
    calls[0] += 1
    if calls[0] == n:
        os.kill(os.getpid(), sig)

def before(module, name):
    real = getattr(module, name)
    def hooked(*a, **k):
        hit()
        return real(*a, **k)
    setattr(module, name, hooked)

def after(module, name):
    real = getattr(module, name)
    def hooked(*a, **k):
        out = real(*a, **k)
        hit()
        return out
    setattr(module, name, hooked)

def every_step():  # before each call of the loop's compiled step (steps.loop_step builds it)
    real = steps.loop_step
    def loop_step(*a, **k):
        run = real(*a, **k)
        def hooked(*args):
            hit()
            return run(*args)
        return hooked
    steps.loop_step = loop_step

{"step": every_step,
 "mid_save": lambda: after(checkpoint.np, "savez"),
 "before_metrics": lambda: before(rundir, "write_metrics"),
 "after_metrics": lambda: after(rundir, "write_metrics"),
 "none": lambda: None}[where]()
sys.exit(cli.main(sys.argv[4:]))
"""


def _env():
    return {**os.environ, "PYTHONPATH": os.getcwd() + os.pathsep + os.environ.get("PYTHONPATH", "")}


def _train(out, *extra, where="none", n=0, sig="SIGKILL"):
    return subprocess.run([sys.executable, "-c", _HARNESS, where, str(n), sig, *ARGS, "--out", str(out), *extra],
                          capture_output=True, text=True, timeout=300, env=_env())


def _params(out):
    with np.load(os.path.join(out, "checkpoint.npz"), allow_pickle=False) as f:
        return {k: f[k] for k in f.files if k.startswith("params")}


def _check(out, baseline):
    a, b = _params(baseline), _params(out)
    assert a.keys() == b.keys() and a
    for name in a:
        np.testing.assert_array_equal(a[name], b[name], err_msg=name)
    history = [json.loads(line) for line in open(os.path.join(out, "metrics.jsonl"))]
    assert [h["epoch"] for h in history] == [1, 2, 3]
    base = [json.loads(line) for line in open(os.path.join(baseline, "metrics.jsonl"))]
    assert [h["test_accuracy"] for h in history] == [h["test_accuracy"] for h in base]
    assert not [n for n in os.listdir(out) if n.endswith(".tmp")]


@pytest.fixture(scope="module")
def baseline(tmp_path_factory):
    out = tmp_path_factory.mktemp("faults") / "baseline"
    run = _train(out)
    assert run.returncode == 0, run.stderr
    return str(out)


@pytest.mark.parametrize(
    "where, n",
    [("step", 2), ("step", 5), ("mid_save", 2), ("mid_save", 3), ("before_metrics", 2), ("after_metrics", 1)],
)
def test_sigkill_at_exact_points_then_resume(tmp_path, baseline, where, n):
    out = tmp_path / "run"
    killed = _train(out, where=where, n=n)
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    if where == "mid_save":  # the kill left the temporary file of the save it interrupted
        assert [n for n in os.listdir(out) if n.endswith(".tmp")]
    if os.path.exists(out / "checkpoint.npz"):
        resumed = _train(out, "--resume")
    else:  # killed before the first checkpoint: nothing to resume, the directory holds no run yet
        resumed = _train(out)
    assert resumed.returncode == 0, resumed.stderr
    _check(out, baseline)


@pytest.mark.parametrize("where, n", [("step", 5), ("mid_save", 3)])
def test_sigint_is_one_line_and_resumes(tmp_path, baseline, where, n):
    out = tmp_path / "run"
    run = _train(out, where=where, n=n, sig="SIGINT")
    assert run.returncode == 130, run.stderr
    last = run.stderr.strip().splitlines()
    assert len(last) == 1 and "Traceback" not in run.stderr, run.stderr
    assert last[0].startswith("jaxconv train: interrupted at step ") and last[0].endswith("; resume with --resume")
    assert not [n for n in os.listdir(out) if n.endswith(".tmp")]  # an interrupted save cleans up after itself
    resumed = _train(out, "--resume")
    assert resumed.returncode == 0, resumed.stderr
    _check(out, baseline)


def test_sigkill_at_random_times_then_resume(tmp_path, baseline):
    rng = random.Random(0)
    for trial in range(2):
        out = tmp_path / f"run{trial}"
        proc = subprocess.Popen([sys.executable, "-c", _HARNESS, "none", "0", "SIGKILL", *ARGS, "--out", str(out)],
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=_env())
        while not (out / "config.json").exists() and proc.poll() is None:  # training has started
            time.sleep(0.05)
        time.sleep(rng.uniform(0.0, 3.0))
        proc.kill()
        proc.wait()
        extra = ("--resume",) if (out / "checkpoint.npz").exists() else ("--overwrite",)
        resumed = _train(out, *extra)
        assert resumed.returncode == 0, resumed.stderr
        _check(out, baseline)


# --------------------------------------------------------------------------- random kills: metrics and params exact (#25)

_UNTIMED = lambda h: {k: v for k, v in h.items() if not k.endswith("_s")}  # noqa: E731  time_s, images_per_s, ...

# (model, extra arguments, checkpoint cadences, kills per cadence): LeNet-5, and ResNet-20 for BatchNorm's state.
# 5 steps an epoch for LeNet-5 and 2 for ResNet-20, 2 epochs; 4 x 10 + 2 x 6 = 52 kills.
KILL_GRID = [
    ("lenet5", ["--limit", "160"], [1, 2, 4, 7], 10),
    ("resnet20", ["--limit", "64"], [1, 3], 6),
]
KILL_POINTS = ("step", "mid_save", "before_metrics", "after_metrics")


def _kill_args(model, extra, every):
    return ["train", "--model", model, *extra, "--batch-size", "32", "--epochs", "2", "--checkpoint-every", str(every),
            "--impl", "lax", "--no-progress", "--shift", "1"]


def _run_harness(out, args, where="none", n=0, sig="SIGKILL"):
    return subprocess.run([sys.executable, "-c", _HARNESS, where, str(n), sig, *args, "--out", str(out)],
                          capture_output=True, text=True, timeout=600, env=_env())


def _same_run(out, baseline):
    """(params differing, metrics lines differing) between two finished runs: timing fields aside, none."""
    a, b = _params(baseline), _params(out)
    params = [k for k in a if k not in b or not np.array_equal(a[k], b[k])] + [k for k in b if k not in a]
    lines = lambda d: [_UNTIMED(json.loads(s)) for s in open(os.path.join(d, "metrics.jsonl"))]  # noqa: E731
    x, y = lines(baseline), lines(out)
    return params, [i for i in range(max(len(x), len(y))) if i >= min(len(x), len(y)) or x[i] != y[i]]


@pytest.mark.parametrize("model, extra, cadences, kills", KILL_GRID)
def test_random_sigkills_leave_metrics_and_params_exact(tmp_path, model, extra, cadences, kills):
    rng = random.Random(f"{model}-25")
    report = []
    for every in cadences:
        args = _kill_args(model, extra, every)
        baseline = tmp_path / f"baseline-{every}"
        assert _run_harness(baseline, args).returncode == 0
        done, chain = 0, 0
        while done < kills:  # a chain: kill, resume, kill again ... until the run finishes
            out, chain = tmp_path / f"run-{every}-{chain}", chain + 1
            while True:
                where, n = rng.choice(KILL_POINTS), rng.randint(1, 4)
                resume = ["--resume"] if (out / "checkpoint.npz").exists() else []
                run = _run_harness(out, args + resume, where, n)
                if run.returncode == 0:
                    break
                assert run.returncode == -signal.SIGKILL, run.stderr
                done += 1
            report.append((every, chain, _same_run(out, baseline)))
            assert not [f for f in os.listdir(out) if f.endswith(".tmp")]
    print(f"{model}: {len(cadences) * kills}+ kills over cadences {cadences}: {report}")
    assert all(diff == ([], []) for _, _, diff in report), report


# --------------------------------------------------------------------------- signals at any moment (#25)

SIGNAL_ARGS = ["train", "--limit", "96", "--batch-size", "32", "--epochs", "40", "--checkpoint-every", "1", "--impl",
               "lax", "--no-progress"]  # long enough to be running at every moment below; saves at every step


def signal_at(out, seconds, sig=signal.SIGINT, after_start=False):
    """`jaxconv train` (the command's own entry, `python -m jaxconv.cli`) sent `sig` `seconds` after it starts, or
    after its run has started (config.json written) with after_start; returns the finished process."""
    proc = subprocess.Popen([sys.executable, "-m", "jaxconv.cli", *SIGNAL_ARGS, "--out", str(out)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=_env())
    while after_start and not (out / "config.json").exists() and proc.poll() is None:
        time.sleep(0.02)
    time.sleep(seconds)
    proc.send_signal(sig)
    stdout, stderr = proc.communicate(timeout=300)
    return proc.returncode, stderr


def check_clean_exit(returncode, stderr, sig=signal.SIGINT):
    assert returncode == 128 + sig, (returncode, stderr)
    assert "Traceback" not in stderr and "Exception ignored" not in stderr, stderr
    [line] = stderr.strip().splitlines()
    assert line.startswith("jaxconv") and "interrupted" in line, line


MOMENTS = [(0.2, False), (0.5, False), (1.0, False), (2.0, False), (3.0, False), (4.5, False),  # import, data, compile
           (0.0, True), (0.3, True), (1.0, True), (2.5, True)]  # the run: its first compile, steps, saves


@pytest.mark.parametrize("seconds, after_start", MOMENTS)
def test_sigint_at_any_moment_is_one_line_and_130(tmp_path, seconds, after_start):
    out = tmp_path / "run"
    returncode, stderr = signal_at(out, seconds, after_start=after_start)
    check_clean_exit(returncode, stderr)
    if out.exists():
        assert not [f for f in os.listdir(out) if f.endswith(".tmp")]
