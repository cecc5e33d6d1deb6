"""The end of a search: one row per trial (status by the one rule, metrics by the schema), the
Pareto set over the search's objectives, the tables and plots written beside the experiment."""
from __future__ import annotations

import csv
import io
import json
from pathlib import Path

from m2mdc.io import write_text
from m2mdc.knobs import summarise
from m2mdc.objectives import METRICS, table_columns

from .outcome import COMPLETED, STATUSES, STOPPED_EARLY, trial_status
from .pareto import frontier_plot, non_dominated


def collect_rows(results, tracker, trials_dir: Path) -> list[dict]:
    """One row per trial of a Ray Tune experiment (its ResultGrid): status and final (or last) metrics;
    ``trials_dir`` holds the trials' own folders (trial_<id>/model)."""
    tracker.refresh()  # the MLflow run ids of trials logged before a resume
    rows = []
    for res in results:
        m = dict(res.metrics or {})
        tid = m.get("trial_id") or Path(res.path).name.removeprefix("trial_")
        rows.append({"trial_id": tid, "status": trial_status(m, res.error is not None), "config": res.config,
                     **{k: m.get(k) for k in METRICS}, "model_dir": str(Path(trials_dir) / f"trial_{tid}" / "model"),
                     "run_id": tracker.runs.get(tid)})
    return rows


def counts(rows: list[dict]) -> dict[str, int]:
    return {s: sum(r["status"] == s for r in rows) for s in STATUSES}


def front_of(rows: list[dict], objectives) -> list[dict]:
    """The Pareto set: completed trials only (stopped, failed and infeasible ones never enter)."""
    return non_dominated([r for r in rows if r["status"] == COMPLETED], objectives)


def pareto_markdown(front: list[dict], objectives) -> str:
    cols = table_columns(objectives, front)
    lines = ["| trial | origin | fidelity | config | " + " | ".join(METRICS[c].label for c in cols) + " | MLflow run |",
             "|---|---|---|---|" + "---|" * len(cols) + "---|"]
    for r in sorted(front, key=lambda r: r["gmacs"] if r.get("gmacs") is not None else 0):
        cells = [METRICS[c].cell(r.get(c)) for c in cols]
        lines.append(f"| {r['trial_id']} | {r.get('origin') or ''} | {r.get('fidelity') or ''} | "
                     f"{summarise(r['config'])} | " + " | ".join(cells) + f" | {r.get('run_id') or ''} |")
    return "\n".join(lines) + "\n"


def write_outputs(rows: list[dict], front: list[dict], objectives, folder: Path, budget_gmacs: float,
                  teacher: dict, title: str, budget_ms: float | None = None) -> list[Path]:
    """trials.csv (every trial), pareto.md, and a plot of accuracy against each other objective."""
    cols = ["trial_id", "status", "pareto", "origin", *METRICS, "config", "run_id", "model_dir"]
    front_ids = {r["trial_id"] for r in front}
    buf = io.StringIO()
    w = csv.DictWriter(buf, cols, extrasaction="ignore")
    w.writeheader()
    for r in rows:
        w.writerow({**r, "pareto": r["trial_id"] in front_ids, "config": json.dumps(r["config"], sort_keys=True)})
    write_text(folder / "trials.csv", buf.getvalue())
    write_text(folder / "pareto.md", pareto_markdown(front, objectives))
    files = [folder / "trials.csv", folder / "pareto.md"]
    done = [r for r in rows if r["status"] == COMPLETED]
    others = [r for r in rows if r["status"] == STOPPED_EARLY and r.get("val_top1") is not None]
    for x in (o for o in objectives if o != "val_top1"):
        path = folder / ("frontier.png" if x == "gmacs" else f"frontier-{x}.png")
        files.append(frontier_plot(done, front, path, budget_gmacs, teacher, title, others, x=x,
                                   budget_ms=budget_ms))
    return files
