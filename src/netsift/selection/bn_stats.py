"""Batch norm with the statistics of each stacked candidate's own minibatch (``bn_batch_stats`` scoring).

Candidates are scored on K stacked copies of a B-image minibatch; with ``bn_batch_stats`` every batch norm
normalises each block of B rows with that block's own statistics, as a forward pass of the candidate alone
in training mode would (without updating the running statistics).
"""

from __future__ import annotations

import functools
from contextlib import contextmanager
from typing import Iterator

import torch
from torch import Tensor, nn


def bn_blocks(m: nn.modules.batchnorm._BatchNorm, x: Tensor, blocks: int) -> Tensor:
    """Batch norm of ``x`` with the statistics of each of ``blocks`` equal slices of its batch.

    Two passes (the mean, then the norm of the centred values, which become the output in place): exact to
    float rounding, and on a CPU many times faster than ``torch.var_mean`` over the batch and spatial axes.
    """
    xs = x.reshape(blocks, x.shape[0] // blocks, x.shape[1], -1)  # (blocks, B, C, positions)
    n = xs.shape[1] * xs.shape[3]
    mean = xs.sum(3, keepdim=True).sum(1, keepdim=True) / n
    d = xs - mean
    var = torch.linalg.vector_norm(d, dim=3, keepdim=True).square_().sum(1, keepdim=True) / n
    scale = torch.rsqrt(var + m.eps)
    if m.affine:
        scale = scale * m.weight.view(1, 1, -1, 1)
    d.mul_(scale)
    if m.affine:
        d.add_(m.bias.view(1, 1, -1, 1))
    return d.view(x.shape)


@contextmanager
def batch_norm_stats(model: nn.Module, blocks: int, enabled: bool = True) -> Iterator[None]:
    """Within the block, batch norms normalise with the statistics of the current batch (not the running ones),
    computed separately for each of ``blocks`` equal slices of the batch (one per stacked candidate)."""
    if not enabled:
        yield
        return
    bns = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    for m in bns:
        m.forward = functools.partial(bn_blocks, m, blocks=blocks)
    try:
        yield
    finally:
        for m in bns:
            m.__dict__.pop("forward", None)


def call_module(mod: nn.Module, args, kwargs, blocks: int, bn_batch_stats: bool):
    """``mod(*args, **kwargs)``; a batch norm with each of ``blocks`` slices' own statistics if
    ``bn_batch_stats``."""
    if bn_batch_stats and isinstance(mod, nn.modules.batchnorm._BatchNorm):
        return bn_blocks(mod, args[0], blocks)
    return mod(*args, **kwargs)
