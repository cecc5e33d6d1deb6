"""From a sampled configuration to a compression plan that fits the budget, before any training.

The final architecture of a configuration is known analytically: block pruning picks its blocks
from the teacher's cached MI scores, and slicing widths are fractions of the full widths. So its
GMACs are priced with ``m2mdc.cost.CostModel`` (exactly fvcore's count, microseconds) and a
configuration over budget is *projected* onto it: every width fraction is scaled by one factor
s in (0, 1], the largest that fits (bisection). The objective of a configuration is thus the
result of its projection, a deterministic function of the sampled values, which is what the
sampler learns from. Only a configuration whose kept blocks cannot fit even at one channel per
group is infeasible; it is rejected without training and reported with a positive constraint.
"""
from __future__ import annotations

from dataclasses import dataclass, field

from m2mdc.allocate import allocate, allocation_plan
from m2mdc.cost import CostModel
from m2mdc.models.base import Adapter
from m2mdc.prune_blocks import keep_blocks_after, select_blocks_to_prune
from m2mdc.slicing import keep_width

BISECTION_STEPS = 40


@dataclass
class TrialPlan:
    plan: list[dict]
    keep_cfg: dict  # the architecture the plan ends with
    gmacs: float  # its GMACs (<= budget when feasible)
    sampled_gmacs: float  # GMACs of the configuration as sampled, before projection
    width_scale: float = 1.0  # s: the factor every width fraction was multiplied by (1 = not projected)
    feasible: bool = True
    kd_steps: int = 0
    notes: list[str] = field(default_factory=list)

    @property
    def projected(self) -> bool:
        return self.width_scale < 1.0


def kd_params(config: dict, kd: dict) -> dict:
    """KD step parameters: the profile's (epochs T, steps_per_epoch, batch size) + the sampled ramp."""
    return {**kd, "alpha": float(config["alpha"]), "beta": float(config["beta"]), "lr": float(config["kd_lr"]),
            "kl_weight": float(config.get("kl_weight", 0.0))}


def tail_steps(config: dict, kd: dict) -> list[dict]:
    """Unstructured sparsity and INT8 QAT (each followed by a KD repair) in the sampled order."""
    parts = {"s": [{"step": "sparsity", "target": float(config["sparsity"])}, dict(kd)] if config["sparsity"] > 0
             else [],
             "q": [{"step": "qat"}, dict(kd)] if config["qat"] else []}
    return [s for c in config.get("tail_order", "sq") for s in parts[c]]


def _fractions(config: dict, stages: list[str]) -> tuple[dict[str, float], float]:
    planes = config["planes_keep"]
    planes = {s: float(planes[s]) for s in stages} if isinstance(planes, dict) else {s: float(planes) for s in stages}
    return planes, float(config["mid_keep"])


def _widths(cost: CostModel, planes: dict[str, float], mid: float, scale: float) -> dict[str, int]:
    out = {}
    for knob, full in cost.full_knob_widths.items():
        kind, _, owner = knob.partition(":")
        frac = planes[owner] if kind == "planes" else mid
        out[knob] = keep_width(full, frac * scale)
    return out


def build_trial_plan(config: dict, *, adapter: Adapter, teacher, cost: CostModel, budget_gmacs: float,
                     block_scores: dict[str, float], kd: dict, mode: str = "fractions",
                     channel_scores: dict | None = None, probe_samples: int = 5000, bins: int = 10) -> TrialPlan:
    """The plan for one sampled configuration (see module docstring). ``teacher`` is the full model
    (only its structure is read); ``kd`` holds the profile's KD settings."""
    kd_step = {"step": "kd", **kd_params(config, kd)}
    budget_macs = budget_gmacs * 1e9
    if mode == "allocator":
        signal = config["signal"]
        result = allocate(adapter, teacher, budget_gmacs, cost.num_classes, cost.resolution, block_scores,
                          channel_scores[signal], depth_share=float(config["depth_share"]), cost=cost)
        plan = allocation_plan(result, signal, kd_params(config, kd))
        for s in plan:
            if s["step"] in ("widths", "block_prune"):
                s.update(bins=bins, probe_samples=probe_samples)
        plan += tail_steps(config, kd_step)
        return TrialPlan(plan, result["keep_cfg"], result["gmacs"], result["gmacs"],
                         kd_steps=sum(s["step"] == "kd" for s in plan))

    stages = list(cost.stage_blocks)
    pruned = select_blocks_to_prune(block_scores, adapter, teacher, float(config["prune_ratio"]))
    keep_blocks = keep_blocks_after(adapter, teacher, pruned)
    kept = frozenset(b for b in cost.blocks if b not in set(pruned))
    planes, mid = _fractions(config, stages)
    sampled = cost.macs_of(kept, _widths(cost, planes, mid, 1.0))
    scale, feasible = 1.0, True
    if sampled > budget_macs:
        lo, hi = 0.0, 1.0  # invariant: scale lo fits (checked below), hi does not
        if cost.macs_of(kept, _widths(cost, planes, mid, 0.0)) > budget_macs:
            feasible = False
        else:
            for _ in range(BISECTION_STEPS):
                m = (lo + hi) / 2
                if cost.macs_of(kept, _widths(cost, planes, mid, m)) <= budget_macs:
                    lo = m
                else:
                    hi = m
            scale = lo
    widths = _widths(cost, planes, mid, scale)
    keep_cfg = cost.keep_cfg(kept, widths)
    if not feasible:
        return TrialPlan([], keep_cfg, cost.macs_of(kept, widths) / 1e9, sampled / 1e9, 0.0, feasible=False,
                         notes=[f"{len(kept)} kept blocks exceed the budget even at one channel per group"])
    slice_args = {"signal": config["signal"], "bins": bins, "probe_samples": probe_samples}
    edits = {
        "b": [{"step": "block_prune", "keep_blocks": keep_blocks, "bins": bins, "probe_samples": probe_samples}]
        if pruned else [],
        "p": [{"step": "widths", "keep_cfg": {"planes": keep_cfg["planes"]}, **slice_args}]
        if any(widths[k] < cost.full_knob_widths[k] for k in widths if k.startswith("planes:")) else [],
        "m": [{"step": "widths", "keep_cfg": {"mid": {b: w for b, w in keep_cfg["mid"].items()}}, **slice_args}]
        if any(widths[k] < cost.full_knob_widths[k] for k in widths if k.startswith("mid:")) else [],
    }
    plan: list[dict] = []
    for c in config.get("order", "bpm"):
        for s in edits[c]:
            plan += [s, dict(kd_step)]
    plan += tail_steps(config, kd_step)
    if not plan:  # the full model fits and nothing else was asked: one KD pass keeps trials comparable
        plan = [dict(kd_step)]
    return TrialPlan(plan, keep_cfg, cost.macs_of(kept, widths) / 1e9, sampled / 1e9, scale,
                     kd_steps=sum(s["step"] == "kd" for s in plan))
