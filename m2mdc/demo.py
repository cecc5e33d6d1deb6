"""Offline demo on the embedded digits data: train (or load) the teacher, then compress it with
the M2M-DC recipe and print the before/after table.

    python -m m2mdc.demo [--out-dir DIR]
"""
from __future__ import annotations

import sys

from .data import load_dataset
from .device import pick_device
from .errors import Parser, cli
from .io import ensure_writable, out_root
from .pipeline import m2mdc_plan, prepare_context, run_plan, save_result
from .teacher import TeacherRecipe


@cli
def main(argv=None):
    p = Parser(prog="python -m m2mdc.demo", description=__doc__.split("\n\n")[0])
    p.add_argument("--out-dir", default=None, help="output root (default: $M2MDC_OUT_DIR or ./outputs)")
    p.add_argument("--device", default="auto")
    p.add_argument("--kd-epochs", type=int, default=2, help="epochs of each KD repair (paper: 5)")
    a = p.parse_args(argv)
    root = ensure_writable(out_root(a.out_dir))
    device = pick_device(a.device)
    ds = load_dataset("digits")
    print(ds.describe(), file=sys.stderr)
    ctx = prepare_context("resnet18", ds, TeacherRecipe(epochs=30), device, a.out_dir)
    model, rec = run_plan(m2mdc_plan(0.5, 0.5, 0.5, epochs=a.kd_epochs), ctx)
    folder = save_result(model, rec, root / "compress" / "demo-resnet18-digits")
    t = ctx.teacher_record
    print(f"\n{'model':<22}{'val top-1':>10}{'test top-1':>11}{'params':>10}{'GMACs':>9}")
    print(f"{'teacher resnet18':<22}{t['val_top1']:>9.2f}%{t['test_top1']:>10.2f}%"
          f"{t['params'] / 1e6:>9.3f}M{t['gmacs']:>9.4f}")
    for r in rec["steps"]:
        if r["step"] == "kd":
            label = {1: "block-KD", 3: "planes-KD", 5: "inner-slice (mid-KD)"}.get(r["index"], f"step {r['index']}")
            print(f"{label:<22}{r['val_top1']:>9.2f}%{r['test_top1']:>10.2f}%"
                  f"{r['params_count'] / 1e6:>9.3f}M{r['gmacs']:>9.4f}")
    print(f"\nstudent written to {folder} (model.pt + model.pt2 + keep_cfg.json + record.json)")


if __name__ == "__main__":
    main()
