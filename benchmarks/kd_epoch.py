"""Cost of a KD repair epoch with cached teacher outputs versus a plain CE epoch of the same student.

Both epochs run over the same N batches (flip augmentation, Adam, gradient clipping), so the
ratio isolates what distillation adds per step: the target lookup and the alignment terms.
The target is a ratio <= 1.05. The one-off cost of building the cache is printed too.

    python benchmarks/kd_epoch.py --dataset digits --arch resnet18 --batches 8
"""
from __future__ import annotations

import copy
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from m2mdc.data import DATASETS, Loader, load_dataset  # noqa: E402
from m2mdc.device import pick_device  # noqa: E402
from m2mdc.distill import FeatureTap, KDConfig, TeacherOutputs, cached_targets, train_epoch_kd  # noqa: E402
from m2mdc.errors import Parser, UserError, cli  # noqa: E402
from m2mdc.metrics import torch_threads  # noqa: E402
from m2mdc.models import ARCHS, Adapter, get_adapter  # noqa: E402
from m2mdc.train import train_epoch_ce  # noqa: E402


def shallow_student(teacher: torch.nn.Module, adapter: Adapter) -> torch.nn.Module:
    """The teacher minus every removable block: a typical M2M-DC student, same phi width."""
    student = copy.deepcopy(teacher)
    keep = {}
    for stage, names in adapter.blocks_by_stage(teacher).items():
        kept = [adapter.block_index(n) for n in names if adapter.is_protected(teacher, n)]
        keep[stage] = kept or [adapter.block_index(names[0])]
    adapter.drop_blocks(student, keep)
    return student


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def run(a) -> None:
    device = pick_device(a.device)
    ds = load_dataset(a.dataset, a.data_dir)
    n_img = a.batches * a.batch_size
    if n_img > len(ds.train):
        raise UserError(f"--batches {a.batches} x --batch-size {a.batch_size} exceeds the {len(ds.train)} "
                        f"training images of {a.dataset}")
    adapter = get_adapter(a.arch)
    torch.manual_seed(0)
    # Untrained weights: the cost of a step does not depend on their values.
    teacher = adapter.base_model(ds.num_classes).to(device).eval()
    train = ds.train.subset(torch.arange(n_img))
    cfg = KDConfig(batch_size=a.batch_size)
    alpha, beta = cfg.ramp(cfg.epochs)  # the last epoch: every term on

    sync(device)
    t0 = time.perf_counter()
    cache = TeacherOutputs.compute(teacher, adapter, train, device, ds.resolution)
    targets = cached_targets(cache, cfg.temperature)  # what distill derives from the cache per run
    sync(device)
    build = time.perf_counter() - t0

    loader = Loader(train, a.batch_size, device, shuffle=True, flip=True, resolution=ds.resolution, drop_last=True)
    ce_student, kd_student = shallow_student(teacher, adapter), shallow_student(teacher, adapter)
    ce_opt = torch.optim.Adam(ce_student.parameters(), lr=cfg.lr)
    kd_opt = torch.optim.Adam(kd_student.parameters(), lr=cfg.lr)
    tap = FeatureTap(kd_student, adapter.head_name)
    ce_times, kd_times = [], []
    for rep in range(a.repeats + 1):  # repeat 0 warms up allocators and kernels, untimed
        loader.set_epoch(rep)
        ce = train_epoch_ce(ce_student, loader, ce_opt, clip=cfg.clip)["seconds"]
        loader.set_epoch(rep)
        kd = train_epoch_kd(kd_student, tap, loader, kd_opt, targets, alpha, beta, cfg)["seconds"]
        if rep:
            ce_times.append(ce)
            kd_times.append(kd)
    tap.close()

    ce_s, kd_s = statistics.median(ce_times), statistics.median(kd_times)
    per_img = build / (2 * n_img)
    print(f"{a.arch} on {a.dataset}, device {device}, {torch.get_num_threads()} CPU thread(s), "
          f"{a.batches} batches of {a.batch_size}, median of {a.repeats}")
    print(f"plain CE epoch        {ce_s:8.3f} s  ({1e3 * ce_s / a.batches:.1f} ms/batch)")
    print(f"KD epoch, cached      {kd_s:8.3f} s  ({1e3 * kd_s / a.batches:.1f} ms/batch)")
    print(f"ratio KD / CE         {kd_s / ce_s:8.3f} x  (target <= 1.05)")
    print(f"teacher-output cache  {build:8.3f} s for {n_img} images x 2 flips "
          f"(~{per_img * 2 * len(ds.train):.1f} s for the full {len(ds.train)}-image train split, "
          f"{(cache.logits.numel() + cache.features.numel()) * 4 // 1024} KiB here)")


@cli
def main(argv=None):
    p = Parser(prog="benchmarks/kd_epoch.py", description=__doc__.split("\n\n")[0])
    p.add_argument("--dataset", default="digits", choices=DATASETS, help="dataset (default digits, works offline)")
    p.add_argument("--data-dir", default=None, help="data root (default: $M2MDC_DATA_DIR or ./data)")
    p.add_argument("--arch", default="resnet18", choices=ARCHS, help="teacher architecture (default resnet18)")
    p.add_argument("--device", default="auto", help="auto (CUDA if present), cpu, cuda, cuda:N")
    p.add_argument("--batches", type=int, default=8, help="batches per timed epoch (default 8)")
    p.add_argument("--batch-size", type=int, default=128, help="batch size (default 128, the KD default)")
    p.add_argument("--repeats", type=int, default=3, help="timed epochs of each kind; the median is reported")
    p.add_argument("--threads", type=int, default=None,
                   help="CPU threads (default: torch's); 1 is faster on cores shared with other jobs")
    a = p.parse_args(argv)
    for name in ("batches", "batch_size", "repeats"):
        if getattr(a, name) < 1:
            raise UserError(f"--{name.replace('_', '-')} must be >= 1")
    if a.threads is not None and a.threads < 1:
        raise UserError("--threads must be >= 1")
    with torch_threads(a.threads):
        run(a)
    return 0


if __name__ == "__main__":
    main()
