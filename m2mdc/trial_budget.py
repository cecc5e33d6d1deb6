"""What a search needs to know of a recipe before any trial runs: the report budget of a trial (ASHA's
max_t), the cohort whose reports a trial's are ranked against, and the channel scores its trials may need
from the teacher. Kept out of the compiler; a vocabulary module (knob names may appear here)."""
from __future__ import annotations

from typing import Callable

from .compiler import Target, compile_config
from .knobs import KNOBS, knob_for
from .steps import plan_reports


def channel_signals(recipe: str, values: dict[str, tuple]) -> set[str]:
    """The channel-score signals a search's trials may need from the teacher (``values``: the values
    each knob can take): the allocator values widths by the sampled signal, global ranking by group-L1."""
    needed = set()
    if recipe == "allocator":
        needed |= set(values.get(knob_for("widths.signal"), ()))
    if "global" in values.get("ranking", ()):
        needed.add("group_l1")
    return needed


def cohort(config: dict, band_of_share: Callable[[float], int] | None = None) -> str:
    """Which trials an early-stopping rung may compare: a one-shot trial reports after all its edits,
    a progressive one after its first, so each is compared with trials of its own schedule; and with
    ``band_of_share`` (cost-target share of the budget -> cost band), only with trials of its cost band,
    since a cheaper architecture's val trails a dearer one's by construction and a cross-cost rung would
    stop the cheap trials a frontier search samples on purpose."""
    schedule = str(config.get("schedule", KNOBS["schedule"].default))
    if band_of_share is None:
        return schedule
    return f"{schedule}|band {band_of_share(float(config.get('cost_target', KNOBS['cost_target'].default)))}"


def max_reports(target: Target, recipe: str, budget_gmacs: float | None, training: dict) -> int:
    """An upper bound of the progress reports a trial of ``recipe`` emits (ASHA's max_t): the plan of a
    configuration with every optional stage on (all three edits, sparsity, QAT), plus the final report."""
    widest = {"prune_ratio": 0.5, "planes_keep": 0.5, "mid_keep": 0.5, "depth_share": 0.5, "sparsity": 0.5,
              "qat": True}
    plan = compile_config(widest, target, recipe=recipe, training=training,
                          budget_gmacs=budget_gmacs if recipe == "allocator" else None).plan
    return plan_reports(plan) + 1
