"""experiments/denoise_digits.py, run as a user runs it (subprocess, --quick), and the numbers it writes.

The quick run trains too little to denoise; the test checks the plumbing: the table, the files,
and the noisy PSNR, recomputed here with NumPy from the same noise draw.
"""

from __future__ import annotations

import csv
import importlib.util
import os
import subprocess
import sys

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
HAVE_MPL = importlib.util.find_spec("matplotlib") is not None


def test_denoise_digits_quick(tmp_path):
    out = tmp_path / "denoise"
    proc = subprocess.run([sys.executable, os.path.join(ROOT, "experiments", "denoise_digits.py"), "--quick", "--out", str(out)],
                          cwd=tmp_path, capture_output=True, text=True, timeout=600, env={**os.environ, "PYTHONPATH": ROOT})
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "PSNR noisy (dB)" in proc.stdout and "epoch   2" in proc.stdout
    with open(out / "denoise_digits.csv") as f:
        (row,) = list(csv.DictReader(f))
    with open(out / "history.csv") as f:
        history = list(csv.DictReader(f))
    assert [h["epoch"] for h in history] == ["1", "2"] and history[-1]["test PSNR (dB)"] == row["PSNR denoised (dB)"]
    assert abs(float(row["gain (dB)"]) - (float(row["PSNR denoised (dB)"]) - float(row["PSNR noisy (dB)"]))) < 0.011
    # the noisy PSNR, independently: the script's test noise is seed + 1's draw, clipped to [0, 1]
    from jaxconv.data import load_digits

    clean = load_digits().x_test.astype(np.float64)
    noisy = np.clip(clean + 0.3 * np.random.default_rng(1).standard_normal(clean.shape).astype(np.float32), 0, 1)
    expected = np.mean(10 * np.log10(1 / np.mean((noisy - clean) ** 2, axis=(1, 2, 3))))
    assert abs(float(row["PSNR noisy (dB)"]) - expected) < 0.006
    assert (out / "denoise_digits.png").exists() == HAVE_MPL
