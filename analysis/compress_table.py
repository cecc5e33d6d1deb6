"""Markdown table of one or more `m2mdc.compress` results: teacher, then every KD repair's
student (val/test top-1, params, GMACs, wall time), read from their record.json files.

    python analysis/compress_table.py outputs/compress/m2mdc-r18-c100-seed0
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

from m2mdc.errors import Parser, UserError, cli

STAGE_LABELS = {"block_prune": "block-KD", "planes": "planes-KD", "mid": "inner-slice (mid-KD)",
                "widths": "widths-KD", "qat": "QAT-KD", "sparsity": "sparse-KD"}


def rows_of(record: dict) -> list[tuple]:
    t = record["teacher"]
    out = [("teacher", t["val_top1"], t["test_top1"], t["params"], t["gmacs"], None)]
    last_edit, elapsed = None, 0.0
    prior = record.get("init_from", {}).get("steps", [])  # a run continued from a saved result (--init-from)
    for r in prior + record["steps"]:
        elapsed += r["seconds"]
        if r["step"] in STAGE_LABELS:
            last_edit = r["step"]
        elif r["step"] in ("kd", "train", "convert"):
            label = "INT8 (converted)" if r["step"] == "convert" else STAGE_LABELS.get(last_edit, r["step"])
            if r["step"] == "train":  # plain CE repair (PQD's P and Q stages), not KD
                label = label.replace("-KD", "-CE")
            out.append((label, r["val_top1"], r["test_top1"], r["params_count"], r["gmacs"], elapsed))
    return out


@cli
def main(argv=None):
    p = Parser(prog="python analysis/compress_table.py", description=__doc__.split("\n\n")[0])
    p.add_argument("results", nargs="+", help="result folders written by python -m m2mdc.compress")
    a = p.parse_args(argv)
    records = {}
    for folder in a.results:  # read everything first: bad input prints no partial table
        path = Path(folder) / "record.json"
        try:
            records[folder] = json.loads(path.read_text())
        except (OSError, ValueError):
            raise UserError(f"{path} is missing or not JSON; pass folders written by m2mdc.compress") from None
    print("| run | model | val top-1 | test top-1 | params | GMACs | cumulative time |")
    print("|---|---|---|---|---|---|---|")
    for folder, record in records.items():
        for label, val, test, params, gm, secs in rows_of(record):
            tm = "" if secs is None else f"{secs / 60:.1f} min"
            print(f"| {Path(folder).name} | {label} | {val:.2f}% | {test:.2f}% | {params / 1e6:.3f}M | "
                  f"{gm:.4f} | {tm} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
