"""2-D convolution, two ways: on `lax.conv_general_dilated`, and hand-rolled.

Layout (see `jaxconv._args.LAYOUT`): x is NHWC (m, n_H, n_W, n_C), the filter
is HWIO (f_H, f_W, n_C / groups, n_C'), the bias is (n_C',). Convolution here
is cross-correlation, as in the notes and in lax:

    Z[m, h, w, o] = b[o] + Σ_{i, j, c} X_pad[m, h·s_H + i·d_H, w·s_W + j·d_W, c] · W[i, j, c, o]

The hand-rolled convolution never calls a lax convolution primitive: it pads,
takes the f_H·f_W shifted, strided, dilated views of the input and contracts
them with the filter (`_correlate`). Its backward pass (`_hand_bwd`) is
derived by hand and sits right below its forward (`_hand_fwd`).
"""

from __future__ import annotations

from functools import partial

import jax
import jax.numpy as jnp
from jax import lax

from jaxconv import _args
from jaxconv._args import LAYOUT, conv_output_size  # noqa: F401  (re-exported)

IMPLS = ("lax", "hand", "hand_autodiff")


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


def _correlate(x_pad, w, s, d, groups):
    """Valid cross-correlation of a padded NHWC input with an HWIO filter, no lax conv.

    x_pad: (m, n_H_pad, n_W_pad, n_C); w: (f_H, f_W, n_C / groups, n_C').
    Returns (m, n_H', n_W', n_C') with n' = ⌊(n_pad − d(f−1) − 1)/s⌋ + 1.

    Stacks the views into patches (im2col) and contracts them with the filter
    in one matmul per group.
    """
    f_H, f_W, n_Cg, n_C_out = w.shape
    m, n_H_pad, n_W_pad, n_C = x_pad.shape
    n_out = tuple((n - d_i * (f_i - 1) - 1) // s_i + 1 for n, f_i, s_i, d_i in zip((n_H_pad, n_W_pad), (f_H, f_W), s, d))
    G, n_Og = groups, n_C_out // groups
    views = _views(x_pad, (f_H, f_W), s, d, n_out)
    if G == 1:
        patches = jnp.concatenate(views, axis=-1)  # (m, n_H', n_W', f_H·f_W·n_C)
        return jnp.dot(patches, w.reshape(f_H * f_W * n_C, n_C_out), preferred_element_type=x_pad.dtype)
    patches = jnp.stack(views, axis=3).reshape(m, *n_out, f_H * f_W, G, n_Cg)  # (m, n_H', n_W', K, G, n_C/G)
    z = jnp.einsum("mhwkgc,kcgo->mhwgo", patches, w.reshape(f_H * f_W, n_Cg, G, n_Og))
    return z.reshape(m, *n_out, n_C_out)


def _flip_transpose(w, groups):
    """Filter of the input gradient: flipped in space, in/out channels swapped per group.

    (f_H, f_W, n_C/G, n_C') -> (f_H, f_W, n_C'/G, n_C).
    """
    f_H, f_W, n_Cg, n_C_out = w.shape
    G = groups
    w = w[::-1, ::-1].reshape(f_H, f_W, n_Cg, G, n_C_out // G)
    return w.transpose(0, 1, 4, 3, 2).reshape(f_H, f_W, n_C_out // G, G * n_Cg)


# ---------------------------------------------------------------------------
# impl="hand": forward and hand-derived backward, side by side.
# ---------------------------------------------------------------------------


def _hand_forward(x, w, b, geom):
    """Z = X_pad ⋆ W + b (strided, dilated cross-correlation). Returns (Z, X_pad)."""
    pads, s, d, groups = geom
    x_pad = jnp.pad(x, ((0, 0), pads[0], pads[1], (0, 0)))  # (m, n_H + p_top + p_bottom, …, n_C)
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

    With dZ = ∂J/∂Z of shape (m, n_H', n_W', n_C'):

    - db[o]          = Σ_{m,h,w} dZ[m, h, w, o]
    - dW[i, j, c, o] = Σ_{m,h,w} X_pad[m, h·s_H + i·d_H, w·s_W + j·d_W, c] · dZ[m, h, w, o]
                       (the padded input correlated with dZ, one contraction per filter tap)
    - dX_pad         = pad(dilate_s(dZ), (f−1)·d) ⋆_d rot180(W)ᵀ, dX = crop of dX_pad to the padding:
                       dZ dilated by the stride (s − 1 zeros between entries), padded by d(f − 1)
                       on each side, fully correlated (stride 1, dilation d) with the filter
                       rotated by 180° and its in/out channels swapped, then the input's padding
                       cropped off. Rows the forward never read (the floor in the size formula)
                       get zero gradient.

    With groups G every sum over c and o stays inside its group.
    """
    x_pad, w, has_bias, x_shape = res
    pads, s, d, G = geom
    f_H, f_W, n_Cg, n_C_out = w.shape
    m, n_H_out, n_W_out, _ = dZ.shape
    n_Og = n_C_out // G

    db = dZ.sum(axis=(0, 1, 2)) if has_bias else None  # (n_C',)

    views = _views(x_pad, (f_H, f_W), s, d, (n_H_out, n_W_out))  # f_H·f_W × (m, n_H', n_W', n_C)
    dZ_g = dZ.reshape(m, n_H_out, n_W_out, G, n_Og)
    dW = jnp.stack(
        [jnp.einsum("mhwgc,mhwgo->cgo", v.reshape(m, n_H_out, n_W_out, G, n_Cg), dZ_g) for v in views]
    ).reshape(f_H, f_W, n_Cg, n_C_out)  # (f_H, f_W, n_C/G, n_C')

    n_pad = x_pad.shape[1:3]
    config = [(0, 0, 0)]
    for n_o, n_p, f_i, s_i, d_i in zip((n_H_out, n_W_out), n_pad, (f_H, f_W), s, d):
        full = d_i * (f_i - 1)
        extra = n_p - ((n_o - 1) * s_i + 1 + full)  # rows of X_pad past the last window
        config.append((full, full + extra, s_i - 1))
    config.append((0, 0, 0))
    dZ_full = lax.pad(dZ, jnp.zeros((), dZ.dtype), config)  # (m, n_H_pad + d(f−1), …, n_C')
    dX_pad = _correlate(dZ_full, _flip_transpose(w, G), (1, 1), d, G)  # (m, n_H_pad, n_W_pad, n_C)
    (top, _), (left, _) = pads
    dX = dX_pad[:, top : top + x_shape[1], left : left + x_shape[2], :]  # (m, n_H, n_W, n_C)
    return dX, dW, db


_hand.defvjp(_hand_fwd, _hand_bwd)


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


def conv2d(x, w, b=None, *, stride=1, padding=0, dilation=1, groups=1, impl="lax"):
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
      impl: "lax" (lax.conv_general_dilated), "hand" (hand-rolled forward and
        hand-derived backward) or "hand_autodiff" (hand-rolled forward, JAX autodiff).

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
    if impl == "lax":
        z = lax.conv_general_dilated(
            x, w, window_strides=s, padding=pads, rhs_dilation=d, dimension_numbers=LAYOUT, feature_group_count=groups
        )
        if b is not None:
            z = z + b
    elif impl == "hand":
        z = _hand(x, w, b, geom)
    else:
        z = _hand_forward(x, w, b, geom)[0]
    return z[0] if single else z
