"""Cost of a model: parameters, MACs (fvcore), checkpoint size (latency: m2mdc.latency)."""
from __future__ import annotations

import io
import os
import warnings
from contextlib import contextmanager

import torch
from torch import nn

with warnings.catch_warnings():
    # fvcore.nn's package import scripts its focal losses with torch.jit.script (fvcore/nn/focal_loss.py,
    # `sigmoid_focal_loss_jit = torch.jit.script(...)`), which torch >= 2.10 reports as a FutureWarning in
    # every process that counts MACs; nothing here uses those losses
    warnings.filterwarnings("ignore", message=".*torch.jit.script.*is deprecated", category=FutureWarning)
    from fvcore.nn import FlopCountAnalysis


def count_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def gmacs(model: nn.Module, resolution: int = 32) -> float:
    """Multiply-accumulates of one (1,3,R,R) forward pass, in G (fvcore counts a MAC as one)."""
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    x = torch.zeros(1, 3, resolution, resolution, device=device)
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # fvcore traces with the (deprecated) TorchScript tracer
        fca = FlopCountAnalysis(model, x)
        fca.unsupported_ops_warnings(False).uncalled_modules_warnings(False)
        total = fca.total()
    model.train(was_training)
    return total / 1e9


def state_dict_bytes(state_dict: dict) -> int:
    """Size of ``torch.save(state_dict)``: what the checkpoint costs on disk."""
    buf = io.BytesIO()
    torch.save(state_dict, buf)
    return buf.getbuffer().nbytes


def checkpoint_size(model: nn.Module) -> int:
    return state_dict_bytes(model.state_dict())


@contextmanager
def torch_threads(n: int | None):
    old = torch.get_num_threads()
    if n:
        torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(old)


def default_threads() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
