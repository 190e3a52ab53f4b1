"""PyTorch and safetensors interop: state_dicts in and out, with an explicit, printable name map.

    rows = name_map(models.lenet5(), (-1, 32, 32, 1))     # torch name <-> jaxconv path, per tensor
    print(format_name_map(rows))
    params, state = from_torch(torch_model.state_dict(), rows)
    torch_model.load_state_dict({k: torch.from_numpy(v) for k, v in to_torch(params, rows).items()})
    save_safetensors("lenet5.safetensors", params, rows)  # PyTorch names: safetensors.torch.load_file works

Layouts (PyTorch -> jaxconv; the reverse is the inverse permutation):
- Conv2d weight (n_C', n_C/groups, f_H, f_W) OIHW -> HWIO (f_H, f_W, n_C/groups, n_C'): `permute(2, 3, 1, 0)`.
- ConvTranspose2d weight (n_C, n_C'/groups, f_H, f_W) -> (f_H, f_W, n_C'/groups, n_C): the same
  permutation (jaxconv's conv_transpose2d takes the HWIO filter of the conv2d it transposes).
- Linear weight (n_out, n_in) -> (n_in, n_out). The first Linear after a flatten of an
  (n_C, n_H, n_W) activation also reorders its inputs: PyTorch flattens NCHW (index c·n_H·n_W +
  h·n_W + w), jaxconv flattens NHWC (index h·n_W·n_C + w·n_C + c). The name map reads (n_H, n_W, n_C)
  off the activation shapes the model's layers predict (those `jaxconv.summary` prints).
- BatchNorm2d weight, bias -> params gamma, beta; running_mean, running_var -> state mean, var.
  num_batches_tracked is dropped on import and written on export as `num_batches_tracked`
  (an int64 scalar, 0 unless given).
- Biases are copied.

Every conversion is a permutation or a copy, so PyTorch -> jaxconv -> PyTorch gives bit-identical
tensors. A state_dict may hold torch tensors or NumPy arrays; torch is never imported here unless
asked for (`to_torch(..., tensors=True)`). safetensors files hold no pickle; they are written
atomically (temporary file, fsync, rename).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from jaxconv.checkpoint import write_atomic

__all__ = [
    "CONVERSIONS",
    "NameMap",
    "NameRow",
    "batchnorm_from_torch",
    "batchnorm_to_torch",
    "format_name_map",
    "from_torch",
    "lenet5_name_map",
    "load_safetensors",
    "name_map",
    "save_safetensors",
    "to_torch",
]


class NameRow(NamedTuple):
    """One tensor: its PyTorch state_dict name, its jaxconv path, and how it is converted.

    collection: "params" or "state" (where the jaxconv leaf lives), or "count" for BatchNorm's
    num_batches_tracked (no jaxconv leaf). flatten: (n_H, n_W, n_C) of the activation that was
    flattened before this dense layer, or None.
    """

    torch_name: str  # e.g. "conv1.weight"
    path: str  # e.g. "conv1.w" (keys joined by ".")
    collection: str  # "params" | "state" | "count"
    conversion: str  # a key of CONVERSIONS
    torch_shape: tuple
    jax_shape: tuple
    flatten: tuple | None = None


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


def _conv_from_torch(w, flatten=None):  # OIHW (n_C', n_C, f_H, f_W) -> HWIO (f_H, f_W, n_C, n_C')
    return w.transpose(2, 3, 1, 0)


def _conv_to_torch(w, flatten=None):  # HWIO -> OIHW
    return w.transpose(3, 2, 0, 1)


def _dense_from_torch(w, flatten=None):  # (n_out, n_in) -> (n_in, n_out)
    if flatten is None:
        return w.T
    n_H, n_W, n_C = flatten
    # PyTorch's input index is (c, h, w) row-major; ours is (h, w, c).
    return w.reshape(w.shape[0], n_C, n_H, n_W).transpose(2, 3, 1, 0).reshape(n_H * n_W * n_C, w.shape[0])


def _dense_to_torch(w, flatten=None):  # (n_in, n_out) -> (n_out, n_in)
    if flatten is None:
        return w.T
    n_H, n_W, n_C = flatten
    return w.reshape(n_H, n_W, n_C, w.shape[1]).transpose(3, 2, 0, 1).reshape(w.shape[1], n_C * n_H * n_W)


def _copy(w, flatten=None):
    return w


CONVERSIONS = {
    # name: (PyTorch -> jaxconv, jaxconv -> PyTorch, description)
    "conv": (_conv_from_torch, _conv_to_torch, "OIHW -> HWIO, permute(2, 3, 1, 0)"),
    "conv_transpose": (_conv_from_torch, _conv_to_torch, "(n_C, n_C'/g, f_H, f_W) -> HWIO, permute(2, 3, 1, 0)"),
    "dense": (_dense_from_torch, _dense_to_torch, "(n_out, n_in) -> (n_in, n_out)"),
    "copy": (_copy, _copy, "copy"),
    "count": (None, None, "dropped on import; exported as the given count"),
}


def _torch_shape(conversion, jax_shape, flatten):
    to_torch_fn = CONVERSIONS[conversion][1]
    return tuple(to_torch_fn(np.empty(jax_shape, np.uint8), flatten).shape)


def _describe(row: NameRow) -> str:
    text = CONVERSIONS[row.conversion][2]
    if row.flatten is not None:
        n_H, n_W, n_C = row.flatten
        text += f", inputs NCHW-flattened ({n_C}, {n_H}, {n_W}) -> NHWC ({n_H}, {n_W}, {n_C})"
    return text


def batchnorm_from_torch(state_dict: Mapping) -> tuple[dict, dict]:
    """One BatchNorm2d's state_dict -> (params {"gamma", "beta"}, state {"mean", "var"}).

    state_dict: {"weight", "bias", "running_mean", "running_var"} each (n_C,), and optionally
    "num_batches_tracked" (dropped). Arrays come back as NumPy arrays of the same dtype.
    """
    sd = {k: _to_numpy(v) for k, v in state_dict.items() if k != "num_batches_tracked"}
    expected = {"weight", "bias", "running_mean", "running_var"}
    if set(sd) != expected:
        raise ValueError(
            f"batchnorm_from_torch: `state_dict` must have keys {sorted(expected)} (and optionally "
            f"num_batches_tracked), got {sorted(state_dict)}; pass a torch.nn.BatchNorm2d's state_dict()."
        )
    return {"gamma": sd["weight"], "beta": sd["bias"]}, {"mean": sd["running_mean"], "var": sd["running_var"]}


def batchnorm_to_torch(params: Mapping, state: Mapping, num_batches_tracked: int = 0) -> dict:
    """BatchNorm params {"gamma", "beta"} and state {"mean", "var"} -> a BatchNorm2d state_dict of NumPy arrays.

    Each array (n_C,); num_batches_tracked is written as an int64 scalar.
    """
    if set(params) != {"gamma", "beta"} or set(state) != {"mean", "var"}:
        raise ValueError(
            f"batchnorm_to_torch: expected params keys ['beta', 'gamma'] and state keys ['mean', 'var'], got "
            f"{sorted(params)} and {sorted(state)}; pass a BatchNorm layer's params and state."
        )
    return {
        "weight": _to_numpy(params["gamma"]),
        "bias": _to_numpy(params["beta"]),
        "running_mean": _to_numpy(state["mean"]),
        "running_var": _to_numpy(state["var"]),
        "num_batches_tracked": np.asarray(num_batches_tracked, np.int64),
    }


def _to_numpy(v):
    if hasattr(v, "detach"):  # a torch tensor, without importing torch
        v = v.detach().cpu()
        if str(v.dtype) == "torch.bfloat16":
            raise TypeError("interop: bfloat16 torch tensors have no NumPy dtype; call .float() on them first.")
        return v.numpy()
    return np.asarray(v)


# --------------------------------------------------------------------------- the name map


def _kinds(layer, prefix=()) -> dict:
    """{path tuple: kind} of every layer under `layer` (its children, recursively)."""
    out = {prefix: getattr(layer, "kind", "layer")}
    for name, child in getattr(layer, "children", ()) or ():
        out.update(_kinds(child, (*prefix, name)))
    return out


def _flatten_inputs(model, input_shape, params_like) -> dict:
    """{top-level layer name: (n_H, n_W, n_C)} for each dense layer fed by a Flatten of a 4-D activation.

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
        if getattr(child, "kind", "") == "flatten" and len(shape) == 4:
            pending = tuple(shape[1:])  # (n_H, n_W, n_C)
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
      input_shape: (m, n_H, n_W, n_C), m may be -1.
      mapping: {PyTorch module name: jaxconv layer path}, e.g. {"features.0": "conv1"}, paths with
        keys joined by "."; it must name every jaxconv layer that has params. None: the PyTorch
        module names equal the jaxconv paths ("conv1", "stage2.block1.conv_a").

    Layers are recognised by their params: {"w"[, "b"]} with a 4-D w is a convolution (a transposed
    one if the layer's kind says "transpose"), with a 2-D w a dense layer; {"gamma", "beta"} is a
    BatchNorm, whose state {"mean", "var"} maps to running_mean / running_var.
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
    jax_paths = [".".join(p) for p, _ in layers]
    if mapping is None:
        module_of = {p: p for p in jax_paths}
    else:
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

    rows = []
    for path, leaves in layers:
        dotted, module = ".".join(path), module_of[".".join(path)]
        keys = set(leaves)
        if keys in ({"w"}, {"w", "b"}) and leaves["w"].ndim in (2, 4):
            if leaves["w"].ndim == 4:
                conversion = "conv_transpose" if "transpose" in str(kinds.get(path, "")) else "conv"
                flat = None
            else:
                conversion, flat = "dense", flatten.get(dotted) if len(path) == 1 else None
            for key, torch_key, conv in (("w", "weight", conversion), ("b", "bias", "copy")):
                if key in leaves:
                    jshape = tuple(leaves[key].shape)
                    f = flat if key == "w" else None
                    rows.append(NameRow(f"{module}.{torch_key}", f"{dotted}.{key}", "params", conv, _torch_shape(conv, jshape, f), jshape, f))
        elif keys == {"gamma", "beta"}:
            stats = state_layers.get(path, {})
            if set(stats) != {"mean", "var"}:
                raise ValueError(
                    f"name_map: BatchNorm layer `{dotted}` needs state {{'mean', 'var'}} from the model's init_state, "
                    f"got {sorted(stats)}; use a model whose init_state returns BatchNorm's running statistics."
                )
            for key, torch_key, coll, src in (
                ("gamma", "weight", "params", leaves),
                ("beta", "bias", "params", leaves),
                ("mean", "running_mean", "state", stats),
                ("var", "running_var", "state", stats),
            ):
                jshape = tuple(src[key].shape)
                rows.append(NameRow(f"{module}.{torch_key}", f"{dotted}.{key}", coll, "copy", jshape, jshape))
            rows.append(NameRow(f"{module}.num_batches_tracked", "", "count", "count", (), ()))
        else:
            raise ValueError(
                f"name_map: no PyTorch conversion known for layer `{dotted}` with params "
                f"{ {k: tuple(v.shape) for k, v in sorted(leaves.items())} }; known: conv/dense {{'w'[, 'b']}} "
                f"and BatchNorm {{'gamma', 'beta'}}. Convert that layer's tensors yourself."
            )
    return NameMap(rows, _empty_like(params_like), _empty_like(state_like))


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


# --------------------------------------------------------------------------- state_dict <-> params


def _check_rows(op, rows):
    if not isinstance(rows, (list, tuple)) or not all(isinstance(r, NameRow) for r in rows):
        raise TypeError(f"{op}: `rows` must be the NameMap that name_map returns, got {type(rows).__name__}.")


def _set(tree, path, value):
    *parents, leaf = path.split(".")
    for key in parents:
        tree = tree.setdefault(key, {})
    tree[leaf] = value


def from_torch(state_dict: Mapping, rows: NameMap) -> tuple[dict, dict]:
    """A PyTorch state_dict -> (params, state) for the model `rows` was built from.

    Args:
      state_dict: {name: torch tensor or NumPy array} (e.g. `module.state_dict()`); torch is not needed
        for NumPy arrays.
      rows: `name_map(model, input_shape)`.

    Returns:
      (params, state): nested dicts of jax arrays laid out as the model's init and init_state give
      them (parameter-free layers' {} included), each leaf in jaxconv's layout and the tensor's
      dtype; state has no arrays for a model without BatchNorm. num_batches_tracked is dropped.

    Raises ValueError naming every missing, unexpected and mis-shaped tensor at once.
    """
    op = "from_torch"
    _check_rows(op, rows)
    if not isinstance(state_dict, Mapping):
        raise TypeError(f"{op}: `state_dict` must be a dict of name -> tensor or array, got {type(state_dict).__name__}.")
    by_name = {r.torch_name: r for r in rows}
    required = [r.torch_name for r in rows if r.collection != "count"]
    missing = [n for n in required if n not in state_dict]
    unexpected = [n for n in state_dict if n not in by_name]
    arrays, misshaped = {}, []
    for name, value in state_dict.items():
        row = by_name.get(name)
        if row is None or row.collection == "count":
            continue
        arr = _to_numpy(value)
        if tuple(arr.shape) != row.torch_shape:
            misshaped.append(f"{name} {tuple(arr.shape)} (expected {row.torch_shape})")
        arrays[name] = arr
    if missing or unexpected or misshaped:
        raise ValueError(
            f"{op}: the state_dict does not match the name map: missing {missing}, unexpected {unexpected}, "
            f"mis-shaped {misshaped}; build the name map for the PyTorch model's architecture (print "
            f"format_name_map(rows) to compare) or pass name_map(..., mapping={{torch module: jaxconv path}})."
        )
    params = _empty_like(getattr(rows, "params_skeleton", {}))
    state = _empty_like(getattr(rows, "state_skeleton", {}))
    for row in rows:
        if row.collection == "count":
            continue
        value = CONVERSIONS[row.conversion][0](arrays[row.torch_name], row.flatten)
        _set(params if row.collection == "params" else state, row.path, jnp.asarray(np.ascontiguousarray(value)))
    return params, state


def _empty_like(tree):
    """The dict skeleton of a params pytree, array leaves left out (to be filled by _set)."""
    if not isinstance(tree, Mapping):
        return {}
    return {k: _empty_like(v) for k, v in tree.items() if isinstance(v, Mapping)}


def _get(tree, path):
    for key in path.split("."):
        if not isinstance(tree, Mapping) or key not in tree:
            return None
        tree = tree[key]
    return tree


def to_torch(params, rows: NameMap, state=None, *, num_batches_tracked: int = 0, tensors: bool = False) -> dict:
    """jaxconv (params, state) -> a PyTorch state_dict {name: array} in PyTorch's layouts.

    Args:
      params: the model's params (nested dicts of arrays).
      rows: `name_map(model, input_shape)`.
      state: the model's state (BatchNorm {"mean", "var"}); required when the model has BatchNorm.
      num_batches_tracked: the value written for every BatchNorm's num_batches_tracked (int64 scalar).
      tensors: False: C-contiguous NumPy arrays; True: torch tensors (imports torch).

    Raises ValueError naming every missing and mis-shaped leaf at once.
    """
    op = "to_torch"
    _check_rows(op, rows)
    if not isinstance(params, Mapping):
        raise TypeError(f"{op}: `params` must be the model's params dict, got {type(params).__name__}.")
    if any(r.collection == "state" for r in rows) and not isinstance(state, Mapping):
        raise ValueError(
            f"{op}: the model has BatchNorm running statistics, so `state` is required (got {state!r}); "
            f"pass the state that the model's init_state or training returned."
        )
    out, missing, misshaped = {}, [], []
    for row in rows:
        if row.collection == "count":
            out[row.torch_name] = np.asarray(num_batches_tracked, np.int64)
            continue
        leaf = _get(params if row.collection == "params" else state, row.path)
        if leaf is None:
            missing.append(f"{row.collection}:{row.path}")
            continue
        arr = np.asarray(leaf)
        if tuple(arr.shape) != row.jax_shape:
            misshaped.append(f"{row.collection}:{row.path} {tuple(arr.shape)} (expected {row.jax_shape})")
            continue
        out[row.torch_name] = np.array(CONVERSIONS[row.conversion][1](arr, row.flatten), order="C")  # a writable copy
    if missing or misshaped:
        raise ValueError(
            f"{op}: params/state do not match the name map: missing {missing}, mis-shaped {misshaped}; pass the "
            f"params (and state) of the model the name map was built from."
        )
    if tensors:
        import torch

        out = {k: torch.from_numpy(v) for k, v in out.items()}
    return out


# --------------------------------------------------------------------------- safetensors


def _safetensors_numpy(op):
    try:
        import safetensors.numpy
    except ImportError as e:
        raise ImportError(f"{op}: needs the safetensors package: pip install 'jaxconv[interop]'.") from e
    return safetensors.numpy


def _flat_params(op, params, prefix=()):
    out = {}
    if not isinstance(params, Mapping):
        raise TypeError(f"{op}: `params` must be a nested dict of arrays, got {type(params).__name__}.")
    for key, value in params.items():
        if not isinstance(key, str) or "." in key or not key:
            raise ValueError(f"{op}: param key {key!r} at {'.'.join(prefix) or 'the top'} must be a non-empty str without '.'; rename it.")
        if isinstance(value, Mapping):
            out.update(_flat_params(op, value, (*prefix, key)))
        else:
            out[".".join((*prefix, key))] = np.ascontiguousarray(np.asarray(value))
    return out


def save_safetensors(path, params, rows: NameMap | None = None, *, state=None, num_batches_tracked: int = 0) -> str:
    """Write params (no optimizer state, no pickle) to a safetensors file, atomically.

    rows None: tensors are named by jaxconv path ("conv1.w") in jaxconv's layouts; read back with
    `load_safetensors(path, params_like)`. rows = name_map(...): tensors get PyTorch names and layouts
    (and `state`'s running statistics, required for BatchNorm), so PyTorch without jaxconv loads them:
    `module.load_state_dict(safetensors.torch.load_file(path))`. Returns path.
    """
    op = "save_safetensors"
    st = _safetensors_numpy(op)
    if rows is None:
        tensors, metadata = _flat_params(op, params), {"format": "np", "names": "jaxconv"}
    else:
        tensors, metadata = to_torch(params, rows, state, num_batches_tracked=num_batches_tracked), {"format": "pt", "names": "pytorch"}
    data = st.save(tensors, metadata=metadata)
    return write_atomic(os.fspath(path), lambda f: f.write(data))


def load_safetensors(path, params_like=None, rows: NameMap | None = None):
    """Read a safetensors file written by `save_safetensors` (or by PyTorch, with rows).

    rows None: tensor names are jaxconv paths; returns params (nested dicts of jax arrays). With
    params_like (e.g. from `model.init`), every leaf's name, shape and dtype is checked and
    parameter-free layers' empty dicts are kept. rows = name_map(...): tensor names are PyTorch's;
    returns (params, state) as `from_torch` does.

    Raises ValueError naming every missing, unexpected and mis-shaped tensor.
    """
    op = "load_safetensors"
    st = _safetensors_numpy(op)
    with open(path, "rb") as f:
        tensors = st.load(f.read())
    if rows is not None:
        return from_torch(tensors, rows)
    if params_like is None:
        params = {}
        for name, arr in tensors.items():
            _set(params, name, jnp.asarray(arr))
        return params
    expected = _flat_params(op, jax.tree.map(lambda a: np.empty(0), params_like))
    like = {name: _get(params_like, name) for name in expected}
    missing = [n for n in expected if n not in tensors]
    unexpected = [n for n in tensors if n not in expected]
    misshaped = [
        f"{n} {tensors[n].shape} {tensors[n].dtype} (expected {tuple(like[n].shape)} {np.dtype(like[n].dtype)})"
        for n in expected
        if n in tensors and (tuple(tensors[n].shape) != tuple(like[n].shape) or tensors[n].dtype != np.dtype(like[n].dtype))
    ]
    if missing or unexpected or misshaped:
        raise ValueError(
            f"{op}: {path} does not match `params_like`: missing {missing}, unexpected {unexpected}, mis-shaped "
            f"{misshaped}; pass params_like from the model that saved it (or rows=name_map(...) for a file with "
            f"PyTorch names)."
        )
    params = _empty_like(params_like)
    for name in expected:
        _set(params, name, jnp.asarray(tensors[name]))
    return params
