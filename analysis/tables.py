"""Tables over seeds with pandas: the per-run JSON a comparison tool saves under results/ as one frame,
and its means and sample standard deviations per row and budget (what every comparison table prints)."""
from __future__ import annotations

import json
from pathlib import Path

import pandas as pd


def runs_frame(folder: Path) -> pd.DataFrame:
    """One row per saved run (analysis/study.py's per-run JSON): row label, budget, seed, val and test top-1."""
    records = []
    for path in sorted(Path(folder).glob("*.json")):
        r = json.loads(path.read_text())
        if "run" not in r:
            continue
        records.append({"row": r["row"], "budget": r["run"]["budget"], "seed": r["run"]["seed"],
                        "val_top1": r["val_top1"], "test_top1": r["test_top1"], "gmacs": r["gmacs"]})
    return pd.DataFrame.from_records(records, columns=["row", "budget", "seed", "val_top1", "test_top1", "gmacs"])


def seed_summary(frame: pd.DataFrame) -> pd.DataFrame:
    """Per (row, budget): test top-1 mean and sample std (ddof 1, as statistics.stdev), val mean, the seeds."""
    g = frame.sort_values("seed").groupby(["row", "budget"], sort=False)
    return g.agg(test_mean=("test_top1", "mean"), test_std=("test_top1", "std"), val_mean=("val_top1", "mean"),
                 n=("seed", "size"), seeds=("seed", lambda s: ",".join(map(str, s)))).reset_index()


def mean_std_cell(mean: float, std: float, n: int) -> str:
    """A table cell: "mean ± std" over several seeds, the value alone over one."""
    return f"{mean:.2f}" if n == 1 else f"{mean:.2f} ± {std:.2f}"
