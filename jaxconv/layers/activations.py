"""Activation layers: elementwise, no parameters, any shape; each wraps the function of `jaxconv.nn`."""

from __future__ import annotations

from typing import Callable

import jax.numpy as jnp

from jaxconv import nn
from jaxconv.layers.core import Layer, parameter_free


def _activation(name, kind, fn, with_options=False) -> Callable[..., Layer]:
    """The constructor `name` of a layer applying `fn`; with_options: it takes fn's options (LeakyRelu(negative_slope=0.2))."""
    if with_options:

        def constructor(*args, **options) -> Layer:
            fn(jnp.zeros(()), *args, **options)  # checks the options now, at construction
            return parameter_free(name, kind, tuple, lambda x: fn(x, *args, **options))

        doc = f"Elementwise {kind} layer (no parameters); options as for `jaxconv.nn.{fn.__name__}`."
    else:

        def constructor() -> Layer:
            return parameter_free(name, kind, tuple, fn)

        doc = f"Elementwise {kind} layer (no parameters)."
    constructor.__name__ = constructor.__qualname__ = name
    constructor.__doc__ = doc
    return constructor


Relu = _activation("Relu", "relu", nn.relu)
LeakyRelu = _activation("LeakyRelu", "leaky_relu", nn.leaky_relu, with_options=True)
Relu6 = _activation("Relu6", "relu6", nn.relu6)
Gelu = _activation("Gelu", "gelu", nn.gelu, with_options=True)
Elu = _activation("Elu", "elu", nn.elu, with_options=True)
Softplus = _activation("Softplus", "softplus", nn.softplus, with_options=True)
Silu = _activation("Silu", "silu", nn.silu)
Tanh = _activation("Tanh", "tanh", nn.tanh)
Sigmoid = _activation("Sigmoid", "sigmoid", nn.sigmoid)
Softmax = _activation("Softmax", "softmax", nn.softmax)
LogSoftmax = _activation("LogSoftmax", "log_softmax", nn.log_softmax)
