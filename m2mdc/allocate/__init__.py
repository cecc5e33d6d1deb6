"""Automated per-stage budget allocation: which blocks to keep and how wide every stage's planes
and every block's mid channels stay, for a GMAC budget, guided by the information signals.

M2M-DC prunes with uniform knobs (one prune ratio, one planes and one mid keep fraction); the
paper names automated per-stage allocation as its next step. ``allocate`` spends a budget
instead. Everything is priced with ``cost.CostModel`` (exactly fvcore's count, microseconds a
keep_cfg) and valued in one currency, the *normalised information* of the network:

* block b carries ``s_b`` = its MI score divided by the sum over all blocks (so the blocks
  together carry 1);
* a block's mid channels share the block's ``s_b`` in proportion to their channel scores (all
  mid channels gone = the residual branch gone = the block gone, the skip path survives);
* a stage's planes channels share, the same way, the information of the whole network (1):
  they are the residual stream, the one path every block's output and the head's input take,
  so a narrow stream bottlenecks everything (a mid cut only thins one residual branch). Width
  is therefore taken from mid channels first and from planes only where mids are spent or
  carry more information per MAC.

The allocation has three greedy phases:

1. **Depth.** ``depth_share`` of the MACs to remove (full - budget, priced at full width, as
   the plan removes blocks before slicing) comes from removing free blocks (unprotected, never
   a stage's last), lowest information per GMAC first; a block is taken only if it brings the
   removed MACs closer to that target and never past the whole reduction.
2. **Width.** Until the model fits, apply the width edit with the least information lost per
   MAC saved: shrink one planes / mid knob by ~1/16 of its original width (never below
   ``min_keep`` of it), dropping its lowest-scoring channels (what ``slicing.top_k`` drops).
3. **Re-grow.** Greedily give back single channels, highest information per MAC first, while
   the model stays within budget: the result ends just below the budget (within one channel's
   MACs) wherever the architecture's granularity allows.

Why depth is a MAC quota rather than a term in the same ratio: block MI scores (nats of label
information of a block's pooled output) and channel scores (mean-normalised |gamma|, L1 or
channel MI) are different quantities, and with the hierarchical valuation above shrinking a
block's lowest channels is never worse per MAC than dropping the whole block, so a single
ratio would hardly ever remove a block and the exchange rate between the two would be an
arbitrary scale. ``depth_share`` makes that trade-off an explicit, monotone knob for the
search layer, while the information signals decide *which* blocks and channels go.

If the budget cannot be met with widths at ``min_keep`` the allocator removes further blocks
and then lets widths go down to one channel, so every budget >= ``CostModel.min_gmacs()`` is
met. Deterministic: ties go to the earlier block / knob.
"""
from __future__ import annotations

import math

import torch
from torch import nn

from ..cost import CostModel
from ..errors import UserError, check_range
from ..models.base import Adapter, GroupKind, mid_groups
from ..slicing import SIGNALS

SHRINK_DIVISIONS = 16


def _fmt_gmacs(x: float) -> str:
    return f"{x:.8f}".rstrip("0").rstrip(".") if x < 1 else f"{x:.4f}"


def check_budget(cost: CostModel, budget_gmacs: float) -> None:
    """UserError unless ``budget_gmacs`` is a number >= the smallest model the adapter can build."""
    try:
        budget = float(budget_gmacs)
    except (TypeError, ValueError):
        raise UserError(f"budget {budget_gmacs!r} is not a number of GMACs; pass e.g. --budget-gmacs 0.02") from None
    if not math.isfinite(budget):
        raise UserError(f"budget {budget_gmacs} GMACs is not finite; pass e.g. --budget-gmacs 0.02")
    smallest = cost.min_gmacs()
    if budget <= 0 or budget < smallest:
        raise UserError(f"budget {budget:g} GMACs is below the smallest {cost.arch} this can build "
                        f"({_fmt_gmacs(smallest)} GMACs); raise --budget-gmacs")


def _budget_macs(budget_gmacs: float) -> int:
    """The largest integer MAC count m with m / 1e9 <= budget_gmacs (as floats compare)."""
    m = math.floor(budget_gmacs * 1e9)
    while m / 1e9 > budget_gmacs:
        m -= 1
    while (m + 1) / 1e9 <= budget_gmacs:
        m += 1
    return m


def _block_info(cost: CostModel, block_scores: dict[str, float]) -> dict[str, float]:
    missing = [b for b in cost.blocks if b not in block_scores]
    if missing:
        raise ValueError(f"block scores miss {missing}; score every block of the model")
    s = {b: float(block_scores[b]) for b in cost.blocks}
    bad = [b for b, v in s.items() if not math.isfinite(v)]
    if bad:
        raise ValueError(f"block scores of {bad} are not finite")
    lo = min(s.values())
    if lo < 0:  # scores are MI (>= 0); shift anything else so the least informative block is 0
        s = {b: v - lo for b, v in s.items()}
    total = sum(s.values())
    if total <= 0:
        return {b: 1.0 / len(s) for b in s}
    return {b: v / total for b, v in s.items()}


def _knob_rank_info(cost: CostModel, channel_scores: dict, info: dict[str, float]) -> dict[str, list[float]]:
    """Per knob, the prefix sums P of the information of its channels in keep order (best
    first, as slicing.top_k ranks them): keeping w channels keeps P[w]."""
    out = {}
    for knob, groups in cost.knobs.items():
        # a mid group carries its block's branch; a planes group is the residual stream that
        # everything the network computes flows through, so it carries all of it (1)
        weight = info[knob.owner] if knob.kind is GroupKind.MID else 1.0
        full = cost.full_knob_widths[knob]
        per_rank = [0.0] * full
        for g in groups:
            if g not in channel_scores:
                raise ValueError(f"channel scores miss group {g}; score every planes/mid group")
            sc = torch.as_tensor(channel_scores[g]).detach().double().flatten().cpu()
            if len(sc) != full:
                raise ValueError(f"channel scores of {g} have {len(sc)} entries; the group has {full} channels")
            if not torch.isfinite(sc).all():
                raise ValueError(f"channel scores of {g} are not finite")
            sc = sc.clamp_min(0)
            total = float(sc.sum())
            vals = (sc / total).tolist() if total > 0 else [1.0 / full] * full
            order = sorted(range(full), key=lambda i: (-vals[i], i))  # slicing.top_k's order
            for r, i in enumerate(order):
                per_rank[r] += weight * vals[i] / len(groups)
        prefix = [0.0]
        for v in per_rank:
            prefix.append(prefix[-1] + v)
        out[knob] = prefix
    return out


def allocate(adapter: Adapter, model: nn.Module, budget_gmacs: float, num_classes: int, resolution: int,
             block_scores: dict[str, float], channel_scores: dict[str, torch.Tensor], depth_share: float = 0.5,
             min_keep: float = 0.0625, cost: CostModel | None = None) -> dict:
    """Choose kept blocks, per-stage planes widths and per-block mid widths within a GMAC budget.

    ``model`` is the full (unpruned) network the scores were measured on; ``block_scores`` maps
    every block to its information score (MI, as ``Context.get_block_scores``); channel_scores
    maps every planes / mid (/ mid2) group to per-channel scores (``slicing.channel_scores``).
    ``cost`` may pass a prebuilt CostModel for (adapter, num_classes, resolution).

    Returns {"keep_cfg", "gmacs", "removed_blocks", "steps", "budget_gmacs", "full_gmacs",
    "min_gmacs", "depth_removed_gmacs", "info_lost", "width_cuts"}; ``keep_cfg`` passes
    ``adapter.validate_keep_cfg`` and ``gmacs`` equals fvcore's count of its rebuild.
    A budget below ``cost.min_gmacs()`` is a UserError.
    """
    if cost is None:
        cost = CostModel(adapter, num_classes, resolution)
    elif (cost.arch, cost.num_classes, cost.resolution) != (adapter.arch, int(num_classes), int(resolution)):
        raise ValueError(f"cost model is for {cost.arch}/{cost.num_classes} classes/{cost.resolution}px, "
                         f"not {adapter.arch}/{num_classes}/{resolution}")
    check_range("depth_share", float(depth_share), 0.0, 1.0,
                hint="it is the share of the MACs to remove that comes from removing blocks")
    check_range("min_keep", float(min_keep), 0.0, 1.0, lo_open=True,
                hint="it is the smallest share of a group's channels the width phase keeps")
    check_budget(cost, budget_gmacs)
    have = adapter.keep_cfg_of(model)
    full_cfg = cost.keep_cfg(frozenset(cost.blocks), cost.full_knob_widths)
    if have != full_cfg:
        raise ValueError(f"allocate needs the full {adapter.arch} the scores were measured on; "
                         f"this model is already pruned ({have})")
    info = _block_info(cost, block_scores)
    prefix = _knob_rank_info(cost, channel_scores, info)

    budget = _budget_macs(float(budget_gmacs))
    kept = set(cost.blocks)
    widths = dict(cost.full_knob_widths)
    macs = cost.full_macs
    steps = 0
    removed: list[str] = []
    order = {b: i for i, b in enumerate(cost.blocks)}
    stage_count = {st: len(names) for st, names in cost.stage_blocks.items()}

    def removable():
        return [b for b in cost.blocks if b in kept and b not in cost.protected
                and stage_count[cost.adapter.stage_of(b)] > 1]

    def remove(b):
        nonlocal macs, steps
        macs -= cost.block_macs(b, widths)
        kept.discard(b)
        stage_count[cost.adapter.stage_of(b)] -= 1
        removed.append(b)
        steps += 1

    # ---- 1. depth: depth_share of the reduction from the least informative blocks per GMAC ----
    need = max(0, macs - budget)
    target = float(depth_share) * need
    depth_removed = 0
    full_block_macs = {b: cost.block_macs(b, widths) for b in cost.blocks}
    if need > 0:
        for b in sorted(removable(), key=lambda b: (info[b] / max(full_block_macs[b], 1), order[b])):
            m = full_block_macs[b]
            if stage_count[adapter.stage_of(b)] > 1 and depth_removed + m <= need and \
                    abs(depth_removed + m - target) < abs(depth_removed - target):
                remove(b)
                depth_removed += m

    # ---- 2. width: least information lost per MAC saved, until it fits ----------------------
    q = cost.quantum  # widths a grouped conv reads move in whole conv groups
    floors = {k: q[k] * max(1, math.ceil(float(min_keep) * w / q[k] - 1e-9)) for k, w in cost.full_knob_widths.items()}
    step_of = {k: q[k] * max(1, round(w / SHRINK_DIVISIONS / q[k])) for k, w in cost.full_knob_widths.items()}
    knob_order = {k: i for i, k in enumerate(cost.knobs)}
    relaxed = False

    def active(k):
        owner = cost.knob_block[k]
        return owner is None or owner in kept

    while macs > budget:
        best = None
        for k in cost.knobs:
            w = widths[k]
            if not active(k) or w <= floors[k]:
                continue
            new = max(floors[k], w - step_of[k])
            saved = -cost.knob_delta(kept, widths, k, new)
            if saved <= 0:
                continue
            lost = prefix[k][w] - prefix[k][new]
            key = (lost / saved, -saved, knob_order[k])
            if best is None or key < best[0]:
                best = (key, k, new, saved)
        if best is not None:
            _, k, new, saved = best
            widths[k] = new
            macs -= saved
            steps += 1
            continue
        # widths are at their floors: remove the least informative block per MAC still priced ...
        cands = removable()
        if cands:
            remove(min(cands, key=lambda b: (info[b] * _mid_kept_share(prefix, widths, b) /
                                             max(cost.block_macs(b, widths), 1), order[b])))
            continue
        # ... then let widths go down to one channel
        if not relaxed:
            relaxed = True
            floors = {k: q[k] for k in floors}
            step_of = {k: q[k] for k in step_of}
            continue
        raise RuntimeError(f"cannot reach {budget} MACs (at {macs}); min_gmacs is inconsistent")  # pragma: no cover

    # ---- 3. re-grow: best information per MAC, one channel at a time, within budget ----------
    while True:
        best = None
        for k in cost.knobs:
            w = widths[k]
            if not active(k) or w >= cost.full_knob_widths[k]:
                continue
            added = cost.knob_delta(kept, widths, k, w + q[k])
            if macs + added > budget:
                continue
            gain = prefix[k][w + q[k]] - prefix[k][w]
            key = (-(gain / added) if added > 0 else -math.inf, added, knob_order[k])
            if best is None or key < best[0]:
                best = (key, k, added)
        if best is None:
            break
        _, k, added = best
        widths[k] += q[k]
        macs += added
        steps += 1

    final_macs = cost.macs_of(kept, widths)
    assert final_macs == macs, (final_macs, macs)  # the incremental bookkeeping is exact
    keep_cfg = cost.keep_cfg(kept, widths)
    lost = sum(info[b] for b in removed) + sum(prefix[k][-1] - prefix[k][widths[k]] for k in cost.knobs if active(k))
    return {"keep_cfg": keep_cfg, "gmacs": final_macs / 1e9, "removed_blocks": sorted(removed, key=order.__getitem__),
            "steps": steps, "budget_gmacs": float(budget_gmacs), "full_gmacs": cost.full_gmacs,
            "min_gmacs": cost.min_gmacs(), "depth_removed_gmacs": depth_removed / 1e9, "info_lost": lost,
            "width_cuts": {k: [widths[k], cost.full_knob_widths[k]] for k in cost.knobs
                           if active(k) and widths[k] < cost.full_knob_widths[k]}}


def _mid_kept_share(prefix: dict[str, list[float]], widths: dict[str, int], block: str) -> float:
    """Share of a block's mid information its current mid width keeps (1 without a mid knob)."""
    mid = mid_groups(block)[0]
    p = prefix.get(mid)
    return p[widths[mid]] / p[-1] if p and p[-1] > 0 else 1.0


def allocation_plan(result: dict, signal: str = "bn", kd_params: dict | None = None,
                    ranking: dict | None = None) -> list[dict]:
    """A pipeline plan that realises an allocation: block_prune -> kd -> widths -> kd.

    A pair whose structural step would change nothing (no block removed / no width cut) is left
    out; if both are, the plan is a single KD step (the budget fits the full model). ``ranking``:
    the MI settings (bins, probe_samples) of the structural steps.
    """
    if signal not in SIGNALS:
        raise UserError(f"unknown ranking signal {signal!r}; choose one of {', '.join(SIGNALS)}")
    kd = {"step": "kd", **(kd_params or {})}
    cfg = result["keep_cfg"]
    mi = dict(ranking or {})
    plan: list[dict] = []
    if result.get("removed_blocks"):
        plan += [{"step": "block_prune", "keep_blocks": cfg["blocks"], **mi}, dict(kd)]
    if result.get("width_cuts", True):
        plan += [{"step": "widths", "keep_cfg": cfg, "signal": signal, **mi}, dict(kd)]
    return plan or [dict(kd)]
