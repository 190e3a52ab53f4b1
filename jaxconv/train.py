"""Training and evaluation steps: jax.grad of the cost J, optax updates, jax.jit.

    step = make_train_step(model.apply, optax.adam(1e-3))
    params, opt_state, metrics = step(params, opt_state, x, y)
    # with BatchNorm / Dropout: state in, state out, a key per step
    params, opt_state, metrics, state = step(params, opt_state, x, y, state=state, key=key)

The steps are pure functions of arrays, compiled once per input shape; the
same code runs on CPU, GPU or TPU.
"""

from __future__ import annotations

import functools
from typing import Callable, Optional

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax import lax

from jaxconv import chunks
from jaxconv import compile as compiling
from jaxconv._args import check_labels
from jaxconv.nn import accuracy, cost, softmax_cross_entropy


def _float32_logits(logits):
    """bfloat16/float16 logits (m, K) cast to float32, where the loss and the metrics are computed; others unchanged.

    A mixed-precision model (compute_dtype="bfloat16") returns bfloat16 logits; log-softmax in
    bfloat16 would round the loss to 8 bits of mantissa. The cast's gradient is the cast back.
    """
    if jnp.issubdtype(logits.dtype, jnp.floating) and jnp.finfo(logits.dtype).bits < 32:
        return logits.astype(jnp.float32)
    return logits


def make_cost(apply: Callable, loss: Callable = softmax_cross_entropy) -> Callable:
    """J(params, x, y) = (1/m) Σᵢ L(apply(params, x)⁽ⁱ⁾, y⁽ⁱ⁾), returned with the logits as aux.

    x: (m, n_H, n_W, n_C); y: (m,) integer labels or (m, K) one-hot. Logits of fewer than 32
    bits are cast to float32 first (`_float32_logits`), so J and the aux are float32.
    """

    def J(params, x, y):
        logits = _float32_logits(apply(params, x))  # (m, K)
        return cost(loss(logits, y)), logits

    return J


# On CPU a LeNet-sized step on 128 images keeps its activations in cache; a larger batch in one shot spills
# out of it, and runs faster as chunks of 128 with the gradient accumulated. Benchmark: docs/benchmarks.md#auto-chunk.
AUTO_CHUNK_SIZE = 128
# Chunks per iteration of the accumulation loop (lax.scan's unroll): with two, XLA runs one chunk's matmuls beside
# the other's elementwise work. Benchmark: docs/benchmarks.md#chunk-unroll.
CHUNK_UNROLL = 2


def num_chunks(m: int, chunk_size) -> int:
    """How many chunks a batch of m examples is split into for gradient accumulation (1: none).

    chunk_size: None or 0 (never), an int c (when c < m and c divides m), or
    "auto" (AUTO_CHUNK_SIZE on CPU, never on GPU/TPU, where big batches pay).
    """
    if chunk_size == "auto":
        chunk_size = AUTO_CHUNK_SIZE if jax.default_backend() == "cpu" else None
    if not chunk_size or m <= chunk_size or m % chunk_size:
        return 1
    return m // chunk_size


def make_train_step(
    apply: Callable,
    optimizer: optax.GradientTransformation,
    loss: Callable = softmax_cross_entropy,
    *,
    ensemble: bool = False,
    chunk_size="auto",
    donate: bool = True,
    jit: bool = True,
) -> Callable:
    """A compiled step `step(params, opt_state, x, y) -> (params, opt_state, metrics)`.

    Models with state or randomness (BatchNorm, Dropout) pass them in and get the state back:
    `step(params, opt_state, x, y, state=state, key=key) -> (params, opt_state, metrics, state)`.
    With `state` or `key` given, the model runs in train mode (apply(params, x, state=state,
    key=key, train=True)): BatchNorm normalises with the batch's statistics and returns updated
    running ones, Dropout drops with `key` (use a new key every step, e.g. fold_in(key, step)).
    Without either, apply(params, x) is called exactly as before: stateless models are unchanged.

    Args:
      apply: the model's apply(params, x, ...) -> logits (m, K).
      optimizer: any optax.GradientTransformation.
      loss: per-example loss(logits, y) -> (m,).
      ensemble: params and opt_state carry a leading axis of K independently
        initialised models (stacked with `stack_params`); all K train on the same
        batch in one compiled, vmapped step. Metrics then have shape (K,). `state`
        is stacked alike (one per member); `key` is one key, split into K.
      chunk_size: accumulate the gradient over chunks of this many examples
        (`lax.scan`), see `num_chunks`. The update is the same — J is the mean
        of the equal-sized chunks' means — only the schedule changes; "auto"
        chunks batches above 128 on CPU, where that is faster. Chunk i holds
        rows i, i + n, i + 2n, ... (`jaxconv.chunks.split`), so a sharded batch
        stays spread.
        With `state` or `key`, "auto" never chunks (BatchNorm's batch statistics
        would become the chunk's); an explicit int chunks, each chunk then one
        BatchNorm batch, the running statistics updated chunk after chunk.
      donate: donate params and opt_state buffers to the step (they are
        replaced by its outputs, so XLA may update them in place). The arrays
        passed in are then deleted: use the returned ones,
        `params, opt_state, _ = step(params, opt_state, x, y)`; calling the
        step again with the old ones raises a ValueError naming donation.
        Pass donate=False to keep them (e.g. to try several steps from the
        same params), at the cost of a copy per step.
      jit: return the compiled step (True) or the plain function (for wrapping
        in vmap/pmap/shard_map yourself).

    metrics = {"loss": J, "accuracy": fraction correct}, computed on the batch
    before the update.
    """
    stateless_step = _stateless_step(apply, optimizer, loss, chunk_size)
    stateful_step = _stateful_step(apply, optimizer, loss, chunk_size)
    if ensemble:
        stateless_step, stateful_step = _over_members(stateless_step, stateful_step)

    def step(params, opt_state, x, y, state=None, key=None):
        if state is None and key is None:
            return stateless_step(params, opt_state, x, y)
        out = stateful_step(params, opt_state, x, y, state, key)
        return out if state is not None else out[:3]

    if not jit:
        return step
    compiled = compiling.jit(step, donate_argnums=(0, 1) if donate else ())  # jax.jit, with jaxconv's compiler options
    return _with_clear_errors(compiled, donate)


def _apply_update(optimizer, grads, params, opt_state):
    """One optimizer update: (params, opt_state) after the step down `grads`."""
    updates, opt_state = optimizer.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), opt_state


def _mean_of_chunks(grads, n):
    """The gradient of J from the sum of the n equal chunks' gradients: J is the mean of the chunks' means."""
    return jax.tree_util.tree_map(lambda g: g / n, grads)


def _stateless_step(apply, optimizer, loss, chunk_size):
    """step(params, opt_state, x, y) -> (params, opt_state, metrics): apply(params, x), the gradient accumulated
    over `num_chunks` strided chunks of the batch when there are several."""
    grad_J = jax.value_and_grad(make_cost(apply, loss), has_aux=True)

    def step(params, opt_state, x, y):
        n = num_chunks(x.shape[0], chunk_size)
        if n == 1:
            (value, logits), grads = grad_J(params, x, y)
        else:
            xs, ys = chunks.split(x, x.shape[0] // n), chunks.split(y, y.shape[0] // n)  # (n, m/n, ...)

            def chunk(total, xy):
                (value, logits), grads = grad_J(params, *xy)
                return jax.tree_util.tree_map(jnp.add, total, grads), (value, logits)

            zeros = jax.tree_util.tree_map(jnp.zeros_like, params)
            grads, (values, logits) = lax.scan(chunk, zeros, (xs, ys), unroll=CHUNK_UNROLL)
            grads = _mean_of_chunks(grads, n)
            value, logits = values.mean(), chunks.merge(logits)  # (m, K), in the batch's order
        params, opt_state = _apply_update(optimizer, grads, params, opt_state)
        return params, opt_state, {"loss": value, "accuracy": accuracy(logits, y)}

    return step


def _train_mode_cost(apply, loss):
    """J(params, state, x, y, key) in train mode, with the new state beside the logits as aux."""

    def J_train(params, state, x, y, key):
        if state is None:
            logits, new_state = apply(params, x, key=key, train=True), None  # (m, K)
        else:
            logits, new_state = apply(params, x, state=state, key=key, train=True)
        logits = _float32_logits(logits)
        return cost(loss(logits, y)), (logits, new_state)

    return J_train


def _stateful_step(apply, optimizer, loss, chunk_size):
    """step(params, opt_state, x, y, state, key) -> (params, opt_state, metrics, state), in train mode.

    "auto" never chunks (BatchNorm's batch statistics would become the chunk's); an explicit chunk size
    runs chunk after chunk, the state carried from one to the next and chunk i's key fold_in(key, i).
    """
    grad_J_train = jax.value_and_grad(_train_mode_cost(apply, loss), has_aux=True)

    def step(params, opt_state, x, y, state, key):
        n = 1 if chunk_size == "auto" else num_chunks(x.shape[0], chunk_size)
        if n == 1:
            (value, (logits, state)), grads = grad_J_train(params, state, x, y, key)
        else:
            xs, ys = chunks.split(x, x.shape[0] // n), chunks.split(y, y.shape[0] // n)  # (n, m/n, ...)

            def chunk(carry, ixy):
                total, state = carry
                i, xb, yb = ixy
                k = None if key is None else jax.random.fold_in(key, i)
                (value, (logits, state)), grads = grad_J_train(params, state, xb, yb, k)
                return (jax.tree_util.tree_map(jnp.add, total, grads), state), (value, logits)

            zeros = jax.tree_util.tree_map(jnp.zeros_like, params)
            (grads, state), (values, logits) = lax.scan(chunk, (zeros, state), (jnp.arange(n), xs, ys))
            grads = _mean_of_chunks(grads, n)
            value, logits = values.mean(), chunks.merge(logits)
        params, opt_state = _apply_update(optimizer, grads, params, opt_state)
        return params, opt_state, {"loss": value, "accuracy": accuracy(logits, y)}, state

    return step


def _over_members(stateless_step, stateful_step):
    """Both steps vmapped over an ensemble's K members: params, opt_state and state stacked on a leading
    axis, x and y shared, and the one key split into K."""
    stateless = jax.vmap(stateless_step, in_axes=(0, 0, None, None))
    vmapped = jax.vmap(stateful_step, in_axes=(0, 0, None, None, 0, 0))

    def stateful(params, opt_state, x, y, state, key):
        members = jax.tree_util.tree_leaves(params)[0].shape[0]
        keys = None if key is None else jax.random.split(key, members)
        return vmapped(params, opt_state, x, y, state, keys)

    return stateless, stateful


def _donated_message(params, opt_state) -> Optional[str]:
    """The error message when params or opt_state holds a buffer an earlier call donated, else None."""
    for name, tree in (("params", params), ("opt_state", opt_state)):
        if any(isinstance(leaf, jax.Array) and leaf.is_deleted() for leaf in jax.tree_util.tree_leaves(tree)):
            return (
                f"train_step: `{name}` holds arrays deleted by an earlier call: make_train_step donates "
                f"params and opt_state to the step (donate=True), so use the ones it returns "
                f"(params, opt_state, metrics = step(params, opt_state, x, y)), or build the step with "
                f"donate=False to keep the inputs."
            )
    return None


def _with_clear_errors(compiled, donate: bool):
    """The compiled step, with JAX's errors for a donated buffer passed again or another optimizer's state
    restated in the step's terms. The jitted function's tools (`lower`, `_cache_size`) stay reachable."""

    def checked_step(params, opt_state, x, y, state=None, key=None):
        try:
            if state is None and key is None:
                return compiled(params, opt_state, x, y)
            return compiled(params, opt_state, x, y, state, key)
        except (RuntimeError, ValueError) as e:
            # A donated buffer passed again: JAX refuses it before running anything ("Array has been
            # deleted"); say which argument and why. Checked here, after the failure, not before every
            # call: the check walks every leaf, a cost each step would pay.
            message = _donated_message(params, opt_state) if donate and "deleted" in str(e) else None
            if message:
                raise ValueError(message) from None
            raise
        except AttributeError as e:  # optax reading a field of another optimizer's state
            if "State" not in str(e):
                raise
            raise TypeError(
                f"train_step: `opt_state` does not belong to this step's optimizer (optax: {e}); create it with the "
                f"same optimizer the step was made with: opt_state = optimizer.init(params)."
            ) from None

    checked_step.lower = compiled.lower
    checked_step._cache_size = compiled._cache_size
    checked_step.__wrapped__ = compiled
    return checked_step


def stack_params(trees):
    """Stack K pytrees of the same structure along a new leading axis (for ensembles)."""
    return jax.tree_util.tree_map(lambda *leaves: jnp.stack(leaves), *trees)


def make_eval_step(apply: Callable, loss: Callable = softmax_cross_entropy) -> Callable:
    """A compiled `eval_step(params, x, y, mask, state=None) -> (Σ loss, Σ correct, logits)` over the real examples.

    mask (m,) is 1 for real examples and 0 for padding, so every batch can be
    padded to one size and compiled once. With `state` (BatchNorm's running
    statistics) the model runs in eval mode: apply(params, x, state=state, train=False).
    """

    def eval_step(params, x, y, mask, state=None):
        if state is None:
            logits = apply(params, x)  # (m, K)
        else:
            logits, _ = apply(params, x, state=state, train=False)
        logits = _float32_logits(logits)
        losses = loss(logits, y)  # (m,)
        labels = y if jnp.issubdtype(y.dtype, jnp.integer) else y.argmax(-1)
        correct = (logits.argmax(-1) == labels).astype(losses.dtype)
        return (losses * mask).sum(), (correct * mask).sum(), logits

    return compiling.jit(eval_step)


def evaluate(apply: Callable, params, x, y, batch_size: int = 256, *, loss=softmax_cross_entropy, eval_step=None, state=None):
    """Mean loss and accuracy of `params` on (x, y), in batches of `batch_size`, in eval mode.

    x: (m, n_H, n_W, n_C); y: (m,) or (m, K). `state`: the model's state (BatchNorm's
    running statistics), required for models that have one.

    The ragged last batch is padded to `batch_size` and masked, so one
    compilation serves every batch. Pass `eval_step` (from make_eval_step) to
    reuse a compiled step across calls.

    Returns {"loss": float, "accuracy": float, "logits": (m, K) numpy array}.
    Integer labels y outside [0, K) raise a ValueError.
    """
    x, y = np.asarray(x), np.asarray(y)
    m = len(x)
    if m == 0 or len(y) != m:
        raise ValueError(f"evaluate: `x` and `y` must hold the same number (>= 1) of examples, got {len(x)} and {len(y)}.")
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"evaluate: `batch_size` must be an int >= 1, got {batch_size!r}.")
    eval_step = eval_step or make_eval_step(apply, loss)
    batch_size = min(batch_size, m)
    total_loss = total_correct = 0.0
    logits = []
    for start in range(0, m, batch_size):
        xb, yb = x[start : start + batch_size], y[start : start + batch_size]
        n = len(xb)
        mask = np.zeros(batch_size, np.float32)
        mask[:n] = 1
        if n < batch_size:  # pad the ragged last batch to the compiled size
            xb = np.concatenate([xb, np.zeros((batch_size - n, *xb.shape[1:]), xb.dtype)])
            yb = np.concatenate([yb, np.zeros((batch_size - n, *yb.shape[1:]), yb.dtype)])
        if state is None:
            batch_loss, batch_correct, batch_logits = eval_step(params, xb, yb, mask)
        else:
            batch_loss, batch_correct, batch_logits = eval_step(params, xb, yb, mask, state)
        total_loss += float(batch_loss)
        total_correct += float(batch_correct)
        logits.append(np.asarray(batch_logits)[:n])
    logits = np.concatenate(logits)  # (m, K)
    if np.issubdtype(y.dtype, np.integer):  # inside the compiled step a bad label is a silent wrong answer
        check_labels(y, logits.shape[-1], "evaluate", name="y")
    return {"loss": total_loss / m, "accuracy": total_correct / m, "logits": logits}


def per_example_grads(apply: Callable, loss: Callable, params, x, y, *, state=None):
    """∇L(ŷ⁽ⁱ⁾, y⁽ⁱ⁾) for every example i, by `jax.vmap(jax.grad(...))`, compiled.

    x: (m, n_H, n_W, n_C); y: (m,) or (m, K). Returns a pytree like params with
    a leading axis m on every leaf; its mean over that axis is the gradient of J.
    Works because every jaxconv op takes one example without the batch axis.
    Compiled once per (apply, loss) and shapes (`jax.jit`; eagerly, every op of
    the vmapped gradient would be compiled on its own, many times slower:
    docs/benchmarks.md#per-example-jit).

    Models with BatchNorm: pass `state`; the gradients are then those of eval mode
    (running statistics), the only mode in which one example's loss depends on that
    example alone. In train mode BatchNorm couples the examples of a batch, so a
    per-example gradient does not exist; Dropout is off (eval mode) here too.
    """
    return _per_example_grads_fn(apply, loss)(params, x, y, state)


@functools.lru_cache(maxsize=32)
def _per_example_grads_fn(apply: Callable, loss: Callable) -> Callable:
    def example_loss(p, x_i, y_i, state):
        if state is None:
            return loss(_float32_logits(apply(p, x_i)), y_i)  # one example: (n_H, n_W, n_C) -> scalar
        return loss(_float32_logits(apply(p, x_i, state=state, train=False)[0]), y_i)

    return compiling.jit(jax.vmap(jax.grad(example_loss), in_axes=(None, 0, 0, None)))
