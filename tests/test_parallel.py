"""Data-parallel training (jaxconv.parallel) against the one-device step.

The device count of a JAX process is fixed when JAX starts, so the sharded runs
happen in child processes started with XLA_FLAGS=--xla_force_host_platform_device_count=N:
this file is also the children's program (`python tests/test_parallel.py MODE OUT_DIR ...`).
Every child has a time limit and is killed in a `finally`.

Reference: the plain `jaxconv.train.make_train_step` on one device, in float32,
on the same params and the same global batches.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from functools import partial

import numpy as np

N_STEPS = 3  # optimiser steps per run
BATCH = 32  # global batch m: 8 rows on each of 4 devices
SHAPE = (BATCH, 32, 32, 1)  # LeNet-5 input (m, n_H, n_W, n_C)
CHILD_TIMEOUT_S = 180  # per child; the machine is shared, so generous
# float32 results of the same computation split four ways: the summation order
# of the gradient differs, so the params differ by rounding (observed ~3e-8).
RTOL, ATOL = 1e-5, 1e-6


# ----------------------------------------------------------------------------- the children's side


def _initial_params(model):
    """He-normal float32 params from numpy; the shapes come from tracing init only
    (compiling JAX's PRNG for every shape costs seconds on this CPU)."""
    import jax

    _, shapes = jax.eval_shape(lambda: model.init(jax.random.key(0), SHAPE))
    rng = np.random.default_rng(0)
    return jax.tree_util.tree_map(
        lambda s: (rng.standard_normal(s.shape) * np.sqrt(2.0 / np.prod(s.shape[:-1] or (1,)))).astype(np.float32),
        shapes,
    )


def _problem():
    """Model, optimizer, float32 initial params and N_STEPS fixed global batches, the same in every process."""
    import jax
    import optax

    from jaxconv import models

    model = models.lenet5()
    params = _initial_params(model)
    data = np.random.default_rng(1)
    batches = [
        (data.random(SHAPE, dtype=np.float32), data.integers(0, 10, BATCH).astype(np.int32)) for _ in range(N_STEPS)
    ]
    return model, optax.adam(1e-3), params, batches


def _flat(tree):
    import jax

    return {jax.tree_util.keystr(path): np.asarray(leaf) for path, leaf in jax.tree_util.tree_leaves_with_path(tree)}


def _save_params(path, params):
    """Through jaxconv.checkpoint when it exists (the format a real run writes), else plain .npz."""
    try:
        from jaxconv.checkpoint import save_checkpoint
    except ImportError:
        np.savez(path, **_flat(params))
    else:
        save_checkpoint(path, params=params, opt_state=None, step=N_STEPS, key=None, config=None)


def _load_params(path, like):
    try:
        from jaxconv.checkpoint import load_checkpoint
    except ImportError:
        import jax

        with np.load(path) as f:
            leaves = [f[name] for name in _flat(like)]
        return jax.tree_util.tree_unflatten(jax.tree_util.tree_structure(like), leaves)
    return load_checkpoint(path, params_like=like)["params"]


def child_devices(out_dir):
    """4 devices: the one-device reference, the 4-device run, its sharding and HLO, checkpoint interop."""
    import jax

    from jaxconv import parallel
    from jaxconv.train import make_train_step

    model, optimizer, params0, batches = _problem()
    info = {"device_count": jax.device_count()}

    # One device: the reference.
    step1 = make_train_step(model.apply, optimizer)
    params, opt_state = jax.device_put((params0, optimizer.init(params0)))
    losses1 = []
    for x, y in batches:
        params, opt_state, metrics = step1(params, opt_state, x, y)
        losses1.append(float(metrics["loss"]))
    ref_params, ref_opt_state = params, opt_state
    np.savez(os.path.join(out_dir, "reference.npz"), **_flat(ref_params))

    # Four devices.
    mesh = parallel.data_mesh(4)
    step4 = parallel.make_parallel_train_step(model.apply, optimizer, mesh=mesh)
    params, opt_state = parallel.replicate(mesh, (params0, optimizer.init(params0)))
    losses4 = []
    for i, (x, y) in enumerate(batches):
        xs, ys = parallel.shard_batch(mesh, x, y)
        if i == 0:
            info["x_spec"] = list(xs.sharding.spec)
            info["x_shard_shapes"] = [list(s.data.shape) for s in xs.addressable_shards]
            info["x_shard_devices"] = sorted(s.device.id for s in xs.addressable_shards)
            info["x_shard_rows"] = [[s.index[0].start, s.index[0].stop] for s in xs.addressable_shards]
            info["y_shard_shapes"] = [list(s.data.shape) for s in ys.addressable_shards]
            hlo = step4.lower(params, opt_state, xs, ys).compile().as_text()
            info["collectives"] = sorted(c for c in COLLECTIVES if c in hlo)
        params, opt_state, metrics = step4(params, opt_state, xs, ys)
        losses4.append(float(metrics["loss"]))
    try:
        parallel.shard_batch(mesh, batches[0][0][:30], batches[0][1][:30])
    except ValueError as e:
        info["shard_batch_error"] = str(e)
    info["params_replicated"] = all(leaf.is_fully_replicated for leaf in jax.tree_util.tree_leaves(params))
    info["params_n_devices"] = sorted({len(leaf.sharding.device_set) for leaf in jax.tree_util.tree_leaves(params)})
    info["losses1"], info["losses4"] = losses1, losses4
    info["chunked"] = _chunked_run(model, optimizer, params0, batches, mesh, out_dir)
    np.savez(os.path.join(out_dir, "sharded.npz"), **_flat(parallel.to_host(params)))

    # Checkpoint interop: a sharded run's checkpoint continues on one device,
    # a one-device checkpoint continues on four; one more step on batch 0 each.
    x, y = batches[0]
    _save_params(os.path.join(out_dir, "ckpt_sharded.npz"), parallel.to_host(params))
    _save_params(os.path.join(out_dir, "ckpt_single.npz"), parallel.to_host(ref_params))
    from_sharded = _load_params(os.path.join(out_dir, "ckpt_sharded.npz"), params0)
    p, _, _ = step1(jax.device_put(from_sharded), jax.device_put(parallel.to_host(ref_opt_state)), x, y)
    np.savez(os.path.join(out_dir, "sharded_then_single.npz"), **_flat(p))
    from_single = _load_params(os.path.join(out_dir, "ckpt_single.npz"), params0)
    p, s = parallel.replicate(mesh, (from_single, parallel.to_host(opt_state)))
    p, _, _ = step4(p, s, *parallel.shard_batch(mesh, x, y))
    np.savez(os.path.join(out_dir, "single_then_sharded.npz"), **_flat(parallel.to_host(p)))

    info["shard_map"] = _shard_map_gradients()

    with open(os.path.join(out_dir, "info.json"), "w") as f:
        json.dump(info, f)


COLLECTIVES = ("all-reduce", "reduce-scatter", "all-gather", "all-to-all", "collective-permute")


def _chunked_run(model, optimizer, params0, batches, mesh, out_dir):
    """The 4-device step accumulating over chunks of 8 of the 32 rows (2 per device per chunk).

    Saves its params beside the reference; returns the collectives in its HLO: chunks
    that each lived on one device would need the batch moved between devices.
    """
    from jaxconv import parallel

    step = parallel.make_parallel_train_step(model.apply, optimizer, mesh=mesh, chunk_size=8)
    params, opt_state = parallel.replicate(mesh, (params0, optimizer.init(params0)))
    for i, (x, y) in enumerate(batches):
        xs, ys = parallel.shard_batch(mesh, x, y)
        if i == 0:
            hlo = step.lower(params, opt_state, xs, ys).compile().as_text()
        params, opt_state, _ = step(params, opt_state, xs, ys)
    np.savez(os.path.join(out_dir, "sharded_chunked.npz"), **_flat(parallel.to_host(params)))
    return {"collectives": sorted(c for c in COLLECTIVES if c in hlo)}


def _shard_map_gradients():
    """Gradients of hand-rolled layers inside shard_map (the batch split 4 ways) vs on one device.

    The hand convs' custom VJPs get a batch shard that varies over "data" and a replicated
    filter: JAX refuses a backward whose dW's type (varying) differs from w's unless conv2d
    casts w first. The cast's transpose sums dW over the shards, as JAX does for lax's conv
    (a replicated input's gradient comes back summed over the axis), so each shard's cost is
    its share of the batch mean. One case per hand algorithm (rows, taps, im2col) plus the
    tiled max pool. Returns {case: [algorithm, largest |difference| / largest |gradient|,
    the same for impl="lax" in the same shard_map]}.
    """
    import jax
    import jax.numpy as jnp
    from jax.sharding import PartitionSpec as P

    from jaxconv import conv, parallel, pool

    mesh = parallel.data_mesh(4)
    rng = np.random.default_rng(2)
    x = jnp.asarray(rng.standard_normal((8, 12, 12, 3), dtype=np.float32))
    cases = {"rows": {}, "taps": {"dilation": 2, "padding": "SAME"}, "im2col": {"stride": 2}}
    out = {}
    for name, options in cases.items():
        w = jnp.asarray(rng.standard_normal((3, 3, 3, 4), dtype=np.float32))
        b = jnp.asarray(rng.standard_normal(4, dtype=np.float32))
        geom = conv.conv_geometry(x.shape, w.shape, **options)[:4]

        def J(w, b, x, impl="hand", options=options, pooled=name == "rows"):  # x's share of the mean over all 8 examples
            z = conv.conv2d(x, w, b, impl=impl, **options)
            if pooled:
                z = pool.max_pool(jax.nn.relu(z), 2)
            return jnp.sum(z**2) / (z[0].size * x.shape[0] * 4)

        def sharded(impl, J=J):
            local = partial(jax.grad(J, argnums=(0, 1)), impl=impl)
            return jax.jit(jax.shard_map(local, mesh=mesh, in_specs=(P(), P(), P("data")), out_specs=(P(), P())))(w, b, x)

        single = jax.jit(jax.grad(lambda w, b, x: 4 * J(w, b, x), argnums=(0, 1)))(w, b, x)  # all 8 examples

        def err(grads):
            return max(float(jnp.max(jnp.abs(g - r)) / jnp.max(jnp.abs(r))) for g, r in zip(grads, single))

        out[name] = [conv.hand_algorithm(x.shape, w.shape, geom), err(sharded("hand")), err(sharded("lax"))]
    return out


def child_process(out_dir, coordinator, num_processes, process_id):
    """One of several processes: join, train on this process's rows of each global batch, save the params."""
    from jaxconv import parallel

    assert parallel.initialize_distributed(coordinator, num_processes, process_id, timeout_s=60)
    import jax

    model, optimizer, params0, batches = _problem()
    try:
        parallel.data_mesh(3)
    except ValueError as e:
        mesh_error = str(e)
    mesh = parallel.data_mesh()
    step = parallel.make_parallel_train_step(model.apply, optimizer, mesh=mesh)
    params, opt_state = parallel.replicate(mesh, (params0, optimizer.init(params0)))
    rows = parallel.process_slice(mesh, BATCH)
    for x, y in batches:
        xs, ys = parallel.shard_batch(mesh, x[rows], y[rows])  # this process loads only its rows
        params, opt_state, _ = step(params, opt_state, xs, ys)
    host = parallel.to_host(params)
    np.savez(os.path.join(out_dir, f"process{process_id}.npz"), **_flat(host))
    info = {
        "process_index": jax.process_index(),
        "process_count": jax.process_count(),
        "device_count": jax.device_count(),
        "local_device_count": jax.local_device_count(),
        "rows": [rows.start, rows.stop],
        "primary": parallel.is_primary(),
        "mesh_error": mesh_error,
    }
    with open(os.path.join(out_dir, f"process{process_id}.json"), "w") as f:
        json.dump(info, f)
    if parallel.is_primary():  # written once
        _save_params(os.path.join(out_dir, "ckpt_multiprocess.npz"), host)


# ----------------------------------------------------------------------------- the tests' side


def _spawn(args, n_devices, out_dir, tag):
    env = dict(os.environ)
    env["XLA_FLAGS"] = f"{env.get('XLA_FLAGS', '')} --xla_force_host_platform_device_count={n_devices}".strip()
    env["JAX_PLATFORMS"] = "cpu"
    env.pop("JAX_ENABLE_X64", None)
    for name in ("JAXCONV_COORDINATOR", "JAXCONV_NUM_PROCESSES", "JAXCONV_PROCESS_ID"):
        env.pop(name, None)
    log = open(os.path.join(out_dir, f"{tag}.log"), "w")
    return subprocess.Popen(
        [sys.executable, os.path.abspath(__file__), *map(str, args)], env=env, stdout=log, stderr=subprocess.STDOUT
    ), log


def _run_children(specs, out_dir):
    """Start children [(args, n_devices, tag)], wait for all within CHILD_TIMEOUT_S; always kill leftovers."""
    children = []
    try:
        for args, n_devices, tag in specs:
            children.append((*_spawn(args, n_devices, out_dir, tag), tag))
        for proc, _, tag in children:
            try:
                rc = proc.wait(timeout=CHILD_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                rc = "timeout"
            if rc != 0:
                with open(os.path.join(out_dir, f"{tag}.log")) as f:
                    raise AssertionError(f"child {tag} ended with {rc}:\n{f.read()[-4000:]}")
    finally:
        for proc, log, _ in children:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
            log.close()


def _load(path):
    with np.load(path) as f:
        return {k: f[k] for k in f.files}


def _assert_params_close(actual, expected):
    assert actual.keys() == expected.keys()
    for name in expected:
        np.testing.assert_allclose(actual[name], expected[name], rtol=RTOL, atol=ATOL, err_msg=name)


import pytest  # noqa: E402  (the children never import pytest)


@pytest.fixture(scope="module")
def four_devices(tmp_path_factory):
    out = tmp_path_factory.mktemp("four_devices")
    _run_children([(["devices", out], 4, "devices")], str(out))
    with open(out / "info.json") as f:
        return out, json.load(f)


def test_four_devices_match_one_device(four_devices):
    out, info = four_devices
    assert info["device_count"] == 4
    ref, sharded = _load(out / "reference.npz"), _load(out / "sharded.npz")
    assert len(ref) == 10  # 5 layers with w and b
    assert sum(a.size for a in ref.values()) == 61_706
    from jaxconv import models

    start = _flat(_initial_params(models.lenet5()))
    assert any(not np.allclose(ref[k], start[k]) for k in ref)  # training moved the params
    _assert_params_close(sharded, ref)
    np.testing.assert_allclose(info["losses4"], info["losses1"], rtol=RTOL)


def test_batch_is_split_and_gradients_all_reduced(four_devices):
    _, info = four_devices
    assert info["x_spec"] == ["data"]
    assert info["x_shard_shapes"] == [[8, 32, 32, 1]] * 4  # 32 rows / 4 devices
    assert info["y_shard_shapes"] == [[8]] * 4
    assert info["x_shard_devices"] == [0, 1, 2, 3]
    assert sorted(map(tuple, info["x_shard_rows"])) == [(0, 8), (8, 16), (16, 24), (24, 32)]
    assert "all-reduce" in info["collectives"]  # XLA's SPMD partitioner averages the gradients
    assert info["params_replicated"] and info["params_n_devices"] == [4]
    assert info["shard_batch_error"].startswith(
        "shard_batch: this process feeds 4 device(s) but got 30 rows, not a multiple of 4;"
    )


def test_chunked_gradient_on_four_devices_matches_one_device(four_devices):
    out, info = four_devices
    _assert_params_close(_load(out / "sharded_chunked.npz"), _load(out / "reference.npz"))
    # Strided chunks keep every chunk spread over all devices: the only collective is the gradients' all-reduce.
    assert info["chunked"]["collectives"] == ["all-reduce"]


def test_hand_layers_differentiate_inside_shard_map(four_devices):
    _, info = four_devices
    algorithms = {case: algorithm for case, (algorithm, _, _) in info["shard_map"].items()}
    assert algorithms == {"rows": "rows", "taps": "taps", "im2col": "im2col"}  # each hand algorithm once
    for case, (_, err_hand, err_lax) in info["shard_map"].items():
        assert err_lax < 1e-5, (case, err_lax)  # the reference pattern itself: lax under shard_map == one device
        assert err_hand < 1e-5, (case, err_hand)  # same gradient, summed in another order


def test_checkpoints_move_between_sharded_and_single_device(four_devices):
    out, _ = four_devices
    a, b = _load(out / "sharded_then_single.npz"), _load(out / "single_then_sharded.npz")
    _assert_params_close(a, b)
    ref = _load(out / "reference.npz")
    assert any(not np.allclose(a[k], ref[k]) for k in ref)  # the extra step did move the params


def _free_port():
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow  # ~6 s, two subprocesses: jax.distributed; the in-process multi-device tests stay in the default tier
def test_two_processes_match_one_process(four_devices, tmp_path):
    out, _ = four_devices
    coordinator = f"127.0.0.1:{_free_port()}"
    _run_children(
        [(["process", tmp_path, coordinator, 2, i], 2, f"process{i}") for i in range(2)],
        str(tmp_path),
    )
    ref = _load(out / "reference.npz")
    for i in range(2):
        with open(tmp_path / f"process{i}.json") as f:
            info = json.load(f)
        assert info == {
            "process_index": i,
            "process_count": 2,
            "device_count": 4,
            "local_device_count": 2,
            "rows": [16 * i, 16 * (i + 1)],  # each process loads half of each global batch
            "primary": i == 0,
            "mesh_error": "data_mesh: `n_devices` (=3) must be a multiple of the number of processes (=2) "
            "so that each process feeds the same number of devices.",
        }
        _assert_params_close(_load(tmp_path / f"process{i}.npz"), ref)
    assert (tmp_path / "ckpt_multiprocess.npz").exists()


# ----------------------------------------------------------------------------- errors (in this process)


def test_batch_size_that_does_not_divide():
    from jaxconv import parallel

    with pytest.raises(ValueError, match=r"`batch_size` \(=30\) must be a multiple of the number of devices \(=4\).*use 28 or 32"):
        parallel.check_batch_size(30, 4)
    with pytest.raises(ValueError, match=r"`batch_size` \(=2\).*use 4 \(any multiple of 4\)"):
        parallel.check_batch_size(2, 4)
    assert parallel.check_batch_size(32, 4) == 32


def test_more_devices_than_available():
    import jax

    from jaxconv import parallel

    n = jax.device_count()
    with pytest.raises(ValueError, match=rf"`n_devices` \(={n + 1}\) is more than the {n} .*xla_force_host_platform_device_count"):
        parallel.data_mesh(n + 1)
    mesh = parallel.data_mesh(1)
    assert mesh.axis_names == ("data",) and mesh.size == 1


def test_initialize_distributed_checks_its_arguments(monkeypatch):
    from jaxconv import parallel

    for name in ("JAXCONV_COORDINATOR", "JAXCONV_NUM_PROCESSES", "JAXCONV_PROCESS_ID"):
        monkeypatch.delenv(name, raising=False)
    assert parallel.initialize_distributed() is False  # nothing asked: one process
    with pytest.raises(ValueError, match=r"missing `num_processes` \(or \$JAXCONV_NUM_PROCESSES\), `process_id`"):
        parallel.initialize_distributed("127.0.0.1:1234")
    with pytest.raises(ValueError, match=r"`coordinator` must be HOST:PORT.*got '127.0.0.1'"):
        parallel.initialize_distributed("127.0.0.1", 2, 0)
    monkeypatch.setenv("JAXCONV_COORDINATOR", "127.0.0.1:1234")
    monkeypatch.setenv("JAXCONV_NUM_PROCESSES", "2")
    monkeypatch.setenv("JAXCONV_PROCESS_ID", "2")
    with pytest.raises(ValueError, match=r"`process_id` \(=2\) must be < `num_processes` \(=2\); number the processes 0..1"):
        parallel.initialize_distributed()
    monkeypatch.setenv("JAXCONV_NUM_PROCESSES", "two")
    with pytest.raises(ValueError, match=r"`num_processes` must be an integer, got 'two'"):
        parallel.initialize_distributed()


if __name__ == "__main__":
    mode, out_dir, *rest = sys.argv[1:]
    if mode == "devices":
        child_devices(out_dir)
    elif mode == "process":
        child_process(out_dir, rest[0], int(rest[1]), int(rest[2]))
    else:
        raise SystemExit(f"unknown mode {mode!r}; use 'devices' or 'process'")
