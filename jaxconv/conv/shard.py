"""shard_map shim: a custom VJP's cotangents must vary over the same mesh axes as its inputs."""

from __future__ import annotations

import jax
from jax import lax


def same_varying_axes(*arrays):
    """The arrays, each cast to vary over every manual mesh axis any of them varies over.

    Inside `shard_map`, x (a shard of the batch) varies over the data axis while a
    replicated filter does not; a custom_vjp's backward must then return dW with w's
    type, but dW (a sum over this shard's examples) varies. Casting w to varying
    first makes its cotangent varying-typed too, and JAX's transpose of the cast is
    the psum over the axis that adds up the shards' dW, as autodiff of lax's conv
    would. Outside shard_map (or on a JAX without varying types) a no-op.
    """
    vma = [varying_axes(a) for a in arrays]
    every = frozenset().union(*vma)
    if not every:
        return arrays
    cast = getattr(lax, "pcast", None)
    if cast is None:  # jax < 0.8.2 spelled it pvary
        cast = lambda a, axes, to: lax.pvary(a, axes)  # noqa: E731
    return tuple(
        a if a is None or v == every else cast(a, tuple(sorted(every - v)), to="varying") for a, v in zip(arrays, vma)
    )


def varying_axes(a) -> frozenset:
    """The manual mesh axes `a` varies over inside shard_map (empty outside, or on JAX without the notion)."""
    typeof = getattr(jax, "typeof", None)
    if a is None or typeof is None:
        return frozenset()
    aval = typeof(a)
    mat = getattr(aval, "manual_axis_type", None)  # jax >= 0.8
    if mat is not None:
        return frozenset(mat.varying)
    return frozenset(getattr(aval, "vma", ()))  # jax 0.6-0.7
