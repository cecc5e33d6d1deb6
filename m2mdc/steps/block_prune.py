"""block_prune: remove the least label-informative free blocks (M2M-DC's first edit)."""
from __future__ import annotations

from dataclasses import dataclass

from ..errors import UserError
from ..models import get_adapter
from ..prune_blocks import keep_blocks_after, prune_student, select_blocks_to_prune
from ..settings import check_settings, setting
from .registry import StepRun, StepSpec, register

BINS = setting(10, "MI quantile bins", lo=2, hi=1000, integer=True)
PROBE_SAMPLES = setting(5000, "probe images for MI (a fixed-order subset of train)", lo=1, hi=10 ** 7, integer=True)


@dataclass(frozen=True)
class BlockPruneSettings:
    ratio: float | None = setting(None, "share of the unprotected blocks removed, lowest MI first", lo=0, hi=1,
                                  hi_open=True, nullable=True)
    keep_blocks: dict | None = setting(None, "explicit original block indices kept per stage (instead of ratio)",
                                       nullable=True, data=True)
    bins: int = BINS
    probe_samples: int = PROBE_SAMPLES

    def __post_init__(self):
        check_settings(self)
        if (self.ratio is None) == (self.keep_blocks is None):
            raise UserError("needs exactly one of 'ratio' or 'keep_blocks'")


def _check(s: BlockPruneSettings, arch: str, num_classes: int) -> None:
    if s.keep_blocks is not None:
        get_adapter(arch).validate_keep_cfg({"blocks": s.keep_blocks}, num_classes)


def run(r: StepRun, s: BlockPruneSettings) -> None:
    ctx, state = r.ctx, r.state
    keep_blocks = s.keep_blocks
    if keep_blocks is None:
        scores = ctx.get_block_scores(s.bins, s.probe_samples)
        pruned = select_blocks_to_prune(scores, ctx.adapter, state.model, s.ratio)
        keep_blocks = keep_blocks_after(ctx.adapter, state.model, pruned)
    state.model = prune_student(state.model, ctx.adapter, keep_blocks, ctx.ds.num_classes).to(ctx.device)


register(StepSpec("block_prune", BlockPruneSettings, run, "rank blocks by label MI of their pooled output, remove "
                  "the least informative (protected blocks kept, no stage emptied)", structural=True, check=_check))
