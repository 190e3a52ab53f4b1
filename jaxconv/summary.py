"""Parameter counts and the notes' "Activation shape / Activation size / # parameters" table.

Everything here runs on shapes alone (`jax.eval_shape`): no FLOPs are spent.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import jax
import jax.numpy as jnp

from jaxconv.layers import call_layer, init_state_of


class SummaryRow(NamedTuple):
    """One layer of a summary; shape and counts are per example (no batch axis)."""

    name: str
    shape: tuple  # activation shape, e.g. (28, 28, 8)
    size: int  # activation size n_H·n_W·n_C
    params: int  # number of parameters
    macs: int  # multiply-accumulates per example
    depth: int = 0  # 0 for the model's own layers, 1 inside a branch / block, ...


def count_params(params) -> int:
    """Total number of scalars in a params pytree (arrays or ShapeDtypeStructs)."""
    return sum(math.prod(leaf.shape) for leaf in jax.tree_util.tree_leaves(params))


def _macs(params, out_shape, in_shape, transposed=False) -> int:
    # conv: n_H'·n_W'·n_C' outputs × f_H·f_W·n_C/groups taps; dense: n_out × n_in. Both are
    # (output size) × (w's size without its last axis). A transposed convolution's filter is that of
    # the convolution it transposes, whose output is the transposed one's input: each of the
    # n_H·n_W·n_C input values is multiplied into f_H·f_W·n_C'/groups outputs. Other layers do no
    # multiply-accumulates.
    w = params.get("w") if isinstance(params, dict) else None
    if w is None:
        return 0
    return math.prod(in_shape if transposed else out_shape) * math.prod(w.shape[:-1])


def _shape_of(y):
    """Per-example shape of an output, or a tuple of them for branch outputs (fan_out, parallel)."""
    if isinstance(y, (tuple, list)):
        return tuple(_shape_of(t) for t in y)
    return tuple(int(n) for n in y.shape[1:])


def _size_of(shape):
    return sum(_size_of(s) for s in shape) if shape and isinstance(shape[0], tuple) else math.prod(shape)


def _apply_shape(layer, params, state, x):
    return jax.eval_shape(lambda p, s, x: call_layer(layer, p, x, s, None, False, {})[0], params, state, x)


def _rows(name, layer, params, state, x, depth):
    """Rows for `layer` (named `name`) applied to x, its children's rows indented after it; returns (rows, y)."""
    children = dict(layer.children)
    if not children or layer.kind not in ("serial", "parallel", "residual"):
        y = _apply_shape(layer, params, state, x)
        shape = _shape_of(y)
        transposed = "transpose" in str(layer.kind)
        macs = 0 if shape and isinstance(shape[0], tuple) else _macs(params, shape, _shape_of(x), transposed)
        return [SummaryRow(name, shape, _size_of(shape), count_params(params), macs, depth)], y
    sub = []
    if layer.kind == "parallel":  # branch i gets input i
        ys = []
        for (child_name, child), x_i in zip(layer.children, x):
            rows, y_i = _rows(child_name, child, params[child_name], state[child_name], x_i, depth + 1)
            sub += rows
            ys.append(y_i)
        y = tuple(ys)
    else:
        names = [n for n, _ in layer.children]
        body = names[: names.index("shortcut")] if layer.kind == "residual" else names
        y = x
        for child_name in body:
            rows, y = _rows(child_name, children[child_name], params[child_name], state[child_name], y, depth + 1)
            sub += rows
        if layer.kind == "residual":  # y = after(body(x) + shortcut(x))
            rows, _ = _rows("shortcut", children["shortcut"], params["shortcut"], state["shortcut"], x, depth + 1)
            sub += rows
            for child_name in names[names.index("shortcut") + 1 :]:
                rows, y = _rows(child_name, children[child_name], params[child_name], state[child_name], y, depth + 1)
                sub += rows
    shape = _shape_of(y)
    macs = sum(r.macs for r in sub if r.depth == depth + 1)
    return [SummaryRow(name, shape, _size_of(shape), count_params(params), macs, depth), *sub], y


def summary(layer, input_shape) -> list[SummaryRow]:
    """Rows (name, activation shape, activation size, # parameters, MACs, depth) for every layer.

    Args:
      layer: a Layer; a composite one (`serial`) gets a row per sub-layer, parameter-free
        ones included; a branch or block inside it (`serial`, `parallel`, `residual`) gets a
        row of its own (its output, its totals) followed by its layers' rows at depth + 1.
      input_shape: (m, n_H, n_W, n_C) with m >= 1 or -1.

    The first row is the input. Totals: the sum of the depth-0 rows.
    """
    input_shape = tuple(input_shape)
    if input_shape and input_shape[0] == -1:
        input_shape = (1, *input_shape[1:])
    key = jax.random.key(0)

    def init(k):
        return layer.init(k, input_shape)[1]

    params = jax.eval_shape(init, key)
    state = jax.eval_shape(lambda: init_state_of(layer, input_shape)[1])
    dtype = jax.tree_util.tree_leaves(params)[0].dtype if jax.tree_util.tree_leaves(params) else jnp.float32
    rows = [SummaryRow("input", input_shape[1:], math.prod(input_shape[1:]), 0, 0)]
    x = jax.ShapeDtypeStruct(input_shape, dtype)
    if layer.children and layer.kind == "serial":
        rows += _rows("model", layer, params, state, x, -1)[0][1:]  # the model's own row dropped: its layers at depth 0
    else:
        rows += _rows("output", layer, params, state, x, 0)[0]
    return rows


def format_summary(rows: list[SummaryRow]) -> str:
    """The summary as a text table with a total line; rows inside branches and blocks are indented."""
    header = ("layer", "activation shape", "activation size", "# parameters", "MACs")
    body = [("  " * r.depth + r.name, str(r.shape), f"{r.size:,}", f"{r.params:,}", f"{r.macs:,}") for r in rows]
    top = [r for r in rows if r.depth == 0]
    total = ("total", "", "", f"{sum(r.params for r in top):,}", f"{sum(r.macs for r in top):,}")
    table = [header, *body, total]
    widths = [max(len(row[i]) for row in table) for i in range(len(header))]

    def line(row):
        return "  ".join(c.ljust(w) if i < 2 else c.rjust(w) for i, (c, w) in enumerate(zip(row, widths)))

    rule = "-" * len(line(header))
    return "\n".join([line(header), rule, *map(line, body), rule, line(total)])
