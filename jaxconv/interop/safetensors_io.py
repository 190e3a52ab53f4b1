"""safetensors files of params: jaxconv's names and layouts, or PyTorch's (through a name map).

safetensors files hold no pickle; they are written atomically (temporary file, fsync, rename).
"""

from __future__ import annotations

import os
from collections.abc import Mapping

import jax
import jax.numpy as jnp
import numpy as np

from jaxconv.atomic import write_atomic
from jaxconv.interop.names import NameMap
from jaxconv.interop.state_dict import from_torch, to_torch
from jaxconv.interop.trees import get_path, set_path, skeleton



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
        raw = f.read()
    try:
        tensors = st.load(raw)
    except Exception as e:  # noqa: BLE001  (safetensors raises its own SafetensorError for a damaged header)
        raise ValueError(
            f"{op}: {os.fspath(path)!r} is not a readable safetensors file ({e}); it may be truncated or of another "
            f"format: write it again with save_safetensors (or safetensors.torch.save_file)."
        ) from None
    if rows is not None:
        return from_torch(tensors, rows)
    if params_like is None:
        params = {}
        for name, arr in tensors.items():
            set_path(params, name, jnp.asarray(arr))
        return params
    expected = _flat_params(op, jax.tree.map(lambda a: np.empty(0), params_like))
    like = {name: get_path(params_like, name) for name in expected}
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
    params = skeleton(params_like)
    for name in expected:
        set_path(params, name, jnp.asarray(tensors[name]))
    return params

