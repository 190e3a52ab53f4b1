"""Plain float64 NumPy references for jaxconv's ops, in the spirit of jax's `_src/lax_reference.py`.

Everything here is written straight from the definitions in the notes, with
loops over filter taps, windows and pixels, and shares no code with the rest
of jaxconv (not even argument checking), so a test that compares the two
compares two independent readings of the same formula. One module per family:
`conv` (convolution, its adjoint, the transposed convolution; 2-D and N-D), `pool`, `nn`
(dense, activations, losses), `norm` (layer, group, instance normalisation),
`upsampling` (interpolation, pixel shuffle); `common` holds the tolerances and
the argument normalisation they share.

Layout: x NHWC (m, n_H, n_W, n_C), w HWIO (f_H, f_W, n_C / G, n_C') (the N-D conv: x (m, *n, n_C),
w (*f, n_C / G, n_C'), NWC/WIO in 1-D, NDHWC/DHWIO in 3-D); the norms and
interpolation take any number of spatial axes, channels last: (m, *spatial, n_C).
Every function returns float64 NumPy arrays. Arguments are assumed valid.

Tolerances per dtype live in `TOLERANCES`, in one place; `tol(dtype)` reads it.
"""

from jaxconv.reference.common import TOLERANCES, batched, out_size, pad, pads_of, pair, tol
from jaxconv.reference.conv import conv2d, conv2d_vjp, conv_nd, conv_nd_vjp, conv_transpose2d, conv_transpose_nd, pads_nd
from jaxconv.reference.nn import (
    activation_grad,
    dense,
    elu,
    gelu,
    leaky_relu,
    log_softmax,
    relu,
    relu6,
    sigmoid,
    silu,
    softmax_cross_entropy,
    softplus,
)
from jaxconv.reference.norm import group_norm, instance_norm, layer_norm
from jaxconv.reference.pool import (
    adaptive_avg_pool,
    adaptive_max_pool,
    adaptive_windows,
    avg_pool,
    avg_pool_vjp,
    global_avg_pool,
    max_pool,
    max_pool_vjp,
    max_unpool,
    pool_out_size,
)
from jaxconv.reference.pool import (  # any number of spatial axes, and the 1-D / 3-D names
    adaptive_avg_pool1d,
    adaptive_avg_pool3d,
    adaptive_avg_pool_nd,
    adaptive_max_pool1d,
    adaptive_max_pool3d,
    adaptive_max_pool_nd,
    avg_pool1d,
    avg_pool3d,
    avg_pool_nd,
    avg_pool_nd_vjp,
    global_avg_pool1d,
    global_avg_pool3d,
    max_pool1d,
    max_pool3d,
    max_pool_nd,
    max_pool_nd_vjp,
)
from jaxconv.reference.upsampling import interpolate, output_size, pixel_shuffle, pixel_unshuffle

__all__ = [
    "TOLERANCES",
    "activation_grad",
    "adaptive_avg_pool",
    "adaptive_max_pool",
    "adaptive_windows",
    "avg_pool",
    "avg_pool_vjp",
    "batched",
    "conv2d",
    "conv2d_vjp",
    "conv_nd",
    "conv_nd_vjp",
    "conv_transpose2d",
    "conv_transpose_nd",
    "dense",
    "elu",
    "gelu",
    "global_avg_pool",
    "group_norm",
    "instance_norm",
    "interpolate",
    "layer_norm",
    "leaky_relu",
    "log_softmax",
    "max_pool",
    "max_pool_vjp",
    "max_unpool",
    "out_size",
    "output_size",
    "pad",
    "pads_nd",
    "pads_of",
    "pair",
    "pixel_shuffle",
    "pixel_unshuffle",
    "pool_out_size",
    "relu",
    "relu6",
    "sigmoid",
    "silu",
    "softmax_cross_entropy",
    "softplus",
    "tol",
    "adaptive_avg_pool1d",
    "adaptive_avg_pool3d",
    "adaptive_avg_pool_nd",
    "adaptive_max_pool1d",
    "adaptive_max_pool3d",
    "adaptive_max_pool_nd",
    "avg_pool1d",
    "avg_pool3d",
    "avg_pool_nd",
    "avg_pool_nd_vjp",
    "global_avg_pool1d",
    "global_avg_pool3d",
    "max_pool1d",
    "max_pool3d",
    "max_pool_nd",
    "max_pool_nd_vjp",
]
