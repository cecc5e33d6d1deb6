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


def evaluate_split(model: nn.Module, split, device, resolution: int) -> float | None:
    """Top-1 (%) on a split, or None when the data has no such split (a folder without test/)."""
    return None if split is None else evaluate(model, Loader(split, 512, device, resolution=resolution))


def pct(value: float | None) -> str:
    """'56.32%', or 'n/a' for a number the data cannot give (no test split)."""
    return "n/a" if value is None else f"{value:.2f}%"


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


def require_finite(row: dict, what: str) -> None:
    """FloatingPointError naming every non-finite number of an epoch's loss row: a diverged run
    fails loudly (a search records it as a failed trial) instead of training on NaNs."""
    bad = [k for k, v in row.items() if isinstance(v, float) and not math.isfinite(v)]
    if bad:
        raise FloatingPointError(f"non-finite {what} ({', '.join(f'{k}={row[k]}' for k in bad)})")


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
    row = {"loss": tot_loss.item() / max(n, 1), "train_top1": 100.0 * correct.item() / max(n, 1)}
    require_finite(row, "training loss")
    return {**row, "seconds": time.perf_counter() - t0}
