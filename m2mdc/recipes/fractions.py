"""fractions (a search's default): block pruning by the teacher's MI ranking, planes and mid widths as
fractions of the full widths, the edits in the sampled ``order``, projected onto the cost target."""
from __future__ import annotations

from ..compiler.compiled import CompiledPlan, Recipe, Request, register_recipe
from ..compiler.projection import fill_widths, fraction_widths, global_widths, largest_fitting, project_latency
from ..compiler.schedule import planes_fractions, scheduled
from ..knobs import step_settings
from ..prune_blocks import keep_blocks_after, select_blocks_to_prune


def compile_fractions(r: Request) -> CompiledPlan:
    v, target, budget_gmacs, kd, mi = r.values, r.target, r.budget_gmacs, r.kd, r.mi
    budget_ms, latency, project = r.budget_ms, r.latency, r.project
    adapter, teacher, cost = target.adapter, target.teacher, target.cost
    pruned = select_blocks_to_prune(target.scores(), adapter, teacher, float(v["prune_ratio"]))
    keep_blocks = keep_blocks_after(adapter, teacher, pruned)
    kept = frozenset(b for b in cost.blocks if b not in set(pruned))
    planes, mid = planes_fractions(v, cost), float(v["mid_keep"])
    ranking = {**step_settings(v, "widths"), **mi}
    if v["ranking"] == "global":  # the fractions set the total kept; the teacher's importance decides where
        full = fraction_widths(cost, planes, mid, 1.0)
        active = [k for k in cost.knobs if cost.knob_block[k] is None or cost.knob_block[k] in kept]
        total = sum(full[k] for k in active) / sum(cost.full_knob_widths[k] for k in active)
        scores = target.channel_scores["group_l1"]

        def widths_at(scale):
            return global_widths(cost, kept, scores, total * scale)
        ranking["signal"] = "group_l1"  # the channels the ranking counted are the ones the slice keeps
    else:
        def widths_at(scale):
            return fraction_widths(cost, planes, mid, scale)
    sampled = cost.macs_of(kept, widths_at(1.0))
    budget_macs = budget_gmacs * 1e9 if budget_gmacs is not None else float("inf")
    target_macs = budget_macs * float(v["cost_target"])
    # the scale at which every width is full: past it nothing grows (fractions are shares of the teacher's widths)
    full_scale = 1.0 / max(1e-9, total if v["ranking"] == "global" else min(min(planes.values()), mid))
    scale, feasible = 1.0, True
    if sampled > target_macs:
        if cost.macs_of(kept, widths_at(0.0)) > target_macs:
            feasible = False
        else:
            scale = largest_fitting(lambda s: cost.macs_of(kept, widths_at(s)), 0.0, 1.0, target_macs)
    elif project == "both" and sampled < target_macs < float("inf"):
        if cost.macs_of(kept, widths_at(full_scale)) <= target_macs:  # full width stays under the target:
            scale = full_scale  # recorded at the cost it reaches, never stretched past the teacher's widths
        else:
            scale = largest_fitting(lambda s: cost.macs_of(kept, widths_at(s)), 1.0, full_scale, target_macs)
    lat = None
    if feasible and budget_ms is not None:
        int8 = bool(v["qat"])

        def ms_at(s: float) -> dict:
            return latency(cost.keep_cfg(kept, widths_at(s)), int8)
        fitted, lat = project_latency(ms_at, scale, budget_ms)
        if fitted is None:
            widths = widths_at(0.0)
            return CompiledPlan([], cost.keep_cfg(kept, widths), cost.macs_of(kept, widths) / 1e9, sampled / 1e9,
                                0.0, feasible=False, latency=lat, violation=lat["predicted_ms"] / budget_ms - 1.0,
                                notes=[f"{len(kept)} kept blocks{' in INT8' if int8 else ''} take "
                                       f"{lat['predicted_ms']:.2f} ms even at one channel per group, over the "
                                       f"{budget_ms:g} ms budget"])
        scale = fitted
    widths = widths_at(scale)
    if feasible and project == "both" and lat is None and v["ranking"] != "global":
        wanted = fraction_widths(cost, planes, mid, scale, exact=True)
        widths = fill_widths(cost, kept, widths, wanted, target_macs)
    keep_cfg = cost.keep_cfg(kept, widths)
    gmacs = cost.macs_of(kept, widths) / 1e9
    if not feasible:
        return CompiledPlan([], keep_cfg, gmacs, sampled / 1e9, 0.0, feasible=False,
                            violation=gmacs / (target_macs / 1e9) - 1.0, target_gmacs=target_macs / 1e9,
                            notes=[f"{len(kept)} kept blocks exceed the cost target {target_macs / 1e9:.4g} GMACs "
                                   f"even at one channel per group"])
    cut = {kind: any(widths[k] < cost.full_knob_widths[k] for k in widths if k.startswith(kind + ":"))
           for kind in ("planes", "mid")}
    edits = {
        "b": [{"step": "block_prune", "keep_blocks": keep_blocks, **mi}] if pruned else [],
        "p": [{"step": "widths", "keep_cfg": {"planes": keep_cfg["planes"]}, **ranking}] if cut["planes"] else [],
        "m": [{"step": "widths", "keep_cfg": {"mid": dict(keep_cfg["mid"])}, **ranking}] if cut["mid"] else [],
    }
    plan = scheduled([s for c in v["order"] for s in edits[c]], v, kd)
    return CompiledPlan(plan, keep_cfg, gmacs, sampled / 1e9, scale, latency=lat,
                        target_gmacs=target_macs / 1e9 if budget_gmacs is not None else None,
                        full_width=all(widths[k] == cost.full_knob_widths[k] for k in cost.knobs
                                       if cost.knob_block[k] is None or cost.knob_block[k] in kept))


register_recipe(Recipe("fractions", compile_fractions, "MI block pruning and width fractions, projected onto the "
                       "cost target"))
