"""State and randomness: BatchNorm and Dropout, the branch combinators, state through
jit / grad / vmap, the training step, the multi-device step, and their errors.

References: PyTorch's BatchNorm (running statistics after several train-mode steps,
eval-mode outputs), hand-written sums for the combinators, the one-device step for the
two-device one.
"""

import json
import os
import subprocess
import sys
import textwrap

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import reference as ref
from jaxconv import (
    BatchNorm,
    Conv2D,
    Dense,
    Dropout,
    Flatten,
    GlobalAvgPool,
    Relu,
    fan_in_concat,
    fan_in_sum,
    fan_out,
    identity,
    residual,
    serial,
)
from jaxconv.layers import parallel
from jaxconv.train import evaluate, make_train_step, per_example_grads, stack_params

KEY = jax.random.key(0)
F64 = jnp.float64


def rng_x(shape, seed=0):
    return np.random.default_rng(seed).standard_normal(shape)


def small_bn_net(dtype=F64):
    """conv -> BN -> relu -> dropout -> GAP -> dense, on (m, 6, 6, 2)."""
    return serial(
        ("conv", Conv2D(3, 3, padding=1, dtype=dtype)),
        ("bn", BatchNorm(dtype=dtype)),
        Relu(),
        ("drop", Dropout(0.25)),
        GlobalAvgPool(),
        ("fc", Dense(4, dtype=dtype)),
    )


# ---------------------------------------------------------------------------
# BatchNorm against PyTorch.
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("shape", [(4, 3, 3, 2), (5, 3)])
def test_batchnorm_running_statistics_and_eval_match_pytorch(shape):
    torch = pytest.importorskip("torch")
    n_C = shape[-1]
    bn = BatchNorm(momentum=0.1, eps=1e-5, dtype=F64)
    _, params = bn.init(KEY, shape)
    _, state = bn.init_state(shape)
    params = {"gamma": jnp.arange(1.0, n_C + 1, dtype=F64), "beta": jnp.linspace(-0.5, 0.5, n_C, dtype=F64)}
    t_bn = (torch.nn.BatchNorm2d if len(shape) == 4 else torch.nn.BatchNorm1d)(n_C, momentum=0.1, eps=1e-5).double()
    with torch.no_grad():
        t_bn.weight.copy_(torch.tensor(np.asarray(params["gamma"])))
        t_bn.bias.copy_(torch.tensor(np.asarray(params["beta"])))

    def to_torch(x):  # NHWC -> NCHW
        return torch.tensor(x).permute(0, 3, 1, 2) if x.ndim == 4 else torch.tensor(x)

    def from_torch(y):
        return (y.permute(0, 2, 3, 1) if y.ndim == 4 else y).detach().numpy()

    t_bn.train()
    for step in range(4):  # several train-mode steps on different batches
        x = rng_x(shape, step) * (step + 1) + step
        y, state = jax.jit(lambda p, x, s: bn.apply(p, x, state=s, train=True))(params, x, state)
        np.testing.assert_allclose(y, from_torch(t_bn(to_torch(x))), **ref.tol(np.float64))
    np.testing.assert_allclose(state["mean"], t_bn.running_mean.numpy(), **ref.tol(np.float64))
    np.testing.assert_allclose(state["var"], t_bn.running_var.numpy(), **ref.tol(np.float64))  # unbiased
    t_bn.eval()
    x = rng_x(shape, 9)
    y_eval, same = bn.apply(params, x, state=state)  # train=False: the running statistics
    np.testing.assert_allclose(y_eval, from_torch(t_bn(to_torch(x))), **ref.tol(np.float64))
    assert same is state or jax.tree_util.tree_all(jax.tree_util.tree_map(jnp.array_equal, same, state))


def test_batchnorm_train_without_state_returns_only_y_and_normalises():
    x = rng_x((8, 2, 2, 3))
    _, params = BatchNorm(dtype=F64).init(KEY, x.shape)
    y = BatchNorm(dtype=F64).apply(params, x, train=True)
    np.testing.assert_allclose(y.mean((0, 1, 2)), 0, atol=1e-12)
    np.testing.assert_allclose(y.var((0, 1, 2)), 1 - 1e-5 / (x.var((0, 1, 2)) + 1e-5), rtol=1e-6)  # eps in the denominator


@pytest.mark.parametrize("shape", [(4, 3, 3, 2), (5, 3)])
def test_batch_norm_hand_backward_equals_autodiff_finite_differences_and_pytorch(shape):
    """nn.batch_norm's hand-derived backward (what BatchNorm trains with) against autodiff of the
    formula, central finite differences, and PyTorch's autograd; cotangents of μ and σ² included."""
    from jaxconv import gradcheck, nn

    x = jnp.asarray(rng_x(shape, 3) * 2 + 1)
    n_C = shape[-1]
    gamma, beta = jnp.linspace(0.5, 1.5, n_C, dtype=F64), jnp.linspace(-1, 1, n_C, dtype=F64)
    dy = jnp.asarray(rng_x(shape, 4))

    def formula(x, gamma, beta):  # the forward written out: autodiff's reference
        axes = tuple(range(x.ndim - 1))
        mean, var = x.mean(axes), x.var(axes)
        return (x - mean) / jnp.sqrt(var + 1e-5) * gamma + beta, mean, var

    def J(bn):  # a loss that reads y, μ and σ²
        return lambda x, gamma, beta: (lambda y, m, v: jnp.sum(y * dy) + jnp.sum(m**2) + jnp.sum(jnp.cos(v)))(*bn(x, gamma, beta))

    hand = jax.grad(J(nn.batch_norm), argnums=(0, 1, 2))(x, gamma, beta)
    auto = jax.grad(J(formula), argnums=(0, 1, 2))(x, gamma, beta)
    for h, a in zip(hand, auto):
        np.testing.assert_allclose(h, a, rtol=1e-12, atol=1e-12)
    gradcheck(J(nn.batch_norm), (x, gamma, beta), argnums=(0, 1, 2), reference=J(formula))
    torch = pytest.importorskip("torch")
    tx = torch.tensor(np.asarray(x), requires_grad=True)
    tg, tb = torch.tensor(np.asarray(gamma), requires_grad=True), torch.tensor(np.asarray(beta), requires_grad=True)
    ty = torch.nn.functional.batch_norm(tx.reshape(-1, n_C), None, None, tg, tb, training=True, eps=1e-5)
    (ty.reshape(shape) * torch.tensor(np.asarray(dy))).sum().backward()
    y_only = jax.grad(lambda x, g, b: jnp.sum(nn.batch_norm(x, g, b)[0] * dy), argnums=(0, 1, 2))(x, gamma, beta)
    for h, t in zip(y_only, (tx.grad, tg.grad, tb.grad)):
        np.testing.assert_allclose(h, t.numpy(), rtol=1e-10, atol=1e-12)


# ---------------------------------------------------------------------------
# Dropout and keys.
# ---------------------------------------------------------------------------


def test_dropout_is_inverted_and_identity_in_eval():
    x = jnp.ones((200, 50), F64)
    drop = Dropout(0.3)
    y = drop.apply({}, x, key=KEY, train=True)
    kept = np.asarray(y) != 0
    assert abs(kept.mean() - 0.7) < 0.02  # 10,000 Bernoulli(0.7) draws: sd 0.0046
    np.testing.assert_allclose(np.asarray(y)[kept], 1 / 0.7)  # inverted: kept values scaled up
    assert jnp.array_equal(drop.apply({}, x), x) and jnp.array_equal(drop.apply({}, x, key=KEY), x)  # eval: identity


def test_serial_gives_each_dropout_its_own_key():
    net = serial(Dropout(0.5), ("f", Flatten()), Dropout(0.5))
    _, params = net.init(KEY, (1, 10, 10, 1))
    x = jnp.ones((1, 10, 10, 1), F64)
    first = serial(Dropout(0.5)).apply({"dropout1": {}}, x, key=jax.random.fold_in(KEY, 0), train=True)
    y = net.apply(params, x, key=KEY, train=True)
    # layer 0 gets fold_in(key, 0): its mask is reproducible from that key
    mask0 = np.asarray(jax.random.bernoulli(jax.random.fold_in(jax.random.fold_in(KEY, 0), 0), 0.5, x.shape))
    np.testing.assert_array_equal(np.asarray(first) != 0, mask0)
    # both layers drop, with different masks: about a quarter of the values survive both
    assert 0.15 < float((np.asarray(y) != 0).mean()) < 0.35


# ---------------------------------------------------------------------------
# Combinators.
# ---------------------------------------------------------------------------


def test_combinators_compute_the_hand_written_sums():
    a, b = Conv2D(4, 3, padding=1, dtype=F64), Conv2D(4, 1, dtype=F64)
    net = serial(fan_out(2), parallel(("a", a), ("b", b)), fan_in_sum())
    cat = serial(fan_out(2), parallel(("a", a), ("b", b)), fan_in_concat())
    shape, params = net.init(KEY, (2, 5, 5, 3))
    cat_shape, cat_params = cat.init(KEY, (2, 5, 5, 3))
    assert shape == (2, 5, 5, 4) and cat_shape == (2, 5, 5, 8)
    assert set(params) == {"fan_out1", "parallel1", "fan_in_sum1"} and set(params["parallel1"]) == {"a", "b"}
    x = rng_x((2, 5, 5, 3))
    p = params["parallel1"]
    ya, yb = a.apply(p["a"], x), b.apply(p["b"], x)
    np.testing.assert_allclose(net.apply(params, x), ya + yb, rtol=1e-12)
    cat_params["parallel1"] = p
    np.testing.assert_allclose(cat.apply(cat_params, x), np.concatenate([ya, yb], -1), rtol=1e-12)


def test_residual_flattens_a_serial_block_and_adds_the_shortcut():
    block = serial(("conv_a", Conv2D(3, 3, padding=1, dtype=F64)), ("bn_a", BatchNorm(dtype=F64)))
    res = residual(block, activation=Relu())
    shape, params = res.init(KEY, (4, 5, 5, 3))
    _, state = res.init_state((4, 5, 5, 3))
    assert shape == (4, 5, 5, 3) and set(params) == {"conv_a", "bn_a", "shortcut", "relu"}
    assert set(state) == {"conv_a", "bn_a", "shortcut", "relu"} and set(state["bn_a"]) == {"mean", "var"}
    x = rng_x((4, 5, 5, 3))
    y, new_state = res.apply(params, x, state=state, train=True)
    z, bn_state = block.apply({"conv_a": params["conv_a"], "bn_a": params["bn_a"]}, x, state={"conv_a": {}, "bn_a": state["bn_a"]}, train=True)
    np.testing.assert_allclose(y, np.maximum(z + x, 0), rtol=1e-12)
    np.testing.assert_allclose(new_state["bn_a"]["mean"], bn_state["bn_a"]["mean"], rtol=1e-12)


def test_state_works_under_jit_grad_and_vmap():
    net = small_bn_net()
    _, params = net.init(KEY, (6, 6, 6, 2))
    _, state = net.init_state((6, 6, 6, 2))
    x = rng_x((6, 6, 6, 2))
    y, new_state = jax.jit(lambda p, s, x, k: net.apply(p, x, state=s, key=k, train=True))(params, state, x, KEY)
    assert y.shape == (6, 4) and not np.allclose(new_state["bn"]["mean"], 0)

    def J(p):
        return net.apply(p, x, state=state, key=KEY, train=True)[0].sum()

    g = jax.jit(jax.grad(J))(params)  # compiled: one compile instead of one per op
    assert np.abs(np.asarray(g["conv"]["w"])).sum() > 0
    # vmap over examples in eval mode equals the batched eval
    y_eval = net.apply(params, x, state=new_state)[0]
    y_each = jax.jit(jax.vmap(lambda xi: net.apply(params, xi, state=new_state)[0]))(x)
    np.testing.assert_allclose(y_each, y_eval, rtol=1e-10)


# ---------------------------------------------------------------------------
# Training with state.
# ---------------------------------------------------------------------------


def test_train_step_carries_state_and_eval_uses_it():
    net = small_bn_net()
    shape = (8, 6, 6, 2)
    _, params = net.init(KEY, shape)
    _, state = net.init_state(shape)
    x, y = rng_x(shape), np.arange(8) % 4
    step = make_train_step(net.apply, optax.sgd(0.1), donate=False)
    key = jax.random.key(1)
    _, expected_state = net.apply(params, x, state=state, key=key, train=True)
    new_params, _, metrics, new_state = step(params, optax.sgd(0.1).init(params), x, y, state=state, key=key)
    np.testing.assert_allclose(new_state["bn"]["var"], expected_state["bn"]["var"], rtol=1e-12)
    assert np.isfinite(metrics["loss"]) and not np.allclose(new_params["fc"]["w"], params["fc"]["w"])
    logits = net.apply(new_params, x, state=new_state)[0]  # eval mode: running statistics, no dropout
    result = evaluate(net.apply, new_params, x, y, batch_size=3, state=new_state)
    np.testing.assert_allclose(result["logits"], logits, rtol=1e-10)
    with pytest.raises(ValueError, match=r"BatchNorm: eval mode .* no `state` was given.*\(in layer `bn`\)"):
        evaluate(net.apply, new_params, x, y)


@pytest.mark.slow
def test_ensemble_vmaps_params_and_state_together():
    net = small_bn_net()
    shape = (8, 6, 6, 2)
    inits = [net.init(jax.random.key(i), shape)[1] for i in range(2)]
    _, state = net.init_state(shape)
    opt = optax.sgd(0.1)
    x, y = rng_x(shape), np.arange(8) % 4
    step = make_train_step(net.apply, opt, ensemble=True, donate=False)
    params, opt_state, states = stack_params(inits), stack_params([opt.init(p) for p in inits]), stack_params([state, state])
    _, _, _, new_states = step(params, opt_state, x, y, state=states, key=KEY)
    alone = make_train_step(net.apply, opt, donate=False)
    for i, p in enumerate(inits):
        _, _, _, s = alone(p, opt.init(p), x, y, state=state, key=jax.random.split(KEY, 2)[i])
        np.testing.assert_allclose(new_states["bn"]["mean"][i], s["bn"]["mean"], rtol=1e-10)


def test_per_example_grads_with_batchnorm_use_eval_mode():
    net = serial(("conv", Conv2D(3, 3, dtype=F64)), ("bn", BatchNorm(dtype=F64)), GlobalAvgPool(), ("fc", Dense(4, dtype=F64)))
    shape = (5, 5, 5, 2)
    _, params = net.init(KEY, shape)
    _, state = net.init_state(shape)
    x, y = rng_x(shape), np.arange(5) % 4
    state = net.apply(params, x, state=state, train=True)[1]
    from jaxconv.nn import softmax_cross_entropy

    each = per_example_grads(net.apply, softmax_cross_entropy, params, x, y, state=state)
    batch = jax.grad(lambda p: softmax_cross_entropy(net.apply(p, x, state=state)[0], y).mean())(params)
    np.testing.assert_allclose(each["conv"]["w"].mean(0), batch["conv"]["w"], rtol=1e-9, atol=1e-12)


@pytest.mark.slow
def test_two_cpu_devices_step_with_batchnorm_equals_one_device(tmp_path):
    script = textwrap.dedent(
        """
        import json, sys
        import jax, numpy as np, optax
        jax.config.update("jax_enable_x64", True)
        from jaxconv import BatchNorm, Conv2D, Dense, GlobalAvgPool, Relu, serial
        from jaxconv.parallel import data_mesh, make_parallel_train_step, replicate
        from jaxconv.train import make_train_step
        net = serial(("conv", Conv2D(3, 3, padding=1)), ("bn", BatchNorm()), Relu(), GlobalAvgPool(), ("fc", Dense(4)))
        shape = (8, 6, 6, 2)
        _, params = net.init(jax.random.key(0), shape)
        _, state = net.init_state(shape)
        x = np.random.default_rng(0).standard_normal(shape); y = np.arange(8) % 4
        opt = optax.sgd(0.1)
        one = make_train_step(net.apply, opt, donate=False)(params, opt.init(params), x, y, state=state)
        mesh = data_mesh(2)
        step = make_parallel_train_step(net.apply, opt, mesh=mesh, stateful=True, donate=False)
        two = step(replicate(mesh, params), replicate(mesh, opt.init(params)), x, y, replicate(mesh, state), None)
        diff = lambda a, b: max(float(np.abs(np.asarray(u) - np.asarray(v)).max()) for u, v in zip(jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b)))
        print(json.dumps({"devices": len(jax.devices()), "params": diff(one[0], two[0]), "state": diff(one[3], two[3])}))
        """
    )
    env = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=2", "PYTHONPATH": os.getcwd()}
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert result["devices"] == 2 and result["params"] < 1e-12 and result["state"] < 1e-12


# ---------------------------------------------------------------------------
# Errors: each names the layer (by path) and the fix.
# ---------------------------------------------------------------------------


def test_error_sum_of_mismatched_branches_names_the_layer():
    net = serial(fan_out(2), parallel(Conv2D(4, 3), Conv2D(4, 1)), ("add", fan_in_sum()))
    with pytest.raises(ValueError, match=r"fan_in_sum: branch outputs must have one shape .* \(in layer `add`\)"):
        net.init(KEY, (1, 5, 5, 3))
    _, params = serial(fan_out(2), parallel(Conv2D(4, 3, padding=1), Conv2D(4, 1)), fan_in_sum()).init(KEY, (1, 5, 5, 3))
    bad = params["parallel1"]
    with pytest.raises(ValueError, match=r"fan_in_sum: branch outputs must have one shape"):
        net.apply({"fan_out1": {}, "parallel1": {**bad, "conv1": {"w": bad["conv1"]["w"], "b": bad["conv1"]["b"]}}, "add": {}}, jnp.ones((1, 5, 5, 3)))
    with pytest.raises(ValueError, match=r"residual: the block's output shape .* differs from the shortcut's .*1x1|shortcut that matches"):
        residual(Conv2D(8, 3, padding=1)).init(KEY, (1, 5, 5, 3))


def test_error_concat_over_different_spatial_sizes():
    net = serial(fan_out(2), parallel(Conv2D(4, 3), Conv2D(4, 1)), ("cat", fan_in_concat()))
    with pytest.raises(ValueError, match=r"fan_in_concat: branch outputs must agree on every axis but -1 .*same spatial size .*\(in layer `cat`\)"):
        net.init(KEY, (1, 5, 5, 3))


def test_error_dropout_without_key_in_train_mode():
    net = serial(("block", serial(("drop", Dropout(0.5)))))
    with pytest.raises(ValueError, match=r"Dropout: train mode .* needs a `key`.*\(in layer `block/drop`\)"):
        net.apply({"block": {"drop": {}}}, jnp.ones((2, 3)), train=True)


def test_error_dropout_with_a_bare_seed_as_key():
    """key=0 (a seed, not a key) is refused by name, by Dropout and by the composites that fold it (issue #25)."""
    with pytest.raises(TypeError, match=r"Dropout.apply: `key` must be a jax.random key, got int 0; pass jax.random.key\(0\)"):
        Dropout(0.5).apply({}, jnp.ones((2, 3)), key=0, train=True)
    net = serial(("block", serial(("drop", Dropout(0.5)))))
    with pytest.raises(TypeError, match=r"serial.apply: `key` must be a jax.random key, got int 0"):
        net.apply({"block": {"drop": {}}}, jnp.ones((2, 3)), key=0, train=True)


def test_error_eval_without_running_statistics_names_the_path():
    net = serial(("stage", residual(serial(("conv_a", Conv2D(2, 3, padding=1)), ("bn_a", BatchNorm())))))
    _, params = net.init(KEY, (2, 4, 4, 2))
    with pytest.raises(ValueError, match=r"BatchNorm: eval mode .* pass state= .*\(in layer `stage/bn_a`\)"):
        net.apply(params, jnp.ones((2, 4, 4, 2)))
    with pytest.raises(ValueError, match=r"serial: state do not match the layers: missing \['stage'\]"):
        net.apply(params, jnp.ones((2, 4, 4, 2)), state={})


def test_error_int_key_in_init():
    with pytest.raises(TypeError, match=r"Conv2D.init: `key` must be a jax.random key, got int 0; pass jax.random.key\(0\)"):
        Conv2D(2, 3).init(0, (1, 5, 5, 1))
    with pytest.raises(TypeError, match=r"serial.init: `key` must be a jax.random key, got str"):
        serial(Relu()).init("0", (1, 2))


def test_error_bad_batchnorm_and_dropout_arguments():
    with pytest.raises(ValueError, match=r"BatchNorm: `momentum` must be a number in \[0, 1\], got 2"):
        BatchNorm(momentum=2)
    with pytest.raises(ValueError, match=r"BatchNorm: `eps` must be a number > 0, got 0"):
        BatchNorm(eps=0)
    with pytest.raises(ValueError, match=r"Dropout: `rate` must be a number in \[0, 1\), got 1"):
        Dropout(1)
    with pytest.raises(ValueError, match=r"BatchNorm: train mode needs more than 1 value per channel"):
        BatchNorm().apply({"gamma": jnp.ones(3), "beta": jnp.zeros(3)}, jnp.ones((1, 3)), train=True)
    with pytest.raises(ValueError, match=r"fan_out: `n` must be an int >= 1, got 0"):
        fan_out(0)
    with pytest.raises(TypeError, match=r"fan_in_concat: `axis` must be an int, got float"):
        fan_in_concat(1.0)
    with pytest.raises(ValueError, match=r"Relu: this layer has no state, so `state` must be \{\}"):
        Relu().apply({}, jnp.ones(2), state={"mean": 0})
    with pytest.raises(ValueError, match=r"parallel: the input must be a tuple of 2 .* put fan_out\(2\) before parallel"):
        parallel(identity(), identity()).apply({"identity1": {}, "identity2": {}}, jnp.ones(2))


def test_init_gives_the_same_params_eagerly_and_under_jit():
    net = serial(("conv", Conv2D(3, 3)), ("bn", BatchNorm()), GlobalAvgPool(), ("fc", Dense(4, w_init=lambda k, s: jax.random.normal(k, s))))
    _, eager = net.init(KEY, (1, 6, 6, 2))
    traced = jax.jit(lambda k: net.init(k, (1, 6, 6, 2))[1])(KEY)
    for a, b in zip(jax.tree_util.tree_leaves(eager), jax.tree_util.tree_leaves(traced)):
        np.testing.assert_allclose(a, b, rtol=1e-15, atol=0)  # the scaling: numpy eagerly, XLA under jit (1 ulp)
    _, again = net.init(KEY, (1, 6, 6, 2))
    _, other = net.init(jax.random.key(1), (1, 6, 6, 2))
    assert np.array_equal(eager["conv"]["w"], again["conv"]["w"]) and not np.allclose(eager["conv"]["w"], other["conv"]["w"])
    assert not np.allclose(eager["fc"]["w"], 0) and float(np.std(eager["conv"]["w"])) > 0.1


# ---------------------------------------------------------------------------
# dtypes (the tests run with jax_enable_x64 on).
# ---------------------------------------------------------------------------


def test_params_follow_the_default_float_dtype_and_layers_promote():
    _, p64 = Conv2D(2, 3).init(KEY, (1, 5, 5, 1))
    _, p32 = Conv2D(2, 3, dtype=jnp.float32).init(KEY, (1, 5, 5, 1))
    assert p64["w"].dtype == jnp.float64 and p32["w"].dtype == p32["b"].dtype == jnp.float32
    x32 = jnp.ones((1, 5, 5, 1), jnp.float32)
    assert Conv2D(2, 3).apply(p64, x32).dtype == jnp.float64  # mixed: promoted to the wider dtype
    assert Conv2D(2, 3).apply(p32, x32).dtype == jnp.float32
    with pytest.raises(TypeError, match=r"conv2d: `x` \(float32\) and `w` \(float64\) must have the same dtype"):
        from jaxconv import conv2d

        conv2d(x32, p64["w"])  # the pure function stays strict
    _, bn = BatchNorm(dtype=jnp.float32).init_state((1, 3))
    assert bn["mean"].dtype == jnp.float32
