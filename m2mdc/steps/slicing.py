"""planes / mid / widths: residual-safe channel slicing (M2M-DC's second and third edits)."""
from __future__ import annotations

from dataclasses import dataclass

import torch

from ..data import probe_loader
from ..models import get_adapter
from ..models.base import mid_groups, planes_group
from ..settings import check_settings, setting
from ..slicing import PROBE_SIGNALS, SIGNALS, mid_widths, planes_widths, slice_groups
from .block_prune import BINS, PROBE_SAMPLES
from .registry import StepRun, StepSpec, register


@dataclass(frozen=True)
class RankingSettings:
    signal: str = setting("bn", "channel ranking signal: bn = |BN gamma|, l1 = filter L1, mi = channel label MI, "
                          "group_l1 = Torch-Pruning's group magnitude, group_taylor = Torch-Pruning's group Taylor "
                          "importance (cross-entropy on the probe set)", choices=SIGNALS)
    bins: int = BINS
    probe_samples: int = PROBE_SAMPLES

    def __post_init__(self):
        check_settings(self)


@dataclass(frozen=True)
class FractionSettings(RankingSettings):
    keep: float | dict = setting(0.5, "share of channels kept: one fraction, or one per stage (planes) / per block "
                                 "or stage (mid)", lo=0, hi=1, lo_open=True)


@dataclass(frozen=True)
class WidthsSettings(RankingSettings):
    keep_cfg: dict | None = setting(None, "absolute planes / mid widths (a keep_cfg, e.g. an allocator result)",
                                    nullable=True, data=True)


def _check_widths(s: WidthsSettings, arch: str, num_classes: int) -> None:
    get_adapter(arch).validate_keep_cfg(s.keep_cfg or {}, num_classes)


def slice_to(r: StepRun, widths: dict[str, int], s: RankingSettings) -> None:
    """Keep ``widths[group]`` channels of each group, tracking which teacher phi channels survive."""
    ctx, state = r.ctx, r.state
    adapter = ctx.adapter
    probe = probe_loader(ctx.ds, ctx.device, max_samples=s.probe_samples) if s.signal in PROBE_SIGNALS else None
    new, kept = slice_groups(state.model, adapter, widths, ctx.ds.num_classes, s.signal, probe, s.bins,
                             check_input=torch.zeros(2, 3, ctx.ds.resolution, ctx.ds.resolution))
    head_in = adapter.channel_groups(state.model)[adapter.head_name][1]
    if head_in in kept:  # the head's input (phi) lost channels: track which teacher channels remain
        base = state.feature_index if state.feature_index is not None else torch.arange(
            adapter.group_widths(state.model)[head_in])
        state.feature_index = base.cpu()[kept[head_in]]
    state.model = new


def run_planes(r: StepRun, s: FractionSettings) -> None:
    slice_to(r, planes_widths(r.state.model, r.ctx.adapter, s.keep), s)


def run_mid(r: StepRun, s: FractionSettings) -> None:
    slice_to(r, mid_widths(r.state.model, r.ctx.adapter, s.keep), s)


def run_widths(r: StepRun, s: WidthsSettings) -> None:
    widths = {}
    for stage, w in (s.keep_cfg or {}).get("planes", {}).items():
        widths[planes_group(stage)] = int(w)
    for block, w in (s.keep_cfg or {}).get("mid", {}).items():
        for g in mid_groups(block):
            widths[g] = int(w)
    current = r.ctx.adapter.group_widths(r.state.model)
    slice_to(r, {g: w for g, w in widths.items() if g in current}, s)


register(StepSpec("planes", FractionSettings, run_planes, "keep the top residual planes of every stage (block "
                  "outputs, shortcut projections, the next stage's / head's inputs)", structural=True))
register(StepSpec("mid", FractionSettings, run_mid, "keep the top inner channels of every block", structural=True))
register(StepSpec("widths", WidthsSettings, run_widths, "slice to absolute planes / mid widths", structural=True,
                  check=_check_widths))
