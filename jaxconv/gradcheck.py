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

Every comparison is NaN-aware: a NaN or Inf anywhere in the gradient, a
finite difference or the reference gradient fails its row, and the row names
the element ("gradient[1, 0] = nan"). An error is never folded away by a
comparison with NaN (Python's `max(0.0, nan)` is 0.0): errors are reduced
with NumPy, which propagates NaN, and a row passes only when its error is a
finite number within tolerance.

Only floating leaves are differentiated: in the arguments named by
`argnums`, integer, bool and other non-float leaves (a step counter in a
state dict, say) are held fixed, like every leaf of the other arguments; an
argument in `argnums` with no floating leaf at all is refused (TypeError).
"""

from __future__ import annotations

import math
import numbers
from typing import Any, Callable, NamedTuple, Sequence

import jax
import jax.numpy as jnp
import numpy as np

__all__ = ["GradcheckError", "GradcheckReport", "GradcheckRow", "gradcheck"]

OP = "gradcheck"
# The accepted ranges of the numeric arguments. The check always runs in float64 (unit roundoff 1.1e-16).
EPS_RANGE = (1e-10, 1e-1)  # smaller: rounding (~1e-16 / ε) swamps the difference; larger: no longer a derivative
RTOL_RANGE = (1e-15, 1e-2)  # smaller: tighter than float64 rounding; larger: a 1% error in every element passes
ATOL_RANGE = (0.0, 1e-6)  # a floor for (near-)zero gradients; larger: real errors of O(1) gradients pass
DIRECTIONS_RANGE = (1, 10_000)  # each direction costs 2 evaluations of f; mode="full" checks every element


class GradcheckRow(NamedTuple):
    """One leaf compared with one alternative ('finite differences' or 'reference').

    `note` says where the row's error is: the first non-finite element when there is one
    ("gradient[1, 0] = nan", "finite difference along direction 2 = inf"), else the element
    (full mode, reference) or direction (directional mode) of the largest error.
    """

    path: str
    against: str
    max_abs: float
    max_rel: float
    ok: bool
    note: str = ""


class GradcheckReport(NamedTuple):
    """Per-leaf errors of a gradient check; `str(report)` is a table, `report.ok` whether all passed."""

    rows: tuple
    rtol: float
    atol: float

    @property
    def ok(self) -> bool:
        return all(row.ok for row in self.rows)

    def max_rel(self, against: str) -> float:
        """The largest relative error over the leaves against 'finite differences' or 'reference'; nan if one is."""
        values = [row.max_rel for row in self.rows if row.against == against]
        return float(np.max(values)) if values else float("nan")

    def __str__(self) -> str:
        """The table: the errors as measured (nan and inf included); a failing row ends with its note."""
        width = max([len("leaf")] + [len(row.path) for row in self.rows])
        lines = [f"{'leaf':<{width}}  {'against':<19}  {'max abs err':>11}  {'max rel err':>11}  ok"]
        for row in self.rows:
            line = f"{row.path:<{width}}  {row.against:<19}  {row.max_abs:>11.2e}  {row.max_rel:>11.2e}  "
            lines.append(line + ("yes" if row.ok else f"NO   {row.note}".rstrip()))
        return "\n".join(lines)


class GradcheckError(AssertionError):
    """A gradient is not finite or differs from finite differences or the reference; `.report` has the table."""

    def __init__(self, report: GradcheckReport):
        first = next((row for row in report.rows if not row.ok), None)
        where = f"; first failure: `{first.path}` against {first.against}: {first.note}" if first is not None else ""
        super().__init__(
            f"{OP}: gradient over tolerance or not finite (rtol={report.rtol:g}, atol={report.atol:g}){where}:\n{report}"
        )
        self.report = report


# ---------------------------------------------------------------------------------------------------------------
# Arguments: checked before anything is traced.


def _is_int(value) -> bool:
    return isinstance(value, numbers.Integral) and not isinstance(value, (bool, np.bool_))


def _is_float(leaf) -> bool:
    """A real floating leaf: a Python or NumPy float, or an array of a floating dtype (bfloat16 included)."""
    if isinstance(leaf, (float, np.floating)):
        return True
    return hasattr(leaf, "dtype") and hasattr(leaf, "shape") and jnp.issubdtype(leaf.dtype, jnp.floating)


def _check_call(f, args, argnums, reference) -> tuple:
    """Check f, args, argnums and reference; return argnums as a tuple of ints."""
    if not callable(f):
        raise TypeError(f"{OP}: `f` must be a callable returning a scalar, got {type(f).__name__}.")
    if reference is not None and not callable(reference):
        raise TypeError(f"{OP}: `reference` must be None or a callable like `f`, got {type(reference).__name__}.")
    if not isinstance(args, tuple):
        raise TypeError(f"{OP}: `args` must be a tuple of f's arguments, got {type(args).__name__}; write (x,) for one argument.")
    n = len(args)
    nums = (argnums,) if _is_int(argnums) else tuple(argnums) if isinstance(argnums, (tuple, list)) else ()
    if not nums or not all(_is_int(i) and 0 <= i < n for i in nums):
        raise ValueError(f"{OP}: `argnums` must be an int or ints in [0, {n}) (f has {n} args), got {argnums!r}; e.g. argnums=0.")
    if len(set(nums)) != len(nums):
        raise ValueError(f"{OP}: `argnums` must name each argument once, got {argnums!r}; write {tuple(sorted(set(nums)))}.")
    return tuple(int(i) for i in nums)


def _check_real(name: str, value, bounds: tuple, why: str) -> float:
    """`value` as a float when it is a real number within `bounds` (NaN and Inf are not); else a one-line error."""
    low, high = bounds
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Real):
        raise TypeError(f"{OP}: `{name}` must be a real number, got {type(value).__name__} {value!r}; pass a float, e.g. {name}={why}.")
    if not low <= value <= high:
        raise ValueError(f"{OP}: `{name}` must be a finite number in [{low:g}, {high:g}], got {float(value)!r}; e.g. {name}={why}.")
    return float(value)


def _check_numbers(eps, rtol, atol, mode, directions, seed) -> tuple:
    """Check the numeric and mode arguments; return (eps, rtol, atol) as floats."""
    eps = _check_real("eps", eps, EPS_RANGE, "1e-6 (the default; larger steps measure truncation, smaller rounding)")
    rtol = _check_real("rtol", rtol, RTOL_RANGE, "1e-6 (the default; looser tolerances let wrong gradients pass)")
    atol = _check_real("atol", atol, ATOL_RANGE, "1e-10 (the default; an absolute floor for zero gradients only)")
    if not isinstance(mode, str) or mode not in ("directional", "full"):
        raise ValueError(f"{OP}: unknown `mode` {mode!r}. It needs to be one of ['directional', 'full'].")
    low, high = DIRECTIONS_RANGE
    if not _is_int(directions):
        raise TypeError(f"{OP}: `directions` must be an int, got {type(directions).__name__} {directions!r}; e.g. directions=3.")
    if not low <= directions <= high:
        raise ValueError(
            f"{OP}: `directions` must be an int in [{low}, {high}], got {directions!r}; use mode='full' to check every element."
        )
    if not _is_int(seed) or seed < 0:
        raise ValueError(f"{OP}: `seed` must be an int >= 0, got {seed!r}; e.g. seed=0.")
    return eps, rtol, atol


# ---------------------------------------------------------------------------------------------------------------
# The function of the differentiated leaves.


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
    return jax.tree.map(lambda leaf: jnp.asarray(leaf, jnp.float64) if _is_float(leaf) else leaf, tree)


def _kinds(leaves) -> str:
    """'int64, str': the dtypes (or Python types) of non-float leaves, for a message."""
    return ", ".join(sorted({str(getattr(leaf, "dtype", type(leaf).__name__)) for leaf in leaves})) or "no leaves"


class _Split(NamedTuple):
    """`args` flattened: the differentiated leaves, the other arrays (held fixed), and how to put them back."""

    names: list  # the pytree path of each differentiated leaf: "conv1/w", or "args[1]" for a bare array
    diff: list  # the differentiated leaves, float64 arrays
    other: list  # every other array leaf, passed to the compiled function as it is
    rebuild: Callable  # (diff, other) -> the args tuple; non-array leaves (ints, strings) are kept as they are


def _split_args(args64: tuple, nums: tuple) -> _Split:
    flat = [jax.tree_util.tree_flatten_with_path(arg) for arg in args64]
    leaves = [[leaf for _, leaf in path_leaves] for path_leaves, _ in flat]
    diff_at = [(i, k) for i in nums for k, leaf in enumerate(leaves[i]) if _is_float(leaf)]
    for i in nums:
        if not any(j == i for j, _ in diff_at):
            raise TypeError(
                f"{OP}: argument {i} has no floating-point leaf to differentiate (its leaves: {_kinds(leaves[i])}); "
                f"drop {i} from `argnums` or pass floats, e.g. jnp.asarray(x, jnp.float32)."
            )
    taken = set(diff_at)
    other_at = [(i, k) for i, row in enumerate(leaves) for k, leaf in enumerate(row)
                if (i, k) not in taken and isinstance(leaf, (np.ndarray, jax.Array))]
    names = []
    for i, k in diff_at:
        name = _path_name(flat[i][0][k][0])
        names.append(f"args[{i}]/{name}" if name and len(nums) > 1 else name or f"args[{i}]")

    def rebuild(diff, other):
        new = [list(row) for row in leaves]
        for (i, k), value in [*zip(diff_at, diff), *zip(other_at, other)]:
            new[i][k] = value
        return tuple(jax.tree_util.tree_unflatten(treedef, row) for (_, treedef), row in zip(flat, new))

    return _Split(names, [leaves[i][k] for i, k in diff_at], [leaves[i][k] for i, k in other_at], rebuild)


def _check_value(value, name: str) -> None:
    """`name`'s value at `args` must be a finite real scalar: there is nothing to differentiate otherwise."""
    shape, dtype = getattr(value, "shape", None), getattr(value, "dtype", None)
    if shape != ():
        got = f"shape {shape}" if shape is not None else type(value).__name__
        raise ValueError(f"{OP}: `{name}` must return a scalar, got {got}; reduce it, e.g. with .sum().")
    if not jnp.issubdtype(dtype, jnp.floating):
        raise TypeError(f"{OP}: `{name}` must return a real floating-point scalar, got dtype {dtype}; return a float cost.")
    if not math.isfinite(float(value)):
        raise ValueError(f"{OP}: `{name}` is {float(value)} at `args`, not a finite number; check `args` for NaN/Inf.")


def _value_and_grad(fn, name: str, split: _Split):
    """fn as a compiled function h(diff, other) of the leaves, after checking its value; and its gradient per leaf."""
    def of_leaves(diff, other):
        return fn(*split.rebuild(diff, other))

    h = jax.jit(of_leaves)
    _check_value(h(split.diff, split.other), name)
    grads = jax.jit(jax.grad(of_leaves))(split.diff, split.other)
    return h, [np.asarray(g) for g in grads]


# ---------------------------------------------------------------------------------------------------------------
# Comparisons: each gives one row, NaN-aware.


def _index(shape: tuple, k: int) -> str:
    """'[1, 0, 2]': the flat index k of an array of `shape` as a NumPy index ('' for a scalar)."""
    return "" if not shape else f"[{', '.join(str(int(i)) for i in np.unravel_index(k, shape))}]"


def _first_nonfinite(a: np.ndarray, label: str) -> str:
    """'gradient[1, 0] = nan' for the first NaN or Inf element of `a`, '' when every element is finite."""
    bad = np.flatnonzero(~np.isfinite(a))
    return f"{label}{_index(a.shape, bad[0])} = {float(a.flat[bad[0]])}" if bad.size else ""


def _row(path, against, err, scale, nonfinite, where, rtol, atol) -> GradcheckRow:
    """A row that passes only when nothing is non-finite and err <= atol or err / scale <= rtol."""
    with np.errstate(divide="ignore", invalid="ignore"):
        rel = 0.0 if err == 0 else float(np.float64(err) / np.float64(scale))
    ok = not nonfinite and math.isfinite(err) and math.isfinite(scale) and (err <= atol or rel <= rtol)
    return GradcheckRow(path, against, err, rel, bool(ok), nonfinite or where)


def _compare_elements(path, against, label, g, other, rtol, atol) -> GradcheckRow:
    """Row of g against `other` (finite differences or the reference gradient) element by element."""
    nonfinite = _first_nonfinite(g, "gradient") or _first_nonfinite(other, label)
    diff = np.abs(g - other)  # NaN where either is NaN; max propagates it
    err, scale = float(diff.max(initial=0.0)), float(np.abs(other).max(initial=0.0))
    where = ""
    if diff.size:
        k = int(np.argmax(diff))
        where = f"largest at {_index(g.shape, k) or '[]'}: gradient {g.flat[k]:.6e} vs {label} {other.flat[k]:.6e}"
    return _row(path, against, err, scale, nonfinite, where, rtol, atol)


def _at(h, split: _Split, j: int, leaf) -> float:
    """f with leaf j replaced by `leaf`."""
    return float(h([leaf if i == j else v for i, v in enumerate(split.diff)], split.other))


def _finite_differences(h, split: _Split, j: int, eps: float) -> np.ndarray:
    """fd[k] = (f(θ + ε e_k) − f(θ − ε e_k)) / 2ε for every element k of leaf j: 2 evaluations of f each."""
    x = np.asarray(split.diff[j])
    fd = np.empty_like(x)
    for k in range(x.size):
        e = np.zeros(x.size)
        e[k] = eps
        e = e.reshape(x.shape)
        fd.flat[k] = (_at(h, split, j, x + e) - _at(h, split, j, x - e)) / (2 * eps)
    return fd


def _compare_directions(h, split: _Split, j, g, eps, directions, rng, rtol, atol) -> GradcheckRow:
    """Row of ⟨g, v⟩ against (f(θ + εv) − f(θ − εv)) / 2ε for `directions` random unit v on leaf j."""
    x = np.asarray(split.diff[j])
    g_v, fd = np.empty(directions), np.empty(directions)
    for d in range(directions):
        v = rng.standard_normal(x.shape)
        v /= max(np.linalg.norm(v), 1e-300)
        g_v[d] = (g * v).sum()
        fd[d] = (_at(h, split, j, x + eps * v) - _at(h, split, j, x - eps * v)) / (2 * eps)
    bad = np.flatnonzero(~np.isfinite(fd))
    fd_note = f"finite difference along direction {bad[0]} = {fd[bad[0]]}" if bad.size else ""
    nonfinite = _first_nonfinite(g, "gradient") or fd_note
    diff = np.abs(g_v - fd)
    k = int(np.argmax(diff))  # the first NaN when there is one
    where = f"largest along direction {k}: gradient·v {g_v[k]:.6e} vs finite difference {fd[k]:.6e}"
    err, scale = float(diff.max()), float(np.linalg.norm(g))  # |⟨g, v⟩| <= ‖g‖ for a unit v
    return _row(split.names[j], "finite differences", err, scale, nonfinite, where, rtol, atol)


# ---------------------------------------------------------------------------------------------------------------


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
      f: a scalar function of `args` (e.g. a model's cost J(params, x, y)), with a finite value at `args`.
      args: the tuple of f's arguments; any pytrees (dicts of arrays). Floating
        leaves are cast to float64 for the check.
      argnums: which arguments to differentiate, an int or a tuple of distinct ints.
        Only their floating leaves are differentiated; integer, bool and other
        leaves are held fixed. An argument with no floating leaf is refused (TypeError).
      reference: optional scalar function with f's signature computing the same
        value another way (e.g. impl="lax"); its jax.grad is compared with f's.
      eps: ε of the central differences (f(θ + εv) − f(θ − εv)) / 2ε, in [1e-10, 0.1].
      rtol, atol: a leaf passes when its errors are finite and max abs err <= atol
        or max rel err <= rtol; rtol in [1e-15, 0.01], atol in [0, 1e-6].
        The defaults suit float64 central differences: truncation O(ε²) and
        rounding O(1e-16/ε) both stay below 1e-8 relative.
      mode: "directional" (`directions` random unit directions per leaf) or
        "full" (every element; 2 evaluations of f per element).
      directions: random directions per leaf in directional mode, 1 to 10000.
      seed: seed of the random directions, an int >= 0.

    Returns:
      A GradcheckReport: one row per (leaf, comparison), named by pytree path
      ("conv1/w"), printing as a table of the errors as measured.

    Raises:
      GradcheckError (an AssertionError) with that table when a row is over
      tolerance or not finite (a NaN or Inf in the gradient, a finite difference
      or the reference gradient); the failing rows name the leaf and element.
      TypeError or ValueError for bad arguments, naming the argument.

    >>> report = gradcheck(lambda x: (x ** 3).sum(), (jnp.arange(3.0),))
    >>> report.ok
    True
    """
    nums = _check_call(f, args, argnums, reference)
    eps, rtol, atol = _check_numbers(eps, rtol, atol, mode, directions, seed)
    with jax.enable_x64(True):
        split = _split_args(_to_float64(args), nums)
        h, grads = _value_and_grad(f, "f", split)
        ref_grads = _value_and_grad(reference, "reference", split)[1] if reference is not None else None
        rng = np.random.default_rng(seed)
        rows = []
        for j, (name, g) in enumerate(zip(split.names, grads)):
            if mode == "full":
                fd = _finite_differences(h, split, j, eps)
                rows.append(_compare_elements(name, "finite differences", "finite difference", g, fd, rtol, atol))
            else:
                rows.append(_compare_directions(h, split, j, g, eps, directions, rng, rtol, atol))
            if ref_grads is not None:
                rows.append(_compare_elements(name, "reference", "reference gradient", g, ref_grads[j], rtol, atol))
    report = GradcheckReport(tuple(rows), rtol, atol)
    if not report.ok:
        raise GradcheckError(report)
    return report
