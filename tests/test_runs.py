"""Runs you can trust (issue #14): one run per directory, no metric lost, resume checks, one-line faults."""

import errno
import json
import os
import shutil
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from jaxconv import checkpoint, data, loop, resume, rundir
from jaxconv.loop import Interrupted, NonFiniteLoss, RunDirectoryError, TrainConfig, WriteError, fit

QUICK = dict(limit=96, epochs=1, batch_size=32, impl="lax", progress=False)  # 3 steps an epoch, as test_train
QUIET = dict(log=lambda s: None)


def _lines(out):
    return [json.loads(line) for line in open(os.path.join(out, "metrics.jsonl"))]


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    """A finished 1-epoch run; tests copy it."""
    out = str(tmp_path_factory.mktemp("runs") / "finished")
    fit(TrainConfig(out=out, **QUICK), **QUIET)
    return out


@pytest.fixture
def run(finished, tmp_path):
    out = str(tmp_path / "run")
    shutil.copytree(finished, out)
    return out


def test_the_checkpoint_carries_the_metrics_and_config_records_the_lr(finished):
    state = checkpoint.load_checkpoint(os.path.join(finished, "checkpoint.npz"))
    assert state["metadata"]["history"] == _lines(finished)
    config = json.load(open(os.path.join(finished, "config.json")))
    assert config["lr"] == loop.DEFAULT_LR["adam"] == 2e-3 and config["schedule_epochs"] == [1]
    assert len(config["data_fingerprint"]) == 16


def test_a_new_run_into_a_run_directory_is_refused(run):
    with pytest.raises(RunDirectoryError, match=r"already holds a run \(checkpoint.npz, metrics.jsonl, config.json.*continue it with --resume, replace it with --overwrite"):
        fit(TrainConfig(out=run, **QUICK), **QUIET)
    assert len(_lines(run)) == 1


def test_a_concurrent_run_is_refused_while_the_lock_is_held(run):
    lock = rundir.open_run_directory(run)
    try:
        with pytest.raises(RunDirectoryError, match=rf"another run \(process {os.getpid()}\) is writing to `--out`"):
            fit(TrainConfig(out=run, resume=True, **QUICK), **QUIET)
    finally:
        lock.close()
    # Released: the lock file stays behind, but a lock nobody holds does not block (no stale locks).
    assert os.path.exists(os.path.join(run, ".lock"))
    rundir.open_run_directory(run).close()


def test_bad_out_directories_are_one_line_errors(tmp_path, monkeypatch):
    a_file = tmp_path / "file"
    a_file.write_text("x")
    with pytest.raises(RunDirectoryError, match=r"`--out` '.*file' is a file, not a directory; pick another --out"):
        fit(TrainConfig(out=str(a_file), **QUICK), **QUIET)
    with pytest.raises(RunDirectoryError, match=r"cannot be created because a part of its path is a file"):
        fit(TrainConfig(out=str(a_file / "run"), **QUICK), **QUIET)

    def read_only(path, *args, **kwargs):
        raise PermissionError(errno.EACCES, "Permission denied", path)

    monkeypatch.setattr(rundir, "open", read_only, raising=False)  # root ignores chmod: simulate a read-only --out
    with pytest.raises(RunDirectoryError, match=r"is not writable \(Permission denied\); pick a directory you can write to"):
        fit(TrainConfig(out=str(tmp_path / "ro"), **QUICK), **QUIET)


def test_resume_refuses_other_data_and_accepts_the_recorded_lr(run, monkeypatch):
    fit(TrainConfig(out=run, resume=True, lr=2e-3, **QUICK), **QUIET)  # the default's own value: accepted
    real = data.DATASETS["digits"]
    other = lambda d: data.Dataset(*[a[::-1].copy() for a in real.load(d)])  # noqa: E731  same shapes, other order
    monkeypatch.setitem(data.DATASETS, "digits", real._replace(load=other))
    with pytest.raises(ValueError, match=r"was trained on other data .* \(fingerprint [0-9a-f]{16}\); resume with the same data"):
        fit(TrainConfig(out=run, resume=True, **QUICK), **QUIET)
    with pytest.raises(ValueError, match=r"lr: checkpoint has 0.002, you asked for 0.01"):
        fit(TrainConfig(out=run, resume=True, lr=0.01, **QUICK), **QUIET)


def test_training_data_with_labels_outside_the_classes_is_refused(tmp_path, monkeypatch):
    real = data.DATASETS["digits"]

    def bad_labels(d):
        ds = real.load(d)
        y = ds.y_train.copy()
        y[5] = 10
        return ds._replace(y_train=y)

    monkeypatch.setitem(data.DATASETS, "digits", real._replace(load=bad_labels))
    with pytest.raises(ValueError, match=r"train: `training labels of --data digits` must be class indices in \[0, 10\).*first 10 at index 5"):
        fit(TrainConfig(out=str(tmp_path / "run"), **QUICK), **QUIET)


def test_extend_a_finished_run_and_resume_cleans_temporaries_and_rebuilds_damaged_metrics(run):
    stale = os.path.join(run, ".checkpoint.npz.abc123.tmp")
    open(stale, "wb").write(b"half a save")
    open(os.path.join(run, "metrics.jsonl"), "w").write('{"epoch": 1, "step": 3,, garbage\n')
    lines = []
    fit(TrainConfig(out=run, resume=True, **{**QUICK, "epochs": 2}), log=lines.append)
    assert any("removed 1 temporary file" in s and "extending the finished 1-epoch run to 2 epochs" in s for s in lines)
    assert not os.path.exists(stale)
    assert [h["epoch"] for h in _lines(run)] == [1, 2]
    assert json.load(open(os.path.join(run, "config.json")))["schedule_epochs"] == [1, 2]
    with pytest.raises(ValueError, match=r"`--epochs` 1 is fewer than the 2 epochs of the run .*resume with --epochs 2"):
        fit(TrainConfig(out=run, resume=True, **QUICK), **QUIET)


def test_extended_schedule_is_a_new_cosine_cycle():
    opt = loop.build_optimizer(TrainConfig(optimizer="sgd", lr=1.0), 10, [2, 3])  # cycles end at steps 20 and 30
    params = {"w": np.zeros(())}
    state = opt.init(params)
    rates = []
    for _ in range(30):
        updates, state = opt.update({"w": np.ones(())}, state, params)
        rates.append(-float(updates["w"]))
    expected = [0.5 * (1 + np.cos(np.pi * t / 20)) for t in range(20)] + [0.5 * (1 + np.cos(np.pi * t / 10)) for t in range(10)]
    np.testing.assert_allclose(rates, expected, rtol=1e-5, atol=1e-6)


def test_damaged_metrics_of_an_old_checkpoint_name_the_file_and_the_fix(tmp_path):
    path = tmp_path / "metrics.jsonl"
    path.write_text('{"epoch": 1, "step": 3}\n{"epoch": 2, "step": 6,, \n')
    with pytest.raises(ValueError, match=r"`.*metrics.jsonl` is damaged at line 2 .*delete it to resume"):
        resume.history_of({}, str(path), 6)
    assert resume.history_of({"metadata": {"history": [{"epoch": 1}]}}, str(path), 6) == [{"epoch": 1}]


def test_interrupt_and_unfinished_extension(tmp_path, interrupt_at_step):
    out = str(tmp_path / "run")
    repair = interrupt_at_step(3)
    with pytest.raises(Interrupted, match=r"^interrupted at step 2; checkpoint kept at .*checkpoint.npz \(step 2\); resume with --resume$"):
        fit(TrainConfig(out=out, checkpoint_every=2, **{**QUICK, "epochs": 2}), **QUIET)
    repair()
    with pytest.raises(ValueError, match=r"has not finished its 2 epochs \(checkpoint at step 2 of 6\); resume it with --epochs 2 first"):
        fit(TrainConfig(out=out, resume=True, **{**QUICK, "epochs": 3}), **QUIET)


def test_full_disk_and_nan_without_checkpoint_say_what_is_kept(tmp_path, monkeypatch, capfd):
    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(checkpoint.np, "savez", full)
    with pytest.raises(WriteError, match=r"cannot write to `.*` \(No space left on device\); free some space or pick another --out; no checkpoint was written yet"):
        fit(TrainConfig(out=str(tmp_path / "full"), **{**QUICK, "progress": True}), **QUIET)
    assert "\r" not in capfd.readouterr().err  # no progress bar when stderr is not a terminal
    assert not [n for n in os.listdir(tmp_path / "full") if n.endswith(".tmp")]
    monkeypatch.undo()

    real_cut = data.cut_batch  # traced into the loop's compiled step: every batch NaN
    monkeypatch.setattr(data, "cut_batch", lambda *a: (real_cut(*a)[0] * np.nan, real_cut(*a)[1]))
    with pytest.raises(NonFiniteLoss, match=r"nan at step 1 .*stopped, and no checkpoint was written yet"):
        fit(TrainConfig(out=str(tmp_path / "nan"), **QUICK), **QUIET)


def _jaxconv(*args, cwd):
    return subprocess.run([sys.executable, "-m", "jaxconv.cli", *args], cwd=cwd, capture_output=True, text=True,
                          timeout=240, env={**os.environ, "PYTHONPATH": os.getcwd()})


def test_cli_one_line_errors(tmp_path):
    (tmp_path / "file").write_text("x")
    run = _jaxconv("train", "--out", str(tmp_path / "file"), cwd=tmp_path)
    assert run.returncode == 2 and "Traceback" not in run.stderr
    assert run.stderr.strip().splitlines() == [f"jaxconv train: error: train: `--out` '{tmp_path / 'file'}' is a file, not a directory; pick another --out."]


def test_cli_malicious_cifar_pickle_is_one_line(tmp_path):
    import pickle

    d = tmp_path / "cifar-10-batches-py"
    d.mkdir()
    (d / "data_batch_1").write_bytes(pickle.dumps({b"data": _Evil()}))
    run = _jaxconv("train", "--data", "cifar10", "--data-dir", str(tmp_path), "--out", str(tmp_path / "run"), cwd=tmp_path)
    assert run.returncode == 2 and "Traceback" not in run.stderr
    [line] = run.stderr.strip().splitlines()
    assert line.startswith("jaxconv train: error: load_cifar10: `") and "asks to load the global" in line


class _Evil:
    def __reduce__(self):
        return (os.system, ("true",))


# --------------------------------------------------------------------------- accepted nonsense, refused first (#25)


def _tree(path):
    """Every file under path with its bytes: a directory left exactly as it was compares equal."""
    return {os.path.relpath(os.path.join(d, n), path): open(os.path.join(d, n), "rb").read()
            for d, _, names in os.walk(path) for n in names}


@pytest.mark.parametrize("bad, message", [
    (dict(shift=32), r"`shift` \(32\) must be smaller than the 32x32 images of --data digits .*pass --shift 31 or less"),
    (dict(batch_size=97), r"`batch_size` \(97\) is larger than the 96 training images"),
])
def test_a_refused_run_creates_nothing_and_leaves_an_existing_directory_as_it_was(tmp_path, run, bad, message):
    fresh = tmp_path / "new" / "out"
    with pytest.raises(ValueError, match=message):
        fit(TrainConfig(out=str(fresh), **{**QUICK, **bad}), **QUIET)
    assert not (tmp_path / "new").exists()
    before = _tree(run)
    with pytest.raises(ValueError, match=message):
        fit(TrainConfig(out=run, overwrite=True, **{**QUICK, **bad}), **QUIET)
    assert _tree(run) == before


def test_resume_refuses_another_dtype_and_keeps_config_json(run):
    before = _tree(run)
    with pytest.raises(ValueError, match=r"dtype: checkpoint has 'float32', you asked for 'bfloat16'"):
        fit(TrainConfig(out=run, resume=True, dtype="bfloat16", **{**QUICK, "epochs": 2}), **QUIET)
    assert _tree(run) == before and json.load(open(os.path.join(run, "config.json")))["dtype"] == "float32"


def test_resuming_a_finished_run_says_it_is_complete_and_changes_nothing(run):
    before, lines = _tree(run), []
    result = fit(TrainConfig(out=run, resume=True, **QUICK), log=lines.append)
    assert lines == [f"the run in {run} is already complete (1/1 epochs, step 3); nothing to train. Resume with a "
                     f"larger --epochs to extend it."]
    assert result["epochs_trained"] == 0 and result["final_test_accuracy"] == _lines(run)[-1]["test_accuracy"]
    assert _tree(run) == before


def test_dtype_is_checked_only_for_checkpoints_that_store_it(run):
    # Checkpoints written before dtype was a resume key do not store it: a resume cannot check it for them.
    record = json.load(open(os.path.join(run, "config.json")))
    stored = resume.checkpoint_config(record)
    assert stored["dtype"] == "float32" and resume.resume_keys(record, stored)["dtype"] == "float32"
    older = {k: v for k, v in stored.items() if k != "dtype"}
    assert "dtype" not in resume.resume_keys(record, older)


@pytest.mark.parametrize("seed", [0, 2**31 - 1, -2**31, 2**31, 2**32, 2**64 + 5, -2**40])
def test_any_integer_seed_gives_a_key_and_small_seeds_keep_theirs(seed):
    from jaxconv import steps

    folded = steps.key_seed(seed)
    assert -2**31 <= folded < 2**31 and (folded - seed) % 2**32 == 0
    if -2**31 <= seed < 2**31:
        assert folded == seed  # the keys of every seed accepted before are unchanged
    root, init, dropout = steps.run_keys(seed)
    assert root.shape == ()


def test_a_huge_seed_trains(tmp_path):
    result = fit(TrainConfig(out=str(tmp_path / "run"), seed=2**31, **QUICK), **QUIET)
    assert 0.0 <= result["final_test_accuracy"] <= 1.0


# --------------------------------------------------------------------------- signals (#25); 10 moments in test_faults


def _signal_at(out, seconds, sig, after_start=False):
    """`python -m jaxconv.cli train` (the command's own entry) sent `sig` `seconds` after it starts (or after its
    config.json is written); (exit status, stderr)."""
    args = ["train", "--limit", "96", "--batch-size", "32", "--epochs", "40", "--impl", "lax", "--no-progress"]
    proc = subprocess.Popen([sys.executable, "-m", "jaxconv.cli", *args, "--out", str(out)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env={**os.environ, "PYTHONPATH": os.getcwd()})
    while after_start and not (out / "config.json").exists() and proc.poll() is None:
        time.sleep(0.02)
    time.sleep(seconds)
    proc.send_signal(sig)
    stderr = proc.communicate(timeout=300)[1]
    return proc.returncode, stderr


@pytest.mark.parametrize("sig, seconds, after_start, start", [
    (signal.SIGINT, 0.5, False, "jaxconv: interrupted while starting up; nothing was written"),  # importing JAX
    (signal.SIGTERM, 0.5, False, "jaxconv: interrupted by SIGTERM while starting up; nothing was written"),
    (signal.SIGTERM, 0.5, True, "jaxconv train: interrupted by SIGTERM at step "),  # compiling or training
])
def test_a_signal_at_any_moment_is_one_line_and_128_plus_its_number(tmp_path, sig, seconds, after_start, start):
    returncode, stderr = _signal_at(tmp_path / "run", seconds, sig, after_start)
    assert returncode == 128 + sig and "Traceback" not in stderr and "Exception ignored" not in stderr, stderr
    [line] = stderr.strip().splitlines()
    assert line.startswith(start), line


def test_resuming_a_finished_run_killed_before_its_last_metrics_line_rebuilds_it(run):
    # A kill between the last checkpoint and metrics.jsonl's rewrite: the checkpoint holds every epoch's line.
    complete = open(os.path.join(run, "metrics.jsonl")).read()
    open(os.path.join(run, "metrics.jsonl"), "w").write("")
    lines = []
    fit(TrainConfig(out=run, resume=True, **QUICK), log=lines.append)
    assert "already complete (1/1 epochs, step 3); nothing to train; rebuilt its metrics.jsonl" in lines[0]
    assert open(os.path.join(run, "metrics.jsonl")).read() == complete
