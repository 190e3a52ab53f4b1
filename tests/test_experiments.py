"""The experiment scripts, run as a user runs them, and the numbers they print and write.

Each script runs once, through `subprocess` (sys.executable, cwd a tmp dir,
--out a tmp dir), on a small setting. The runs start together in a
module-scoped fixture, so their JAX start-up and compilations overlap; each
test then waits for its own run and checks its output against answers
computed here independently (by hand, by formula or with NumPy).
"""

from __future__ import annotations

import csv
import importlib.util
import json
import math
import os
import subprocess
import sys

import numpy as np
import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
EXPERIMENTS = os.path.join(ROOT, "experiments")
HAVE_MPL = importlib.util.find_spec("matplotlib") is not None
TIMEOUT = 600  # seconds per script; they take ~5-30 s alone on 2 cores

# A grey 8x10 image: 5 columns of 1 then 5 of 0, a vertical edge between columns 4 and 5.
STEP_IMAGE = np.repeat(np.array([[1.0] * 5 + [0.0] * 5], np.float32), 8, axis=0)


def _correlate_valid(image, filt):
    """Plain NumPy 'valid' cross-correlation, a loop over output pixels (the independent reference)."""
    n_H, n_W = image.shape
    f = len(filt)
    out = np.zeros((n_H - f + 1, n_W - f + 1))
    for h in range(out.shape[0]):
        for w in range(out.shape[1]):
            out[h, w] = (image[h : h + f, w : w + f] * np.asarray(filt, float)).sum()
    return out


class Run:
    def __init__(self, script, args, tmp, name, env=None):
        self.out = os.path.join(tmp, name)
        cmd = [sys.executable, os.path.join(EXPERIMENTS, script), *args, "--out", self.out]
        self.proc = subprocess.Popen(cmd, cwd=tmp, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        self._stdout = None

    @property
    def stdout(self):
        if self._stdout is None:
            self._stdout, _ = self.proc.communicate(timeout=TIMEOUT)
            assert self.proc.returncode == 0, f"script failed (exit {self.proc.returncode}):\n{self._stdout}"
        return self._stdout

    def path(self, name):
        self.stdout  # wait for the run
        return os.path.join(self.out, name)


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    tmp = str(tmp_path_factory.mktemp("experiments"))
    step = os.path.join(tmp, "step.npy")
    np.save(step, STEP_IMAGE)
    # A "matplotlib" that fails to import, first on the path: the scripts' no-matplotlib branch.
    hide = os.path.join(tmp, "hide_matplotlib", "matplotlib")
    os.makedirs(hide)
    with open(os.path.join(hide, "__init__.py"), "w") as f:
        f.write("raise ImportError('matplotlib hidden by test_experiments')\n")
    env_hidden = {**os.environ, "PYTHONPATH": os.path.dirname(hide) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    started = {
        "seed": Run("seed_examples.py", [], tmp, "seed"),
        "compare": Run("compare_grads.py", ["--quick", "--repeats", "2", "--no-plot"], tmp, "compare"),
        "why": Run("why_convolutions.py", ["--quick", "--max-shift", "2"], tmp, "why"),
        "edges": Run("edge_detection.py", ["--digits", "2", "--size", "16", "--images", step], tmp, "edges"),
        "edges_no_mpl": Run("edge_detection.py", ["--digits", "0", "--images", step], tmp, "edges_no_mpl", env=env_hidden),
    }
    yield started
    for run in started.values():  # a failed test must not leave a script running
        if run.proc.poll() is None:
            run.proc.kill()
            run.proc.communicate()


# --------------------------------------------------------------------------- seed_examples.py


def _rows_by_quantity(run):
    with open(run.path("seed_examples.json")) as f:
        rows = json.load(f)
    return {r["quantity"]: r for r in rows}


def test_seed_examples_agrees_with_the_notes_correct_values(runs):
    rows = _rows_by_quantity(runs["seed"])
    strided = rows["7x7 * [[3,4,4],[1,0,2],[-1,0,3]], s=2"]
    seven = [[2, 3, 7, 4, 6, 2, 9], [6, 6, 9, 8, 7, 4, 3], [3, 4, 8, 3, 8, 9, 7], [7, 8, 3, 6, 6, 3, 4],
             [4, 2, 1, 8, 3, 4, 6], [3, 2, 4, 1, 9, 8, 3], [0, 1, 3, 9, 2, 1, 4]]
    full = _correlate_valid(np.array(seven, float), [[3, 4, 4], [1, 0, 2], [-1, 0, 3]])
    assert strided["jaxconv"] == full[::2, ::2].tolist() == [[91, 100, 88], [69, 91, 117], [44, 72, 74]]
    assert strided["agrees"]
    vertical = rows["6x6 step image * vertical filter [[1,0,-1]]x3"]
    assert vertical["jaxconv"] == [[0, 30, 30, 0]] * 4 and vertical["agrees"]
    assert rows["max pool f=2 s=2"]["jaxconv"] == [[9, 2], [6, 3]]
    assert rows["average pool f=2 s=2"]["jaxconv"] == [[3.75, 1.25], [3.75, 2.0]]
    assert rows["params of 10 filters 3x3x3 (+ bias each)"]["jaxconv"] == (3 * 3 * 3 + 1) * 10 == 280
    # every row except the wrong parameter counts agrees
    disagree = sorted(q for q, r in rows.items() if not r["agrees"])
    assert disagree == sorted(
        [f"{layer}: # parameters" for layer in ("CONV1 (f=5, s=1)", "CONV2 (f=5, s=1)", "FC3", "FC4", "Softmax")]
        + ["convolution 6 filters f=5 on 32x32x3: (5·5+1)·6"]
    )
    assert f"{len(rows) - 6} of {len(rows)} agree" in runs["seed"].stdout


def test_seed_examples_corrects_the_parameter_counts(runs):
    rows = _rows_by_quantity(runs["seed"])
    expected = {  # layer: (notes, true count by formula, words the reason must contain)
        "CONV1 (f=5, s=1)": (208, 5 * 5 * 3 * 8 + 8, "3 input channels"),
        "CONV2 (f=5, s=1)": (416, 5 * 5 * 8 * 16 + 16, "8 input channels"),
        "FC3": (48001, 400 * 120 + 120, "one bias instead of 120"),
        "FC4": (10081, 120 * 84 + 84, "one bias instead of 84"),
        "Softmax": (841, 84 * 10 + 10, "one bias instead of 10"),
    }
    for layer, (notes, true, why) in expected.items():
        r = rows[f"{layer}: # parameters"]
        assert (r["notes"], r["jaxconv"], r["agrees"]) == (notes, true, False), layer
        assert why in r["reason"], (layer, r["reason"])
    assert [true for _, true, _ in expected.values()] == [608, 3216, 48120, 10164, 850]
    conv = rows["convolution 6 filters f=5 on 32x32x3: (5·5+1)·6"]
    assert (conv["notes"], conv["jaxconv"]) == (156, (5 * 5 * 3 + 1) * 6) == (156, 456)
    assert rows["fully connected 3072 -> 4704 (28·28·6): ~14M"]["jaxconv"] == 3072 * 4704 + 4704
    # the CSV and the Markdown report carry the same numbers
    with open(runs["seed"].path("seed_examples.csv")) as f:
        csv_rows = {r["quantity"]: r for r in csv.DictReader(f)}
    assert json.loads(csv_rows["FC3: # parameters"]["jaxconv"]) == 48120 and csv_rows["FC3: # parameters"]["agrees"] == "no"
    with open(runs["seed"].path("seed_examples.md")) as f:
        md = f.read()
    assert "| `208` | `608` | **no** |" in md


# --------------------------------------------------------------------------- edge_detection.py


def test_edge_detection_vertical_edge_response(runs):
    maps = np.load(runs["edges"].path("feature_maps.npz"))
    expected = {
        "vertical": [[1, 0, -1]] * 3,
        "horizontal": [[1, 1, 1], [0, 0, 0], [-1, -1, -1]],
        "sobel": [[1, 0, -1], [2, 0, -2], [1, 0, -1]],
        "scharr": [[3, 0, -3], [10, 0, -10], [3, 0, -3]],
    }
    for name, filt in expected.items():
        np.testing.assert_allclose(maps[f"step.npy/{name}"], _correlate_valid(STEP_IMAGE, filt), atol=1e-6)
    # by hand: 3 rows x (1 − 0) in the two output columns whose window straddles the edge, 0 elsewhere
    assert maps["step.npy/vertical"].tolist() == [[0, 0, 0, 3, 3, 0, 0, 0]] * 6
    assert maps["notes 6x6 step/vertical"].tolist() == [[0, 30, 30, 0]] * 4
    assert maps["digit 0 (16x16)/vertical"].shape == (14, 14)
    with open(runs["edges"].path("edge_detection.csv")) as f:
        table = {(r["image"], r["filter"]): r for r in csv.DictReader(f)}
    assert float(table["step.npy", "vertical"]["mean |response|"]) == pytest.approx(12 * 3 / 48, abs=1e-3)
    assert float(table["step.npy", "horizontal"]["max |response|"]) == 0
    if HAVE_MPL:
        png = runs["edges"].path("edge_detection.png")
        assert os.path.getsize(png) > 1000
        with open(png, "rb") as f:
            assert f.read(8) == b"\x89PNG\r\n\x1a\n"


def test_scripts_without_matplotlib_still_write_tables_and_say_how_to_get_pictures(runs):
    run = runs["edges_no_mpl"]
    assert "matplotlib not installed: pip install 'jaxconv[plot]' to get the pictures" in run.stdout
    assert "step.npy" in run.stdout
    assert os.path.exists(run.path("edge_detection.csv"))
    assert not os.path.exists(run.path("edge_detection.png"))


# --------------------------------------------------------------------------- compare_grads.py


def test_compare_grads_quick_errors_within_tolerance(runs):
    with open(runs["compare"].path("compare_grads.csv")) as f:
        rows = list(csv.DictReader(f))
    assert {(r["dtype"], r["impl"]) for r in rows} == {
        (d, i) for d in ("float32", "float64") for i in ("hand", "hand_autodiff", "lax")
    }
    assert len(rows) == 1 * 2 * 3  # 1 configuration x 2 dtypes x 3 impls
    tolerance = {"float32": 1e-4, "float64": 1e-10}
    for r in rows:
        for q in ("y", "dx", "dw", "db"):
            for against in ("lax", "f64"):
                err = float(r[f"rel_{q}_vs_{against}"])
                assert 0 <= err <= tolerance[r["dtype"]], (r["config"], r["dtype"], r["impl"], q, against, err)
        assert r["ok"] == "True"
        assert float(r["fwd_ms"]) > 0 and float(r["fwd_bwd_ms"]) > 0
    assert "0 outside tolerance" in runs["compare"].stdout


# --------------------------------------------------------------------------- why_convolutions.py


def test_why_convolutions_quick(runs):
    import jax

    from jaxconv import count_params, models

    run = runs["why"]
    with open(run.path("why_convolutions.json")) as f:
        result = json.load(f)
    lenet_params = count_params(jax.eval_shape(lambda k: models.lenet5().init(k, (1, 32, 32, 1))[1], jax.random.key(0)))
    fc_params = (1024 * 64 + 64) + (64 * 64 + 64) + (64 * 10 + 10)
    lenet, fc = result["models"]["LeNet-5"], result["models"]["fully connected 1024-64-64-10"]
    assert (lenet["params"], fc["params"]) == (lenet_params, fc_params) == (61706, 70410)
    assert f"LeNet-5: {lenet_params:,}" in run.stdout and f"fully connected 1024-64-64-10: {fc_params:,}" in run.stdout
    for res in (lenet, fc):
        accs = res["accuracy"]
        assert sorted(accs) == ["down", "left", "right", "up"]
        assert all(len(a) == 3 and all(0 <= v <= 1 for v in a) for a in accs.values())
        assert len({a[0] for a in accs.values()}) == 1  # shift 0 is the same test set in every direction
        assert res["mean_accuracy"][0] == pytest.approx(accs["up"][0])
    assert lenet["accuracy"]["up"][0] > 0.5  # chance is 0.1
    with open(run.path("why_convolutions.csv")) as f:
        assert len(list(csv.DictReader(f))) == 2 * 4 * 3
    if HAVE_MPL:
        for name in ("why_convolutions.png", "lenet_filters.png"):
            assert os.path.getsize(run.path(name)) > 1000


def test_why_convolutions_shift_fills_with_zeros():
    spec = importlib.util.spec_from_file_location("why_convolutions", os.path.join(EXPERIMENTS, "why_convolutions.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    x = np.arange(1, 26, dtype=np.float32).reshape(1, 5, 5, 1)
    down_right = module.shift(x, 1, 2)
    expected = np.zeros_like(x)
    expected[0, 1:, 2:, 0] = x[0, :4, :3, 0]
    np.testing.assert_array_equal(down_right, expected)
    np.testing.assert_array_equal(module.shift(module.shift(x, -2, 0), 2, 0)[0, 2:], x[0, 2:])
    assert math.isclose(float(module.shift(x, 0, 0).sum()), float(x.sum()))


@pytest.mark.parametrize(
    "script, args, code, message",
    [
        ("edge_detection.py", ["--images", "missing.npy"], 1,
         "edge_detection: `--images` file `missing.npy` does not exist; check the path."),
        ("benchmark.py", ["--batch-sizes", "0"], 2, "argument --batch-sizes: expected a whole number >= 1, got 0"),
        ("bench_parallel.py", ["--quick", "--devices", "3"], 1,
         "bench_parallel: `--devices` 3 is more than the 2 device(s) JAX has; pass --cpu-devices 3 on CPU"),
    ],
)
def test_scripts_answer_bad_arguments_in_one_line(tmp_path, script, args, code, message):
    env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
    out = [] if script == "bench_parallel.py" else ["--out", str(tmp_path / "out")]  # it prints, writes nothing
    run = subprocess.run([sys.executable, os.path.join(EXPERIMENTS, script), *args, *out],
                         cwd=tmp_path, capture_output=True, text=True, timeout=TIMEOUT, env=env)
    assert run.returncode == code, run.stderr
    assert "Traceback" not in run.stderr
    assert message in run.stderr.strip().splitlines()[-1]
