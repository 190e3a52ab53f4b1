"""taps: the fast CPU algorithm for wide layers (stride 1, one group, any dilation).

Flatten the padded images into rows of pixels, multiply them once by all
f_H·f_W taps of the filter side by side, and shift-add the tap products: tap
(i, j) of output pixel q is product q + o_ij. Nothing is gathered before the
matmul; chunks of a few images (`policy.taps_chunk`) keep the K-fold products in
cache.
"""

from __future__ import annotations

from functools import partial

import jax
import jax.numpy as jnp
from jax import lax

from jaxconv import chunks
from jaxconv.conv.geometry import Plan, acc_dtype, bias_grad, crop, out_size, pad_input


def _tap_offsets(n_W_pad, f, d):
    """o_k = i·d_H·n_W_pad + j·d_W for k = i·f_W + j: where tap (i, j) reads, in a row-major flattened padded image."""
    return [i * d[0] * n_W_pad + j * d[1] for i in range(f[0]) for j in range(f[1])]


def _taps_geometry(x_pad, w, d):
    """(N, L, offsets): the c·n_H_pad·n_W_pad flattened pixels of a chunk, the L = N − o_last positions every tap can read."""
    c, n_H_pad, n_W_pad, _ = x_pad.shape
    offs = _tap_offsets(n_W_pad, w.shape[:2], d)
    N = c * n_H_pad * n_W_pad
    return N, N - offs[-1], offs


def _chunk_forward(x, w, pads, d):
    """Z of a chunk of c images, without bias: (c, n_H, n_W, n_C) -> (c, n_H', n_W', n_C').

    Flattens the padded chunk into rows X[q, c] (q = (image, row, column)), multiplies it
    once by all K = f_H·f_W taps of the filter side by side, Y = X · [W_1 … W_K]
    (N × K·n_C'), and shift-adds the tap products: Z[q] = Σ_k Y[q + o_k, k]. Positions q
    past the right or bottom edge of an image mix pixels of two rows or images: they are
    computed and dropped.
    """
    f_H, f_W, n_C, n_C_out = w.shape
    x_pad = pad_input(x, pads)  # (c, n_H_pad, n_W_pad, n_C)
    c, n_H_pad, n_W_pad, _ = x_pad.shape
    N, L, offs = _taps_geometry(x_pad, w, d)
    taps = w.transpose(2, 0, 1, 3).reshape(n_C, len(offs) * n_C_out)  # [W_1 … W_K]: (n_C, K·n_C')
    Y = jnp.dot(x_pad.reshape(N, n_C), taps, preferred_element_type=acc_dtype(x.dtype))  # (N, K·n_C')
    z = None
    for k, o in enumerate(offs):
        tap = Y[o : o + L, k * n_C_out : (k + 1) * n_C_out]  # (L, n_C')
        z = tap if z is None else z + tap
    z = jnp.pad(z, ((0, N - L), (0, 0))).reshape(c, n_H_pad, n_W_pad, n_C_out)
    n_H_out, n_W_out = out_size((n_H_pad, n_W_pad), (f_H, f_W), (1, 1), d)
    return z[:, :n_H_out, :n_W_out].astype(x.dtype)  # (c, n_H', n_W', n_C'), summed in float32 for bfloat16


def _chunk_backward(x, dZ, w, pads, d):
    """(dX, dW) of a chunk: the transpose of `_chunk_forward`, derived by hand.

    With dZ zero-extended to the flattened padded grid (the dropped positions get 0):
    - dY[q, k] = dZ[q] · W_kᵀ: one matmul, dZ · [W_1ᵀ … W_Kᵀ]               (L × K·n_C)
    - dX_pad[q + o_k] += dY[q, k]: Y[q + o_k, k] fed Z[q], so its gradient adds back
      there (shift-and-add, transposed); dX = crop of dX_pad to the padding.
    - dW_k = Σ_q X[q + o_k]ᵀ dZ[q]: one matmul Pᵀ dZ with P = [X[o_1 …] … X[o_K …]] (L × K·n_C),
      the im2col patches of the flattened chunk.
    """
    f_H, f_W, n_C, n_C_out = w.shape
    x_pad = pad_input(x, pads)
    c, n_H_pad, n_W_pad, _ = x_pad.shape
    N, L, offs = _taps_geometry(x_pad, w, d)
    _, n_H_out, n_W_out, _ = dZ.shape
    dZ_flat = jnp.pad(dZ, ((0, 0), (0, n_H_pad - n_H_out), (0, n_W_pad - n_W_out), (0, 0))).reshape(N, n_C_out)[:L]
    taps_T = w.transpose(3, 0, 1, 2).reshape(n_C_out, len(offs) * n_C)  # [W_1ᵀ … W_Kᵀ]: (n_C', K·n_C)
    dY = jnp.dot(dZ_flat, taps_T, preferred_element_type=acc_dtype(x.dtype))  # (L, K·n_C)
    dX_flat = None
    for k, o in enumerate(offs):
        tap = jnp.pad(dY[:, k * n_C : (k + 1) * n_C], ((o, N - L - o), (0, 0)))  # (N, n_C)
        dX_flat = tap if dX_flat is None else dX_flat + tap
    dX = crop(dX_flat.reshape(c, n_H_pad, n_W_pad, n_C), pads, x.shape).astype(x.dtype)
    X = x_pad.reshape(N, n_C)
    P = jnp.concatenate([X[o : o + L] for o in offs], axis=1)  # (L, K·n_C)
    dW = jnp.dot(P.T, dZ_flat, preferred_element_type=acc_dtype(x.dtype)).reshape(w.shape)  # summed over chunks, then cast
    return dX, dW


@partial(jax.custom_vjp, nondiff_argnums=(3,))
def conv(x, w, b, plan: Plan):
    """Taps convolution (stride 1, one group) with its hand-derived backward (`backward`).

    x: (m, n_H, n_W, n_C); w: (f_H, f_W, n_C, n_C'); b: (n_C',) or None; plan.block: c images
    per chunk (None: the whole batch). Returns (m, n_H', n_W', n_C').
    """
    return forward(x, w, b, plan)


def forward(x, w, b, plan: Plan):
    """Z = X_pad ⋆ W + b over chunks of c images (`policy.taps_chunk`), one chunk at a time (lax.map)."""
    pads, d, c = plan.pads, plan.dilation, plan.block or x.shape[0]
    if c == x.shape[0]:
        z = _chunk_forward(x, w, pads, d)
    else:
        z = lax.map(lambda x_c: _chunk_forward(x_c, w, pads, d), chunks.split(x, c, strided=False))
        z = chunks.merge(z, strided=False)
    return z if b is None else z + b


def _fwd(x, w, b, plan):
    return forward(x, w, b, plan), (x, w, b is not None)


def backward(plan: Plan, res, dZ):
    """db = Σ dZ; dX and dW chunk by chunk (`_chunk_backward`), dW summed over the chunks."""
    x, w, has_bias = res
    pads, d, c = plan.pads, plan.dilation, plan.block or x.shape[0]
    db = bias_grad(dZ) if has_bias else None
    if c == x.shape[0]:
        dX, dW = _chunk_backward(x, dZ, w, pads, d)
        return dX, dW.astype(w.dtype), db

    def chunk(dW, xz):
        dX_c, dW_c = _chunk_backward(*xz, w, pads, d)
        return dW + dW_c, dX_c

    xs, dZs = chunks.split(x, c, strided=False), chunks.split(dZ, c, strided=False)  # (m/c, c, ...)
    dW, dX = lax.scan(chunk, jnp.zeros(w.shape, acc_dtype(w.dtype)), (xs, dZs))
    return chunks.merge(dX, strided=False), dW.astype(w.dtype), db


conv.defvjp(_fwd, backward)
