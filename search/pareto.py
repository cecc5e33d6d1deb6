"""Non-dominated sets, hypervolume, and the frontier plots, over any objectives of the table
(m2mdc.objectives: name, direction, unit).

A point is dominated when another is at least as good in every objective and strictly better in
one; equal points dominate neither, so ties stay on the front together.
"""
from __future__ import annotations

from contextlib import contextmanager
from pathlib import Path
from typing import Iterator, Sequence

import moocore
import numpy as np

from m2mdc.objectives import METRICS, OBJECTIVES, directions


def dominates(a: Sequence[float], b: Sequence[float], senses: Sequence[str]) -> bool:
    better = False
    for x, y, s in zip(a, b, senses):
        if s == "min":
            x, y = -x, -y
        if x < y:
            return False
        better = better or x > y
    return better


def non_dominated(rows: list[dict], objectives: Sequence[str]) -> list[dict]:
    """The rows no other row dominates on ``objectives`` (names in the objectives table), input order kept."""
    senses = directions(objectives)
    vecs = [[float(r[k]) for k in objectives] for r in rows]
    return [r for i, r in enumerate(rows)
            if not any(dominates(vecs[j], vecs[i], senses) for j in range(len(rows)) if j != i)]


def references(objectives: Sequence[str], budget_gmacs: float | None, teacher: dict) -> dict[str, float]:
    """The reference value of each objective (its hypervolume corner): 0 for accuracy, the budget for
    GMACs, the teacher's own value for latency and size (what compressing is measured against)."""
    out = {}
    for name in objectives:
        ref = OBJECTIVES[name].reference
        value = 0.0 if ref == "zero" else budget_gmacs if ref == "budget" else teacher.get(name)
        if value is None or value <= 0 and ref != "zero":
            raise ValueError(f"no {ref} value to normalise objective {name} by (got {value})")
        out[name] = float(value)
    return out


def hypervolume(rows: list[dict], objectives: Sequence[str], refs: dict[str, float]) -> float:
    """Volume dominated by ``rows`` inside the reference corner, over all ``objectives``, each
    min-objective divided by its reference (so its corner is 1) and each max-objective (an accuracy
    in %) measured up from its reference (0): in % x shares of the references. moocore's public
    ``hypervolume`` (WFG-style exact algorithm, any number of objectives) on the minimisation form."""
    pts = []
    for r in rows:
        vec = []
        for name in objectives:
            v = r.get(name)
            if v is None:
                break
            vec.append(-(float(v) - refs[name]) if OBJECTIVES[name].direction == "max" else float(v) / refs[name])
        else:
            if all(x < (0.0 if OBJECTIVES[n].direction == "max" else 1.0) for x, n in zip(vec, objectives)):
                pts.append(vec)
    if not pts:
        return 0.0
    ref = np.array([0.0 if OBJECTIVES[n].direction == "max" else 1.0 for n in objectives])
    return float(moocore.hypervolume(np.array(pts, dtype=float), ref=ref))


@contextmanager
def figure(path: Path, xlabel: str, ylabel: str, title: str = "", height: float = 4.4,
           legend_outside: bool = False) -> Iterator:
    """Axes for one PNG plot (headless), written to ``path`` with grid and legend on exit (beside the
    axes with ``legend_outside``, for many long labels that would hide points)."""
    # matplotlib.pyplot costs ~0.3-0.7 s to import (python -X importtime), which the CLIs importing this module
    # (analysis/review.py, analysis/baselines.py, search/frontier.py, search/audit.py) do not pay for --help
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(10.5 if legend_outside else 6.4, height), dpi=120)
    try:
        yield ax
        ax.set_xlabel(xlabel)
        ax.set_ylabel(ylabel)
        ax.set_title(title)
        ax.grid(alpha=0.3)
        if legend_outside:
            ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.02, 1.0), borderaxespad=0)
        else:
            ax.legend(fontsize=7, loc="lower right")
        fig.tight_layout()
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(path)
    finally:
        plt.close(fig)


ORIGIN_MARKERS = {"seeded baseline": "s", "prior": "D", "sampled": "o", "given": "^", "unknown": "x"}
FIDELITY_COLOURS = {"adaptive_bn": "tab:orange", "short": "tab:blue", "long": "tab:green"}


def origin_kind(origin: str | None) -> str:
    """The ORIGIN_MARKERS kind of an origin label ("sampled (tpe #4)", "seeded baseline: uniform width", ...)."""
    return next((k for k in ORIGIN_MARKERS if origin and origin.startswith(k)), "unknown")


def frontier_plot(rows: list[dict], front: list[dict], path: Path, budget_gmacs: float | None = None,
                  teacher: dict | None = None, title: str = "", others: list[dict] | None = None,
                  x: str = "gmacs", y: str = "val_top1", budget_ms: float | None = None) -> Path:
    """``y`` (accuracy) against ``x`` (GMACs by default; latency, size): finished trials (dominated ones
    faded), the Pareto front as a step line, the teacher marked, the budget as a vertical line when
    x is GMACs (or latency, with ``budget_ms``); each point's marker names its origin (seeded baseline, prior,
    sampled, given) and its colour the fidelity it was read at. ``others`` (e.g. stopped-early trials' last
    values) are hollow markers. Writes a PNG."""
    ids = {id(r) for r in front}
    with figure(path, METRICS[x].label, METRICS[y].label, title, legend_outside=True) as ax:
        # marker = where the configuration came from, colour = the fidelity it was read at, faded = dominated
        shown = [r for r in rows if r.get(x) is not None and r.get(y) is not None]
        for kind, marker in ORIGIN_MARKERS.items():
            for fidelity, colour in FIDELITY_COLOURS.items():
                for on_front in (False, True):
                    pts = [r for r in shown if origin_kind(r.get("origin")) == kind and
                           (r.get("fidelity") or "short") == fidelity and (id(r) in ids) == on_front]
                    if pts:
                        ax.scatter([r[x] * METRICS[x].scale for r in pts], [r[y] for r in pts], marker=marker,
                                   c=colour, alpha=1.0 if on_front else 0.35, s=46 if on_front else 30,
                                   edgecolors="black" if on_front else "none")
        for kind, marker in ORIGIN_MARKERS.items():  # legend: one entry per origin and per fidelity shown
            if any(origin_kind(r.get("origin")) == kind for r in shown):
                ax.scatter([], [], marker=marker, c="grey", label=kind)
        for fidelity, colour in FIDELITY_COLOURS.items():
            if any((r.get("fidelity") or "short") == fidelity for r in shown):
                ax.scatter([], [], marker="o", c=colour, label=f"read at {fidelity}")
        ax.scatter([], [], marker="o", c="white", edgecolors="black", label="Pareto member (faded: dominated)")
        others = [r for r in others or [] if r.get(x) is not None]
        if others:
            ax.scatter([r[x] * METRICS[x].scale for r in others], [r[y] for r in others], facecolors="none",
                       edgecolors="grey", alpha=0.6, label="stopped early (last value)")
        pts = sorted((r for r in front if r.get(x) is not None), key=lambda r: (r[x], -r[y]))
        if pts:
            ax.plot([r[x] * METRICS[x].scale for r in pts], [r[y] for r in pts], "-", c="tab:red",
                    drawstyle="steps-post", label="Pareto set", zorder=0)
        if teacher and teacher.get(x) is not None and teacher.get(y) is not None:
            ax.scatter([teacher[x] * METRICS[x].scale], [teacher[y]], marker="*", s=160, c="black", label="teacher")
        if budget_gmacs and x == "gmacs":
            ax.axvline(budget_gmacs, ls="--", c="grey", label=f"budget {budget_gmacs:g} GMACs")
        if budget_ms and x == "latency_ms":
            ax.axvline(budget_ms, ls="--", c="grey", label=f"budget {budget_ms:g} ms")
    return Path(path)
