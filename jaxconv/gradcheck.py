"""Gradient checking: jax.grad of a scalar function against finite differences and another implementation.

The course's gradient check, as an API (like PyTorch's `gradcheck` and
jax's `check_grads`, with a report a person reads):

    report = gradcheck(cost, (params, x, y), reference=cost_lax)
    print(report)          # one row per parameter leaf (conv1/w, fc3/b, ...) and comparison

Everything runs in float64, whether or not x64 is enabled globally: the call
enters `jax.enable_x64(True)` and casts every floating leaf of `args` to
float64, so the finite differences are not drowned in float32 rounding
(float32 has ~7 digits; a central difference with ε = 1e-6 keeps ~10 in float64).

Two finite-difference modes:
- "directional" (default, affordable on a whole model): for each leaf θ and a
  few random unit directions v (on that leaf only), compare the directional
  derivative ⟨∇_θ f, v⟩ with (f(θ + εv) − f(θ − εv)) / 2ε: 2 evaluations of f
  per direction. Relative error: |difference| / ‖∇_θ f‖₂ (|⟨g, v⟩| <= ‖g‖ for unit v).
- "full" (small inputs): one central difference per element: 2 evaluations
  per element. Relative error: max|g − fd| / max|fd|.
Against `reference` (the same scalar function computed another way, e.g. with
impl="lax") the whole gradient is compared: max|g − g_ref| / max|g_ref|.
"""

from __future__ import annotations

import math
from typing import Any, Callable, NamedTuple, Sequence

import jax
import jax.numpy as jnp
import numpy as np

__all__ = ["GradcheckError", "GradcheckReport", "GradcheckRow", "gradcheck"]


class GradcheckError(AssertionError):
    """A gradient differs from finite differences or from the reference beyond tolerance; `.report` has the table."""

    def __init__(self, report: "GradcheckReport"):
        super().__init__(f"gradcheck: gradient over tolerance (rtol={report.rtol:g}, atol={report.atol:g}):\n{report}")
        self.report = report


class GradcheckRow(NamedTuple):
    """One leaf compared with one alternative ('finite differences' or 'reference')."""

    path: str
    against: str
    max_abs: float
    max_rel: float
    ok: bool


class GradcheckReport(NamedTuple):
    """Per-leaf errors of a gradient check; `str(report)` is a table, `report.ok` whether all passed."""

    rows: tuple
    rtol: float
    atol: float

    @property
    def ok(self) -> bool:
        return all(row.ok for row in self.rows)

    def max_rel(self, against: str) -> float:
        """The largest relative error over the leaves against 'finite differences' or 'reference'."""
        return max((row.max_rel for row in self.rows if row.against == against), default=float("nan"))

    def __str__(self) -> str:
        width = max([len("leaf")] + [len(row.path) for row in self.rows])
        lines = [f"{'leaf':<{width}}  {'against':<19}  {'max abs err':>11}  {'max rel err':>11}  ok"]
        for row in self.rows:
            mark = "yes" if row.ok else "NO"
            lines.append(f"{row.path:<{width}}  {row.against:<19}  {row.max_abs:>11.2e}  {row.max_rel:>11.2e}  {mark}")
        return "\n".join(lines)


def _path_name(path) -> str:
    parts = []
    for key in path:
        for attr in ("key", "idx", "name"):
            if hasattr(key, attr):
                parts.append(str(getattr(key, attr)))
                break
        else:
            parts.append(str(key))
    return "/".join(parts)


def _to_float64(tree):
    def cast(leaf):
        if isinstance(leaf, (float, np.floating)) or (hasattr(leaf, "dtype") and jnp.issubdtype(leaf.dtype, jnp.floating)):
            return jnp.asarray(leaf, jnp.float64)
        return leaf

    return jax.tree.map(cast, tree)


def _check_args(f, args, argnums, reference, mode, directions, eps):
    op = "gradcheck"
    if not callable(f):
        raise TypeError(f"{op}: `f` must be a callable returning a scalar, got {type(f).__name__}.")
    if reference is not None and not callable(reference):
        raise TypeError(f"{op}: `reference` must be None or a callable like `f`, got {type(reference).__name__}.")
    if not isinstance(args, tuple):
        raise TypeError(f"{op}: `args` must be a tuple of f's arguments, got {type(args).__name__}; write (x,) for one argument.")
    nums = (argnums,) if isinstance(argnums, int) else tuple(argnums)
    if not nums or any(isinstance(i, bool) or not isinstance(i, int) or not 0 <= i < len(args) for i in nums):
        raise ValueError(f"{op}: `argnums` must be an int or ints in [0, {len(args)}) (f has {len(args)} args), got {argnums!r}.")
    if mode not in ("directional", "full"):
        raise ValueError(f"{op}: unknown `mode` {mode!r}. It needs to be one of ['directional', 'full'].")
    if isinstance(directions, bool) or not isinstance(directions, int) or directions < 1:
        raise ValueError(f"{op}: `directions` must be an int >= 1, got {directions!r}.")
    if not isinstance(eps, (int, float)) or not eps > 0:
        raise ValueError(f"{op}: `eps` must be a positive number, got {eps!r}; 1e-6 suits float64.")
    return nums


def gradcheck(
    f: Callable[..., Any],
    args: Sequence[Any],
    *,
    argnums=0,
    reference: Callable[..., Any] | None = None,
    eps: float = 1e-6,
    rtol: float = 1e-6,
    atol: float = 1e-10,
    mode: str = "directional",
    directions: int = 3,
    seed: int = 0,
) -> GradcheckReport:
    """Check jax.grad(f) against central finite differences (and `reference`'s gradient) in float64.

    Args:
      f: a scalar function of `args` (e.g. a model's cost J(params, x, y)).
      args: the tuple of f's arguments; any pytrees (dicts of arrays). Floating
        leaves are cast to float64 for the check.
      argnums: which arguments to differentiate, an int or a tuple of ints.
      reference: optional scalar function with f's signature computing the same
        value another way (e.g. impl="lax"); its jax.grad is compared with f's.
      eps: ε of the central differences (f(θ + εv) − f(θ − εv)) / 2ε.
      rtol, atol: a leaf passes when max abs err <= atol or max rel err <= rtol.
        The defaults suit float64 central differences: truncation O(ε²) and
        rounding O(1e-16/ε) both stay below 1e-8 relative.
      mode: "directional" (`directions` random unit directions per leaf) or
        "full" (every element; 2 evaluations of f per element).
      directions: random directions per leaf in directional mode.
      seed: seed of the random directions.

    Returns:
      A GradcheckReport: one row per (leaf, comparison), named by pytree path
      ("conv1/w"), printing as a table.

    Raises:
      GradcheckError (an AssertionError) with that table when a row is over tolerance.

    >>> report = gradcheck(lambda x: (x ** 3).sum(), (jnp.arange(3.0),))
    >>> report.ok
    True
    """
    nums = _check_args(f, args, argnums, reference, mode, directions, eps)
    with jax.enable_x64(True):
        args64 = _to_float64(tuple(args))
        f_jit = jax.jit(f)
        value = f_jit(*args64)
        if jnp.shape(value) != ():
            raise ValueError(f"gradcheck: `f` must return a scalar, got shape {jnp.shape(value)}; reduce it, e.g. with .sum().")
        grads = jax.grad(f, argnums=nums)(*args64)  # tuple, one pytree per argnum
        ref_grads = jax.grad(reference, argnums=nums)(*args64) if reference is not None else None
        rng = np.random.default_rng(seed)
        rows = []
        for slot, i in enumerate(nums):
            leaves, treedef = jax.tree_util.tree_flatten_with_path(args64[i])
            for leaf_index, (path, leaf) in enumerate(leaves):
                if not (hasattr(leaf, "dtype") and jnp.issubdtype(leaf.dtype, jnp.floating)):
                    continue
                name = _path_name(path) or f"args[{i}]"
                if len(nums) > 1 and path:
                    name = f"args[{i}]/{name}"
                g = np.asarray(jax.tree_util.tree_leaves(grads[slot])[leaf_index])

                def f_at(new_leaf, i=i, leaves=leaves, treedef=treedef, leaf_index=leaf_index):
                    new = [v for _, v in leaves]
                    new[leaf_index] = new_leaf
                    full_args = list(args64)
                    full_args[i] = jax.tree_util.tree_unflatten(treedef, new)
                    return float(f_jit(*full_args))

                x = np.asarray(leaf)
                if mode == "full":
                    fd = np.empty_like(x)
                    for k in range(x.size):
                        e = np.zeros(x.size)
                        e[k] = eps
                        e = e.reshape(x.shape)
                        fd.flat[k] = (f_at(x + e) - f_at(x - e)) / (2 * eps)
                    err = float(np.abs(g - fd).max(initial=0.0))
                    scale = float(np.abs(fd).max(initial=0.0))
                else:
                    err = 0.0
                    for _ in range(directions):
                        v = rng.standard_normal(x.shape)
                        v /= max(np.linalg.norm(v), 1e-300)
                        fd = (f_at(x + eps * v) - f_at(x - eps * v)) / (2 * eps)
                        err = max(err, abs(float((g * v).sum()) - fd))
                    scale = float(np.linalg.norm(g))
                rel = err / scale if scale > 0 else (0.0 if err == 0 else math.inf)
                rows.append(GradcheckRow(name, "finite differences", err, rel, err <= atol or rel <= rtol))
                if ref_grads is not None:
                    r = np.asarray(jax.tree_util.tree_leaves(ref_grads[slot])[leaf_index])
                    err = float(np.abs(g - r).max(initial=0.0))
                    scale = float(np.abs(r).max(initial=0.0))
                    rel = err / scale if scale > 0 else (0.0 if err == 0 else math.inf)
                    rows.append(GradcheckRow(name, "reference", err, rel, err <= atol or rel <= rtol))
    report = GradcheckReport(tuple(rows), rtol, atol)
    if not report.ok:
        raise GradcheckError(report)
    return report
