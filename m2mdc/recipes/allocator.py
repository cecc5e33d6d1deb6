"""allocator: the information-guided allocator (m2mdc.allocate) spends the budget, split between depth
and width by ``depth_share``."""
from __future__ import annotations

from ..allocate import allocate, allocation_plan
from ..compiler.compiled import CompiledPlan, Recipe, Request, register_recipe
from ..compiler.schedule import scheduled
from ..errors import UserError


def compile_allocator(r: Request) -> CompiledPlan:
    v, target, budget_gmacs, kd, mi = r.values, r.target, r.budget_gmacs, r.kd, r.mi
    if budget_gmacs is None:
        raise UserError("the allocator recipe needs a GMACs budget to spend")
    cost, signal = target.cost, v["signal"]
    if signal not in target.channel_scores:
        raise ValueError(f"no channel scores for signal {signal!r}; compute them for every signal the space samples")
    result = allocate(target.adapter, target.teacher, budget_gmacs, cost.num_classes, cost.resolution,
                      target.scores(), target.channel_scores[signal], depth_share=float(v["depth_share"]),
                      min_keep=float(v["min_keep"]), cost=cost)
    edits = [s for s in allocation_plan(result, signal, kd, mi) if s["step"] != "kd"]
    plan = scheduled(edits, v, kd)
    return CompiledPlan(plan, result["keep_cfg"], result["gmacs"], result["gmacs"], details=result)


register_recipe(Recipe("allocator", compile_allocator, "the allocator spends the budget over blocks and widths"))
