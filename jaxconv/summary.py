"""Parameter counts and the notes' "Activation shape / Activation size / # parameters" table.

Everything here runs on shapes alone (`jax.eval_shape`): no FLOPs are spent.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import jax
import jax.numpy as jnp


class SummaryRow(NamedTuple):
    """One layer of a summary; shape and counts are per example (no batch axis)."""

    name: str
    shape: tuple  # activation shape, e.g. (28, 28, 8)
    size: int  # activation size n_H·n_W·n_C
    params: int  # number of parameters
    macs: int  # multiply-accumulates per example


def count_params(params) -> int:
    """Total number of scalars in a params pytree (arrays or ShapeDtypeStructs)."""
    return sum(math.prod(leaf.shape) for leaf in jax.tree_util.tree_leaves(params))


def _macs(params, out_shape) -> int:
    # conv: n_H'·n_W'·n_C' outputs × f_H·f_W·n_C/groups taps; dense: n_out × n_in. Both are
    # (output size) × (w's size without its last axis). Other layers do no multiply-accumulates.
    w = params.get("w") if isinstance(params, dict) else None
    if w is None:
        return 0
    return math.prod(out_shape) * math.prod(w.shape[:-1])


def summary(layer, input_shape) -> list[SummaryRow]:
    """Rows (name, activation shape, activation size, # parameters, MACs) for every layer.

    Args:
      layer: a Layer; a `serial` one gets a row per sub-layer, parameter-free ones included.
      input_shape: (m, n_H, n_W, n_C) with m >= 1 or -1.

    The first row is the input.
    """
    input_shape = tuple(input_shape)
    if input_shape and input_shape[0] == -1:
        input_shape = (1, *input_shape[1:])
    key = jax.random.key(0)
    out_shapes = {}

    def init(k):
        out_shapes["out"], params = layer.init(k, input_shape)
        return params

    params = jax.eval_shape(init, key)
    rows = [SummaryRow("input", input_shape[1:], math.prod(input_shape[1:]), 0, 0)]
    children = layer.children or (("output", layer),)
    x = jax.ShapeDtypeStruct(input_shape, jnp.float32)
    for name, child in children:
        child_params = params[name] if layer.children else params
        x = jax.eval_shape(child.apply, child_params, x)
        shape = tuple(int(n) for n in x.shape[1:])
        rows.append(SummaryRow(name, shape, math.prod(shape), count_params(child_params), _macs(child_params, shape)))
    return rows


def format_summary(rows: list[SummaryRow]) -> str:
    """The summary as a text table with a total line."""
    header = ("layer", "activation shape", "activation size", "# parameters", "MACs")
    body = [(r.name, str(r.shape), f"{r.size:,}", f"{r.params:,}", f"{r.macs:,}") for r in rows]
    total = ("total", "", "", f"{sum(r.params for r in rows):,}", f"{sum(r.macs for r in rows):,}")
    table = [header, *body, total]
    widths = [max(len(row[i]) for row in table) for i in range(len(header))]

    def line(row):
        return "  ".join(c.ljust(w) if i < 2 else c.rjust(w) for i, (c, w) in enumerate(zip(row, widths)))

    rule = "-" * len(line(header))
    return "\n".join([line(header), rule, *map(line, body), rule, line(total)])
