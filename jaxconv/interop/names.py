"""The name map: which PyTorch tensor is which jaxconv leaf, and how its layout converts.

`name_map(model, input_shape)` reads a model's params (traced on shapes only) and returns one
`NameRow` per tensor; `format_name_map` prints them. The conversions are permutations or copies
(see the package docstring for the layouts).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import NamedTuple

import jax
import numpy as np

from jaxconv.interop.trees import skeleton

NORM_KINDS = ("layer_norm", "group_norm", "instance_norm")  # the layer kinds whose {"gamma", "beta"} are not a BatchNorm's


class NameRow(NamedTuple):
    """One tensor: its PyTorch state_dict name, its jaxconv path, and how it is converted.

    collection: "params" or "state" (where the jaxconv leaf lives), or "count" for BatchNorm's
    num_batches_tracked (no jaxconv leaf). flatten: (*spatial, n_C) of the activation that was
    flattened before this dense layer ((n_H, n_W, n_C) in 2-D), or None.
    """

    torch_name: str  # e.g. "conv1.weight"
    path: str  # e.g. "conv1.w" (keys joined by ".")
    collection: str  # "params" | "state" | "count"
    conversion: str  # a key of CONVERSIONS
    torch_shape: tuple
    jax_shape: tuple
    flatten: tuple | None = None  # (*spatial, n_C)


class NameMap(tuple):
    """A tuple of NameRow (what `name_map` returns), carrying the dict skeletons of the model's params and state.

    The skeletons (nested dicts without arrays) let `from_torch` return params whose parameter-free
    layers have their empty dicts, as `model.init` gives them.
    """

    def __new__(cls, rows, params_skeleton=None, state_skeleton=None):
        self = super().__new__(cls, rows)
        self.params_skeleton = params_skeleton or {}
        self.state_skeleton = state_skeleton or {}
        return self


# --------------------------------------------------------------------------- leaf conversions (NumPy)


def _conv_from_torch(w, flatten=None):  # O I *spatial (OIHW in 2-D) -> *spatial I O (HWIO)
    return w.transpose(*range(2, w.ndim), 1, 0)


def _conv_to_torch(w, flatten=None):  # *spatial I O (HWIO) -> O I *spatial (OIHW)
    return w.transpose(w.ndim - 1, w.ndim - 2, *range(w.ndim - 2))


def _dense_from_torch(w, flatten=None):  # (n_out, n_in) -> (n_in, n_out)
    if flatten is None:
        return w.T
    *spatial, n_C = flatten
    k = len(spatial)
    # PyTorch's input index is (c, *spatial) row-major (c, h, w in 2-D); ours is (*spatial, c).
    return w.reshape(w.shape[0], n_C, *spatial).transpose(*range(2, k + 2), 1, 0).reshape(-1, w.shape[0])


def _dense_to_torch(w, flatten=None):  # (n_in, n_out) -> (n_out, n_in)
    if flatten is None:
        return w.T
    *spatial, n_C = flatten
    k = len(spatial)
    return w.reshape(*spatial, n_C, w.shape[1]).transpose(k + 1, k, *range(k)).reshape(w.shape[1], -1)


def _copy(w, flatten=None):
    return w


def _channels_last(w, flatten=None):  # (n_C, *spatial) -> (*spatial, n_C): a LayerNorm's weight over whole examples
    return np.moveaxis(w, 0, -1)


def _channels_first(w, flatten=None):  # (*spatial, n_C) -> (n_C, *spatial)
    return np.moveaxis(w, -1, 0)


CONVERSIONS = {
    # name: (PyTorch -> jaxconv, jaxconv -> PyTorch, description)
    "conv": (_conv_from_torch, _conv_to_torch, "OIHW -> HWIO, permute(2, 3, 1, 0)"),
    "conv_transpose": (_conv_from_torch, _conv_to_torch, "(n_C, n_C'/g, f_H, f_W) -> HWIO, permute(2, 3, 1, 0)"),
    "dense": (_dense_from_torch, _dense_to_torch, "(n_out, n_in) -> (n_in, n_out)"),
    "copy": (_copy, _copy, "copy"),
    "channels_first": (_channels_last, _channels_first, "(n_C, *spatial) -> (*spatial, n_C), moveaxis(0, -1)"),
    "count": (None, None, "dropped on import; exported as the given count"),
}


def _torch_shape(conversion, jax_shape, flatten):
    to_torch_fn = CONVERSIONS[conversion][1]
    return tuple(to_torch_fn(np.empty(jax_shape, np.uint8), flatten).shape)


# The layouts of a filter with 1, 2 or 3 spatial axes, PyTorch's and jaxconv's (see jaxconv.LAYOUTS).
_FILTER_LAYOUTS = {1: ("OIW", "WIO"), 2: ("OIHW", "HWIO"), 3: ("OIDHW", "DHWIO")}
_ACTIVATION_LAYOUTS = {1: ("NCW", "NWC"), 2: ("NCHW", "NHWC"), 3: ("NCDHW", "NDHWC")}


def _describe(row: NameRow) -> str:
    text = CONVERSIONS[row.conversion][2]
    k = len(row.jax_shape) - 2  # spatial axes of a filter
    if row.conversion in ("conv", "conv_transpose") and k != 2:  # the 2-D text is in CONVERSIONS
        torch_form, ours = _FILTER_LAYOUTS[k]
        torch_form = torch_form if row.conversion == "conv" else f"(n_C, n_C'/g, {', '.join('f_' + a for a in ours[:-2])})"
        text = f"{torch_form} -> {ours}, permute({', '.join(map(str, (*range(2, k + 2), 1, 0)))})"
    if row.flatten is not None:
        *spatial, n_C = row.flatten
        torch_form, ours = _ACTIVATION_LAYOUTS.get(len(spatial), ("N, C, *spatial", "N, *spatial, C"))
        text += f", inputs {torch_form}-flattened {(n_C, *spatial)} -> {ours} {tuple(row.flatten)}"
    return text


# --------------------------------------------------------------------------- the name map


def _kinds(layer, prefix=()) -> dict:
    """{path tuple: kind} of every layer under `layer` (its children, recursively)."""
    out = {prefix: getattr(layer, "kind", "layer")}
    for name, child in getattr(layer, "children", ()) or ():
        out.update(_kinds(child, (*prefix, name)))
    return out


def _flatten_inputs(model, input_shape, params_like) -> dict:
    """{top-level layer name: (*spatial, n_C)} for each dense layer fed by a Flatten of an activation with
    spatial axes ((n_H, n_W, n_C) in 2-D).

    The activation shapes are the ones `init` predicts layer by layer (the shapes `jaxconv.summary`
    prints), traced on shapes only, so no model is hard-coded and no layer is applied.
    """
    children = tuple(getattr(model, "children", ()) or ())
    if not any(getattr(c, "kind", "") == "flatten" for _, c in children):
        return {}
    inputs = []

    def trace(key):
        shape = input_shape
        for name, child in children:
            inputs.append((name, child, shape))
            shape, _ = child.init(key, shape)
        return 0

    jax.eval_shape(trace, jax.random.key(0))
    out, pending = {}, None
    for name, child, shape in inputs:
        if getattr(child, "kind", "") == "flatten" and len(shape) >= 3:
            pending = tuple(shape[1:])  # (*spatial, n_C): (n_H, n_W, n_C) in 2-D
        elif jax.tree.leaves(params_like.get(name, {})) and pending is not None:
            out[name] = pending  # the first layer with params after the flatten
            pending = None
    return out


def _layer_leaves(tree, prefix=()):
    """[(path tuple, {key: ShapeDtypeStruct})] for every dict whose values are all arrays."""
    if isinstance(tree, Mapping) and tree and all(not isinstance(v, Mapping) for v in tree.values()):
        return [(prefix, dict(tree))]
    out = []
    if isinstance(tree, Mapping):
        for k, v in tree.items():
            out += _layer_leaves(v, (*prefix, k))
    return out


def name_map(model, input_shape, mapping: Mapping | None = None) -> NameMap:
    """The rows (torch_name, jaxconv path, collection, conversion, shapes) that port `model`'s tensors.

    Args:
      model: a jaxconv Layer (e.g. `models.lenet5()`); its params come from `init` on shapes only.
      input_shape: (m, n_H, n_W, n_C), m may be -1; (m, n_W, n_C) or (m, n_D, n_H, n_W, n_C) for a 1-D or 3-D model.
      mapping: {PyTorch module name: jaxconv layer path}, e.g. {"features.0": "conv1"}, paths with
        keys joined by "."; it must name every jaxconv layer that has params. None: the PyTorch
        module names equal the jaxconv paths ("conv1", "stage2.block1.conv_a").

    Layers are recognised by their params: {"w"[, "b"]} with a 3- to 5-D w is a convolution (Conv1d, 2d or 3d;
    a transposed one if the layer's kind says "transpose"), with a 2-D w a dense layer; {"gamma", "beta"} is a
    BatchNorm (1d, 2d or 3d), whose state {"mean", "var"} maps to running_mean / running_var, or, by the layer's kind,
    a LayerNorm / GroupNorm / InstanceNorm (weight, bias; an InstanceNorm's tracked statistics, also
    without affine params, map to running_mean / running_var / num_batches_tracked). A LayerNorm over
    (*spatial, n_C) has PyTorch's weight (n_C, *spatial) (LayerNorm([n_C, n_H, n_W]) on NCHW).
    """
    shape = tuple(input_shape)
    if len(shape) < 1 or not all(isinstance(n, int) for n in shape):
        raise ValueError(f"name_map: `input_shape` must be a tuple of ints such as (-1, 32, 32, 1), got {input_shape!r}.")
    concrete = (1, *shape[1:]) if shape[0] == -1 else shape
    params_like = jax.eval_shape(lambda k: model.init(k, concrete)[1], jax.random.key(0))
    init_state = getattr(model, "init_state", None)
    state_like = jax.eval_shape(lambda: init_state(concrete)[1]) if init_state is not None else {}
    state_layers = dict(_layer_leaves(state_like))
    kinds, flatten = _kinds(model), _flatten_inputs(model, concrete, params_like)

    # jax.eval_shape returns dicts with sorted keys; put the layers back in the model's order.
    order = {path: i for i, path in enumerate(kinds)}
    layers = sorted(_layer_leaves(params_like), key=lambda item: order.get(item[0], len(order)))
    # an InstanceNorm(affine=False, track_running_stats=True) has state but no params
    state_only = [p for p in state_layers if kinds.get(p) == "instance_norm" and p not in dict(layers)]
    module_of = _module_names(mapping, [".".join(p) for p, _ in layers] + [".".join(p) for p in state_only])
    rows = []
    for path, leaves in layers:
        dotted = ".".join(path)
        if set(leaves) in ({"w"}, {"w", "b"}) and leaves["w"].ndim in (2, 3, 4, 5):
            flat = flatten.get(dotted) if len(path) == 1 else None
            rows += _weight_rows(module_of[dotted], dotted, leaves, str(kinds.get(path, "")), flat)
        elif set(leaves) == {"gamma", "beta"} and kinds.get(path) in NORM_KINDS:
            rows += _norm_rows(module_of[dotted], dotted, leaves, state_layers.get(path, {}))
        elif set(leaves) == {"gamma", "beta"}:
            rows += _batchnorm_rows(module_of[dotted], dotted, leaves, state_layers.get(path, {}))
        else:
            raise ValueError(
                f"name_map: no PyTorch conversion known for layer `{dotted}` with params "
                f"{ {k: tuple(v.shape) for k, v in sorted(leaves.items())} }; known: conv/dense {{'w'[, 'b']}}, "
                f"BatchNorm and Layer/Group/InstanceNorm {{'gamma', 'beta'}}. Convert that layer's tensors yourself."
            )
    for path in state_only:
        rows += _norm_rows(module_of[".".join(path)], ".".join(path), {}, state_layers[path])
    return NameMap(rows, skeleton(params_like), skeleton(state_like))


def _module_names(mapping, jax_paths) -> dict:
    """{jaxconv layer path: PyTorch module name}: the identity without `mapping`, else its inverse, checked."""
    if mapping is None:
        return {p: p for p in jax_paths}
    if not isinstance(mapping, Mapping):
        raise TypeError(f"name_map: `mapping` must be a dict {{torch module name: jaxconv path}}, got {type(mapping).__name__}.")
    module_of = {v: k for k, v in mapping.items()}
    unknown = sorted(set(module_of) - set(jax_paths))
    unmapped = [p for p in jax_paths if p not in module_of]
    if unknown or unmapped or len(module_of) != len(mapping):
        dup = sorted({v for v in mapping.values() if list(mapping.values()).count(v) > 1})
        raise ValueError(
            f"name_map: `mapping` must name each jaxconv layer with params once: unmapped {unmapped}, "
            f"unknown jaxconv paths {unknown}, mapped more than once {dup}; the layers with params are {jax_paths}."
        )
    return module_of


def _weight_rows(module: str, dotted: str, leaves: dict, kind: str, flat) -> list:
    """The rows of a convolution (w of 3 to 5 dims, any spatial rank) or dense layer (2-D w) and its bias."""
    if leaves["w"].ndim == 2:
        conversion = "dense"
    else:
        conversion, flat = ("conv_transpose" if "transpose" in kind else "conv"), None
    rows = []
    for key, torch_key, conv in (("w", "weight", conversion), ("b", "bias", "copy")):
        if key in leaves:
            jshape = tuple(leaves[key].shape)
            f = flat if key == "w" else None
            rows.append(NameRow(f"{module}.{torch_key}", f"{dotted}.{key}", "params", conv, _torch_shape(conv, jshape, f), jshape, f))
    return rows


def _batchnorm_rows(module: str, dotted: str, leaves: dict, stats: dict) -> list:
    """A BatchNorm's rows: weight/bias from params, running_mean/var from state, num_batches_tracked counted."""
    if set(stats) != {"mean", "var"}:
        raise ValueError(
            f"name_map: BatchNorm layer `{dotted}` needs state {{'mean', 'var'}} from the model's init_state, "
            f"got {sorted(stats)}; use a model whose init_state returns BatchNorm's running statistics."
        )
    rows = []
    for key, torch_key, coll, src in (
        ("gamma", "weight", "params", leaves),
        ("beta", "bias", "params", leaves),
        ("mean", "running_mean", "state", stats),
        ("var", "running_var", "state", stats),
    ):
        jshape = tuple(src[key].shape)
        rows.append(NameRow(f"{module}.{torch_key}", f"{dotted}.{key}", coll, "copy", jshape, jshape))
    rows.append(NameRow(f"{module}.num_batches_tracked", "", "count", "count", (), ()))
    return rows


def _norm_rows(module: str, dotted: str, leaves: dict, stats: dict) -> list:
    """A LayerNorm/GroupNorm/InstanceNorm's rows: weight/bias from params (if affine); an InstanceNorm's tracked
    running_mean/var from state, with num_batches_tracked counted."""
    rows = []
    for key, torch_key in (("gamma", "weight"), ("beta", "bias")):
        if key in leaves:
            jshape = tuple(leaves[key].shape)
            conversion = "channels_first" if len(jshape) > 1 else "copy"  # LayerNorm over (*spatial, n_C)
            rows.append(NameRow(f"{module}.{torch_key}", f"{dotted}.{key}", "params", conversion, _torch_shape(conversion, jshape, None), jshape))
    if set(stats) == {"mean", "var"}:
        for key, torch_key in (("mean", "running_mean"), ("var", "running_var")):
            jshape = tuple(stats[key].shape)
            rows.append(NameRow(f"{module}.{torch_key}", f"{dotted}.{key}", "state", "copy", jshape, jshape))
        rows.append(NameRow(f"{module}.num_batches_tracked", "", "count", "count", (), ()))
    return rows


def lenet5_name_map(num_classes: int = 10, in_channels: int = 1) -> NameMap:
    """The name map of `models.lenet5` on (m, 32, 32, in_channels): PyTorch modules conv1, conv2, fc3, fc4, fc5.

    fc3's inputs are reordered from PyTorch's NCHW flatten of (16, 5, 5) to jaxconv's NHWC (5, 5, 16).
    """
    from jaxconv import models

    return name_map(models.lenet5(num_classes, in_channels, impl="lax"), (-1, 32, 32, in_channels))


def format_name_map(rows: NameMap) -> str:
    """The name map as a text table: PyTorch name, shape, jaxconv path, shape, conversion."""
    header = ("PyTorch name", "PyTorch shape", "jaxconv path", "jaxconv shape", "conversion")
    body = [
        (r.torch_name, str(r.torch_shape), f"{r.collection}:{r.path}" if r.path else "-", str(r.jax_shape) if r.path else "-", _describe(r))
        for r in rows
    ]
    table = [header, *body]
    widths = [max(len(row[i]) for row in table) for i in range(len(header))]

    def line(row):
        return "  ".join(c.ljust(w) for c, w in zip(row, widths)).rstrip()

    return "\n".join([line(header), "-" * len(line(header)), *map(line, body)])

