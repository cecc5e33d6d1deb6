"""Constrained block pruning: drop the least label-informative free blocks, never a protected
block (transitions that change stride or width) and never the last block of a stage."""
from __future__ import annotations

import copy
import math
from collections import Counter

from torch import nn

from .errors import UserError, check_range
from .models import Adapter


def select_blocks_to_prune(scores: dict[str, float], adapter: Adapter, model: nn.Module, ratio: float) -> list[str]:
    """The blocks to remove, in forward order: the floor(ratio * |free|) lowest-scoring free blocks,
    skipping any whose removal would empty its stage; score ties go to the earlier block."""
    check_range("prune ratio r", ratio, 0, 1, hi_open=True,
                hint="r is the fraction of non-protected blocks to remove, e.g. 0.5")
    blocks = list(adapter.blocks(model))
    missing = [b for b in blocks if b not in scores]
    if missing:
        raise ValueError(f"block scores miss {missing}; score every block of the model")
    bad = [b for b in blocks if not math.isfinite(scores[b])]
    if bad:
        raise ValueError(f"block scores of {bad} are not finite")
    order = {b: i for i, b in enumerate(blocks)}
    free = [b for b in blocks if not adapter.is_protected(model, b)]
    k = math.floor(ratio * len(free))
    remaining = Counter(adapter.stage_of(b) for b in blocks)
    pruned: list[str] = []
    for b in sorted(free, key=lambda b: (scores[b], order[b])):
        if len(pruned) == k:
            break
        stage = adapter.stage_of(b)
        if remaining[stage] > 1:
            remaining[stage] -= 1
            pruned.append(b)
    return sorted(pruned, key=order.__getitem__)


def keep_blocks_after(adapter: Adapter, model: nn.Module, pruned: list[str]) -> dict[str, list[int]]:
    """The keep_cfg "blocks" entry (original indices per stage) left once ``pruned`` is removed."""
    unknown = sorted(set(pruned) - set(adapter.blocks(model)))
    if unknown:
        raise ValueError(f"cannot prune {unknown}: the model has no such block")
    gone = set(pruned)
    return {stage: [adapter.block_index(b) for b in names if b not in gone]
            for stage, names in adapter.blocks_by_stage(model).items()}


def prune_student(teacher: nn.Module, adapter: Adapter, keep_blocks: dict[str, list[int]],
                  num_classes: int) -> nn.Module:
    """A copy of ``teacher`` holding only the kept blocks, with their weights unchanged.

    Stages absent from keep_blocks keep every block. A keep_blocks that is invalid for the
    architecture, or names a block the (possibly already pruned) teacher lacks, is a UserError.
    """
    cfg = adapter.validate_keep_cfg({"blocks": keep_blocks}, num_classes)
    present = {adapter.block_name(stage, i) for stage, idxs in cfg["blocks"].items() for i in idxs}
    absent = sorted(present - set(adapter.blocks(teacher)))
    if absent:
        raise UserError(f"keep_cfg keeps block(s) {absent}, which this teacher no longer has; "
                        f"its blocks: {', '.join(adapter.blocks(teacher))}")
    student = copy.deepcopy(teacher)
    adapter.drop_blocks(student, cfg["blocks"])
    return student
