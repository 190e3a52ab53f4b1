"""experiments/bench_train.py and train_pytorch.py end to end (slow tier: two fresh processes each)."""

import json
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.mark.slow
def test_train_pytorch_learns_and_bench_train_prints_both_contenders(tmp_path):
    pytest.importorskip("torch")
    run = subprocess.run(
        [sys.executable, os.path.join(ROOT, "experiments", "bench_train.py"), "--quick", "--out", str(tmp_path)],
        capture_output=True, text=True, timeout=600,
    )
    assert run.returncode == 0, run.stderr
    for name in ("jaxconv train (first run: compiles)", "jaxconv train (later runs: cached steps)", "PyTorch (experiments/train_pytorch.py)"):
        assert name in run.stdout
    with open(tmp_path / "bench_train.json") as f:
        runs = json.load(f)["runs"]
    assert len(runs) == 3
    for name, results in runs.items():
        assert len(results) == 1 and results[0]["wall_s"] > 0, name
        assert results[0]["test_accuracy"] > 0.15, (name, results)  # one epoch on 256 images: above chance (0.1)
