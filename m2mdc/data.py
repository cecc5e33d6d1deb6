"""Datasets as in-memory uint8 tensors with batch-level augmentation.

Per-image PIL transforms cost more than a small CNN's forward pass on a 2-core CPU, so images
stay uint8 ``[N, 3, H, W]`` tensors and every transform (flip, padded random crop, resize,
normalisation) runs on whole batches.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator, NamedTuple

import numpy as np
import torch
import torch.nn.functional as F

from .errors import UserError

DATASETS = ("cifar100", "cifar10", "digits", "folder")
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
DEFAULT_VAL_SIZE = {"cifar100": 5000, "cifar10": 5000, "digits": 300}  # folder: 10% of train, at most 5000
DATA_ENV = "M2MDC_DATA_DIR"


def data_root(data_dir: str | os.PathLike | None = None) -> Path:
    """--data-dir, else $M2MDC_DATA_DIR, else ./data."""
    return Path(data_dir or os.environ.get(DATA_ENV) or "data")


@dataclass
class Split:
    images: torch.Tensor  # uint8 [N, 3, H, W]
    labels: torch.Tensor  # int64 [N]
    mean: tuple = IMAGENET_MEAN  # per-channel normalisation the model sees (in [0, 1] pixel units)
    std: tuple = IMAGENET_STD

    def __len__(self) -> int:
        return len(self.labels)

    def subset(self, idx: torch.Tensor) -> "Split":
        return Split(self.images[idx], self.labels[idx], self.mean, self.std)


@dataclass
class Dataset:
    name: str
    num_classes: int
    train: Split
    val: Split
    test: Split | None  # None: the data has no test split (a folder without test/): test numbers are unavailable
    resolution: int = 32
    meta: dict = field(default_factory=dict)

    def describe(self) -> str:
        val_note = " (held out of train)" if self.meta.get("val_from_train") else ""
        test = f"test {len(self.test)}" if self.test is not None else "no test split (test numbers unavailable)"
        return (f"{self.name}: train {len(self.train)}, val {len(self.val)}{val_note}, {test}, "
                f"{self.num_classes} classes, {self.resolution}x{self.resolution}")


def _load_cifar(name: str, root: Path, download: bool) -> tuple[Split, Split, int]:
    from torchvision import datasets as tvd

    cls = tvd.CIFAR100 if name == "cifar100" else tvd.CIFAR10
    folder = "cifar-100-python" if name == "cifar100" else "cifar-10-batches-py"
    try:
        root.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise UserError(f"cannot create data root {root}: {e.strerror}; pass a writable --data-dir") from None
    try:
        tr = cls(str(root), train=True, download=download)
        te = cls(str(root), train=False, download=download)
    except Exception as e:  # torchvision raises RuntimeError / URLError / OSError when offline
        raise UserError(
            f"{name} is not under {root / folder} and could not be downloaded ({type(e).__name__}: "
            f"{str(e).splitlines()[0][:120] if str(e) else 'no detail'}); put torchvision's '{folder}' "
            f"folder in {root} (e.g. tar -xJf {folder}.tar.* -C {root}) or pass --data-dir"
        ) from None

    def to_split(ds) -> Split:
        x = torch.from_numpy(np.ascontiguousarray(ds.data)).permute(0, 3, 1, 2).contiguous()
        return Split(x, torch.as_tensor(ds.targets, dtype=torch.long))

    return to_split(tr), to_split(te), len(tr.classes)


def _load_digits(test_fraction: float = 0.2, seed: int = 0) -> tuple[Split, Split, int]:
    """scikit-learn's bundled 8x8 digits, upsampled to 32x32x3 (works offline, anywhere)."""
    from sklearn.datasets import load_digits

    d = load_digits()
    x = torch.from_numpy(d.images).float().unsqueeze(1) / 16.0  # [N,1,8,8] in [0,1]
    x = F.interpolate(x, size=32, mode="bilinear", align_corners=False).clamp(0, 1)
    x = (x * 255).round().to(torch.uint8).expand(-1, 3, -1, -1).contiguous()
    y = torch.from_numpy(d.target).long()
    # digits has no official test split: hold out a fixed, stratified-by-chance fraction.
    perm = torch.randperm(len(y), generator=torch.Generator().manual_seed(seed))
    n_test = int(round(test_fraction * len(y)))
    return Split(x[perm[n_test:]], y[perm[n_test:]]), Split(x[perm[:n_test]], y[perm[:n_test]]), 10


def split_train_val(train: Split, val_size: int, seed: int) -> tuple[Split, Split]:
    """Deterministic held-out validation split: a seeded permutation of the training set."""
    if not 0 < val_size < len(train):
        raise UserError(f"val size {val_size} must be in (0, {len(train)}) for this dataset")
    perm = torch.randperm(len(train), generator=torch.Generator().manual_seed(seed))
    return train.subset(perm[val_size:].sort().values), train.subset(perm[:val_size].sort().values)


def load_dataset(name: str = "cifar100", data_dir=None, resolution: int = 32, val_size: int | None = None,
                 split_seed: int = 0, download: bool = True, cache_dir=None, mean=None, std=None,
                 memory: tuple[int, int, bool] | None = None) -> Dataset:
    """Load ``name`` into memory; a validation split missing from the data is held out of train with
    ``split_seed``. ``folder``: ``data_dir`` is an ImageFolder tree (m2mdc.folder), decoded at
    ``resolution`` and cached under ``cache_dir``; ``memory`` = (limit in bytes, the teacher's feature
    width, whether a search copies the data) refuses a folder whose run would not fit. ``mean`` /
    ``std`` override the ImageNet normalisation (the one most checkpoints were trained with)."""
    if name not in DATASETS:
        raise UserError(f"unknown dataset {name!r}; choose one of {', '.join(DATASETS)}")
    if resolution < 8:
        raise UserError(f"resolution {resolution} is too small; use 32 (CIFAR native) or larger")
    mean, std = _norm(mean, std)
    meta = {"split_seed": split_seed, "mean": list(mean), "std": list(std)}
    test: Split | None
    val = None
    if name == "folder":
        from . import folder

        if data_dir is None:
            raise UserError("--dataset folder needs --data-dir PATH (PATH/train/<class>/<image>, optional val/, test/)")
        scanned = folder.scan(data_dir)
        if memory is not None:
            limit, feature_dim, search_copy = memory
            meta["memory_bytes"] = folder.check_memory(scanned, resolution, feature_dim, search_copy, limit)
        splits = folder.load(scanned, resolution, Path(cache_dir) if cache_dir else None)
        train_full = Split(*splits["train"])
        val = Split(*splits["val"]) if "val" in splits else None
        test = Split(*splits["test"]) if "test" in splits else None
        nc = len(scanned.classes)
        meta.update(root=str(Path(data_dir).resolve()), classes=scanned.classes,
                    fingerprint=scanned.fingerprint(resolution))
    elif name == "digits":
        train_full, test, nc = _load_digits()
    else:
        train_full, test, nc = _load_cifar(name, data_root(data_dir), download)
    if val is None:
        vs = (DEFAULT_VAL_SIZE.get(name) or max(1, min(5000, round(0.1 * len(train_full))))) if val_size is None \
            else val_size
        train, val = split_train_val(train_full, vs, split_seed)
    else:
        if val_size is not None:
            raise UserError(f"--val-size applies when the validation split is held out of train; {data_dir} has val/")
        train, vs = train_full, len(val)
    meta.update(val_size=vs, val_from_train=name != "folder" or "val" not in splits)
    splits_ = [Split(s.images, s.labels, mean, std) if s is not None else None for s in (train, val, test)]
    return Dataset(name, nc, *splits_, resolution=resolution, meta=meta)


def num_classes_of(name: str, data_dir=None) -> int:
    """Classes of a dataset without loading it (a folder is scanned, not decoded)."""
    if name == "folder":
        from . import folder

        if data_dir is None:
            raise UserError("--dataset folder needs --data-dir PATH (PATH/train/<class>/<image>, optional val/, test/)")
        return len(folder.scan(data_dir).classes)
    if name not in DATASETS:
        raise UserError(f"unknown dataset {name!r}; choose one of {', '.join(DATASETS)}")
    return {"cifar100": 100, "cifar10": 10, "digits": 10}[name]


def _norm(mean, std) -> tuple[tuple, tuple]:
    mean = tuple(float(x) for x in mean) if mean is not None else IMAGENET_MEAN
    std = tuple(float(x) for x in std) if std is not None else IMAGENET_STD
    if len(mean) != 3 or len(std) != 3 or not all(x > 0 for x in std):
        raise UserError(f"--mean {mean} / --std {std}: give three values each (RGB, in [0, 1] pixel units), "
                        f"std > 0")
    return mean, std


class Batch(NamedTuple):
    x: torch.Tensor        # float, normalised, on device
    y: torch.Tensor        # int64, on device
    index: torch.Tensor    # positions in the split (int64, on device)
    flipped: torch.Tensor  # bool per sample: was it mirrored (keys the cached teacher outputs)


class Loader:
    """Iterates over a Split in batches, augmenting on tensors.

    ``flip``: random horizontal flip (the paper's only augmentation); ``crop``: random crop
    after 4-pixel reflect padding (for training teachers from scratch). Shuffle order and
    augmentation are seeded per epoch so a run is reproducible.
    """

    def __init__(self, split: Split, batch_size: int, device: torch.device | str = "cpu", shuffle: bool = False,
                 flip: bool = False, crop: bool = False, resolution: int = 32, seed: int = 0,
                 drop_last: bool = False, limit: int | None = None, max_batches: int | None = None):
        self.split = split
        self.max_batches = max_batches  # an epoch of at most this many batches, a fresh random subset each epoch
        self.batch_size = batch_size
        self.device = torch.device(device)
        self.shuffle, self.flip, self.crop = shuffle, flip, crop
        self.resolution = resolution
        self.seed = seed
        self.drop_last = drop_last
        self.n = len(split) if limit is None else min(limit, len(split))
        self.epoch = 0
        self._mean = torch.tensor(split.mean, device=self.device).view(1, 3, 1, 1) * 255
        self._std = torch.tensor(split.std, device=self.device).view(1, 3, 1, 1) * 255
        # Moving the whole uint8 split once is cheap (150 MB for CIFAR train) and saves a copy a batch.
        self._images = split.images[: self.n].to(self.device)
        self._labels = split.labels[: self.n].to(self.device)

    def __len__(self) -> int:
        full, rest = divmod(self.n, self.batch_size)
        n = full if (self.drop_last or rest == 0) else full + 1
        return n if self.max_batches is None else min(n, self.max_batches)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __iter__(self) -> Iterator[Batch]:
        g = torch.Generator().manual_seed(self.seed * 100003 + self.epoch)
        order = torch.randperm(self.n, generator=g) if self.shuffle else torch.arange(self.n)
        flips = (torch.rand(self.n, generator=g) < 0.5) if self.flip else torch.zeros(self.n, dtype=torch.bool)
        offsets = torch.randint(0, 9, (self.n, 2), generator=g) if self.crop else None
        self.epoch += 1
        for start in range(0, len(self) * self.batch_size, self.batch_size):
            idx = order[start:start + self.batch_size]
            x = self._images[idx.to(self.device)]
            flip = flips[idx].to(self.device)
            if self.crop:
                x = _random_crop(x, offsets[idx].to(self.device))
            x = x.float()
            if self.flip:
                x = torch.where(flip.view(-1, 1, 1, 1), x.flip(3), x)
            x = (x - self._mean) / self._std
            if x.shape[-1] != self.resolution:
                x = F.interpolate(x, size=self.resolution, mode="bilinear", align_corners=False)
            yield Batch(x, self._labels[idx.to(self.device)], idx.to(self.device), flip)


def _random_crop(x: torch.Tensor, offsets: torch.Tensor, pad: int = 4) -> torch.Tensor:
    """Per-sample random crops of a uint8 batch in one gather (reflect padding)."""
    b, c, h, w = x.shape
    xp = F.pad(x.float(), (pad, pad, pad, pad), mode="reflect")
    rows = (offsets[:, 0:1] + torch.arange(h, device=x.device)).view(b, 1, h, 1).expand(b, c, h, w + 2 * pad)
    xp = xp.gather(2, rows)
    cols = (offsets[:, 1:2] + torch.arange(w, device=x.device)).view(b, 1, 1, w).expand(b, c, h, w)
    return xp.gather(3, cols).to(torch.uint8)


def probe_loader(ds: Dataset, device, max_samples: int = 5000, batch_size: int = 64) -> Loader:
    """Fixed-order, un-augmented loader over at most ``max_samples`` training images (MI probes)."""
    return Loader(ds.train, batch_size, device, shuffle=False, resolution=ds.resolution, limit=max_samples)
