"""Train (or load from the cache) the teacher a plan or a search compresses.

    python -m m2mdc.teacher --arch resnet18 --dataset cifar100 --epochs 15
"""
from __future__ import annotations

import sys

from ..device import pick_device
from ..errors import Parser, cli
from ..io import ensure_writable, out_root
from ..teacher import cache_dir, get_teacher
from ..train import pct
from .args import add_data_args, add_teacher_args, teacher_and_data


@cli
def main(argv=None):
    p = Parser(prog="python -m m2mdc.teacher", description=__doc__.split("\n\n")[0])
    add_teacher_args(p)
    add_data_args(p)
    p.add_argument("--force", action="store_true", help="retrain even if a cached teacher exists")
    a = p.parse_args(argv)
    device = pick_device(a.device)
    ensure_writable(out_root(a.out_dir))
    source, ds = teacher_and_data(a)
    print(f"{ds.describe()}; device {device}", file=sys.stderr)
    model, rec = get_teacher(a.arch, ds, source, device, a.out_dir, force=a.force)
    where = cache_dir(a.arch, ds, source, a.out_dir)
    how = "your checkpoint" if rec.get("source") == "file" else ("cache hit" if rec["cache_hit"] else "trained")
    print(f"teacher {a.arch} on {ds.name} ({how}): val top-1 {rec['val_top1']:.2f}%  test top-1 "
          f"{pct(rec['test_top1'])}  params {rec['params'] / 1e6:.3f}M  GMACs {rec['gmacs']:.4f}  -> {where}")
    return 0


if __name__ == "__main__":
    main()
