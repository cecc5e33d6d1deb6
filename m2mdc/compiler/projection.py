"""Budget projection: the width scale that brings a configuration onto its cost target (bisection on
GMACs, priced by the cost model) or under a latency budget (false position on measured latency), and the
widths a scale gives."""
from __future__ import annotations

from typing import Callable

import torch

from ..cost import CostModel
from ..models.base import GroupKind
from ..slicing import keep_width

BISECTION_STEPS = 40


def fraction_widths(cost: CostModel, planes: dict[str, float], mid: float, scale: float,
                    exact: bool = False) -> dict[str, int]:
    """Knob widths for planes fractions (per stage), one mid fraction, all scaled by ``scale`` (whole conv
    groups where a grouped conv reads the group); ``exact``: the unrounded widths, capped at full."""
    out = {}
    for knob, full in cost.full_knob_widths.items():
        frac = planes[knob.owner] if knob.kind is GroupKind.PLANES else mid
        out[knob] = min(full, frac * scale * full) if exact else keep_width(full, frac * scale, cost.quantum[knob])
    return out


def fill_widths(cost: CostModel, kept: frozenset, widths: dict[str, int], wanted: dict[str, float],
          limit: float) -> dict[str, int]:
    """Grow the widths one conv group at a time, the knob furthest below its wanted (unrounded) width first,
    while the cost fits ``limit``: one common scale, rounded per knob, can leave a few percent of a small
    target unspent; this spends it without changing the shape by more than a rounding step."""
    widths = dict(widths)
    active = [k for k in cost.knobs if cost.knob_block[k] is None or cost.knob_block[k] in kept]
    while True:
        for k in sorted(active, key=lambda k: (widths[k] - wanted[k]) / cost.full_knob_widths[k]):
            grown = widths[k] + cost.quantum[k]
            if grown <= cost.full_knob_widths[k] and cost.macs_of(kept, {**widths, k: grown}) <= limit:
                widths[k] = grown
                break
        else:
            return widths


def global_widths(cost: CostModel, kept: frozenset, scores: dict, keep_frac: float) -> dict[str, int]:
    """Knob widths from one ranking of every channel of the kept blocks' groups by its group-L1
    importance divided by its group's mean (Torch-Pruning's GroupMagnitudeImportance with its mean
    normaliser, global_pruning=True): the top ``keep_frac`` of all channels stay, at least one conv
    group per knob. Known from the teacher alone, so the cost is still known before training."""
    active = [k for k in cost.knobs if cost.knob_block[k] is None or cost.knob_block[k] in kept]
    norm = {k: torch.as_tensor(scores[cost.knobs[k][0]]).double() for k in active}
    norm = {k: v / v.mean().clamp_min(1e-12) for k, v in norm.items()}
    flat = torch.cat(list(norm.values())).sort(descending=True).values
    n_keep = max(1, min(len(flat), round(keep_frac * len(flat))))
    threshold = flat[n_keep - 1]
    widths = dict(cost.full_knob_widths)
    for k, v in norm.items():
        q = cost.quantum[k]
        widths[k] = q * max(1, min(cost.full_knob_widths[k] // q, round(int((v >= threshold).sum()) / q)))
    return widths


def largest_fitting(cost_at: Callable[[float], float], lo: float, hi: float, limit: float) -> float:
    """The largest scale in [lo, hi) whose cost fits ``limit``, by bisection (cost grows with the scale;
    ``lo`` fits, ``hi`` does not)."""
    for _ in range(BISECTION_STEPS):
        m = (lo + hi) / 2
        if cost_at(m) <= limit:
            lo = m
        else:
            hi = m
    return lo


LATENCY_BAND = 0.05  # the projection stops once the latency is within this share under the budget
LATENCY_STEPS = 6  # at most this many measurements between the two ends


def project_latency(ms_at: Callable[[float], dict], hi: float, budget_ms: float, band: float = LATENCY_BAND,
                    steps: int = LATENCY_STEPS) -> tuple[float | None, dict]:
    """(scale, latency record): the largest width scale in [0, ``hi``] whose measured latency fits
    ``budget_ms`` (None when even scale 0 does not), and the prediction for it.

    Each measurement costs a compile, so this is false position (regula falsi, Illinois variant)
    on latency against scale squared (MACs grow with the square of the width) rather than bisection: it aims just inside the budget and stops once a
    measurement lands within ``band`` under it, usually after 1-3 measurements between the ends.
    Latency grows with width up to timing noise; the scale kept is always one *measured* to fit.
    """
    top = ms_at(hi)
    record = {"sampled_ms": top["ms"]}
    if top["ms"] <= budget_ms:
        return hi, {**record, "predicted_ms": top["ms"], "spread_pct": top["spread_pct"],
                    "backend": top["backend"], "measurements": 1}
    bottom = ms_at(0.0)
    n = 2
    if bottom["ms"] > budget_ms:
        return None, {**record, "predicted_ms": bottom["ms"], "spread_pct": bottom["spread_pct"],
                      "backend": bottom["backend"], "measurements": n}
    lo, t_lo, best = 0.0, bottom["ms"], bottom
    t_hi = top["ms"]
    aim = budget_ms * (1 - band / 2)
    side = 0
    for _ in range(steps):
        if hi - lo < 1e-3 or best["ms"] >= budget_ms * (1 - band):
            break
        # interpolate in s^2: MACs (and so, past the per-call floor, time) grow with the square of the width scale
        u = lo ** 2 + (hi ** 2 - lo ** 2) * (aim - t_lo) / max(t_hi - t_lo, 1e-9)
        s = min(max(u, 0.0) ** 0.5, hi)
        s = min(max(s, lo + 0.02 * (hi - lo)), hi - 0.02 * (hi - lo))
        t = ms_at(s)
        n += 1
        if t["ms"] <= budget_ms:
            lo, t_lo, best = s, t["ms"], t
            if side == 1:  # Illinois: the other end stayed twice in a row, halve its weight
                t_hi = aim + (t_hi - aim) / 2
            side = 1
        else:
            hi, t_hi = s, t["ms"]
            if side == -1:
                t_lo = aim - (aim - t_lo) / 2
            side = -1
    return lo, {**record, "predicted_ms": best["ms"], "spread_pct": best["spread_pct"], "backend": best["backend"],
                "measurements": n}
