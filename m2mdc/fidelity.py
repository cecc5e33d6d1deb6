"""Fidelities: how much training a configuration gets before its val top-1 is read.

A search cannot train every configuration for long, so it measures each at a cheap fidelity and
promotes the best of each cost band to a dearer one (search/promotion.py). The three rungs:

* ``adaptive_bn``: no training. The structural edits, BN recalibrated after each (the runner's ~50
  batches), then val: the adaptive-BN proxy of EagleEye and of NVIDIA Model Optimizer's FastNAS.
* ``short``: the plan as compiled, i.e. the search profile's T KD epochs of its batches after
  every edit (quick profile: 2 epochs of 40 batches per repair).
* ``long``: 8 full KD epochs in all, spread over the plan's repairs (E // k each, the rest on the
  last): the long budget every comparison table of the README trains.

``plan_at`` is the one place a plan is cut or stretched to a fidelity; the comparison tools
(analysis/study.py) and the search's trials both call it.
"""
from __future__ import annotations

from dataclasses import dataclass

from .errors import UserError


@dataclass(frozen=True)
class Fidelity:
    name: str
    rank: int  # higher = dearer and closer to what ships; a member is reported at its highest
    total_epochs: int | None  # KD epochs spread over the repairs (None: the plan's own T per repair)
    steps_per_epoch: int | None  # batches per KD epoch (None: full passes; ignored when total_epochs is None)
    doc: str


ADAPTIVE_BN = Fidelity("adaptive_bn", 0, 0, None, "no training: the edits, BN recalibrated after each, then val")
SHORT = Fidelity("short", 1, None, None, "the search profile's T KD epochs of its batches after every edit")
LONG = Fidelity("long", 2, 8, None, "8 full KD epochs in all, spread over the repairs")
FIDELITIES: dict[str, Fidelity] = {f.name: f for f in (ADAPTIVE_BN, SHORT, LONG)}


def split_epochs(plan: list[dict], total: int, steps_per_epoch: int | None | str = "keep") -> list[dict]:
    """``plan`` with ``total`` KD epochs spread over its KD repairs (E // k each, the rest on the last);
    ``steps_per_epoch`` (unless "keep") sets every repair's batches per epoch (None = full passes)."""
    kd_at = [i for i, st in enumerate(plan) if st["step"] == "kd"]
    plan = [dict(st) for st in plan]
    for j, i in enumerate(kd_at):
        plan[i]["epochs"] = total // len(kd_at) + (total % len(kd_at) if j == len(kd_at) - 1 else 0)
        if steps_per_epoch != "keep":
            plan[i]["steps_per_epoch"] = steps_per_epoch
    if any(plan[i]["epochs"] < 1 for i in kd_at):
        raise UserError(f"{total} KD epochs cannot be shared by {len(kd_at)} repairs")
    return plan


def plan_at(plan: list[dict], fidelity: str | Fidelity) -> list[dict]:
    """The compiled ``plan`` at ``fidelity``: without its KD repairs (adaptive_bn), as it is (short), or
    with the long budget's epochs spread over its repairs (long)."""
    f = FIDELITIES[fidelity] if isinstance(fidelity, str) else fidelity
    if f.total_epochs is None:
        return [dict(s) for s in plan]
    if f.total_epochs == 0:
        edits = [dict(s) for s in plan if s["step"] != "kd"]
        if not edits:
            raise UserError("an adaptive-BN measurement needs at least one edit; this plan only trains")
        return edits
    return split_epochs(plan, f.total_epochs, f.steps_per_epoch)
