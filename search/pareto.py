"""Non-dominated sets and the frontier plot.

Objectives are (key, sense) pairs, sense "max" or "min". A point is dominated when another is at
least as good in every objective and strictly better in one; equal points dominate neither, so
ties stay on the front together.
"""
from __future__ import annotations

from contextlib import contextmanager
from pathlib import Path
from typing import Iterator, Sequence

OBJECTIVES = {"val_top1": "max", "gmacs": "min", "latency_ms": "min"}


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
    """The rows no other row dominates on ``objectives`` (keys of OBJECTIVES), input order kept."""
    senses = [OBJECTIVES[k] for k in objectives]
    vecs = [[float(r[k]) for k in objectives] for r in rows]
    return [r for i, r in enumerate(rows)
            if not any(dominates(vecs[j], vecs[i], senses) for j in range(len(rows)) if j != i)]


@contextmanager
def figure(path: Path, xlabel: str, ylabel: str, title: str = "", height: float = 4.4) -> Iterator:
    """Axes for one PNG plot (headless), written to ``path`` with grid and legend on exit."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, height), dpi=120)
    try:
        yield ax
        ax.set_xlabel(xlabel)
        ax.set_ylabel(ylabel)
        ax.set_title(title)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7, loc="lower right")
        fig.tight_layout()
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(path)
    finally:
        plt.close(fig)


def frontier_plot(rows: list[dict], front: list[dict], path: Path, budget_gmacs: float | None = None,
                  teacher: dict | None = None, title: str = "", others: list[dict] | None = None) -> Path:
    """Accuracy vs GMACs: finished trials (dominated ones faded), the Pareto front as a step
    line, the teacher marked, the budget as a vertical line. ``others`` (e.g. stopped-early
    trials' last values) are drawn as hollow markers. Writes a PNG."""
    ids = {id(r) for r in front}
    dom = [r for r in rows if id(r) not in ids]
    with figure(path, "GMACs (fvcore, 1 image)", "val top-1 (%)", title) as ax:
        if dom:
            ax.scatter([r["gmacs"] for r in dom], [r["val_top1"] for r in dom], c="tab:blue", alpha=0.3,
                       label="dominated trials")
        if others:
            ax.scatter([r["gmacs"] for r in others], [r["val_top1"] for r in others], facecolors="none",
                       edgecolors="grey", alpha=0.6, label="stopped early (last value)")
        if front:
            pts = sorted(front, key=lambda r: (r["gmacs"], -r["val_top1"]))
            ax.plot([r["gmacs"] for r in pts], [r["val_top1"] for r in pts], "-o", c="tab:red",
                    drawstyle="steps-post", label="Pareto set")
        if teacher and teacher.get("gmacs") is not None:
            ax.scatter([teacher["gmacs"]], [teacher["val_top1"]], marker="*", s=160, c="black", label="teacher")
        if budget_gmacs:
            ax.axvline(budget_gmacs, ls="--", c="grey", label=f"budget {budget_gmacs:g} GMACs")
    return Path(path)
