"""Training throughput of the project's data pipeline + model vs a bare PyTorch loop.

Both loops train the same model with the same optimiser over the same in-memory images, in
one run: the bare loop indexes pre-normalised float tensors (no augmentation at all); ours
goes through m2mdc.data.Loader (uint8 -> float, flip + padded random crop, normalisation).
Target: ours >= 0.95x the bare loop's images/s.

    python benchmarks/data_pipeline.py --dataset cifar100 --batches 40
"""
from __future__ import annotations

import statistics
import time

import torch
from torch import nn

from m2mdc.data import IMAGENET_MEAN, IMAGENET_STD, Loader, load_dataset
from m2mdc.device import pick_device
from m2mdc.errors import Parser, cli
from m2mdc.models import get_adapter


def _step(model, opt, x, y):
    loss = nn.functional.cross_entropy(model(x), y)
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()


def time_ours(model, opt, split, bs, n_batches, device):
    loader = Loader(split, bs, device, shuffle=True, flip=True, crop=True, drop_last=True, limit=bs * n_batches)
    t0 = time.perf_counter()
    for b in loader:
        _step(model, opt, b.x, b.y)
    if device.type == "cuda":
        torch.cuda.synchronize()
    return bs * n_batches / (time.perf_counter() - t0)


def time_bare(model, opt, split, bs, n_batches, device):
    n = bs * n_batches
    mean = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
    x_all = ((split.images[:n].float() / 255 - mean) / std).to(device)
    y_all = split.labels[:n].to(device)
    perm = torch.randperm(n, device=device)
    t0 = time.perf_counter()
    for i in range(n_batches):
        idx = perm[i * bs:(i + 1) * bs]
        _step(model, opt, x_all[idx], y_all[idx])
    if device.type == "cuda":
        torch.cuda.synchronize()
    return n / (time.perf_counter() - t0)


@cli
def main(argv=None):
    p = Parser(prog="benchmarks/data_pipeline.py", description=__doc__.split("\n\n")[0])
    p.add_argument("--dataset", default="cifar100", choices=["cifar100", "cifar10", "digits"])
    p.add_argument("--data-dir", default=None)
    p.add_argument("--arch", default="resnet18")
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--batches", type=int, default=30, help="batches per timed pass")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--device", default="auto")
    a = p.parse_args(argv)
    device = pick_device(a.device)
    ds = load_dataset(a.dataset, a.data_dir)
    n_batches = min(a.batches, len(ds.train) // a.batch_size)
    torch.manual_seed(0)
    model = get_adapter(a.arch).base_model(ds.num_classes).to(device).train()
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    time_bare(model, opt, ds.train, a.batch_size, 3, device)  # warm-up
    ours, bare = [], []
    for _ in range(a.repeats):  # interleaved so drift in machine load hits both alike
        bare.append(time_bare(model, opt, ds.train, a.batch_size, n_batches, device))
        ours.append(time_ours(model, opt, ds.train, a.batch_size, n_batches, device))
    o, b = statistics.median(ours), statistics.median(bare)
    print(f"{a.arch} on {ds.name}, batch {a.batch_size}, {n_batches} batches x {a.repeats}, device {device}, "
          f"threads {torch.get_num_threads()}")
    print(f"  bare PyTorch loop (pre-normalised tensors, no aug): {b:8.1f} img/s")
    print(f"  m2mdc Loader (uint8, flip + crop, normalise)      : {o:8.1f} img/s")
    print(f"  ratio ours/bare: {o / b:.3f}  (target >= 0.95)")


if __name__ == "__main__":
    main()
