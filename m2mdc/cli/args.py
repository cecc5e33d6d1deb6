"""Flags shared by the CLIs: which teacher, which data, where outputs go."""
from __future__ import annotations

import os

from ..errors import UserError
from ..models import ARCHS, STEMS, arch_id
from ..teacher import TeacherFile, TeacherRecipe, weights_identity


def add_data_args(p) -> None:
    from ..data import DATASETS

    p.add_argument("--dataset", default="cifar100", choices=DATASETS,
                   help="dataset (default: cifar100; digits works offline; folder: your ImageFolder tree at "
                   "--data-dir)")
    p.add_argument("--data-dir", default=None, help="data root (default: $M2MDC_DATA_DIR or ./data); with --dataset "
                   "folder: PATH holding train/<class>/ (and optionally val/, test/)")
    p.add_argument("--resolution", type=int, default=32, help="input resolution (default 32; folder images are "
                   "resized on the short side and centre-cropped to it)")
    p.add_argument("--val-size", type=int, default=None, help="validation images held out of train when the data "
                   "has no val split (default 5000 for CIFAR, 300 for digits, 10%% of a folder's train/)")
    p.add_argument("--split-seed", type=int, default=0, help="seed of the train/val split")
    p.add_argument("--mean", type=float, nargs=3, default=None, metavar=("R", "G", "B"),
                   help="normalisation mean in [0, 1] pixel units (default ImageNet's 0.485 0.456 0.406)")
    p.add_argument("--std", type=float, nargs=3, default=None, metavar=("R", "G", "B"),
                   help="normalisation std (default ImageNet's 0.229 0.224 0.225)")
    p.add_argument("--max-memory-gb", type=float, default=None,
                   help="refuse a folder dataset whose run needs more memory (default: half of this machine's RAM)")
    p.add_argument("--device", default="auto", help="auto (CUDA if present), cpu, cuda, cuda:N")
    p.add_argument("--out-dir", default=None, help="output root (default: $M2MDC_OUT_DIR or ./outputs)")


def add_teacher_args(p, arch: bool = True) -> None:
    """Teacher flags; ``arch=False`` for tools that take several architectures themselves."""
    if arch:
        p.add_argument("--arch", default="resnet18", choices=ARCHS, help="torchvision architecture (default resnet18)")
    p.add_argument("--stem", default="torchvision", choices=STEMS, help="torchvision (7x7/2 conv + max pool, what "
                   "ImageNet checkpoints have) or cifar (3x3 stride-1 conv, no max pool)")
    p.add_argument("--teacher", default=None, metavar="PATH",
                   help="your trained model: a state_dict of --arch, or a checkpoint holding one under state_dict / "
                   "model / model_state_dict (module. prefixes are stripped); used as it is, never retrained")
    p.add_argument("--weights", default="none", help="without --teacher, the teacher is trained: none (from scratch), "
                   "imagenet (fine-tune torchvision's weights), or PATH to an ImageNet state_dict to fine-tune")
    p.add_argument("--epochs", type=int, default=None, help="teacher epochs (default 15 scratch, 5 fine-tune)")
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--lr", type=float, default=None, help="default 0.1 one-cycle (scratch) / 1e-3 Adam (fine-tune)")
    p.add_argument("--seed", type=int, default=0)


def teacher_from_args(a) -> TeacherRecipe | TeacherFile:
    """The teacher source the flags name (and ``a.arch`` completed with the stem)."""
    if getattr(a, "arch", None):
        a.arch = arch_id(a.arch, a.stem)
    if a.teacher:
        if a.weights != "none" or a.epochs is not None:
            raise UserError("--teacher is used as it is: drop --weights / --epochs, which describe a teacher to train")
        return TeacherFile.of(a.teacher)
    if a.epochs is not None and a.epochs < 1:
        raise UserError(f"--epochs must be >= 1 (got {a.epochs})")
    if a.batch_size < 1:
        raise UserError(f"--batch-size must be >= 1 (got {a.batch_size})")
    epochs = a.epochs if a.epochs is not None else (15 if a.weights == "none" else 5)
    weights_identity(a.weights)
    return TeacherRecipe(weights=a.weights, epochs=epochs, batch_size=a.batch_size, lr=a.lr, seed=a.seed)


def memory_limit(a) -> int:
    if a.max_memory_gb is not None:
        if not a.max_memory_gb > 0:
            raise UserError(f"--max-memory-gb must be > 0 (got {a.max_memory_gb})")
        return int(a.max_memory_gb * 2 ** 30)
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") // 2


def teacher_and_data(a, search: bool = False):
    """(teacher source, dataset): a user's checkpoint is checked against the data's classes before a
    folder is decoded (so a wrong file writes nothing), then the dataset is loaded."""
    source = teacher_from_args(a)
    if isinstance(source, TeacherFile):
        from ..data import num_classes_of
        from ..teacher import read_checkpoint

        read_checkpoint(source.path, a.arch, num_classes_of(a.dataset, a.data_dir))
    return source, dataset_from_args(a, search=search)


def dataset_from_args(a, arch: str | None = None, search: bool = False):
    """The dataset the flags name; a folder is decoded once (cached under OUT/datasets) after its
    memory estimate (the images, ``arch``'s teacher outputs, a search's object-store copy) is checked."""
    from ..data import load_dataset
    from ..io import out_root
    from ..models import get_adapter

    memory = None
    if a.dataset == "folder":
        adapter = get_adapter(arch or a.arch)
        phi = adapter.base_model(2).get_submodule(adapter.head_name).in_features
        memory = (memory_limit(a), phi, search)
    return load_dataset(a.dataset, a.data_dir, a.resolution, a.val_size, a.split_seed,
                        cache_dir=out_root(a.out_dir) / "datasets", mean=a.mean, std=a.std, memory=memory)
