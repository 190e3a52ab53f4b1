"""PyTorch state_dicts <-> jaxconv (params, state), through a name map.

A state_dict may hold torch tensors or NumPy arrays; torch is imported only for `to_torch(...,
tensors=True)`.
"""

from __future__ import annotations

from collections.abc import Mapping

import jax.numpy as jnp
import numpy as np

from jaxconv.interop.names import CONVERSIONS, NameMap, NameRow
from jaxconv.interop.trees import get_path, set_path, skeleton


def to_numpy(v):
    if hasattr(v, "detach"):  # a torch tensor, without importing torch
        v = v.detach().cpu()
        if str(v.dtype) == "torch.bfloat16":
            raise TypeError("interop: bfloat16 torch tensors have no NumPy dtype; call .float() on them first.")
        return v.numpy()
    return np.asarray(v)



def batchnorm_from_torch(state_dict: Mapping) -> tuple[dict, dict]:
    """One BatchNorm2d's state_dict -> (params {"gamma", "beta"}, state {"mean", "var"}).

    state_dict: {"weight", "bias", "running_mean", "running_var"} each (n_C,), and optionally
    "num_batches_tracked" (dropped). Arrays come back as NumPy arrays of the same dtype.
    """
    sd = {k: to_numpy(v) for k, v in state_dict.items() if k != "num_batches_tracked"}
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
        "weight": to_numpy(params["gamma"]),
        "bias": to_numpy(params["beta"]),
        "running_mean": to_numpy(state["mean"]),
        "running_var": to_numpy(state["var"]),
        "num_batches_tracked": np.asarray(num_batches_tracked, np.int64),
    }


def _check_rows(op, rows):
    if not isinstance(rows, (list, tuple)) or not all(isinstance(r, NameRow) for r in rows):
        raise TypeError(f"{op}: `rows` must be the NameMap that name_map returns, got {type(rows).__name__}.")



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
    arrays, misshaped, not_float = {}, [], []
    for name, value in state_dict.items():
        row = by_name.get(name)
        if row is None or row.collection == "count":
            continue
        arr = to_numpy(value)
        if tuple(arr.shape) != row.torch_shape:
            misshaped.append(f"{name} {tuple(arr.shape)} (expected {row.torch_shape})")
        if not jnp.issubdtype(arr.dtype, jnp.floating):
            not_float.append(f"{name} ({arr.dtype})")
        arrays[name] = arr
    if not_float:
        raise TypeError(
            f"{op}: parameters and running statistics must be floating-point tensors, got {not_float}; convert them "
            f"with .float() (or .astype(np.float32)) before the import."
        )
    if missing or unexpected or misshaped:
        raise ValueError(
            f"{op}: the state_dict does not match the name map: missing {missing}, unexpected {unexpected}, "
            f"mis-shaped {misshaped}; build the name map for the PyTorch model's architecture (print "
            f"format_name_map(rows) to compare) or pass name_map(..., mapping={{torch module: jaxconv path}})."
        )
    params = skeleton(getattr(rows, "params_skeleton", {}))
    state = skeleton(getattr(rows, "state_skeleton", {}))
    for row in rows:
        if row.collection == "count":
            continue
        value = CONVERSIONS[row.conversion][0](arrays[row.torch_name], row.flatten)
        set_path(params if row.collection == "params" else state, row.path, jnp.asarray(np.ascontiguousarray(value)))
    return params, state


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
        leaf = get_path(params if row.collection == "params" else state, row.path)
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

