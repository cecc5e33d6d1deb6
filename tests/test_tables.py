"""pandas over the committed per-run JSON reproduces the committed comparison tables to the hundredth:
means and sample stds over seeds per row and budget (analysis/tables.py), cross-checked against the
baselines table analysis/baselines.py pasted on docs/results/baselines.md from the same runs."""
import re
from pathlib import Path

from analysis.tables import mean_std_cell, runs_frame, seed_summary

REPO = Path(__file__).resolve().parents[1]


def pasted_table(page: Path, result: str) -> list[dict]:
    """The rows of the first markdown table inside ``<!-- result: NAME -->`` on a page, by column header."""
    text = page.read_text()
    block = text[text.index(f"<!-- result: {result} -->"):text.index(f"<!-- /result: {result} -->")]
    lines = [ln for ln in block.splitlines() if ln.startswith("|")]
    cells = [[c.strip().replace("\\|", "|") for c in re.split(r"(?<!\\)\|", ln)[1:-1]] for ln in lines]
    header, rows = cells[0], cells[2:]
    return [dict(zip(header, r)) for r in rows]


def test_seed_means_and_stds_reproduce_the_committed_baselines_table():
    table = {r["method"]: r for r in pasted_table(REPO / "docs/results/baselines.md", "baselines-resnet18")}
    summary = seed_summary(runs_frame(REPO / "results/baselines/resnet18-cifar100-b0.02"))
    checked = 0
    for s in summary.itertuples():
        row = table.get(s.row)
        if row is None:  # a run the table labels differently (the search rows name their origin)
            continue
        assert row[f"test top-1 ({s.budget})"] == mean_std_cell(s.test_mean, s.test_std, s.n), s.row
        assert row[f"val top-1 ({s.budget})"] == f"{s.val_mean:.2f}", s.row
        checked += 1
    assert checked >= 12, checked  # 7 methods x their budgets: the comparison is not vacuous
