"""Flags shared by the CLIs: which teacher, which data, where outputs go."""
from __future__ import annotations

from ..errors import UserError
from ..models import ARCHS
from ..teacher import TeacherRecipe, weights_identity


def add_data_args(p) -> None:
    from ..data import DATASETS

    p.add_argument("--dataset", default="cifar100", choices=DATASETS, help="dataset (default: cifar100; digits works offline)")
    p.add_argument("--data-dir", default=None, help="data root (default: $M2MDC_DATA_DIR or ./data)")
    p.add_argument("--resolution", type=int, default=32, help="input resolution (default 32)")
    p.add_argument("--val-size", type=int, default=None, help="validation images held out of train "
                   "(default 5000 for CIFAR, 300 for digits)")
    p.add_argument("--split-seed", type=int, default=0, help="seed of the train/val split")
    p.add_argument("--device", default="auto", help="auto (CUDA if present), cpu, cuda, cuda:N")
    p.add_argument("--out-dir", default=None, help="output root (default: $M2MDC_OUT_DIR or ./outputs)")


def add_teacher_args(p, arch: bool = True) -> None:
    """Teacher recipe flags; ``arch=False`` for tools that take several architectures themselves."""
    if arch:
        p.add_argument("--arch", default="resnet18", choices=ARCHS, help="architecture (default resnet18)")
    p.add_argument("--weights", default="none", help="none (train from scratch), imagenet (torchvision download), "
                   "or PATH to an ImageNet state_dict of the same torchvision architecture")
    p.add_argument("--epochs", type=int, default=None, help="teacher epochs (default 15 scratch, 5 fine-tune)")
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--lr", type=float, default=None, help="default 0.1 one-cycle (scratch) / 1e-3 Adam (fine-tune)")
    p.add_argument("--seed", type=int, default=0)


def recipe_from_args(a) -> TeacherRecipe:
    if a.epochs is not None and a.epochs < 1:
        raise UserError(f"--epochs must be >= 1 (got {a.epochs})")
    if a.batch_size < 1:
        raise UserError(f"--batch-size must be >= 1 (got {a.batch_size})")
    epochs = a.epochs if a.epochs is not None else (15 if a.weights == "none" else 5)
    weights_identity(a.weights)
    return TeacherRecipe(weights=a.weights, epochs=epochs, batch_size=a.batch_size, lr=a.lr, seed=a.seed)


