"""The papers' named plans: ``m2mdc`` (and ``m2mdc+qat``), priced before training, and the six orders
of Prune-Quantize-Distill (m2mdc.presets)."""
from __future__ import annotations

from ..compiler.compiled import CompiledPlan, Recipe, Request, register_recipe
from ..compiler.projection import fraction_widths
from ..compiler.schedule import kd_step, planes_fractions
from ..knobs import step_settings
from ..presets import PQD_EPOCHS, PQD_ORDERS, PQD_SPARSITY, PQD_SPLIT, m2mdc_plan, pqd_plan
from ..prune_blocks import select_blocks_to_prune


def compile_m2mdc(r: Request) -> CompiledPlan:
    """The paper's plan, priced before training: blocks from the MI ranking (or ``keep_blocks``),
    widths from the fractions exactly as the planes / mid steps compute them."""
    v, keep_blocks, target, kd, mi = r.values, r.config.get("keep_blocks"), r.target, r.kd, r.mi
    qat = r.name == "m2mdc+qat"
    adapter, teacher, cost = target.adapter, target.teacher, target.cost
    if keep_blocks is not None:
        cfg = adapter.validate_keep_cfg({"blocks": keep_blocks}, cost.num_classes)
        kept = frozenset(adapter.block_name(s, i) for s, idx in cfg["blocks"].items() for i in idx) | frozenset(
            b for b in cost.blocks if adapter.stage_of(b) not in cfg["blocks"])
    else:
        ratio = float(v["prune_ratio"])
        kept = frozenset(cost.blocks) - set(select_blocks_to_prune(target.scores(), adapter, teacher, ratio)
                                            if ratio else [])
    widths = fraction_widths(cost, planes_fractions(v, cost), float(v["mid_keep"]), 1.0)
    keep_cfg = cost.keep_cfg(kept, widths)
    signal = step_settings(v, "planes").get("signal", "bn")
    plan = m2mdc_plan(None if keep_blocks is not None else v["prune_ratio"], v["planes_keep"], v["mid_keep"],
                      keep_blocks, signal, **kd)
    for s in plan:
        if s["step"] in ("block_prune", "planes", "mid"):
            s.update(mi)
    if qat:
        plan += [{"step": "qat"}, kd_step(kd)]
    gmacs = cost.macs_of(kept, widths) / 1e9
    return CompiledPlan(plan, keep_cfg, gmacs, gmacs)


def compile_pqd(r: Request) -> CompiledPlan:
    """A PQD order at full width (its sparsity defaults to the paper's 50 % unless the configuration sets it)."""
    cost = r.target.cost
    sparsity = r.values["sparsity"] if "sparsity" in r.config else PQD_SPARSITY
    full = cost.keep_cfg(frozenset(cost.blocks), cost.full_knob_widths)
    plan = pqd_plan(r.name, sparsity, r.pqd.get("pqd_epochs", PQD_EPOCHS), r.pqd.get("split", PQD_SPLIT),
                    **{k: x for k, x in r.kd.items() if k not in ("epochs",)})
    return CompiledPlan(plan, full, cost.full_gmacs, cost.full_gmacs)


register_recipe(Recipe("m2mdc", compile_m2mdc, "the M2M-DC paper's plan: MI block pruning, planes, mid, each with KD"))
register_recipe(Recipe("m2mdc+qat", compile_m2mdc, "the M2M-DC plan, then INT8 QAT with a KD repair"))
for _order in PQD_ORDERS:
    register_recipe(Recipe(_order, compile_pqd, f"Prune-Quantize-Distill in the order {_order.upper()}"))
