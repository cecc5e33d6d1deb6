"""Deployment table: accuracy, size and measured CPU latency of saved models, side by side in one run.

    python analysis/deploy_table.py --teacher outputs/teachers/resnet18-cifar100-r32-42ae28ac234f \\
        outputs/compress/pqd-r18-c100-seed0 outputs/compress/m2mdc-r18-c100-seed0 ...

Every model is reloaded from its folder (m2mdc.results.load_result; the teacher from its cache
folder) and timed here, one after another, with the same thread count: FP32 models eager and
compiled (inductor), INT8 models compiled. Accuracies come from the folders' records (measured
when the model was made; reloading reproduces them exactly, see tests/test_pqd.py).
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

from m2mdc.errors import Parser, UserError, cli


def load_teacher(folder: Path):
    """A cached teacher folder: its record, and its weights (its model.pt, or the user's checkpoint it names)."""
    from m2mdc.teacher import read_checkpoint  # imports torch (~2.5 s): see main

    try:
        rec = json.loads((folder / "record.json").read_text())
    except (OSError, ValueError):
        raise UserError(f"{folder} is not a cached teacher folder (no record.json)") from None
    model = read_checkpoint(rec.get("file") or folder / "model.pt", rec["arch"])
    rec.update(int8=False, sparsity=0.0, label="teacher (FP32)")
    return model, rec


@cli
def main(argv=None):
    p = Parser(prog="python analysis/deploy_table.py", description=__doc__.split("\n\n")[0])
    p.add_argument("results", nargs="*", help="folders written by python -m m2mdc.compress")
    p.add_argument("--teacher", default=None, help="a cached teacher folder (OUT/teachers/KEY) to time as well")
    p.add_argument("--threads", type=int, default=None, help="CPU threads (default: this machine's, at most 2)")
    p.add_argument("--resolution", type=int, default=32)
    a = p.parse_args(argv)
    if not a.results and not a.teacher:
        raise UserError("nothing to measure: pass result folders and/or --teacher")
    # these import torch, and m2mdc.deploy torch._inductor: ~4 s (python -X importtime) that this CLI's --help
    # (0.1 s) and its bad-input checks do not pay
    from m2mdc import metrics
    from m2mdc.deploy import deployment_metrics
    from m2mdc.results import load_result

    models = []
    if a.teacher:
        models.append(load_teacher(Path(a.teacher)))
    for folder in a.results:
        model, _meta = load_result(Path(folder))
        try:
            rec = json.loads((Path(folder) / "record.json").read_text())
        except (OSError, ValueError):
            raise UserError(f"{folder}/record.json is missing or not JSON") from None
        plan = [s["step"] for s in rec.get("init_from", {}).get("plan", [])] + [s["step"] for s in rec["plan"]]
        rec["label"] = Path(folder).name + f" ({' -> '.join(plan)})"
        models.append((model, rec))
    if not models:
        raise UserError("nothing to measure: pass result folders and/or --teacher")
    threads = a.threads or metrics.default_threads()
    print("| model | val top-1 | test top-1 | params | GMACs | sparsity | FP32 checkpoint | shipped (sparse / INT8) | "
          "bs1 eager | bs1 compiled | bs64 compiled | backend |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|")
    for model, rec in models:
        d = deployment_metrics(model, a.resolution, int8=bool(rec.get("int8")), threads=threads)
        eager = d["latency"].get("fp32_eager")
        comp = d["latency"].get("int8_compiled") or d["latency"]["fp32_compiled"]
        eager_ms = f"{eager['bs1_ms']:.2f} ms ±{eager['bs1_spread_pct']:.0f}%" if eager else "–"  # INT8: compiled only
        small = d["size_bytes"] if rec.get("int8") else d.get("sparse_size_bytes")
        shipped = (f"{small / 1e6:.1f} MB{' (INT8 .pt2)' if rec.get('int8') else ''}" if small is not None
                   else f"unknown ({d['export_error']})")
        print(f"| {rec['label']} | {rec['val_top1']:.2f}% | {rec['test_top1']:.2f}% | {rec['params'] / 1e6:.3f}M | "
              f"{rec['gmacs']:.4f} | {rec.get('sparsity') or 0:.2f} | {rec['size_bytes'] / 1e6:.1f} MB | {shipped} | "
              f"{eager_ms} | {comp['bs1_ms']:.2f} ms ±{comp['bs1_spread_pct']:.0f}% | "
              f"{comp['bs64_images_per_s']:.0f} img/s | {comp['backend']}, {threads} threads |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
