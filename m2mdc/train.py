"""Plain supervised training and evaluation loops shared by the teacher and the students."""
from __future__ import annotations

import math
import sys
import time

import torch
from torch import nn

from .data import Loader


@torch.no_grad()
def evaluate(model: nn.Module, loader: Loader) -> float:
    """Top-1 accuracy (%) of ``model`` over ``loader``."""
    was = model.training
    model.eval()
    correct = total = 0
    for b in loader:
        correct += (model(b.x).argmax(1) == b.y).sum().item()
        total += len(b.y)
    model.train(was)
    return 100.0 * correct / max(total, 1)


class EpochLog:
    """One line per epoch on stderr (and a list of dicts for records)."""

    def __init__(self, prefix: str, quiet: bool = False):
        self.prefix, self.quiet, self.rows = prefix, quiet, []

    def __call__(self, **row) -> None:
        self.rows.append(row)
        if not self.quiet:
            parts = [f"{k} {v:.4f}" if isinstance(v, float) and abs(v) < 10 else
                     (f"{k} {v:.2f}" if isinstance(v, float) else f"{k} {v}") for k, v in row.items()]
            print(f"[{self.prefix}] " + "  ".join(parts), file=sys.stderr, flush=True)


def check_finite(loss: torch.Tensor, where: str) -> None:
    if not math.isfinite(loss.item()):
        raise FloatingPointError(f"non-finite loss ({loss.item()}) in {where}")


def train_epoch_ce(model: nn.Module, loader: Loader, opt: torch.optim.Optimizer, sched=None,
                   clip: float | None = None) -> dict:
    """One epoch of cross-entropy training; returns mean loss, train accuracy and wall time."""
    model.train()
    ce = nn.CrossEntropyLoss()
    t0 = time.perf_counter()
    tot_loss = torch.zeros((), device=loader.device)
    correct = torch.zeros((), device=loader.device, dtype=torch.long)
    n = 0
    for b in loader:
        out = model(b.x)
        loss = ce(out, b.y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        if clip:
            nn.utils.clip_grad_norm_(model.parameters(), clip)
        opt.step()
        if sched is not None:
            sched.step()
        tot_loss += loss.detach() * len(b.y)
        correct += (out.detach().argmax(1) == b.y).sum()
        n += len(b.y)
    loss = tot_loss.item() / max(n, 1)
    if not math.isfinite(loss):
        raise FloatingPointError(f"non-finite training loss {loss}")
    return {"loss": loss, "train_top1": 100.0 * correct.item() / max(n, 1), "seconds": time.perf_counter() - t0}
