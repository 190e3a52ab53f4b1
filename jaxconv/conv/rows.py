"""rows: the fast CPU algorithm for narrow layers (stride 1, dilation 1, one group).

Stack only the f_H shifted rows of the input and multiply them by the filter laid
out as a banded (Toeplitz) matrix along the width: W_pad/f_W times the arithmetic
of im2col, but one well-shaped matmul after a cheap gather, which on CPU is what
counts for narrow layers (LeNet). Split into blocks of B output columns
(`policy.rows_block`), each block reads B + f_W − 1 input columns and the banded
matrix shrinks to one block's, the same for every block.

With very few input channels (TUNED["rows_direct_max_channels"]: LeNet's conv1 has
one) the forward is the direct sum instead, f_H·f_W·n_C shifted multiply-adds of
X_pad (`_direct`): the band's matmul is then thin (K = 40 for conv1 in blocks of 4)
and gathering its rows costs as much as the products. The backward stays the rows
one, whose weight gradient is one matmul.
"""

from __future__ import annotations

from functools import partial

import jax
import jax.numpy as jnp
import numpy as np

from jaxconv.conv.geometry import Plan, acc_dtype, bias_grad, crop, pad_input, padded_size, place
from jaxconv.conv import policy


def _band(n_in, f_W):
    """The 0/1 shift tensor E[j, a, b] = 1 if a = b + j: (f_W, n_in, n_in − f_W + 1), a numpy constant."""
    n_out = n_in - f_W + 1
    E = np.zeros((f_W, n_in, n_out), np.float32)
    for j in range(f_W):
        E[j, np.arange(n_out) + j, np.arange(n_out)] = 1
    return E


def _toeplitz(w, n_in):
    """The filter as a banded matrix over n_in input columns: (f_H·n_in·n_C, B·n_C'), B = n_in − f_W + 1.

    T[(i, a, c), (b, o)] = W[i, a − b, c, o] where 0 <= a − b < f_W, else 0.
    """
    f_H, f_W, n_C, n_C_out = w.shape
    E = jnp.asarray(_band(n_in, f_W), w.dtype)
    T = jnp.einsum("jab,ijco->iacbo", E, w)  # (f_H, n_in, n_C, B, n_C')
    return T.reshape(f_H * n_in * n_C, -1)


def _rows(x_pad, f_H, f_W, n_H_out, B):
    """The input blocks each block of B output columns reads, as matmul rows.

    R[(m, h, k), (i, a, c)] = X_pad[m, h + i, k·B + a, c] for a < B + f_W − 1: the f_H rows
    and the B + f_W − 1 columns that output block k (columns k·B … k·B + B − 1) reads.
    x_pad: (m, n_H_pad, n_W_ext, n_C) with n_W_ext = n_blk·B + f_W − 1.
    Returns (m·n_H'·n_blk, f_H·(B + f_W − 1)·n_C).
    """
    m, n_H_pad, n_W_ext, n_C = x_pad.shape
    n_in, n_blk = B + f_W - 1, (n_W_ext - f_W + 1) // B
    rows = jnp.stack([x_pad[:, i : i + n_H_out] for i in range(f_H)], axis=2)  # (m, n_H', f_H, n_W_ext, n_C)
    blocks = jnp.stack([rows[:, :, :, k * B : k * B + n_in] for k in range(n_blk)], axis=2)  # (m, n_H', n_blk, f_H, n_in, n_C)
    return blocks.reshape(m * n_H_out * n_blk, f_H * n_in * n_C)


def _rows_pads(pads, n_W, f_W, B):
    """The padding of the rows algorithm: the conv's, plus zero columns on the right up to a whole number of blocks."""
    (top, bottom), (left, right) = pads
    n_W_out = n_W + left + right - f_W + 1
    n_blk = -(-n_W_out // B)
    return ((top, bottom), (left, right + n_blk * B - n_W_out)), n_W_out, n_blk


def _direct(x_pad, w, n_H_out, n_W_out):
    """Σ_{i, j, c} X_pad[:, i : i + n_H', j : j + n_W', c] · W[i, j, c]: the direct sum, (m, n_H', n_W', n_C')."""
    f_H, f_W, n_C, _ = w.shape
    acc = acc_dtype(x_pad.dtype)
    z = None
    for i in range(f_H):
        for j in range(f_W):
            for c in range(n_C):
                term = x_pad[:, i : i + n_H_out, j : j + n_W_out, c : c + 1].astype(acc) * w[i, j, c].astype(acc)
                z = term if z is None else z + term
    return z


def forward(x, w, b, pads, B):
    """Z = R · T + b with R the input blocks and T the banded filter of one block (the direct sum, `_direct`,
    for at most TUNED["rows_direct_max_channels"] input channels). Returns (Z, X_pad)."""
    f_H, f_W, n_C, n_C_out = w.shape
    ext_pads, n_W_out, n_blk = _rows_pads(pads, x.shape[2], f_W, B)
    x_pad = pad_input(x, ext_pads)  # (m, n_H_pad, n_blk·B + f_W − 1, n_C)
    m, n_H_pad = x_pad.shape[:2]
    n_H_out = n_H_pad - f_H + 1
    if n_C <= policy.TUNED["rows_direct_max_channels"]:
        z = _direct(x_pad, w, n_H_out, n_W_out)
        return (z if b is None else z + b).astype(x.dtype), x_pad
    R = _rows(x_pad, f_H, f_W, n_H_out, B)  # (m·n_H'·n_blk, f_H·(B + f_W − 1)·n_C)
    z = jnp.dot(R, _toeplitz(w, B + f_W - 1), preferred_element_type=acc_dtype(x.dtype))  # (m·n_H'·n_blk, B·n_C')
    z = z.reshape(m, n_H_out, n_blk * B, n_C_out)[:, :, :n_W_out]  # block k holds columns k·B … k·B + B − 1
    if b is not None:
        z = z + b
    return z.astype(x.dtype), x_pad


@partial(jax.custom_vjp, nondiff_argnums=(3,))
def conv(x, w, b, plan: Plan):
    """Rows convolution (stride 1, dilation 1, one group) with its hand-derived backward (`backward`).

    x: (m, n_H, n_W, n_C); w: (f_H, f_W, n_C, n_C'); b: (n_C',) or None; plan.block: B output
    columns per block (None: one block of all n_W'). Returns (m, n_H', n_W', n_C').
    """
    return forward(x, w, b, plan.pads, _block(x.shape, w.shape, plan))[0]


def _block(x_shape, w_shape, plan):
    return plan.block or padded_size(x_shape, plan.pads)[1] - w_shape[1] + 1  # None: one block, every output column


def _fwd(x, w, b, plan):
    z, x_pad = forward(x, w, b, plan.pads, _block(x.shape, w.shape, plan))
    return z, (x_pad, w, b is not None, x.shape)


def backward(plan: Plan, res, dZ):
    """Backward of Z = R · T + b (stride 1, dilation 1, one group), derived by hand (no lax conv).

    R[(m, h, k), (i, a, c)] = X_pad[m, h + i, k·B + a, c] (a < B + f_W − 1: output block k's input),
    T[(i, a, c), (b, o)] = W[i, a − b, c, o] (0 <= a − b < f_W), the same for every block, and
    Z[m, h, k·B + b, o] = (R · T)[(m, h, k), (b, o)] + b[o]. With dZ = ∂J/∂Z zero-padded to
    n_blk·B columns and seen as (m·n_H'·n_blk, B·n_C'):

    - db[o]          = Σ_{m,h,w} dZ[m, h, w, o]
    - dT             = Rᵀ dZ (one matmul), and since W[i, j, c, o] sits on the band a = b + j of T,
      dW[i, j, c, o] = Σ_b dT[(i, b + j, c), (b, o)]     (the band of dT summed along its diagonal)
    - dR             = dZ Tᵀ, and since X_pad[m, h + i, k·B + a, c] was copied into R[(m, h, k), (i, a, c)],
      dX_pad[m, h + i, k·B + a, c] += dR[(m, h, k), (i, a, c)]  (blocks overlap by f_W − 1 columns),
      dX = crop of dX_pad to the padding (the extra block columns on the right are dropped too).
      T's band means input column a only hears from outputs b in [a − f_W + 1, a], so dR is computed
      in groups of input columns (`_dx_groups`), each a matmul of only the dZ columns its band reaches.
    """
    x_pad, w, has_bias, x_shape = res
    f_H, f_W, n_C, n_C_out = w.shape
    pads, B = plan.pads, _block(x_shape, w.shape, plan)
    m, n_H_out, n_W_out, _ = dZ.shape
    n_H_pad, n_W_ext = x_pad.shape[1:3]
    n_in, n_blk = B + f_W - 1, (n_W_ext - f_W + 1) // B

    dtype, acc = dZ.dtype, acc_dtype(dZ.dtype)  # sums in float32 for bfloat16/float16
    db = bias_grad(dZ) if has_bias else None  # (n_C',)

    dZ_mat = jnp.pad(dZ, ((0, 0), (0, 0), (0, n_blk * B - n_W_out), (0, 0))).reshape(m * n_H_out * n_blk, B * n_C_out)
    R = _rows(x_pad, f_H, f_W, n_H_out, B)  # (m·n_H'·n_blk, f_H·n_in·n_C)
    dT = jnp.dot(R.T, dZ_mat, preferred_element_type=acc).reshape(f_H, n_in, n_C, B, n_C_out)
    E = jnp.asarray(_band(n_in, f_W), acc)  # (f_W, n_in, B)
    dW = jnp.einsum("jab,iacbo->ijco", E, dT)  # (f_H, f_W, n_C, n_C')

    T = _toeplitz(w, n_in).reshape(f_H, n_in, n_C, B, n_C_out)
    dR = jnp.concatenate(
        [
            jnp.dot(dZ_mat[:, b0 * n_C_out : b1 * n_C_out], T[:, a0:a1, :, b0:b1].reshape(-1, (b1 - b0) * n_C_out).T, preferred_element_type=acc)
            .reshape(m, n_H_out, n_blk, f_H, a1 - a0, n_C)
            for a0, a1, b0, b1 in _dx_groups(n_in, B, f_W)
        ],
        axis=4,
    )  # (m, n_H', n_blk, f_H, n_in, n_C)
    dX_pad = None
    for i in range(f_H):  # X_pad[h + i, k·B + a] was copied into R[(h, k), (i, a)]: add it back there
        for k in range(n_blk):
            tap = place(dR[:, :, k, i], at=(i, k * B), step=(1, 1), shape=x_pad.shape[:3] + (n_C,))  # (m, n_H_pad, n_W_ext, n_C)
            dX_pad = tap if dX_pad is None else dX_pad + tap
    return crop(dX_pad, pads, x_shape).astype(dtype), dW.astype(dtype), db


conv.defvjp(_fwd, backward)


def _dx_groups(n_in, B, f_W):
    """[(a0, a1, b0, b1)]: input columns [a0, a1) of a block receive only from its output columns [b0, b1)."""

    def group(a0, a1):
        return a0, a1, max(0, a0 - f_W + 1), min(B, a1)

    halves = [group(0, n_in // 2), group(n_in // 2, n_in)]
    work = sum((a1 - a0) * (b1 - b0) for a0, a1, b0, b1 in halves)
    if n_in >= 2 and work <= policy.TUNED["rows_dx_max_fraction"] * n_in * B:
        return halves
    return [(0, n_in, 0, B)]
