"""Nested-dict helpers shared by the name map, the state_dict conversions and the safetensors files.

Paths are a tree's keys joined by "." ("conv1.w"), as PyTorch names its tensors.
"""

from __future__ import annotations

from collections.abc import Mapping


def set_path(tree: dict, path: str, value) -> None:
    """tree[k1][k2]...[kn] = value for path "k1.k2...kn", creating the dicts on the way."""
    *parents, leaf = path.split(".")
    for key in parents:
        tree = tree.setdefault(key, {})
    tree[leaf] = value


def get_path(tree, path: str):
    """tree[k1]...[kn] for path "k1...kn", or None where a key is missing."""
    for key in path.split("."):
        if not isinstance(tree, Mapping) or key not in tree:
            return None
        tree = tree[key]
    return tree


def skeleton(tree) -> dict:
    """The dict skeleton of a params pytree, array leaves left out (to be filled by `set_path`)."""
    if not isinstance(tree, Mapping):
        return {}
    return {k: skeleton(v) for k, v in tree.items() if isinstance(v, Mapping)}
