"""im2col: the notes' convolution, forward and hand-derived backward (any stride, dilation, groups).

    Z[m, h, w, o] = b[o] + Σ_{i, j, c} X_pad[m, h·s_H + i·d_H, w·s_W + j·d_W, c] · W[i, j, c, o]

The forward copies every window into a row of patches P and multiplies P by the
filter in one matmul; the backward transposes both steps: a matmul, and col2im,
which adds every patch entry's gradient back to the pixel it was copied from.
No lax convolution primitive anywhere.
"""

from __future__ import annotations

from functools import partial

import jax
import jax.numpy as jnp
from jax import lax

from jaxconv.conv.geometry import Plan, acc_dtype, bias_grad, crop, out_size, pad_input, place


def views(x_pad, f, s, d, n_out):
    """The f_H·f_W shifted, strided, dilated views of x_pad, each (m, n_H', n_W', n_C).

    View (i, j) holds X_pad[m, h·s_H + i·d_H, w·s_W + j·d_W, c] at [m, h, w, c].
    """
    (f_H, f_W), (s_H, s_W), (d_H, d_W), (n_H, n_W) = f, s, d, n_out
    m, _, _, n_C = x_pad.shape
    out = []
    for i in range(f_H):
        for j in range(f_W):
            start = (0, i * d_H, j * d_W, 0)
            limit = (m, i * d_H + s_H * (n_H - 1) + 1, j * d_W + s_W * (n_W - 1) + 1, n_C)
            out.append(lax.slice(x_pad, start, limit, (1, s_H, s_W, 1)))  # (m, n_H', n_W', n_C)
    return out


def patches(x_pad, f, s, d, n_out):
    """P[m, h, w, (i, j, c)] = X_pad[m, h·s_H + i·d_H, w·s_W + j·d_W, c]: (m, n_H', n_W', f_H·f_W·n_C)."""
    return jnp.concatenate(views(x_pad, f, s, d, n_out), axis=-1)


def forward(x, w, b, plan: Plan):
    """Z = P · W + b, the patches times the filter. Returns (Z, X_pad).

    x: (m, n_H, n_W, n_C); w: (f_H, f_W, n_C/G, n_C'); b: (n_C',) or None; Z: (m, n_H', n_W', n_C').
    """
    f_H, f_W, n_Cg, n_C_out = w.shape
    G, n_Og, K = plan.groups, n_C_out // plan.groups, f_H * f_W
    acc = acc_dtype(x.dtype)  # sums in float32 for bfloat16/float16
    x_pad = pad_input(x, plan.pads)  # (m, n_H_pad, n_W_pad, n_C)
    m, n_H_pad, n_W_pad, n_C = x_pad.shape
    n_out = out_size((n_H_pad, n_W_pad), (f_H, f_W), plan.stride, plan.dilation)  # (n_H', n_W')
    P = patches(x_pad, (f_H, f_W), plan.stride, plan.dilation, n_out)  # (m, n_H', n_W', K·n_C)
    if G == 1:
        z = jnp.dot(P, w.reshape(K * n_C, n_C_out), preferred_element_type=acc)  # Z = P · W
    else:  # Z_g = P_g · W_g for each group g of channels
        P_g = P.reshape(m, *n_out, K, G, n_Cg)
        z = jnp.einsum("mhwkgc,kcgo->mhwgo", P_g, w.reshape(K, n_Cg, G, n_Og), preferred_element_type=acc)
        z = z.reshape(m, *n_out, n_C_out)
    if b is not None:
        z = z + b  # + b[o]
    return z.astype(x.dtype), x_pad


@partial(jax.custom_vjp, nondiff_argnums=(3,))
def conv(x, w, b, plan: Plan):
    """im2col convolution with its hand-derived backward (`backward`): (m, n_H, n_W, n_C) -> (m, n_H', n_W', n_C')."""
    return forward(x, w, b, plan)[0]


def _fwd(x, w, b, plan):
    z, x_pad = forward(x, w, b, plan)
    return z, (x_pad, w, b is not None, x.shape)


def backward(plan: Plan, res, dZ):
    """Backward of Z = P · W + b, derived by hand. Returns (dX, dW, db).

    dZ = ∂J/∂Z: (m, n_H', n_W', n_C'). With G groups every sum over c and o stays inside its group.
    """
    x_pad, w, has_bias, x_shape = res
    db = bias_grad(dZ) if has_bias else None  # db[o] = Σ_{m,h,w} dZ[m, h, w, o]
    return input_grad(dZ, w, plan, x_pad.shape, x_shape), weight_grad(x_pad, dZ, w.shape, plan), db


def weight_grad(x_pad, dZ, w_shape, plan: Plan):
    """dW = Pᵀ · dZ: dW[i, j, c, o] = Σ_{m,h,w} P[m, h, w, (i, j, c)] · dZ[m, h, w, o]. Returns (f_H, f_W, n_C/G, n_C')."""
    f_H, f_W, n_Cg, n_C_out = w_shape
    m, n_H_out, n_W_out, _ = dZ.shape
    G, K, acc = plan.groups, f_H * f_W, acc_dtype(dZ.dtype)
    P = patches(x_pad, (f_H, f_W), plan.stride, plan.dilation, (n_H_out, n_W_out))  # (m, n_H', n_W', K·n_C)
    if G == 1:
        dW = jnp.einsum("mhwk,mhwo->ko", P, dZ, preferred_element_type=acc)  # dW = Pᵀ · dZ
    else:
        P_g, dZ_g = P.reshape(m, n_H_out, n_W_out, K, G, n_Cg), dZ.reshape(m, n_H_out, n_W_out, G, n_C_out // G)
        dW = jnp.einsum("mhwkgc,mhwgo->kcgo", P_g, dZ_g, preferred_element_type=acc)  # dW_g = P_gᵀ · dZ_g
    return dW.reshape(w_shape).astype(dZ.dtype)


def input_grad(dZ, w, plan: Plan, x_pad_shape, x_shape):
    """dX = crop(col2im(dZ · Wᵀ)): every patch entry's gradient added back to the pixel it was copied from.

    dZ: (m, n_H', n_W', n_C'); w: (f_H, f_W, n_C/G, n_C'). Returns (m, n_H, n_W, n_C).
    Gathered per input pixel, col2im is the textbook dX_pad = pad(dilate_s(dZ), d(f − 1)) ⋆_d rot180(W)ᵀ;
    scattering computes the same sums without multiplying the zeros a dilation by s inserts.
    """
    (s_H, s_W), (d_H, d_W), G = plan.stride, plan.dilation, plan.groups
    f_H, f_W, n_Cg, n_C_out = w.shape
    m, n_H_out, n_W_out, _ = dZ.shape
    n_C, K, acc = n_Cg * G, f_H * f_W, acc_dtype(dZ.dtype)
    if G == 1:
        dP = jnp.dot(dZ, w.reshape(K * n_C, n_C_out).T, preferred_element_type=acc)  # dP = dZ · Wᵀ: (m, n_H', n_W', K·n_C)
    else:
        dZ_g, w_g = dZ.reshape(m, n_H_out, n_W_out, G, n_C_out // G), w.reshape(K, n_Cg, G, n_C_out // G)
        dP = jnp.einsum("mhwgo,kcgo->mhwkgc", dZ_g, w_g, preferred_element_type=acc).reshape(m, n_H_out, n_W_out, K * n_C)  # dP_g = dZ_g · W_gᵀ

    # col2im: P[m, h, w, (i, j, c)] was copied from X_pad[m, h·s_H + i·d_H, w·s_W + j·d_W, c],
    # so dX_pad[m, h·s_H + i·d_H, w·s_W + j·d_W, c] += dP[m, h, w, (i, j, c)] for every tap (i, j).
    dX_pad = jnp.zeros(x_pad_shape, acc)  # rows the forward never read keep 0
    for k in range(K):
        i, j = divmod(k, f_W)
        dP_tap = dP[..., k * n_C : (k + 1) * n_C]  # (m, n_H', n_W', n_C)
        dX_pad = dX_pad + place(dP_tap, at=(i * d_H, j * d_W), step=(s_H, s_W), shape=x_pad_shape)
    return crop(dX_pad, plan.pads, x_shape).astype(dZ.dtype)  # dX = dX_pad without the padding


conv.defvjp(_fwd, backward)
