"""Offline demo on the embedded digits data: train (or load) the teacher and report it.

    python -m m2mdc.demo [--out-dir DIR]
"""
from __future__ import annotations

import sys

from .data import load_dataset
from .device import pick_device
from .errors import Parser, cli
from .io import ensure_writable, out_root
from .teacher import TeacherRecipe, get_teacher


@cli
def main(argv=None):
    p = Parser(prog="python -m m2mdc.demo", description=__doc__.split("\n\n")[0])
    p.add_argument("--out-dir", default=None, help="output root (default: $M2MDC_OUT_DIR or ./outputs)")
    p.add_argument("--device", default="auto")
    a = p.parse_args(argv)
    ensure_writable(out_root(a.out_dir))
    device = pick_device(a.device)
    ds = load_dataset("digits")
    print(ds.describe(), file=sys.stderr)
    _, rec = get_teacher("resnet18", ds, TeacherRecipe(epochs=30), device, a.out_dir)
    print(f"teacher resnet18 on digits: val top-1 {rec['val_top1']:.2f}%  test top-1 {rec['test_top1']:.2f}%  "
          f"params {rec['params'] / 1e6:.3f}M  GMACs {rec['gmacs']:.4f}  "
          f"({'cached' if rec['cache_hit'] else 'trained in %.0f s' % rec['train_seconds']})")


if __name__ == "__main__":
    main()
