"""BatchNorm recalibration after a structural edit.

Removing a block or slicing channels changes the activation statistics every later BatchNorm
sees, so the running mean/var inherited from the teacher are stale; re-estimating them from a
few forward passes recovers much of the lost accuracy before any gradient step.
"""
from __future__ import annotations

from typing import Iterable

import torch
from torch import nn

from .data import Batch


@torch.no_grad()
def recalibrate_bn(model: nn.Module, loader: Iterable[Batch], batches: int = 50) -> nn.Module:
    """Re-estimate every BatchNorm's running stats over ``batches`` batches; return ``model`` in eval mode.

    The stats are reset and accumulated as an exact cumulative average (momentum=None) so the
    result does not depend on what the stale values were. Only the BatchNorm layers run in
    train mode: dropout and other train-time behaviour would distort the statistics the
    layers see at inference.
    """
    bns = [m for m in model.modules()
           if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.track_running_stats]
    model.eval()
    if not bns or batches < 1:
        return model
    it = iter(loader)
    first = next(it, None)
    if first is None:
        raise ValueError("recalibrate_bn: the loader yielded no batches; BatchNorm stats left unchanged")
    momenta = [m.momentum for m in bns]
    for m in bns:
        m.reset_running_stats()
        m.momentum = None
        m.train()
    try:
        model(first.x)
        for _, b in zip(range(batches - 1), it):
            model(b.x)
    finally:
        for m, mom in zip(bns, momenta):
            m.momentum = mom
        model.eval()
    return model
