"""The compiler's output (``CompiledPlan``) and its recipe registry: a recipe turns resolved knob values
into a plan priced before training. Each recipe is one module of m2mdc/recipes/ that registers itself,
as steps do (m2mdc/steps/)."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

from ..steps import plan_reports
from .target import Target


@dataclass
class CompiledPlan:
    plan: list[dict]  # validated, every setting filled in ([] when infeasible)
    keep_cfg: dict  # the architecture the plan ends with
    gmacs: float  # its GMACs (<= budget when feasible and a budget was given)
    sampled_gmacs: float  # GMACs of the configuration as given, before projection
    width_scale: float = 1.0  # s: the factor every width fraction was multiplied by (1 = not projected)
    feasible: bool = True
    notes: list[str] = field(default_factory=list)
    details: dict = field(default_factory=dict)  # what the recipe decided on the way (the allocator's result)
    # with a latency budget: predicted_ms / spread_pct / backend of the final architecture, sampled_ms of
    # the configuration before projection (None when no latency budget)
    latency: dict | None = None
    violation: float = 0.0  # infeasible: how far over a budget the configuration stays (relative, > 0)
    target_gmacs: float | None = None  # the cost the widths were projected onto (budget x cost_target)
    full_width: bool = False  # every width is the teacher's: a configuration under its target stays there

    @property
    def projected(self) -> bool:
        return self.width_scale != 1.0

    @property
    def under_target(self) -> bool:
        """Projected up as far as it goes (every width full) and still under its cost target: the case of
        a deep cut whose kept blocks cost less than the target at the teacher's widths."""
        return self.full_width and self.target_gmacs is not None and self.gmacs < self.target_gmacs * 0.98

    @property
    def kd_steps(self) -> int:
        return sum(s["step"] == "kd" for s in self.plan)

    @property
    def reports(self) -> int:
        """Progress reports the plan emits (one per training epoch)."""
        return plan_reports(self.plan) if self.plan else 0


@dataclass
class Request:
    """What a recipe is handed: the resolved knob values (``values``; ``config`` as given), the teacher,
    the budgets, the KD repairs' settings and the MI settings, the projection rule and, for the PQD
    recipes, their total epochs and split."""

    name: str
    values: dict
    config: dict
    target: Target
    budget_gmacs: float | None
    kd: dict
    mi: dict
    pqd: dict
    budget_ms: float | None = None
    latency: Callable[[dict, bool], dict] | None = None
    project: str = "down"


@dataclass(frozen=True)
class Recipe:
    name: str
    compile: Callable[[Request], CompiledPlan]
    doc: str


RECIPES: dict[str, Recipe] = {}


def register_recipe(recipe: Recipe) -> Recipe:
    if recipe.name in RECIPES:
        raise ValueError(f"recipe {recipe.name!r} is registered twice")
    RECIPES[recipe.name] = recipe
    return recipe
