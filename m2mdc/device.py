"""Pick the compute device once; everything else receives it as an argument."""
from __future__ import annotations

import torch

from .errors import UserError


def pick_device(requested: str | None = "auto") -> torch.device:
    """'auto' -> CUDA when present, else CPU; an explicit device must exist."""
    if requested in (None, "", "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(requested)
    except RuntimeError:
        raise UserError(f"unknown device {requested!r}; use auto, cpu, cuda or cuda:N") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise UserError(f"device {requested!r} requested but CUDA is not available here; use --device auto or cpu")
    return dev
