"""Offline demo on the embedded digits data: train (or load) the teacher, then compress it with
the M2M-DC recipe and print the before/after table.

    python -m m2mdc.demo [--out-dir DIR]
"""
from __future__ import annotations

import sys

from ..compiler import target_of
from ..context import prepare_context
from ..data import load_dataset
from ..device import pick_device
from ..errors import Parser, check_range, cli
from ..io import ensure_writable, out_root
from ..results import save_result
from ..teacher import TeacherRecipe
from ..trial import TrialSpec, run_trial

LABELS = {"block_prune": "block-KD", "planes": "planes-KD", "mid": "inner-slice (mid-KD)"}


@cli
def main(argv=None):
    p = Parser(prog="python -m m2mdc.demo", description=__doc__.split("\n\n")[0])
    p.add_argument("--out-dir", default=None, help="output root (default: $M2MDC_OUT_DIR or ./outputs)")
    p.add_argument("--device", default="auto", help="auto (CUDA if present), cpu, cuda, cuda:N")
    p.add_argument("--kd-epochs", type=int, default=2, help="epochs of each KD repair (paper: 5)")
    a = p.parse_args(argv)
    check_range("--kd-epochs", a.kd_epochs, 1, 1000)
    root = ensure_writable(out_root(a.out_dir))
    device = pick_device(a.device)
    ds = load_dataset("digits")
    print(ds.describe(), file=sys.stderr)
    ctx = prepare_context("resnet18", ds, TeacherRecipe(epochs=30), device, a.out_dir)
    trial = run_trial({}, ctx, target_of(ctx), TrialSpec(recipe="m2mdc", training={"epochs": a.kd_epochs},
                                                         step_tests=True), quiet=False)
    model, rec = trial.model, trial.record
    folder = save_result(model, rec, root / "compress" / "demo-resnet18-digits")
    t = ctx.teacher_record
    print(f"\n{'model':<22}{'val top-1':>10}{'test top-1':>11}{'params':>10}{'GMACs':>9}")
    print(f"{'teacher resnet18':<22}{t['val_top1']:>9.2f}%{t['test_top1']:>10.2f}%"
          f"{t['params'] / 1e6:>9.3f}M{t['gmacs']:>9.4f}")
    edit = None
    for r in rec["steps"]:
        if r["step"] in LABELS:
            edit = r["step"]
        elif r["step"] == "kd":
            print(f"{LABELS[edit]:<22}{r['val_top1']:>9.2f}%{r['test_top1']:>10.2f}%"
                  f"{r['params_count'] / 1e6:>9.3f}M{r['gmacs']:>9.4f}")
    print(f"\nstudent written to {folder} (model.pt + model.pt2 + keep_cfg.json + record.json)")
    return 0


if __name__ == "__main__":
    main()
