"""compile_config: one flat configuration of knobs to a validated plan, its final keep_cfg and cost,
before any training (the recipe registry says how; the recipes live in m2mdc/recipes/)."""
from __future__ import annotations

from typing import Callable

from .. import recipes as _recipes  # noqa: F401  (registers the built-in recipes)
from ..errors import UserError
from ..knobs import KNOBS, resolve, step_settings
from ..steps import validate_plan
from .compiled import RECIPES, CompiledPlan, Request
from .target import Target


def compile_config(config: dict, target: Target, *, recipe: str = "fractions", budget_gmacs: float | None = None,
                   training: dict | None = None, bins: int = 10, probe_samples: int = 5000,
                   budget_ms: float | None = None, latency: Callable[[dict, bool], dict] | None = None,
                   project: str = "down") -> CompiledPlan:
    """The plan of ``config`` (knob name -> value; missing knobs take the table's defaults).

    ``training``: the KD repairs' budget (epochs, steps_per_epoch, batch_size, seed) and, for the
    PQD recipes, ``pqd_epochs`` and ``split``. ``bins`` / ``probe_samples`` are the MI settings the
    ``block_scores`` were computed with. ``budget_ms`` with ``latency`` (an m2mdc.arch_latency.ArchLatency:
    keep_cfg, int8 -> measured latency as shipped): the final architecture's latency must fit too;
    the fractions recipe projects onto it by width scaling, the others are rejected when over it.
    ``project``: "down" scales the fractions recipe's widths only when over its cost target (budget x
    ``cost_target``); "both" also scales a configuration under its target up, towards full width.
    """
    if project not in ("down", "both"):
        raise ValueError(f"project must be 'down' or 'both', not {project!r}")
    if budget_ms is not None and latency is None:
        raise ValueError("a latency budget needs a latency function (m2mdc.arch_latency.ArchLatency)")
    if recipe not in RECIPES:
        raise UserError(f"unknown recipe {recipe!r}; choose one of {', '.join(RECIPES)}")
    training = dict(training or {})
    pqd = {k: training.pop(k) for k in ("pqd_epochs", "split") if k in training}
    v = resolve(config, recipe)
    kd = {**training, **step_settings(v, "kd")}
    mi = {"bins": bins, "probe_samples": probe_samples}
    out = RECIPES[recipe].compile(Request(recipe, v, config, target, budget_gmacs, kd, mi, pqd, budget_ms, latency,
                                          project))
    if budget_ms is not None and out.feasible and out.latency is None:  # a recipe that fixes its widths
        t = latency(out.keep_cfg, any(s["step"] == "qat" for s in out.plan))
        out.latency = {"predicted_ms": t["ms"], "spread_pct": t["spread_pct"], "backend": t["backend"],
                       "sampled_ms": t["ms"]}
        if t["ms"] > budget_ms:
            out = CompiledPlan([], out.keep_cfg, out.gmacs, out.sampled_gmacs, 0.0, feasible=False,
                               notes=[f"{t['ms']:.2f} ms exceeds the {budget_ms:g} ms budget and the {recipe!r} "
                                      f"recipe fixes its widths"], latency=out.latency,
                               violation=t["ms"] / budget_ms - 1.0)
    if out.feasible:
        out.plan = validate_plan(out.plan + _added_steps(v, config), target.adapter.arch, target.cost.num_classes)
    return out


def _added_steps(values: dict, config: dict) -> list[dict]:
    """Steps that knobs add when set away from their default (``Knob.adds``), at the plan's end."""
    return [{"step": k.adds, **step_settings({name: config[name]}, k.adds)} for name, k in KNOBS.items()
            if k.adds and name in config and config[name] != k.default]
