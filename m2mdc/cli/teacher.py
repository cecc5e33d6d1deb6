"""Train (or load from the cache) the teacher a plan or a search compresses.

    python -m m2mdc.teacher --arch resnet18 --dataset cifar100 --epochs 15
"""
from __future__ import annotations

import sys

from ..data import load_dataset
from ..device import pick_device
from ..errors import Parser, cli
from ..io import ensure_writable, out_root
from ..teacher import cache_dir, get_teacher
from .args import add_data_args, add_teacher_args, recipe_from_args


@cli
def main(argv=None):
    p = Parser(prog="python -m m2mdc.teacher", description=__doc__.split("\n\n")[0])
    add_teacher_args(p)
    add_data_args(p)
    p.add_argument("--force", action="store_true", help="retrain even if a cached teacher exists")
    a = p.parse_args(argv)
    recipe = recipe_from_args(a)
    device = pick_device(a.device)
    ensure_writable(out_root(a.out_dir))
    ds = load_dataset(a.dataset, a.data_dir, a.resolution, a.val_size, a.split_seed)
    print(f"{ds.describe()}; device {device}", file=sys.stderr)
    model, rec = get_teacher(a.arch, ds, recipe, device, a.out_dir, force=a.force)
    where = cache_dir(a.arch, ds, recipe, a.out_dir)
    print(f"teacher {a.arch} on {ds.name} ({'cache hit' if rec['cache_hit'] else 'trained'}): "
          f"val top-1 {rec['val_top1']:.2f}%  test top-1 {rec['test_top1']:.2f}%  "
          f"params {rec['params'] / 1e6:.3f}M  GMACs {rec['gmacs']:.4f}  -> {where}")
    return 0


if __name__ == "__main__":
    main()
