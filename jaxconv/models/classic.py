"""LeNet-5 and the notes' example network (Andrew Ng's "CNN example"): conv, pool, dense."""

from __future__ import annotations

from jaxconv.layers import Conv2D, Dense, Flatten, Layer, MaxPool, Relu, serial


def _lenet_like(n_filters1, n_filters2, num_classes, impl, dtype, compute_dtype, algorithm) -> Layer:
    return serial(
        ("conv1", Conv2D(n_filters1, 5, impl=impl, algorithm=algorithm, dtype=dtype, compute_dtype=compute_dtype)),  # (m, 28, 28, n_filters1)
        ("relu1", Relu()),
        ("pool1", MaxPool(2)),  # (m, 14, 14, n_filters1)
        ("conv2", Conv2D(n_filters2, 5, impl=impl, algorithm=algorithm, dtype=dtype, compute_dtype=compute_dtype)),  # (m, 10, 10, n_filters2)
        ("relu2", Relu()),
        ("pool2", MaxPool(2)),  # (m, 5, 5, n_filters2)
        ("flatten", Flatten()),  # (m, 25·n_filters2)
        ("fc3", Dense(120, dtype=dtype, compute_dtype=compute_dtype)),
        ("relu3", Relu()),
        ("fc4", Dense(84, dtype=dtype, compute_dtype=compute_dtype)),
        ("relu4", Relu()),
        ("fc5", Dense(num_classes, dtype=dtype, compute_dtype=compute_dtype)),  # logits (m, num_classes)
    )


def lenet5(num_classes: int = 10, in_channels: int = 1, impl: str = "auto", dtype=None, compute_dtype=None, algorithm: str = "auto") -> Layer:
    """LeNet-5 (LeCun et al. 1998) with ReLU and max pooling, for 32x32 inputs.

    (m, 32, 32, in_channels) -> conv 6@5x5 -> pool 2 -> conv 16@5x5 -> pool 2
    -> 120 -> 84 -> num_classes logits. 61,706 parameters for 1 channel and 10 classes.
    `in_channels` is a property of the input: `init` checks it.
    """
    net = _lenet_like(6, 16, num_classes, impl, dtype, compute_dtype, algorithm)

    def init(key, input_shape):
        if len(input_shape) == 4 and input_shape[3] != in_channels:
            raise ValueError(
                f"lenet5: input has n_C={input_shape[3]} channels but the model was built with "
                f"in_channels={in_channels}; pass lenet5(in_channels={input_shape[3]})."
            )
        return net.init(key, input_shape)

    return net._replace(init=init)


def seed_cnn(num_classes: int = 10, impl: str = "auto", dtype=None, compute_dtype=None, algorithm: str = "auto") -> Layer:
    """The notes' "CNN example" (Andrew Ng, CNN week 1), for 32x32x3 inputs.

    CONV1 f=5 s=1 8 filters (28,28,8) -> POOL1 (14,14,8) -> CONV2 f=5 s=1 16 filters
    (10,10,16) -> POOL2 (5,5,16) -> FC3 120 -> FC4 84 -> softmax 10 (logits here).
    True parameter counts: 608, 3216, 48120, 10164, 850.
    """
    return _lenet_like(8, 16, num_classes, impl, dtype, compute_dtype, algorithm)
