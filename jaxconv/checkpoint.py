"""Checkpoints: params, optimiser state, step, RNG key and config in one .npz file.

The format holds no pickle. A checkpoint is one NumPy `.npz` file (a zip of
`.npy` arrays) read back with `allow_pickle=False`:

- one entry per array leaf of `params`, `opt_state` and (when given) the
  model's `state`, named by its pytree key path, e.g. ``params['conv1']['w']``,
  ``opt_state[0].mu['conv1']['w']`` or ``state['bn1']['mean']``;
- ``__key__``: the raw data of the RNG key (`jax.random.key_data` for a typed key);
- ``__meta__``: a JSON document (as uint8 bytes) with the format version, the
  step, the config, the key's kind, and the name, shape and dtype of every leaf.

Optax states are trees of NamedTuples the file does not describe, so to get
them back pass a template (`opt_state_like`, e.g. `optimizer.init(params)`):
the loader fills its leaves in order and checks each name, shape and dtype.

Writes are atomic: the file is written to a temporary file in the same
directory, flushed to disk, then renamed onto `path`, so a crash or a kill
during a save leaves the previous checkpoint whole.
"""

from __future__ import annotations

import json
import operator
import os
import struct
import zipfile
import zlib

import jax
import jax.numpy as jnp
import numpy as np

from jaxconv.atomic import write_atomic

__all__ = [
    "CHECKPOINT_NAME",
    "FORMAT_VERSION",
    "check_config",
    "checkpoint_path",
    "latest_checkpoint",
    "load_checkpoint",
    "read_header",
    "remove_temporaries",
    "save_checkpoint",
]

FORMAT_VERSION = 1
CHECKPOINT_NAME = "checkpoint.npz"
_FORMAT = "jaxconv-checkpoint"
_META = "__meta__"
# What zipfile and numpy raise on damaged bytes (a flipped bit can land in a zip header's version field or
# a compressed stream or a length): each becomes a one-line ValueError naming the file.
_DAMAGE = (zipfile.BadZipFile, OSError, EOFError, NotImplementedError, RuntimeError, zlib.error, struct.error, UnicodeDecodeError)
_KEY = "__key__"


# --------------------------------------------------------------------------- tree <-> named leaves


def _is_key_array(x) -> bool:
    dtype = getattr(x, "dtype", None)
    return dtype is not None and jax.dtypes.issubdtype(dtype, jax.dtypes.prng_key)


def _named_leaves(tree, prefix: str, op: str) -> list[tuple[str, object]]:
    """[(name, leaf)] in the tree's flattening order; name = prefix + keystr(path)."""
    pairs, _ = jax.tree_util.tree_flatten_with_path(tree)
    out = [(prefix + jax.tree_util.keystr(path), leaf) for path, leaf in pairs]
    names = [n for n, _ in out]
    if len(set(names)) != len(names):
        dup = next(n for n in names if names.count(n) > 1)
        raise ValueError(f"{op}: two leaves of `{prefix}` share the name `{dup}`; give them distinct dict keys.")
    return out


def _skeleton(tree, names: list[str]):
    """A JSON description of a tree of dicts (str keys), lists, tuples and None; None if it has other nodes."""
    it = iter(names)

    def walk(node):
        if node is None:
            return {"none": None}
        if type(node) is dict:
            if not all(isinstance(k, str) for k in node):
                raise TypeError
            return {"dict": [[k, walk(node[k])] for k in sorted(node)]}
        if type(node) in (list, tuple):
            return {type(node).__name__: [walk(v) for v in node]}
        if jax.tree_util.all_leaves([node]):
            return {"leaf": next(it)}
        raise TypeError  # a NamedTuple or another registered node

    try:
        return walk(tree)
    except TypeError:
        return None


def _rebuild(skeleton, arrays: dict):
    kind, value = next(iter(skeleton.items()))
    if kind == "none":
        return None
    if kind == "leaf":
        return arrays[value]
    if kind == "dict":
        return {k: _rebuild(v, arrays) for k, v in value}
    items = [_rebuild(v, arrays) for v in value]
    return items if kind == "list" else tuple(items)


def _to_numpy(leaf, name: str, op: str) -> np.ndarray:
    if _is_key_array(leaf):
        raise TypeError(
            f"{op}: leaf `{name}` is a typed PRNG key; keep keys out of params and opt_state and pass the "
            f"key as `key=` instead."
        )
    arr = np.asarray(jax.device_get(leaf))
    if arr.dtype.kind == "O":
        raise TypeError(
            f"{op}: leaf `{name}` is a {type(leaf).__name__}, not an array; checkpoints hold only numeric arrays "
            f"(no pickled objects)."
        )
    return arr


def _storable(arr: np.ndarray) -> np.ndarray:
    """The array as .npy can write it without pickle: dtypes unknown to NumPy (bfloat16) as raw unsigned ints."""
    if np.dtype(arr.dtype.str) == arr.dtype:
        return arr
    return arr.view(np.dtype(f"u{arr.dtype.itemsize}"))


# --------------------------------------------------------------------------- save


def _json_config(config, op: str):
    try:
        return json.loads(json.dumps(config, allow_nan=True))
    except (TypeError, ValueError) as e:
        raise TypeError(
            f"{op}: `config` must be JSON-serialisable (dicts with str keys, lists, str, numbers, bools, None), "
            f"got an error: {e}; convert other values (arrays, tuples of objects) to plain Python first."
        ) from None


def checkpoint_path(run_dir) -> str:
    """The conventional checkpoint file of a run directory: run_dir/checkpoint.npz."""
    return os.path.join(os.fspath(run_dir), CHECKPOINT_NAME)


def latest_checkpoint(run_dir) -> str | None:
    """run_dir/checkpoint.npz if it exists (to resume from), else None."""
    path = checkpoint_path(run_dir)
    return path if os.path.isfile(path) else None


def remove_temporaries(path) -> list[str]:
    """Delete the temporary files (`.checkpoint.npz.*.tmp`) a killed `save_checkpoint` of `path` left behind.

    Call it only while no other process is saving to `path` (the training loop
    holds its run directory's lock). Returns the paths removed.
    """
    path = os.fspath(path)
    directory = os.path.dirname(os.path.abspath(path))
    prefix = f".{os.path.basename(path)}."
    removed = []
    for name in sorted(os.listdir(directory)) if os.path.isdir(directory) else []:
        if name.startswith(prefix) and name.endswith(".tmp"):
            try:
                os.unlink(os.path.join(directory, name))
                removed.append(os.path.join(directory, name))
            except FileNotFoundError:
                pass
    return removed


def save_checkpoint(path, *, params, opt_state, step, key, config, metadata=None, state=None) -> str:
    """Write params, optimiser state, model state, step, RNG key and config to `path` (a .npz file), atomically.

    Args:
      path: the file to write (exactly this name; conventionally
        `checkpoint_path(run_dir)`); its directory is created if needed.
      params: pytree of arrays, e.g. {"conv1": {"w": (f_H, f_W, n_C, n_C'), "b": (n_C',)}, ...}.
      opt_state: pytree of arrays (e.g. an optax state); may be None or ().
      step: int, the number of optimiser steps done.
      key: the RNG key to resume with: a typed key (`jax.random.key`), a raw
        uint32 key (`jax.random.PRNGKey`), or None.
      config: JSON-serialisable dict (or None) of the run's settings.
      metadata: JSON-serialisable data kept with the checkpoint (the training
        loop stores its metrics history here, so the two never disagree).
      state: the model's state (BatchNorm's running statistics), a pytree of
        arrays nested like params, e.g. {"bn1": {"mean": (n_C,), "var": (n_C,)}};
        None (the default) stores none.

    Returns:
      The path written.
    """
    op = "save_checkpoint"
    path = os.fspath(path)
    if os.path.isdir(path):
        raise IsADirectoryError(
            f"{op}: `path` {path!r} is a directory; pass a file name such as checkpoint_path({path!r}) "
            f"= {checkpoint_path(path)!r}."
        )
    try:
        if isinstance(step, bool):
            raise TypeError
        step = operator.index(step)
    except TypeError:
        raise TypeError(f"{op}: `step` must be an int, got {step!r} of type {type(step).__name__}.") from None
    if step < 0:
        raise ValueError(f"{op}: `step` must be >= 0 (optimiser steps done), got {step}.")
    config = _json_config(config, op)
    metadata = _json_config(metadata, op)

    entries: dict[str, np.ndarray] = {}
    meta = {"format": _FORMAT, "version": FORMAT_VERSION, "step": step, "config": config,
            "metadata": metadata, "jax_version": jax.__version__}
    trees = (("params", params), ("opt_state", opt_state)) + ((("state", state),) if state is not None else ())
    for prefix, tree in trees:
        leaves = [(name, _to_numpy(leaf, name, op)) for name, leaf in _named_leaves(tree, prefix, op)]
        meta[prefix] = {
            "leaves": [{"name": n, "shape": list(a.shape), "dtype": str(a.dtype)} for n, a in leaves],
            "skeleton": _skeleton(tree, [n for n, _ in leaves]),
        }
        entries.update((n, _storable(a)) for n, a in leaves)

    if key is None:
        meta["key"] = None
    elif _is_key_array(key):
        entries[_KEY] = np.asarray(jax.random.key_data(key))
        meta["key"] = {"typed": True, "impl": str(jax.random.key_impl(key))}
    else:
        data = np.asarray(key)
        if data.dtype != np.uint32:
            raise TypeError(
                f"{op}: `key` must be a JAX random key (jax.random.key(seed) or jax.random.PRNGKey(seed)), "
                f"got an array of dtype {data.dtype} and shape {data.shape}."
            )
        entries[_KEY] = data
        meta["key"] = {"typed": False, "impl": None}
    entries[_META] = np.frombuffer(json.dumps(meta).encode("utf-8"), dtype=np.uint8)

    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    write_atomic(path, lambda f: np.savez(f, **entries))
    return path


# --------------------------------------------------------------------------- load


def _read(npz, name: str, path: str, op: str) -> np.ndarray:
    try:
        return npz[name]
    except KeyError:
        raise ValueError(
            f"{op}: `{path}` lacks the entry `{name}` listed in its header; the file is damaged, "
            f"use an earlier checkpoint."
        ) from None
    except ValueError as e:
        if "pickle" in str(e).lower() or "object" in str(e).lower():
            raise ValueError(
                f"{op}: entry `{name}` of `{path}` reads as an object (pickled) array, which is refused (checkpoints "
                f"are read with allow_pickle=False and never run code from a file); its array header is damaged or "
                f"the file was not written by save_checkpoint: use an earlier checkpoint."
            ) from None
        raise ValueError(f"{op}: entry `{name}` of `{path}` is damaged ({e}); use an earlier checkpoint.") from None
    except _DAMAGE as e:
        raise ValueError(f"{op}: entry `{name}` of `{path}` is damaged ({e}); use an earlier checkpoint.") from None


def _restore_leaf(arr: np.ndarray, info: dict):
    dtype = jnp.dtype(info["dtype"])
    if arr.dtype != dtype:
        arr = arr.view(dtype)
    return arr


def _fill_template(template, prefix, stored: list[dict], arrays: dict, path: str, op: str):
    argname = f"{prefix}_like"
    mine = _named_leaves(template, prefix, op)
    treedef = jax.tree_util.tree_structure(template)
    for i, ((name, leaf), info) in enumerate(zip(mine, stored)):
        shape = tuple(np.shape(leaf))
        dtype = str(jnp.result_type(leaf)) if not isinstance(leaf, (int, float, bool, complex)) else None
        differs = []
        if name != info["name"]:
            differs.append(f"name `{info['name']}` in the checkpoint but `{name}` in `{argname}`")
        if shape != tuple(info["shape"]):
            differs.append(f"shape {tuple(info['shape'])} in the checkpoint but {shape} in `{argname}`")
        if dtype is not None and dtype != info["dtype"]:
            differs.append(f"dtype {info['dtype']} in the checkpoint but {dtype} in `{argname}`")
        if differs:
            raise ValueError(
                f"{op}: leaf {i} of `{prefix}` (`{name}`) does not match `{path}`: {'; '.join(differs)}. The "
                f"checkpoint comes from another model or config; build `{argname}` with the same settings as the run "
                f"that saved it."
            )
    if len(mine) != len(stored):
        i = min(len(mine), len(stored))
        extra = (f"`{stored[i]['name']}` is in the checkpoint but not in `{argname}`" if len(stored) > len(mine)
                 else f"`{mine[i][0]}` is in `{argname}` but not in the checkpoint")
        raise ValueError(
            f"{op}: `{prefix}` has {len(stored)} leaves in `{path}` but {len(mine)} in `{argname}`; first "
            f"difference: {extra}. The checkpoint comes from another model or config; build `{argname}` with the "
            f"same settings as the run that saved it."
        )
    leaves = []
    for (name, leaf), info in zip(mine, stored):
        arr = arrays[info["name"]]
        if isinstance(leaf, (bool, int, float, complex)):
            leaves.append(type(leaf)(arr.item()))
        elif isinstance(leaf, np.ndarray):
            leaves.append(arr)
        else:
            leaves.append(jnp.asarray(arr))
    return jax.tree_util.tree_unflatten(treedef, leaves)


def check_config(stored, wanted, path: str, op: str) -> None:
    """Refuse a checkpoint whose saved config `stored` differs from `wanted` in any of wanted's keys.

    Raises a ValueError (naming `op` and the checkpoint at `path`) that lists every differing setting,
    checkpoint's value against the one asked for; `load_checkpoint(..., config=wanted)` calls it.
    """
    wanted = _json_config(wanted, op)
    if not isinstance(wanted, dict):
        raise TypeError(f"{op}: `config` must be a dict of the settings to check, got {type(wanted).__name__}.")
    stored_dict = stored if isinstance(stored, dict) else {}
    missing = object()
    diffs = []
    for k, v in wanted.items():
        have = stored_dict.get(k, missing)
        if have is missing:
            diffs.append(f"{k}: not in the checkpoint, you asked for {v!r}")
        elif have != v:
            diffs.append(f"{k}: checkpoint has {have!r}, you asked for {v!r}")
    if diffs:
        raise ValueError(
            f"{op}: the config saved in `{path}` differs from `config` in {len(diffs)} setting(s): "
            f"{'; '.join(diffs)}. Resume with the checkpoint's settings, or start a new run in another directory."
        )


def load_checkpoint(path, *, params_like=None, opt_state_like=None, config=None, state_like=None) -> dict:
    """Read a checkpoint written by `save_checkpoint`, checking it against templates and config.

    Args:
      path: the .npz file.
      params_like: optional pytree with the structure, shapes and dtypes of
        the params (e.g. freshly initialised ones); the loaded params take its
        structure, and any difference in leaf names, shapes or dtypes is refused.
      opt_state_like: likewise for the optimiser state (e.g. `optimizer.init(params)`).
      config: optional dict of the settings that must match the saved config;
        only its keys are compared.
      state_like: optional template of the model's state (e.g. from
        `model.init_state(input_shape)`), checked like params_like; a
        checkpoint saved without state is then refused.

    Returns:
      dict with "params" (the template's structure; without a template, the
      saved nest of dicts/lists/tuples), "opt_state" (the template's
      structure; without one, the saved nest if it had only dicts/lists/tuples,
      else a flat dict {leaf name: array} since NamedTuples of optax are not
      stored), "step" (int), "key" (a typed key, a raw uint32 key, or None),
      "config" (the saved config) and, when it was saved with some, "metadata"
      and "state" (the model's state, in the template's structure if given).
    """
    op = "load_checkpoint"
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{op}: no checkpoint file `{path}`; check the path (save_checkpoint writes it).")
    with open(path, "rb") as f:
        return _load(f, path, params_like, opt_state_like, config, op, state_like=state_like)


def read_header(path) -> dict:
    """The step, config and metadata of a checkpoint, without reading its arrays.

    Returns {"step": int, "config": dict or None} and "metadata" when it was saved with some.
    """
    op = "read_header"
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{op}: no checkpoint file `{path}`; check the path (save_checkpoint writes it).")
    with open(path, "rb") as f:
        return _load(f, path, None, None, None, op, header_only=True)


def _load(f, path, params_like, opt_state_like, config, op, header_only=False, state_like=None) -> dict:
    """The body of `load_checkpoint`/`read_header`: open the .npz, read and check its header, then its arrays."""
    with _open_npz(f, path, op) as npz:
        meta = _read_meta(npz, path, op)
        if config is not None:
            check_config(meta.get("config"), config, path, op)
        result = {"step": int(meta["step"]), "config": meta.get("config")}
        if meta.get("metadata") is not None:
            result["metadata"] = meta["metadata"]
        if header_only:
            return result
        if state_like is not None and "state" not in meta:
            raise ValueError(
                f"{op}: `{path}` holds no model state but `state_like` asks for one; the checkpoint was saved "
                f"without state= (a model without BatchNorm, or an older run); pass state_like=None, or resume "
                f"with the model that saved it."
            )
        parts = [("params", params_like), ("opt_state", opt_state_like)]
        if "state" in meta:
            parts.append(("state", state_like))
        for prefix, template in parts:
            result[prefix] = _load_part(npz, meta[prefix], prefix, template, path, op)
        result["key"] = _load_key(npz, meta.get("key"), path, op)
    return result


def _open_npz(f, path, op):
    """The open .npz of a checkpoint file; a ValueError for anything else (never a pickle)."""
    magic = f.read(4)
    f.seek(0)
    if magic != b"PK\x03\x04":  # every .npz is a zip; anything else numpy would try to read as a pickle
        raise ValueError(
            f"{op}: `{path}` is not a .npz checkpoint (it starts with bytes {magic!r}, not a zip file's "
            f"b'PK\\x03\\x04'); the file is damaged or of another kind, use an earlier checkpoint."
        )
    try:
        npz = np.load(f, allow_pickle=False)
    except (ValueError, *_DAMAGE) as e:
        reason = "pickled data, refused" if "pickle" in str(e) else f"{type(e).__name__}: {e}"
        raise ValueError(
            f"{op}: `{path}` is not a readable .npz checkpoint ({reason}); the file is damaged or "
            f"of another kind, use an earlier checkpoint."
        ) from None
    if not isinstance(npz, np.lib.npyio.NpzFile):
        raise ValueError(f"{op}: `{path}` is a single .npy array, not a .npz checkpoint written by save_checkpoint.")
    return npz


def _read_meta(npz, path, op) -> dict:
    """The checkpoint's JSON header, checked for its format, version and the fields the loader reads."""
    if _META not in npz.files:
        raise ValueError(
            f"{op}: `{path}` has no `{_META}` entry: it is an .npz file but not a jaxconv checkpoint "
            f"(entries: {npz.files[:5]}); pass a file written by save_checkpoint."
        )
    raw = _read(npz, _META, path, op)
    try:
        meta = json.loads(raw.tobytes().decode("utf-8"))
        version = meta["version"]
        for part in ("params", "opt_state") + (("state",) if "state" in meta else ()):
            [(info["name"], info["shape"], info["dtype"]) for info in meta[part]["leaves"]]
        int(meta["step"])
    except (ValueError, KeyError, TypeError, UnicodeDecodeError) as e:
        raise ValueError(f"{op}: the header of `{path}` is damaged ({e}); use an earlier checkpoint.") from None
    if meta.get("format") != _FORMAT or version != FORMAT_VERSION:
        raise ValueError(
            f"{op}: `{path}` has format {meta.get('format')!r} version {version!r}, expected {_FORMAT!r} version "
            f"{FORMAT_VERSION}; load it with the jaxconv version that wrote it."
        )
    return meta


def _load_part(npz, part_meta: dict, prefix: str, template, path, op):
    """One stored tree (params, opt_state or state): its arrays checked against the header, then rebuilt
    on `template`'s structure, or on the stored skeleton without one."""
    stored = part_meta["leaves"]
    arrays = {}
    for info in stored:
        arr = _restore_leaf(_read(npz, info["name"], path, op), info)
        if list(arr.shape) != list(info["shape"]):
            raise ValueError(
                f"{op}: entry `{info['name']}` of `{path}` has shape {arr.shape} but its header says "
                f"{tuple(info['shape'])}; the file is damaged, use an earlier checkpoint."
            )
        arrays[info["name"]] = arr
    if template is not None:
        return _fill_template(template, prefix, stored, arrays, path, op)
    jarrays = {n: jnp.asarray(a) for n, a in arrays.items()}
    return _rebuild(part_meta["skeleton"], jarrays) if part_meta["skeleton"] is not None else jarrays


def _load_key(npz, key_meta, path, op):
    """The stored PRNG key (typed or raw uint32), or None when the checkpoint has none."""
    if key_meta is None:
        return None
    data = _read(npz, _KEY, path, op)
    if key_meta["typed"]:
        return jax.random.wrap_key_data(jnp.asarray(data), impl=key_meta["impl"])
    return jnp.asarray(data)
