"""A batch cut into equal chunks that a loop (`lax.scan`, `lax.map`) runs one after another, and put back.

    xs = chunks.split(x, c)   # (m, ...) -> (m/c, c, ...): m/c chunks of c examples
    x = chunks.merge(xs)      # (m/c, c, ...) -> (m, ...), in the batch's order

Strided (the default): with n = m/c chunks, chunk j holds examples j, j + n,
j + 2n, ... When the batch axis is sharded over devices in contiguous blocks,
every chunk then holds examples of every device's shard: all devices work on
every chunk and no data moves between them (contiguous chunks would each live
on one device). `strided=False` cuts contiguous blocks, chunk j holding
examples j·c, ..., j·c + c − 1: each chunk is a slice of the batch as it lies
in memory.
"""

from __future__ import annotations


def split(a, size: int, *, strided: bool = True):
    """(m, ...) -> (m/size, size, ...): the m/size chunks of `size` examples each; `size` must divide m."""
    m = a.shape[0]
    if size < 1 or m % size:
        raise ValueError(f"chunks.split: `size` ({size}) must divide the batch of {m} examples; pick a divisor of {m}.")
    n = m // size
    if strided:
        return a.reshape(size, n, *a.shape[1:]).swapaxes(0, 1)  # (n, size, ...): [j, r] = a[r·n + j]
    return a.reshape(n, size, *a.shape[1:])  # (n, size, ...): [j, r] = a[j·size + r]


def merge(a, *, strided: bool = True):
    """The inverse of `split` with the same `strided`: (n, size, ...) -> (n·size, ...)."""
    if strided:
        return a.swapaxes(0, 1).reshape(-1, *a.shape[2:])
    return a.reshape(-1, *a.shape[2:])
