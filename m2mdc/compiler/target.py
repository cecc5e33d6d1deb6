"""What the compiler knows of a teacher before any training: its structure, cost model, MI block ranking
and channel scores (each computed on first use)."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import torch
from torch import nn

from ..cost import CostModel
from ..data import probe_loader
from ..models import get_adapter
from ..models.base import Adapter
from ..slicing import PROBE_SIGNALS, SIGNALS, channel_scores


@dataclass
class Target:
    """What the compiler needs to know about the teacher: its structure, cost model and MI ranking
    (a dict, or a function computing it on first use: recipes that remove no block by MI never
    pay for it). ``channel_scores`` (signal -> {group: scores}) only for the allocator recipe."""

    adapter: Adapter
    teacher: nn.Module  # the full model (only its structure is read)
    cost: CostModel
    block_scores: dict[str, float] | Callable[[], dict[str, float]]
    channel_scores: dict = field(default_factory=dict)

    def scores(self) -> dict[str, float]:
        if callable(self.block_scores):
            self.block_scores = self.block_scores()
        return self.block_scores


class ChannelScores(dict):
    """signal -> {group: channel scores} of a teacher's planes / mid groups (what the allocator values
    width by), computed on first use of a signal."""

    def __init__(self, ctx, probe_samples: int = 5000, bins: int = 10):
        super().__init__()
        self.ctx, self.probe_samples, self.bins = ctx, probe_samples, bins

    def __missing__(self, signal: str):
        ctx = self.ctx
        groups = [g for g in ctx.adapter.group_widths(ctx.teacher) if g.keep_cfg_kind is not None]
        probe = probe_loader(ctx.ds, ctx.device, max_samples=self.probe_samples) if signal in PROBE_SIGNALS else None
        self[signal] = channel_scores(ctx.teacher, ctx.adapter, groups, signal, probe, self.bins)
        return self[signal]

    def __contains__(self, signal) -> bool:
        return signal in SIGNALS

    def __reduce__(self):  # shipped to trials as the scores computed so far (no Context inside)
        return dict, (dict(self.items()),)


def target_of(ctx, bins: int = 10, probe_samples: int = 5000) -> Target:
    """The compile target of a Context's teacher: MI block scores from its cache and channel scores,
    each computed when first needed."""
    return Target(ctx.adapter, ctx.teacher, CostModel(ctx.adapter, ctx.ds.num_classes, ctx.ds.resolution),
                  lambda: ctx.get_block_scores(bins, probe_samples), ChannelScores(ctx, probe_samples, bins))


def dry_target(arch: str, num_classes: int, resolution: int) -> Target:
    """A target without a trained teacher (equal block scores): compiling against it checks a
    configuration's values and plan before any teacher is trained; its architecture is not the real one."""
    adapter = get_adapter(arch)
    teacher = adapter.base_model(num_classes)
    groups = {g: w for g, w in adapter.group_widths(teacher).items() if g.keep_cfg_kind is not None}
    flat = {g: torch.ones(w) for g, w in groups.items()}
    return Target(adapter, teacher, CostModel(adapter, num_classes, resolution),
                  {b: 0.0 for b in adapter.blocks(teacher)}, {s: flat for s in SIGNALS})
