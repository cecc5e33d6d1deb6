"""The catalogue of seeded points: the baselines a user would otherwise run and the search's own priors,
as configurations of the fractions recipe, plus the design helpers that derive configurations from a
space or a teacher (the fastest a space can build, the depth ladder, a design point)."""
from __future__ import annotations

from ..errors import UserError
from .compile import compile_config
from .compiled import CompiledPlan
from .target import Target


# What a user would otherwise run, as configurations of the fractions recipe (over a budget they are
# projected onto it like any configuration): the search's first trials, and the baselines' rows.
BASELINES = {
    "uniform width": {"prune_ratio": 0.0, "planes_keep": 1.0, "mid_keep": 1.0, "signal": "bn",
                      "schedule": "one-shot", "ranking": "stage"},
    "Torch-Pruning-like local": {"prune_ratio": 0.0, "planes_keep": 1.0, "mid_keep": 1.0, "signal": "group_l1",
                                 "schedule": "one-shot", "ranking": "stage"},
    "Torch-Pruning-like global": {"prune_ratio": 0.0, "planes_keep": 1.0, "mid_keep": 1.0, "signal": "group_l1",
                                  "schedule": "one-shot", "ranking": "global"},
    "M2M-DC at the budget": {"prune_ratio": 0.5, "planes_keep": 1.0, "mid_keep": 1.0, "order": "bpm", "signal": "bn",
                             "schedule": "progressive", "ranking": "stage"},
}


# With a latency budget, what a deployment engineer would also try: the same one-shot pruning shipped as
# INT8 (QAT; the latency projection then fits its width). At batch 64 an INT8 ResNet-18 runs ~3x faster
# than FP32, so under a latency budget it can keep far more channels.
LATENCY_BASELINES = {"Torch-Pruning-like local + INT8 QAT": {**BASELINES["Torch-Pruning-like local"], "qat": True}}


def compile_within(config: dict, target: Target, budget_gmacs: float, where: str) -> CompiledPlan:
    """``config``'s plan within the GMACs budget (widths projected onto it, as a trial's are), or one line
    saying why it cannot be: a user's own configuration (``where`` names it) checked before anything runs."""
    plan = compile_config(config, target, budget_gmacs=budget_gmacs)
    if not plan.feasible:
        raise UserError(f"{where}: cannot be brought within {budget_gmacs:g} GMACs "
                        f"({'; '.join(plan.notes) or 'infeasible'})")
    return plan


def _largest(p):
    """The largest value a space's knob (spaces.Param: fixed value, range or choices) can take."""
    return p.high if p.low is not None else max(p.choices) if p.choices is not None else p.fixed


# Not a baseline (no one-shot pruning library removes blocks): the search's own prior, seeded beside the
# baselines. At 32x32 the budget spent on fewer blocks at full width beat every width-pruned ResNet-18 in
# accuracy and batch-1 time (README: "one block per stage", benchmarks/depth_latency.py), and every
# kept weight is the teacher's own, unsliced.
SHALLOWEST = "fewest blocks at full width"


def shallowest_config(params: dict) -> dict | None:
    """The space's deepest block cut (its largest block-prune ratio) at full width, ranked and repaired as
    the Torch-Pruning-like baseline (widths over a budget are projected onto it like any configuration's);
    None when the space removes no blocks. ``params``: knob name -> spaces.Param."""
    ratio = _largest(params["prune_ratio"])
    return {**BASELINES["Torch-Pruning-like local"], "prune_ratio": ratio} if ratio > 0 else None


def fastest_configs(params: dict) -> list[dict]:
    """The fractions configurations with the fewest blocks and narrowest widths a space can build: its
    largest block-prune ratio, every width at one channel per group, one per INT8 choice (a space that
    samples QAT may ship either format, and at tiny widths INT8's quantise/dequantise overhead can make
    it the slower one). ``params``: knob name -> spaces.Param (fixed value, range or choices)."""
    qat = params["qat"]
    int8s = sorted({bool(c) for c in (qat.choices if qat.choices is not None else (qat.fixed,))})
    return [thinnest({"prune_ratio": _largest(params["prune_ratio"]), "qat": q}) for q in int8s]


def depth_ladder(target: Target) -> list[dict]:
    """Fractions configurations removing k = 0, 1, ... free blocks (up to all of them; the block-prune step
    stops where a stage would empty), at full width with the Torch-Pruning-like ranking and schedule, so a
    budget's projection gives each depth its widest widths. The step removes floor(ratio x |free|) blocks,
    so the ratio (k + 0.5) / |free| removes exactly k."""
    adapter, teacher = target.adapter, target.teacher
    free = [b for b in adapter.blocks(teacher) if not adapter.is_protected(teacher, b)]
    return [{**BASELINES["Torch-Pruning-like local"], "prune_ratio": min((k + 0.5) / len(free), 0.999) if k else 0.0}
            for k in range(len(free) + 1)]


def design_point(config: dict, prune_ratio: float, cost_target: float) -> dict:
    """``config`` with its block-prune ratio and cost target set: the two axes a design over depth and cost
    stratifies (analysis/proxy_depth.py)."""
    return {**config, "prune_ratio": float(prune_ratio), "cost_target": float(cost_target)}


def thinnest(config: dict) -> dict:
    """``config`` with every width at one channel per group: the floor of its depth."""
    return {**config, "planes_keep": 1e-6, "mid_keep": 1e-6}
