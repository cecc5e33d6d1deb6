"""Cost of MI block scoring relative to plain inference over the same probe images.

Scoring (hooks + spatial pooling + quantile binning + MI for every block) should cost at most
~1.3x one forward pass over the probe set. Both are timed in the same process, interleaved so
that load from other processes hits them alike, and the median of --repeats runs is reported.

    python benchmarks/mi_scoring.py --dataset digits --arch resnet18
    python benchmarks/mi_scoring.py --dataset cifar100 --samples 5000 --threads 1

On a CPU shared with other jobs, torch's default thread pool stalls at every op barrier and
single runs swing by 10x; --threads 1 gives repeatable numbers there.
"""
from __future__ import annotations

import statistics
import sys
import time
from pathlib import Path

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without `pip install -e`
from m2mdc.data import DATASETS, Loader, load_dataset, probe_loader
from m2mdc.device import pick_device
from m2mdc.errors import Parser, cli
from m2mdc.mi import block_mi_scores
from m2mdc.models import ARCHS, get_adapter

TARGET_RATIO = 1.3


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _timed(fn, device: torch.device) -> tuple[float, float]:
    """(wall, process CPU) seconds: CPU time is the steadier of the two when other jobs share the cores."""
    _sync(device)
    w0, c0 = time.perf_counter(), time.process_time()
    fn()
    _sync(device)
    return time.perf_counter() - w0, time.process_time() - c0


def forward_pass(model: nn.Module, loader: Loader) -> None:
    with torch.no_grad():
        for b in loader:
            model(b.x)


@cli
def main(argv: list[str] | None = None) -> int:
    p = Parser(description=__doc__.split("\n\n")[0], prog="mi_scoring.py")
    p.add_argument("--dataset", choices=DATASETS, default="digits")
    p.add_argument("--data-dir", default=None, help="dataset root (default: $M2MDC_DATA_DIR or ./data)")
    p.add_argument("--samples", type=int, default=5000, help="probe images (capped at the training split)")
    p.add_argument("--arch", choices=ARCHS, default="resnet18")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--bins", type=int, default=10)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    args = p.parse_args(argv)
    threads = torch.get_num_threads() if args.threads is None else args.threads
    if min(args.samples, args.batch_size, args.repeats, threads) < 1 or args.bins < 2:
        p.error("--samples, --batch-size, --repeats and --threads must be >= 1 and --bins >= 2")
    torch.set_num_threads(threads)
    device = pick_device(args.device)
    ds = load_dataset(args.dataset, data_dir=args.data_dir, download=False)
    adapter = get_adapter(args.arch)
    torch.manual_seed(0)
    model = adapter.base_model(ds.num_classes).to(device).eval()  # untrained: cost does not depend on weights
    loader = probe_loader(ds, device, max_samples=args.samples, batch_size=args.batch_size)

    runs = {"forward pass": lambda: forward_pass(model, loader),
            "MI scoring": lambda: block_mi_scores(model, adapter, loader, args.bins)}
    for fn in runs.values():  # warm-up: allocator, kernels, caches
        fn()
    times: dict[str, list[tuple[float, float]]] = {k: [] for k in runs}
    for _ in range(args.repeats):
        for name, fn in runs.items():
            times[name].append(_timed(fn, device))
    print(f"{args.arch} on {ds.name}, {loader.n} probe images, batch {args.batch_size}, "
          f"{len(adapter.blocks(model))} blocks, {args.bins} bins, device {device}, "
          f"{threads} threads, median of {args.repeats}")
    med = {k: [statistics.median(t[i] for t in v) for i in range(2)] for k, v in times.items()}
    best = {k: min(t[0] for t in v) for k, v in times.items()}
    for name, v in times.items():
        print(f"{name:13s}: wall {med[name][0]:8.3f} s  cpu {med[name][1]:8.3f} s  best wall {best[name]:8.3f} s  "
              f"(wall runs {', '.join(f'{t[0]:.3f}' for t in v)})")
    ratios = {"wall": med["MI scoring"][0] / med["forward pass"][0],
              "cpu": med["MI scoring"][1] / med["forward pass"][1],
              "best wall": best["MI scoring"] / best["forward pass"]}
    for kind, ratio in ratios.items():
        verdict = "ok" if ratio <= TARGET_RATIO else "MISSED"
        print(f"ratio ({kind:9s}): {ratio:6.3f} x  (target <= {TARGET_RATIO}x: {verdict})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
