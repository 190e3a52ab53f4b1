"""2-D convolution, two ways: on `lax.conv_general_dilated`, and hand-rolled.

Layout (see `jaxconv._args.LAYOUT`): x is NHWC (m, n_H, n_W, n_C), the filter
is HWIO (f_H, f_W, n_C / groups, n_C'), the bias is (n_C',). Convolution here
is cross-correlation, as in the notes and in lax:

    Z[m, h, w, o] = b[o] + Σ_{i, j, c} X_pad[m, h·s_H + i·d_H, w·s_W + j·d_W, c] · W[i, j, c, o]

The hand-rolled convolution never calls a lax convolution primitive. It has
three algorithms, each a forward with its hand-derived backward right below it:

- im2col (`_hand_fwd` / `_hand_bwd`, any stride, dilation, groups): pad, take
  the f_H·f_W shifted, strided, dilated views of the input, stack them into
  patches and contract them with the filter in one matmul.
- rows (`_rows_fwd` / `_rows_bwd`, stride 1, dilation 1, one group): stack
  only the f_H shifted rows of the input and multiply them by the filter laid
  out as a banded (Toeplitz) matrix along the width. It does W_pad/f_W times
  the arithmetic of im2col but in one well-shaped matmul, with a cheap
  gather, which on CPU is what counts for narrow layers (LeNet). Split into
  blocks of B output columns (`rows_block`), each block reads B + f_W − 1
  input columns and the banded matrix shrinks to one block's, the same for
  every block: (B + f_W − 1)/f_W times the arithmetic instead.
- taps (`_taps_fwd` / `_taps_bwd`, stride 1, one group, any dilation): flatten
  the padded images into rows of pixels, multiply them once by all f_H·f_W taps
  of the filter side by side, and shift-add the tap products: tap (i, j) of
  output pixel q is product q + o_ij. Nothing is gathered before the matmul;
  chunks of a few images (`taps_chunk`) keep the K-fold products in cache.
  The fast algorithm for wide layers (64 channels, 3x3).

impl="hand" picks one per layer (`hand_algorithm`). impl="auto" (the default)
is lax on GPU/TPU, where cuDNN-like libraries win; on CPU it is "hand" where
rows or taps beat XLA's convolution, and lax elsewhere (`resolve_impl`;
experiments/bench_conv.py measures all of them).
"""

from __future__ import annotations

from functools import partial

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from jaxconv import _args
from jaxconv._args import LAYOUT, conv_output_size  # noqa: F401  (re-exported)

IMPLS = ("auto", "lax", "hand", "hand_autodiff")
HAND_ALGORITHMS = ("im2col", "rows", "taps")


# ---------------------------------------------------------------------------
# The hand-rolled building block: correlation of an already padded input.
# ---------------------------------------------------------------------------


def _views(x_pad, f, s, d, n_out):
    """The f_H·f_W shifted, strided, dilated views of x_pad, each (m, n_H', n_W', n_C)."""
    (f_H, f_W), (s_H, s_W), (d_H, d_W), (n_H, n_W) = f, s, d, n_out
    m, _, _, n_C = x_pad.shape
    views = []
    for i in range(f_H):
        for j in range(f_W):
            start = (0, i * d_H, j * d_W, 0)
            limit = (m, i * d_H + s_H * (n_H - 1) + 1, j * d_W + s_W * (n_W - 1) + 1, n_C)
            views.append(lax.slice(x_pad, start, limit, (1, s_H, s_W, 1)))  # (m, n_H, n_W, n_C)
    return views


def _out_size(n_pad, f, s, d):
    return tuple((n - d_i * (f_i - 1) - 1) // s_i + 1 for n, f_i, s_i, d_i in zip(n_pad, f, s, d))


def _padded_size(x_shape, pads):
    """(n_H_pad, n_W_pad) of an (m, n_H, n_W, n_C) input with padding ((top, bottom), (left, right))."""
    return x_shape[1] + pads[0][0] + pads[0][1], x_shape[2] + pads[1][0] + pads[1][1]


def _patches(x_pad, f, s, d, n_out):
    """im2col: (m, n_H', n_W', f_H·f_W·n_C), tap (i, j) major, channel minor."""
    return jnp.concatenate(_views(x_pad, f, s, d, n_out), axis=-1)


def _correlate(x_pad, w, s, d, groups):
    """Valid cross-correlation of a padded NHWC input with an HWIO filter, no lax conv.

    x_pad: (m, n_H_pad, n_W_pad, n_C); w: (f_H, f_W, n_C / groups, n_C').
    Returns (m, n_H', n_W', n_C') with n' = ⌊(n_pad − d(f−1) − 1)/s⌋ + 1.

    Stacks the views into patches (im2col) and contracts them with the filter
    in one matmul per group.
    """
    f_H, f_W, n_Cg, n_C_out = w.shape
    m, n_H_pad, n_W_pad, n_C = x_pad.shape
    n_out = _out_size((n_H_pad, n_W_pad), (f_H, f_W), s, d)
    G, n_Og = groups, n_C_out // groups
    patches = _patches(x_pad, (f_H, f_W), s, d, n_out)  # (m, n_H', n_W', f_H·f_W·n_C)
    if G == 1:
        return jnp.dot(patches, w.reshape(f_H * f_W * n_C, n_C_out), preferred_element_type=x_pad.dtype)
    patches = patches.reshape(m, *n_out, f_H * f_W, G, n_Cg)  # (m, n_H', n_W', K, G, n_C/G)
    z = jnp.einsum("mhwkgc,kcgo->mhwgo", patches, w.reshape(f_H * f_W, n_Cg, G, n_Og))
    return z.reshape(m, *n_out, n_C_out)


def _pad_input(x, pads):
    return jnp.pad(x, ((0, 0), pads[0], pads[1], (0, 0)))  # (m, n_H + p_top + p_bottom, …, n_C)


def _crop(dX_pad, pads, x_shape):
    (top, _), (left, _) = pads
    return dX_pad[:, top : top + x_shape[1], left : left + x_shape[2], :]  # (m, n_H, n_W, n_C)


# ---------------------------------------------------------------------------
# impl="hand", im2col: forward and hand-derived backward, side by side.
# ---------------------------------------------------------------------------


def _hand_forward(x, w, b, geom):
    """Z = X_pad ⋆ W + b (strided, dilated cross-correlation). Returns (Z, X_pad)."""
    pads, s, d, groups = geom
    x_pad = _pad_input(x, pads)
    z = _correlate(x_pad, w, s, d, groups)  # (m, n_H', n_W', n_C')
    if b is not None:
        z = z + b
    return z, x_pad


@partial(jax.custom_vjp, nondiff_argnums=(3,))
def _hand(x, w, b, geom):
    return _hand_forward(x, w, b, geom)[0]


def _hand_fwd(x, w, b, geom):
    z, x_pad = _hand_forward(x, w, b, geom)
    return z, (x_pad, w, b is not None, x.shape)


def _hand_bwd(geom, res, dZ):
    """Backward of Z = X_pad ⋆ W + b, derived by hand (no lax conv).

    With dZ = ∂J/∂Z of shape (m, n_H', n_W', n_C') and P the im2col patches,
    P[m, h, w, (i, j, c)] = X_pad[m, h·s_H + i·d_H, w·s_W + j·d_W, c], so that
    Z = P · W as one matmul over (i, j, c):

    - db[o]          = Σ_{m,h,w} dZ[m, h, w, o]
    - dW[i, j, c, o] = Σ_{m,h,w} P[m, h, w, (i, j, c)] · dZ[m, h, w, o]      (dW = Pᵀ dZ, one matmul)
    - dP[m, h, w, (i, j, c)] = Σ_o dZ[m, h, w, o] · W[i, j, c, o]            (dP = dZ Wᵀ, one matmul)
      dX_pad[m, h·s_H + i·d_H, w·s_W + j·d_W, c] += dP[m, h, w, (i, j, c)]  (col2im: every patch entry
                       adds back to the pixel it was copied from), dX = crop of dX_pad to the padding.
                       Rows the forward never read (the floor in the size formula) get zero gradient.
      Gathered per input pixel, the col2im sum is the textbook form
      dX_pad = pad(dilate_s(dZ), d(f − 1)) ⋆_d rot180(W)ᵀ: dZ dilated by the stride (s − 1 zeros
      between entries), fully correlated with the flipped filter whose in/out channels are swapped.
      Scattering (col2im) computes the same sums without multiplying the inserted zeros.

    With groups G every sum over c and o stays inside its group.
    """
    x_pad, w, has_bias, x_shape = res
    pads, s, d, G = geom
    f_H, f_W, n_Cg, n_C_out = w.shape
    m, n_H_out, n_W_out, _ = dZ.shape
    n_C, n_Og, K = x_pad.shape[3], n_C_out // G, f_H * f_W

    db = dZ.sum(axis=(0, 1, 2)) if has_bias else None  # (n_C',)

    P = _patches(x_pad, (f_H, f_W), s, d, (n_H_out, n_W_out))  # (m, n_H', n_W', K·n_C)
    if G == 1:
        w_mat = w.reshape(K * n_C, n_C_out)
        dW = jnp.einsum("mhwk,mhwo->ko", P, dZ).reshape(w.shape)  # (f_H, f_W, n_C, n_C')
        dP = jnp.dot(dZ, w_mat.T)  # (m, n_H', n_W', K·n_C)
    else:
        P_g = P.reshape(m, n_H_out, n_W_out, K, G, n_Cg)
        dZ_g = dZ.reshape(m, n_H_out, n_W_out, G, n_Og)
        w_g = w.reshape(K, n_Cg, G, n_Og)
        dW = jnp.einsum("mhwkgc,mhwgo->kcgo", P_g, dZ_g).reshape(w.shape)  # (f_H, f_W, n_C/G, n_C')
        dP = jnp.einsum("mhwgo,kcgo->mhwkgc", dZ_g, w_g).reshape(m, n_H_out, n_W_out, K * n_C)

    # col2im: tap (i, j) of output pixel (h, w) came from X_pad[h·s + i·d, w·s + j·d]; put it back
    # there with a pad whose interior padding (s − 1) spreads the n' outputs s pixels apart.
    zero = jnp.zeros((), dZ.dtype)
    dX_pad = None
    for k in range(K):
        i, j = divmod(k, f_W)
        config = [(0, 0, 0)]
        for start, n_o, n_p, s_i in zip((i * d[0], j * d[1]), (n_H_out, n_W_out), x_pad.shape[1:3], s):
            config.append((start, n_p - start - (n_o - 1) * s_i - 1, s_i - 1))
        config.append((0, 0, 0))
        tap = lax.pad(dP[..., k * n_C : (k + 1) * n_C], zero, config)  # (m, n_H_pad, n_W_pad, n_C)
        dX_pad = tap if dX_pad is None else dX_pad + tap
    return _crop(dX_pad, pads, x_shape), dW, db


_hand.defvjp(_hand_fwd, _hand_bwd)


# ---------------------------------------------------------------------------
# impl="hand", rows (stride 1, dilation 1, one group): forward and hand-derived backward.
# ---------------------------------------------------------------------------


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


def _rows_forward(x, w, b, pads, B):
    """Z = R · T + b with R the input blocks and T the banded filter of one block. Returns (Z, X_pad)."""
    f_H, f_W, n_C, n_C_out = w.shape
    ext_pads, n_W_out, n_blk = _rows_pads(pads, x.shape[2], f_W, B)
    x_pad = _pad_input(x, ext_pads)  # (m, n_H_pad, n_blk·B + f_W − 1, n_C)
    m, n_H_pad = x_pad.shape[:2]
    n_H_out = n_H_pad - f_H + 1
    R = _rows(x_pad, f_H, f_W, n_H_out, B)  # (m·n_H'·n_blk, f_H·(B + f_W − 1)·n_C)
    z = jnp.dot(R, _toeplitz(w, B + f_W - 1), preferred_element_type=x.dtype)  # (m·n_H'·n_blk, B·n_C')
    z = z.reshape(m, n_H_out, n_blk * B, n_C_out)[:, :, :n_W_out]  # block k holds columns k·B … k·B + B − 1
    if b is not None:
        z = z + b
    return z, x_pad


@partial(jax.custom_vjp, nondiff_argnums=(3, 4))
def _hand_rows(x, w, b, pads, B=None):
    return _rows_forward(x, w, b, pads, B or _full_block(x.shape, w.shape, pads))[0]


def _full_block(x_shape, w_shape, pads):
    return _padded_size(x_shape, pads)[1] - w_shape[1] + 1  # one block: every output column


def _rows_fwd(x, w, b, pads, B=None):
    z, x_pad = _rows_forward(x, w, b, pads, B or _full_block(x.shape, w.shape, pads))
    return z, (x_pad, w, b is not None, x.shape)


def _rows_bwd(pads, B, res, dZ):
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
    B = B or _full_block(x_shape, w.shape, pads)
    m, n_H_out, n_W_out, _ = dZ.shape
    n_H_pad, n_W_ext = x_pad.shape[1:3]
    n_in, n_blk = B + f_W - 1, (n_W_ext - f_W + 1) // B

    db = dZ.sum(axis=(0, 1, 2)) if has_bias else None  # (n_C',)

    dZ_mat = jnp.pad(dZ, ((0, 0), (0, 0), (0, n_blk * B - n_W_out), (0, 0))).reshape(m * n_H_out * n_blk, B * n_C_out)
    R = _rows(x_pad, f_H, f_W, n_H_out, B)  # (m·n_H'·n_blk, f_H·n_in·n_C)
    dT = jnp.dot(R.T, dZ_mat).reshape(f_H, n_in, n_C, B, n_C_out)
    E = jnp.asarray(_band(n_in, f_W), w.dtype)  # (f_W, n_in, B)
    dW = jnp.einsum("jab,iacbo->ijco", E, dT)  # (f_H, f_W, n_C, n_C')

    T = _toeplitz(w, n_in).reshape(f_H, n_in, n_C, B, n_C_out)
    dR = jnp.concatenate(
        [
            jnp.dot(dZ_mat[:, b0 * n_C_out : b1 * n_C_out], T[:, a0:a1, :, b0:b1].reshape(-1, (b1 - b0) * n_C_out).T)
            .reshape(m, n_H_out, n_blk, f_H, a1 - a0, n_C)
            for a0, a1, b0, b1 in _dx_groups(n_in, B, f_W)
        ],
        axis=4,
    )  # (m, n_H', n_blk, f_H, n_in, n_C)
    zero = jnp.zeros((), dZ.dtype)
    dX_pad = None
    for i in range(f_H):  # X_pad[h + i, k·B + a] was copied into R[(h, k), (i, a)]: add it back there
        for k in range(n_blk):
            config = [(0, 0, 0), (i, f_H - 1 - i, 0), (k * B, n_W_ext - k * B - n_in, 0), (0, 0, 0)]
            tap = lax.pad(dR[:, :, k, i], zero, config)  # (m, n_H_pad, n_W_ext, n_C)
            dX_pad = tap if dX_pad is None else dX_pad + tap
    return _crop(dX_pad, pads, x_shape), dW, db


_hand_rows.defvjp(_rows_fwd, _rows_bwd)


# dR = dZ Tᵀ in two groups of input columns when that skips at least a quarter of the
# banded matrix's zeros (LeNet conv2: 98 of 140 column pairs, dR 0.7x the FLOPs; the whole
# LeNet-5 step 1.04-1.10x in three same-process A/Bs at batch 128 and 512, 2-core EPYC).
# Three groups measured no better than two.
ROWS_DX_MAX_FRACTION = 0.75


def _dx_groups(n_in, B, f_W):
    """[(a0, a1, b0, b1)]: input columns [a0, a1) of a block receive only from its output columns [b0, b1)."""

    def group(a0, a1):
        return a0, a1, max(0, a0 - f_W + 1), min(B, a1)

    halves = [group(0, n_in // 2), group(n_in // 2, n_in)]
    work = sum((a1 - a0) * (b1 - b0) for a0, a1, b0, b1 in halves)
    if n_in >= 2 and work <= ROWS_DX_MAX_FRACTION * n_in * B:
        return halves
    return [(0, n_in, 0, B)]


# ---------------------------------------------------------------------------
# impl="hand", taps (stride 1, one group, any dilation): forward and hand-derived backward.
# ---------------------------------------------------------------------------


def _tap_offsets(n_W_pad, f, d):
    """o_k = i·d_H·n_W_pad + j·d_W for k = i·f_W + j: where tap (i, j) reads, in a row-major flattened padded image."""
    return [i * d[0] * n_W_pad + j * d[1] for i in range(f[0]) for j in range(f[1])]


def _taps_geometry(x_pad, w, d):
    """(N, L, offsets): the c·n_H_pad·n_W_pad flattened pixels of a chunk, the L = N − o_last positions every tap can read."""
    c, n_H_pad, n_W_pad, _ = x_pad.shape
    offs = _tap_offsets(n_W_pad, w.shape[:2], d)
    N = c * n_H_pad * n_W_pad
    return N, N - offs[-1], offs


def _taps_chunk_forward(x, w, pads, d):
    """Z of a chunk of c images, without bias: (c, n_H, n_W, n_C) -> (c, n_H', n_W', n_C').

    Flattens the padded chunk into rows X[q, c] (q = (image, row, column)), multiplies it
    once by all K = f_H·f_W taps of the filter side by side, Y = X · [W_1 … W_K]
    (N × K·n_C'), and shift-adds the tap products: Z[q] = Σ_k Y[q + o_k, k]. Positions q
    past the right or bottom edge of an image mix pixels of two rows or images: they are
    computed and dropped.
    """
    f_H, f_W, n_C, n_C_out = w.shape
    x_pad = _pad_input(x, pads)  # (c, n_H_pad, n_W_pad, n_C)
    c, n_H_pad, n_W_pad, _ = x_pad.shape
    N, L, offs = _taps_geometry(x_pad, w, d)
    taps = w.transpose(2, 0, 1, 3).reshape(n_C, len(offs) * n_C_out)  # [W_1 … W_K]: (n_C, K·n_C')
    Y = jnp.dot(x_pad.reshape(N, n_C), taps, preferred_element_type=x.dtype)  # (N, K·n_C')
    z = None
    for k, o in enumerate(offs):
        tap = Y[o : o + L, k * n_C_out : (k + 1) * n_C_out]  # (L, n_C')
        z = tap if z is None else z + tap
    z = jnp.pad(z, ((0, N - L), (0, 0))).reshape(c, n_H_pad, n_W_pad, n_C_out)
    n_H_out, n_W_out = _out_size((n_H_pad, n_W_pad), (f_H, f_W), (1, 1), d)
    return z[:, :n_H_out, :n_W_out]  # (c, n_H', n_W', n_C')


def _taps_chunk_backward(x, dZ, w, pads, d):
    """(dX, dW) of a chunk: the transpose of `_taps_chunk_forward`, derived by hand.

    With dZ zero-extended to the flattened padded grid (the dropped positions get 0):
    - dY[q, k] = dZ[q] · W_kᵀ: one matmul, dZ · [W_1ᵀ … W_Kᵀ]               (L × K·n_C)
    - dX_pad[q + o_k] += dY[q, k]: Y[q + o_k, k] fed Z[q], so its gradient adds back
      there (shift-and-add, transposed); dX = crop of dX_pad to the padding.
    - dW_k = Σ_q X[q + o_k]ᵀ dZ[q]: one matmul Pᵀ dZ with P = [X[o_1 …] … X[o_K …]] (L × K·n_C),
      the im2col patches of the flattened chunk.
    """
    f_H, f_W, n_C, n_C_out = w.shape
    x_pad = _pad_input(x, pads)
    c, n_H_pad, n_W_pad, _ = x_pad.shape
    N, L, offs = _taps_geometry(x_pad, w, d)
    _, n_H_out, n_W_out, _ = dZ.shape
    dZ_flat = jnp.pad(dZ, ((0, 0), (0, n_H_pad - n_H_out), (0, n_W_pad - n_W_out), (0, 0))).reshape(N, n_C_out)[:L]
    taps_T = w.transpose(3, 0, 1, 2).reshape(n_C_out, len(offs) * n_C)  # [W_1ᵀ … W_Kᵀ]: (n_C', K·n_C)
    dY = jnp.dot(dZ_flat, taps_T, preferred_element_type=x.dtype)  # (L, K·n_C)
    dX_flat = None
    for k, o in enumerate(offs):
        tap = jnp.pad(dY[:, k * n_C : (k + 1) * n_C], ((o, N - L - o), (0, 0)))  # (N, n_C)
        dX_flat = tap if dX_flat is None else dX_flat + tap
    dX = _crop(dX_flat.reshape(c, n_H_pad, n_W_pad, n_C), pads, x.shape)
    X = x_pad.reshape(N, n_C)
    P = jnp.concatenate([X[o : o + L] for o in offs], axis=1)  # (L, K·n_C)
    dW = jnp.dot(P.T, dZ_flat, preferred_element_type=x.dtype).reshape(w.shape)
    return dX, dW


def _chunks(a, c):
    return a.reshape(a.shape[0] // c, c, *a.shape[1:])  # (m/c, c, ...)


@partial(jax.custom_vjp, nondiff_argnums=(3, 4, 5))
def _hand_taps(x, w, b, pads, d, c):
    return _taps_forward(x, w, b, pads, d, c)


def _taps_forward(x, w, b, pads, d, c):
    """Z = X_pad ⋆ W + b over chunks of c images (`taps_chunk`), one chunk at a time (lax.map)."""
    if c == x.shape[0]:
        z = _taps_chunk_forward(x, w, pads, d)
    else:
        z = lax.map(lambda x_c: _taps_chunk_forward(x_c, w, pads, d), _chunks(x, c))
        z = z.reshape(x.shape[0], *z.shape[2:])
    return z if b is None else z + b


def _taps_fwd(x, w, b, pads, d, c):
    return _taps_forward(x, w, b, pads, d, c), (x, w, b is not None)


def _taps_bwd(pads, d, c, res, dZ):
    """db = Σ dZ; dX and dW chunk by chunk (`_taps_chunk_backward`), dW summed over the chunks."""
    x, w, has_bias = res
    db = dZ.sum(axis=(0, 1, 2)) if has_bias else None
    if c == x.shape[0]:
        dX, dW = _taps_chunk_backward(x, dZ, w, pads, d)
        return dX, dW, db

    def chunk(dW, xz):
        dX_c, dW_c = _taps_chunk_backward(*xz, w, pads, d)
        return dW + dW_c, dX_c

    dW, dX = lax.scan(chunk, jnp.zeros_like(w), (_chunks(x, c), _chunks(dZ, c)))
    return dX.reshape(x.shape), dW, db


_hand_taps.defvjp(_taps_fwd, _taps_bwd)


# The taps algorithm's products Y are K = f_H·f_W times larger than the output: keep one
# chunk's within this many bytes, so the shift-and-add reads them from cache. Measured on the
# 64->64 3x3 SAME layer at m = 64 (2-core EPYC, forward+backward): 1 image per chunk 150 ms,
# 2 images 139 ms, 4 images 158 ms, all 64 at once far slower; lax 192 ms.
TAPS_CHUNK_BYTES = 6 << 20


def taps_chunk(x_shape, w_shape, pads) -> int:
    """c, the images per chunk of the taps algorithm: the largest divisor of m whose tap products fit TAPS_CHUNK_BYTES."""
    m = max(int(x_shape[0]), 1)
    f_H, f_W, n_C, n_C_out = w_shape
    n_H_pad, n_W_pad = _padded_size(x_shape, pads)
    per_image = 4 * n_H_pad * n_W_pad * f_H * f_W * max(n_C, n_C_out)
    fits = max(1, TAPS_CHUNK_BYTES // max(per_image, 1))
    return max(c for c in range(1, min(m, fits) + 1) if m % c == 0)


# The rows algorithm multiplies by a banded matrix W_pad/f_W times larger than the filter:
# use it while that matrix stays small and mostly useful (LeNet: 6.4x and 2.8x), im2col otherwise.
ROWS_MAX_WASTE = 8  # n_W_pad / f_W
ROWS_MAX_BAND = 1 << 20  # elements of the banded matrix (4 MiB in float32)


# Block-banded rows: split the output columns into blocks of B = f_W − 1 (waste (2f_W − 2)/f_W < 2x
# instead of n_W_pad/f_W) for layers whose full band wastes more than ROWS_BLOCK_WASTE times the direct
# FLOPs, while the matmul has at most ROWS_BLOCK_MAX_M rows m·n_H' (its blocked input, (B + f_W − 1)/B
# times the rows', then stays in cache). Measured in the full LeNet-5 training step (experiments/benchmark.py,
# 2-core EPYC): conv1 in blocks of 4 is 1.18x faster at batch 128 (m·n_H' = 3584) and 0.94x at batch 512
# (14336), where the one-block form is kept; conv2 (waste 2.8x) is fastest in one block at both sizes.
ROWS_BLOCK_WASTE = 4
ROWS_BLOCK_MAX_M = 4096


def rows_block(x_shape, w_shape, pads) -> int:
    """B, the output columns per block of the rows algorithm (`_rows`): f_W − 1 or all n_W' of them."""
    f_H, f_W = w_shape[:2]
    n_H_pad, n_W_pad = _padded_size(x_shape, pads)
    n_H_out = n_H_pad - f_H + 1
    full = n_W_pad - f_W + 1
    if f_W > 1 and n_W_pad > ROWS_BLOCK_WASTE * f_W and max(x_shape[0], 1) * n_H_out <= ROWS_BLOCK_MAX_M:
        return min(f_W - 1, full)
    return full


def hand_algorithm(x_shape, w_shape, geom) -> str:
    """The hand-rolled algorithm impl="hand" uses for this layer: "rows", "taps" or "im2col".

    "rows" needs stride 1, dilation 1 and one group, and is chosen while its
    banded filter matrix is at most ROWS_MAX_WASTE times wider than the filter
    and holds at most ROWS_MAX_BAND elements; "taps" takes the other layers
    with stride 1 and one group; "im2col" handles everything else.
    """
    pads, s, d, groups = geom
    f_H, f_W, n_Cg, n_C_out = w_shape
    n_W_pad = _padded_size(x_shape, pads)[1]
    n_W_out = n_W_pad - f_W + 1
    band = f_H * n_W_pad * n_Cg * n_W_out * n_C_out
    if s == (1, 1) and d == (1, 1) and groups == 1 and n_W_pad <= ROWS_MAX_WASTE * f_W and band <= ROWS_MAX_BAND:
        return "rows"
    if s == (1, 1) and groups == 1:
        return "taps"
    return "im2col"


def _same_varying_axes(*arrays):
    """The arrays, each cast to vary over every manual mesh axis any of them varies over.

    Inside `shard_map`, x (a shard of the batch) varies over the data axis while a
    replicated filter does not; a custom_vjp's backward must then return dW with w's
    type, but dW (a sum over this shard's examples) varies. Casting w to varying
    first makes its cotangent varying-typed too, and JAX's transpose of the cast is
    the psum over the axis that adds up the shards' dW, as autodiff of lax's conv
    would. Outside shard_map (or on a JAX without varying types) a no-op.
    """
    vma = [_varying_axes(a) for a in arrays]
    every = frozenset().union(*vma)
    if not every:
        return arrays
    cast = getattr(lax, "pcast", None)
    if cast is None:  # jax < 0.8.2 spelled it pvary
        cast = lambda a, axes, to: lax.pvary(a, axes)  # noqa: E731
    return tuple(
        a if a is None or v == every else cast(a, tuple(sorted(every - v)), to="varying") for a, v in zip(arrays, vma)
    )


def _varying_axes(a) -> frozenset:
    """The manual mesh axes `a` varies over inside shard_map (empty outside, or on JAX without the notion)."""
    typeof = getattr(jax, "typeof", None)
    if a is None or typeof is None:
        return frozenset()
    aval = typeof(a)
    mat = getattr(aval, "manual_axis_type", None)  # jax >= 0.8
    if mat is not None:
        return frozenset(mat.varying)
    return frozenset(getattr(aval, "vma", ()))  # jax 0.6-0.7


# ---------------------------------------------------------------------------
# Public op.
# ---------------------------------------------------------------------------


def conv_geometry(x_shape, w_shape, *, stride=1, padding=0, dilation=1, groups=1, op="conv2d"):
    """Check a convolution's arguments and return (pads, s, d, groups, out_shape).

    x_shape: (m, n_H, n_W, n_C); w_shape: (f_H, f_W, n_C / groups, n_C').
    """
    s = _args.pair(stride, "stride", op, minimum=1)
    d = _args.pair(dilation, "dilation", op, minimum=1)
    if len(w_shape) != 4:
        raise ValueError(f"{op}: `w` must have shape (f_H, f_W, n_C / groups, n_C') (HWIO), got shape {tuple(w_shape)}.")
    if isinstance(groups, bool) or not isinstance(groups, int) or groups < 1:
        raise ValueError(f"{op}: `groups` must be an int >= 1, got {groups!r}.")
    m, n_H, n_W, n_C = x_shape
    f_H, f_W, n_Cg, n_C_out = w_shape
    if n_C % groups:
        raise ValueError(f"{op}: `groups` (={groups}) must divide the input channels n_C (={n_C}); pick groups among the divisors of {n_C}.")
    if n_C_out % groups:
        raise ValueError(
            f"{op}: `groups` (={groups}) must divide the filter's output channels n_C' (={n_C_out}); "
            f"use a number of filters that is a multiple of groups."
        )
    if n_Cg * groups != n_C:
        raise ValueError(
            f"{op}: input channels n_C (={n_C}) must equal the filter's n_C_in (={n_Cg}) * groups (={groups}) "
            f"= {n_Cg * groups}; give the filter shape (f_H, f_W, {n_C // groups}, n_C') or change the input."
        )
    pads = _args.padding_pairs(padding, op, n=(n_H, n_W), f=(f_H, f_W), s=s, d=d)
    n_out = _args.window_output_sizes(op, "filter", (n_H, n_W), (f_H, f_W), pads, s, d)
    return pads, s, d, groups, (m, *n_out, n_C_out)


# impl="auto" uses taps where it beat lax forward+backward (`experiments/bench_conv.py --more`,
# 2-core EPYC, time / lax's time: 64->64 3x3 on 32x32 0.77x, 3->32 0.55x, 16->32 0.82x, 32->64 on
# 16x16 0.82x, 1x1 64->128 0.29x) and leaves lax where it did not: 5x5 filters (K = 25 tap
# products per output, 1.83x) and small images whose padding is a large share of the flattened
# grid (128->128 on 8x8 SAME: 10·10 padded pixels for 8·8 outputs, 1.44x).
TAPS_AUTO_MAX_TAPS = 9  # f_H·f_W
TAPS_AUTO_MAX_WASTE = 1.3  # padded pixels per output pixel


def _taps_pays(x_shape, w_shape, pads, d) -> bool:
    f = w_shape[:2]
    n_pad = _padded_size(x_shape, pads)
    n_out = _out_size(n_pad, f, (1, 1), d)  # the flattened grid's positions that are real outputs
    return f[0] * f[1] <= TAPS_AUTO_MAX_TAPS and n_pad[0] * n_pad[1] <= TAPS_AUTO_MAX_WASTE * n_out[0] * n_out[1]


def resolve_impl(impl: str, x_shape=None, w_shape=None, geom=None) -> str:
    """The implementation impl="auto" stands for: "lax" on GPU/TPU; on CPU "hand" where it is faster, else "lax".

    Read at trace time (`jax.default_backend()`). On GPU and TPU lax's
    convolution (cuDNN and friends) is fastest. On CPU, "hand" where its rows
    algorithm applies (narrow layers like LeNet's: 2-6x faster than lax
    forward+backward) or its taps algorithm pays (3x3 and 1x1 filters on images
    larger than about 16x16: 1.2-3.4x faster), lax elsewhere (strides, groups,
    5x5 filters on wide layers, small images); experiments/bench_conv.py
    measures them. Without shapes, "auto" on CPU means "hand".
    """
    if impl != "auto":
        return impl
    if jax.default_backend() != "cpu":
        return "lax"
    if geom is None:
        return "hand"
    algorithm = hand_algorithm(x_shape, w_shape, geom)
    if algorithm == "rows" or (algorithm == "taps" and _taps_pays(x_shape, w_shape, geom[0], geom[2])):
        return "hand"
    return "lax"


def conv2d(x, w, b=None, *, stride=1, padding=0, dilation=1, groups=1, impl="auto"):
    """2-D convolution (cross-correlation) of NHWC activations with an HWIO filter.

    Args:
      x: (m, n_H, n_W, n_C), or one example (n_H, n_W, n_C).
      w: (f_H, f_W, n_C / groups, n_C').
      b: (n_C',) or None.
      stride: s, an int or (s_H, s_W).
      padding: p, (p_H, p_W), ((top, bottom), (left, right)), "VALID" or "SAME"
        (output ⌈n/s⌉; an odd total puts the extra row/column at the bottom/right).
      dilation: d, an int or (d_H, d_W): filter taps d pixels apart.
      groups: split the channels into this many independent convolutions.
      impl: "auto" (default: on CPU "hand" for narrow layers where its rows
        algorithm applies and "lax" otherwise, "lax" on GPU/TPU; see `resolve_impl`),
        "lax" (lax.conv_general_dilated), "hand" (hand-rolled forward and
        hand-derived backward; the algorithm, rows or im2col, is chosen per layer
        by `hand_algorithm`) or "hand_autodiff" (hand-rolled im2col forward, JAX
        autodiff). All give the same values and gradients up to float rounding.

    Returns:
      (m, n_H', n_W', n_C') with n' = ⌊(n + 2p − d(f−1) − 1)/s⌋ + 1
      (or (n_H', n_W', n_C') for one example).

    >>> x = jnp.ones((1, 6, 6, 1)); w = jnp.ones((3, 3, 1, 2))
    >>> conv2d(x, w, padding="SAME").shape
    (1, 6, 6, 2)
    """
    if impl not in IMPLS:
        raise ValueError(f"conv2d: unknown `impl` {impl!r}. It needs to be one of {list(IMPLS)}.")
    x, single = _args.check_rank(x, "conv2d")
    w_shape = tuple(getattr(w, "shape", ()))
    pads, s, d, groups, out_shape = conv_geometry(
        x.shape, w_shape, stride=stride, padding=padding, dilation=dilation, groups=groups
    )
    if b is not None and tuple(getattr(b, "shape", ())) != (w_shape[3],):
        raise ValueError(
            f"conv2d: `b` must have shape (n_C',) = ({w_shape[3]},) to match the filter, got {tuple(getattr(b, 'shape', ()))}; "
            f"pass one bias per filter, or b=None."
        )
    if x.dtype != w.dtype:
        raise TypeError(f"conv2d: `x` ({x.dtype}) and `w` ({w.dtype}) must have the same dtype; cast one with .astype().")
    geom = (pads, s, d, groups)
    impl = resolve_impl(impl, x.shape, w_shape, geom)
    if impl == "lax":
        z = lax.conv_general_dilated(
            x, w, window_strides=s, padding=pads, rhs_dilation=d, dimension_numbers=LAYOUT, feature_group_count=groups
        )
        if b is not None:
            z = z + b
    elif impl == "hand":
        x, w, b = _same_varying_axes(x, w, b)
        algorithm = hand_algorithm(x.shape, w_shape, geom)
        if algorithm == "rows":
            z = _hand_rows(x, w, b, pads, rows_block(x.shape, w_shape, pads))
        elif algorithm == "taps":
            z = _hand_taps(x, w, b, pads, d, taps_chunk(x.shape, w_shape, pads))
        else:
            z = _hand(x, w, b, geom)
    else:
        z = _hand_forward(x, w, b, geom)[0]
    return z[0] if single else z
