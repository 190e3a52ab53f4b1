"""The benchmark scripts run end to end (--quick) and report sane numbers. No timing assertions."""

import importlib.util
import json
import math
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _run(script, out, *extra):
    env = dict(os.environ, JAX_PLATFORMS="cpu")
    proc = subprocess.run(
        [sys.executable, os.path.join(ROOT, "experiments", script), "--quick", "--out", str(out), *extra],
        capture_output=True,
        text=True,
        env=env,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc.stdout


def test_lenet5_flops_by_hand():
    sys.path.insert(0, os.path.join(ROOT, "experiments"))
    try:
        import benchmark
    finally:
        sys.path.pop(0)
    # forward 235,200 + 480,000 + 117,840; backward 235,200 (conv1 dW only) + 960,000 + 235,680
    assert benchmark.lenet5_flops() == 2_263_920


def test_chunked_step_equals_the_default_step():
    sys.path.insert(0, os.path.join(ROOT, "experiments"))
    try:
        import benchmark
    finally:
        sys.path.pop(0)
    import jax
    import jax.numpy as jnp
    import numpy as np

    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.standard_normal((16, 32, 32, 1), dtype=np.float32))
    y = jnp.asarray(rng.integers(0, 10, 16).astype(np.int32))
    whole, chunked = benchmark.jaxconv_step(x, y, chunk_size=None), benchmark.jaxconv_step(x, y, chunk_size=4)
    whole(2), chunked(2)  # two Adam steps: same params up to float32 summation order
    for a, b in zip(jax.tree.leaves(whole.state[0]), jax.tree.leaves(chunked.state[0])):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)


@pytest.mark.slow  # ~13 s: the whole script; its contenders' steps run in the default tier above
def test_benchmark_quick(tmp_path):
    stdout = _run("benchmark.py", tmp_path, "--no-peers", "--devices", "2", "--chunk", "8")
    assert "Machine: " in stdout and "cores" in stdout
    assert "| malloc reuse (mallopt)" in stdout or "| malloc system" in stdout  # the allocator setting is part of the machine
    data = json.loads((tmp_path / "benchmark.json").read_text())
    names = [r["name"] for r in data["rows"]]
    for name in ("jaxconv default", "jaxconv impl=lax", "jaxconv impl=hand", "jaxconv impl=hand_autodiff", "plain JAX (lax conv)",
                 "jaxconv default, chunks of 8"):
        assert name in names
        assert name in stdout
    assert data["flops_per_image"] == 2_263_920
    assert data["peak_gflop_per_s"]["numpy"] > 0 and data["peak_gflop_per_s"]["xla"] > 0
    for r in data["rows"]:
        assert r["batch"] == 16
        assert r["images_per_s"] > 0 and math.isfinite(r["images_per_s"])
        assert r["ms_per_step"] == pytest.approx(1e3 * 16 / r["images_per_s"])
        assert r["min_ms"] <= r["ms_per_step"] <= r["max_ms"]
        assert r["compile_s"] > 0
        assert 0 < r["fraction_of_peak"] < 1  # a LeNet step cannot beat the matmul peak
        assert 0 < r["cores_busy"] <= (os.cpu_count() or 1) + 0.5  # CPU time / wall time, a little clock slack
        assert r["vs_torch"] is None  # --no-peers
    csv_lines = (tmp_path / "benchmark.csv").read_text().splitlines()
    assert csv_lines[0].startswith("name,batch,images_per_s") and len(csv_lines) == len(names) + 1


@pytest.mark.slow  # ~12 s: the whole script; every algorithm it times is checked against lax in test_conv_algorithms
def test_bench_conv_quick(tmp_path):
    stdout = _run("bench_conv.py", tmp_path, "--no-torch")
    data = json.loads((tmp_path / "bench_conv.json").read_text())
    rows = data["rows"]
    assert {r["layer"] for r in rows} == {"conv1", "conv2", "wide3x3"}
    assert {r["pass"] for r in rows} == {"fwd", "fwd+bwd"}
    impls = {r["impl"] for r in rows}
    assert {"lax", "hand (rows)", "hand, im2col forced", "hand, taps forced", "hand_autodiff"} <= impls
    for r in rows:
        assert r["ms"] > 0 and math.isfinite(r["ms"])
        if r["impl"] == "lax":
            assert r["vs_lax"] == pytest.approx(1.0)
    assert "| conv2" in stdout
    assert {r["auto"] for r in rows} == {"hand"}  # rows applies to all three quick layers


@pytest.mark.parametrize("peer", ["flax", "equinox", "torch"])
def test_peer_contenders_train(peer):
    """Each installed peer's LeNet-5 step runs on the benchmark's NHWC batch and changes its parameters."""
    pytest.importorskip(peer)
    sys.path.insert(0, os.path.join(ROOT, "experiments"))
    try:
        import benchmark
    finally:
        sys.path.pop(0)
    import jax
    import numpy as np

    rng = np.random.default_rng(0)
    x = rng.standard_normal((8, 32, 32, 1), dtype=np.float32)
    y = rng.integers(0, 10, 8).astype(np.int32)
    if peer == "torch":
        run = benchmark.torch_step(x, y)
        before = [p.detach().clone().numpy() for p in run.model.parameters()]
        run(2)
        after = [p.detach().numpy() for p in run.model.parameters()]
    else:
        factory = benchmark.flax_step if peer == "flax" else benchmark.equinox_step
        run = factory(jax.numpy.asarray(x), jax.numpy.asarray(y))
        leaves = lambda tree: [np.asarray(a) for a in jax.tree.leaves(tree) if hasattr(a, "shape")]  # noqa: E731
        before = leaves(run.state[0])
        run(2)
        after = leaves(run.state[0])
    assert len(before) == len(after) == 10  # 5 layers x (weight, bias)
    assert all(np.all(np.isfinite(a)) for a in after)
    assert all(not np.array_equal(a, b) for a, b in zip(before, after))  # Adam moved every tensor


def _benchmark_module():
    sys.path.insert(0, os.path.join(ROOT, "experiments"))
    try:
        import benchmark
    finally:
        sys.path.pop(0)
    return benchmark


def test_resnet20_flops_by_hand():
    benchmark = _benchmark_module()
    # forward convs: conv1 884,736; stage1 6 x 4,718,592; stage2 2,359,296 + 262,144 (1x1) + 5 x 4,718,592;
    # stage3 alike: 81,625,088, + dense 1,280. Backward: twice that but conv1's dX.
    assert benchmark.resnet20_flops() == 3 * 81_626_368 - 884_736 == 243_994_368


@pytest.mark.slow  # ~15 s of CPU: jaxconv's and the plain-JAX init, importing torch
def test_resnet20_contenders_have_jaxconvs_parameter_count():
    """The plain-JAX, PyTorch, Flax and Equinox ResNet-20s are the same network as models.resnet20: 272,474
    parameters (and the peers' steps train: every parameter moves, and Flax's optimizer state and statistics)."""
    import jax
    import numpy as np

    benchmark = _benchmark_module()
    x = np.zeros((2, 32, 32, 3), np.float32)
    y = np.zeros(2, np.int32)
    from jaxconv.models import resnet20

    _, params = resnet20().init(jax.random.key(0), (-1, 32, 32, 3))
    count = lambda tree: sum(int(np.prod(a.shape)) for a in jax.tree.leaves(tree))  # noqa: E731
    assert count(params) == 272_474
    plain = benchmark.plain_jax_resnet_step(jax.numpy.asarray(x), jax.numpy.asarray(y))
    assert count(plain.state[0]) == 272_474
    assert count(plain.state[2]) == 2 * (16 * 7 + 32 * 7 + 64 * 7)  # 21 BatchNorms' running mean and var
    if importlib.util.find_spec("torch"):
        run = benchmark.torch_resnet_step(x, y)
        assert sum(p.numel() for p in run.model.parameters()) == 272_474
    x_random = np.random.default_rng(0).standard_normal(x.shape, dtype=np.float32)  # zeros would leave most gradients 0
    if importlib.util.find_spec("flax"):
        run = benchmark.flax_resnet_step(jax.numpy.asarray(x_random), jax.numpy.asarray(y))
        assert count(run.state[0]) == 272_474 and count(run.state[2]) == 2 * (16 * 7 + 32 * 7 + 64 * 7)
        before = [np.asarray(a) for a in jax.tree.leaves(run.state)]
        run(1)
        after = [np.asarray(a) for a in jax.tree.leaves(run.state)]
        assert all(np.all(np.isfinite(a)) for a in after) and all(not np.array_equal(a, b) for a, b in zip(before, after))
    if importlib.util.find_spec("equinox"):
        import equinox as eqx

        run = benchmark.equinox_resnet_step(jax.numpy.asarray(x_random), jax.numpy.asarray(y))
        assert count(eqx.filter(run.state[0], eqx.is_array)) == 272_474
        before = [np.asarray(a) for a in jax.tree.leaves(eqx.filter(run.state[0], eqx.is_array))]
        run(1)
        after = [np.asarray(a) for a in jax.tree.leaves(eqx.filter(run.state[0], eqx.is_array))]
        assert all(np.all(np.isfinite(a)) for a in after) and all(not np.array_equal(a, b) for a, b in zip(before, after))


@pytest.mark.slow
def test_benchmark_resnet20_quick(tmp_path):
    stdout = _run("benchmark.py", tmp_path, "--model", "resnet20", "--no-peers", "--devices", "1", "--only", "DEFAULT", "plain JAX (lax")
    data = json.loads((tmp_path / "benchmark.json").read_text())
    names = [r["name"] for r in data["rows"]]
    # --only: substrings, any case ("plain JAX (lax" names both lax contenders)
    assert names and set(names) == {"jaxconv default", "plain JAX (lax conv)", "plain JAX (lax conv), jaxconv's compiler options"}
    assert "ResNet-20 training step" in stdout and data["flops_per_image"] == 243_994_368
    for r in data["rows"]:
        assert r["batch"] == 4 and r["images_per_s"] > 0 and math.isfinite(r["images_per_s"])


def test_bench_conv_layers_filter(tmp_path):
    """--layers keeps the layers whose name holds one of the words (any case), and names the layers when none match."""
    _run("bench_conv.py", tmp_path, "--no-torch", "--layers", "CONV2", "wide")
    rows = json.loads((tmp_path / "bench_conv.json").read_text())["rows"]
    assert {r["layer"] for r in rows} == {"conv2", "wide3x3"}
    proc = subprocess.run([sys.executable, os.path.join(ROOT, "experiments", "bench_conv.py"), "--quick", "--no-torch",
                           "--layers", "nope", "--out", str(tmp_path)], capture_output=True, text=True)
    assert proc.returncode != 0 and "matches none of the layers" in proc.stderr and "conv1" in proc.stderr


@pytest.mark.slow
def test_bench_conv_resnet_quick(tmp_path):
    _run("bench_conv.py", tmp_path, "--no-torch", "--resnet")
    rows = json.loads((tmp_path / "bench_conv.json").read_text())["rows"]
    assert {r["layer"] for r in rows} == {"r3x3s2", "r1x1s2", "dw3x3"}
    assert {(r["stride"], r["groups"]) for r in rows} == {(2, 1), (1, 8)}
    for r in rows:
        assert r["ms"] > 0 and math.isfinite(r["ms"])


def test_bench_conv_parts(tmp_path):
    """--parts adds dX and dW rows for lax and jaxconv's pick (each with its time / lax's), and nothing else."""
    _run("bench_conv.py", tmp_path, "--no-torch", "--parts", "--layers", "conv2")
    rows = json.loads((tmp_path / "bench_conv.json").read_text())["rows"]
    parts = {(r["impl"], r["pass"]) for r in rows if r["pass"] in ("dX", "dW")}
    assert parts == {("lax", "dX"), ("lax", "dW"), ("hand (rows)", "dX"), ("hand (rows)", "dW")}
    for r in rows:
        assert r["ms"] > 0 and math.isfinite(r["ms"])


@pytest.mark.skipif(importlib.util.find_spec("torch") is None, reason="PyTorch not installed")
@pytest.mark.parametrize("padding, stride, groups", [(2, 1, 1), ("SAME", 2, 2), (0, 1, 1)])
def test_bench_conv_torch_backward_args_are_autograds(padding, stride, groups):
    """The aten.convolution_backward call that --parts times computes autograd's dX, dW and db for the layer."""
    import torch
    import torch.nn.functional as F

    sys.path.insert(0, os.path.join(ROOT, "experiments"))
    try:
        import bench_conv
    finally:
        sys.path.pop(0)
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, 4, 9, 9, generator=g, dtype=torch.float64, requires_grad=True)
    w = torch.randn(6, 4 // groups, 5, 5, generator=g, dtype=torch.float64, requires_grad=True)
    b = torch.randn(6, generator=g, dtype=torch.float64, requires_grad=True)
    kw = {"padding": 2 if padding == "SAME" else padding, "stride": stride, "groups": groups}
    z = F.conv2d(x, w, b, **kw)
    dz = torch.randn(z.shape, generator=g, dtype=torch.float64)
    expected = torch.autograd.grad(z, (x, w, b), dz)
    got = torch.ops.aten.convolution_backward(*bench_conv.torch_backward_args(x, w, dz, padding, stride, groups), [True, True, True])
    for e, a in zip(expected, got):
        torch.testing.assert_close(a, e, rtol=0, atol=1e-12)
