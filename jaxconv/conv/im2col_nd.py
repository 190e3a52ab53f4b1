"""im2col in any number of spatial dimensions: the notes' convolution, forward and hand-derived backward.

The 2-D file (`im2col.py`) reads the formulas with the indices (h, w) written
out; this one is the same algorithm with the N spatial indices written as one
position vector, r = (r_1, ..., r_N) for an output pixel and k = (k_1, ..., k_N)
for a filter tap:

    Z[m, r, o] = b[o] + Σ_{k, c} X_pad[m, r·s + k·d, c] · W[k, c, o]          (r·s + k·d taken axis by axis)

conv1d (N = 1: r = w) and conv3d (N = 3: r = (d, h, w)) run on it. The forward
copies every window into a row of patches P and multiplies P by the filter; the
backward transposes both: a matmul, and col2im, which adds every patch entry's
gradient back to the pixel it was copied from. No lax convolution anywhere.
"""

from __future__ import annotations

import itertools
import math
from functools import partial
from typing import NamedTuple, Optional, Tuple

import jax
import jax.numpy as jnp
from jax import lax

from jaxconv.conv.geometry import acc_dtype, bias_grad


class PlanND(NamedTuple):
    """One N-D convolution's geometry: pads ((lo, hi), ...) and stride, dilation (one int per spatial axis); groups G."""

    pads: Tuple[Tuple[int, int], ...]
    stride: Tuple[int, ...]
    dilation: Tuple[int, ...]
    groups: int = 1
    block: Optional[int] = None  # unused: no tiled N-D algorithm; kept so a PlanND reads like a 2-D Plan


def out_size(n_pad, f, s, d):
    """n' per spatial axis of a valid correlation of an n_pad input: ⌊(n_pad − d(f − 1) − 1)/s⌋ + 1."""
    return tuple((n - d_i * (f_i - 1) - 1) // s_i + 1 for n, f_i, s_i, d_i in zip(n_pad, f, s, d))


def pad_input(x, pads):
    """X_pad: x (m, *n, n_C) with zeros around its spatial axes, (m, *(n + lo + hi), n_C)."""
    return jnp.pad(x, ((0, 0), *pads, (0, 0)))


def crop(dX_pad, pads, x_shape):
    """The inverse of `pad_input` for gradients: dX_pad without its padding, x_shape (m, *n, n_C)."""
    index = tuple(slice(lo, lo + n) for (lo, _), n in zip(pads, x_shape[1:-1]))
    return dX_pad[(slice(None), *index)]


def taps(f):
    """Every filter tap k = (k_1, ..., k_N), in W's row-major order (the order of P's columns)."""
    return list(itertools.product(*(range(f_i) for f_i in f)))


def view(x_pad, k, s, d, n_out):
    """X_pad[m, r·s + k·d, c] for every output position r: tap k's strided, dilated view, (m, *n', n_C)."""
    start = (0, *(k_i * d_i for k_i, d_i in zip(k, d)), 0)
    limit = (x_pad.shape[0], *(k_i * d_i + s_i * (n_i - 1) + 1 for k_i, d_i, s_i, n_i in zip(k, d, s, n_out)), x_pad.shape[-1])
    return lax.slice(x_pad, start, limit, (1, *s, 1))


def patches(x_pad, f, s, d, n_out):
    """P[m, r, (k, c)] = X_pad[m, r·s + k·d, c]: (m, *n', prod(f)·n_C)."""
    return jnp.concatenate([view(x_pad, k, s, d, n_out) for k in taps(f)], axis=-1)


def place(a, at, step, shape):
    """An array of `shape` (m, *n_pad, C), zero but for a[:, r] at position at + r·step: the transpose of tap k's view.

    A lax.pad with step − 1 zeros between entries (interior padding), as `geometry.place` in 2-D.
    """
    config = [(0, 0, 0)]
    config += [(a_i, N - a_i - st * (n - 1) - 1, st - 1) for a_i, N, st, n in zip(at, shape[1:-1], step, a.shape[1:-1])]
    return lax.pad(a, jnp.zeros((), a.dtype), config + [(0, 0, 0)])


def forward(x, w, b, plan: PlanND):
    """Z = P · W + b, the patches times the filter. Returns (Z, X_pad).

    x: (m, *n, n_C); w: (*f, n_C/G, n_C'); b: (n_C',) or None; Z: (m, *n', n_C').
    """
    *f, n_Cg, n_C_out = w.shape
    G, K, acc = plan.groups, math.prod(f), acc_dtype(x.dtype)  # sums in float32 for bfloat16/float16
    x_pad = pad_input(x, plan.pads)  # (m, *n_pad, n_C)
    n_out = out_size(x_pad.shape[1:-1], f, plan.stride, plan.dilation)  # n' per axis
    P = patches(x_pad, f, plan.stride, plan.dilation, n_out)  # (m, *n', K·n_C)
    if G == 1:
        z = jnp.dot(P, w.reshape(K * n_Cg, n_C_out), preferred_element_type=acc)  # Z = P · W
    else:  # Z_g = P_g · W_g for each group g of channels
        P_g = P.reshape(x.shape[0] * math.prod(n_out), K, G, n_Cg)  # (m·prod(n'), K, G, n_C/G)
        z = jnp.einsum("rkgc,kcgo->rgo", P_g, w.reshape(K, n_Cg, G, n_C_out // G), preferred_element_type=acc)
        z = z.reshape(x.shape[0], *n_out, n_C_out)
    if b is not None:
        z = z + b  # + b[o]
    return z.astype(x.dtype), x_pad


@partial(jax.custom_vjp, nondiff_argnums=(3,))
def conv(x, w, b, plan: PlanND):
    """N-D im2col convolution with its hand-derived backward (`backward`): (m, *n, n_C) -> (m, *n', n_C')."""
    return forward(x, w, b, plan)[0]


def _fwd(x, w, b, plan):
    z, x_pad = forward(x, w, b, plan)
    return z, (x_pad, w, b is not None, x.shape)


def backward(plan: PlanND, res, dZ):
    """Backward of Z = P · W + b, derived by hand. Returns (dX, dW, db); dZ = ∂J/∂Z: (m, *n', n_C').

        dX = crop(col2im(dZ · Wᵀ))   dX_pad[m, r·s + k·d, c] += Σ_o dZ[m, r, o] · W[k, c, o]
        dW = Pᵀ · dZ                  dW[k, c, o] = Σ_{m, r} X_pad[m, r·s + k·d, c] · dZ[m, r, o]
        db = Σ dZ                     db[o] = Σ_{m, r} dZ[m, r, o]

    With G groups every sum over c and o stays inside its group.
    """
    x_pad, w, has_bias, x_shape = res
    db = bias_grad(dZ) if has_bias else None  # db[o] = Σ_{m,r} dZ[m, r, o]
    return input_grad(dZ, w, plan, x_pad.shape, x_shape), weight_grad(x_pad, dZ, w.shape, plan), db


def weight_grad(x_pad, dZ, w_shape, plan: PlanND):
    """dW = Pᵀ · dZ: dW[k, c, o] = Σ_{m, r} P[m, r, (k, c)] · dZ[m, r, o]. Returns (*f, n_C/G, n_C')."""
    *f, n_Cg, n_C_out = w_shape
    G, K, acc = plan.groups, math.prod(f), acc_dtype(dZ.dtype)
    rows = math.prod(dZ.shape[:-1])  # m·prod(n'), one per output pixel
    P = patches(x_pad, f, plan.stride, plan.dilation, dZ.shape[1:-1]).reshape(rows, K * G * n_Cg)  # (m·prod(n'), K·n_C)
    if G == 1:
        dW = jnp.dot(P.T, dZ.reshape(rows, n_C_out), preferred_element_type=acc)  # dW = Pᵀ · dZ
    else:  # dW_g = P_gᵀ · dZ_g
        P_g, dZ_g = P.reshape(rows, K, G, n_Cg), dZ.reshape(rows, G, n_C_out // G)
        dW = jnp.einsum("rkgc,rgo->kcgo", P_g, dZ_g, preferred_element_type=acc)
    return dW.reshape(w_shape).astype(dZ.dtype)


def input_grad(dZ, w, plan: PlanND, x_pad_shape, x_shape):
    """dX = crop(col2im(dZ · Wᵀ)): every patch entry's gradient added back to the pixel it was copied from.

    dZ: (m, *n', n_C'); w: (*f, n_C/G, n_C'). Returns x_shape (m, *n, n_C).
    """
    *f, n_Cg, n_C_out = w.shape
    G, K, acc = plan.groups, math.prod(f), acc_dtype(dZ.dtype)
    n_C, n_out = n_Cg * G, dZ.shape[1:-1]
    if G == 1:
        dP = jnp.dot(dZ, w.reshape(K * n_C, n_C_out).T, preferred_element_type=acc)  # dP = dZ · Wᵀ: (m, *n', K·n_C)
    else:  # dP_g = dZ_g · W_gᵀ, columns (k, c) as P's
        dZ_g = dZ.reshape(math.prod(dZ.shape[:-1]), G, n_C_out // G)  # (m·prod(n'), G, n_C'/G)
        dP = jnp.einsum("rgo,kcgo->rkgc", dZ_g, w.reshape(K, n_Cg, G, n_C_out // G), preferred_element_type=acc)
        dP = dP.reshape(dZ.shape[0], *n_out, K * n_C)

    # col2im: P[m, r, (k, c)] was copied from X_pad[m, r·s + k·d, c], so dX_pad[m, r·s + k·d, c] += dP[m, r, (k, c)].
    dX_pad = jnp.zeros(x_pad_shape, acc)  # pixels the forward never read keep 0
    for t, k in enumerate(taps(f)):
        at = tuple(k_i * d_i for k_i, d_i in zip(k, plan.dilation))
        dX_pad = dX_pad + place(dP[..., t * n_C : (t + 1) * n_C], at, plan.stride, x_pad_shape)
    return crop(dX_pad, plan.pads, x_shape).astype(dZ.dtype)  # dX = dX_pad without the padding


conv.defvjp(_fwd, backward)
