"""A user's image folder (torchvision ImageFolder layout) as in-memory uint8 splits.

    PATH/train/<class>/*.png|jpg|...   required
    PATH/val/<class>/...               optional (else a seeded split is held out of train)
    PATH/test/<class>/...              optional (else test numbers are unavailable, never val twice)

Images are decoded once (grayscale and RGBA become RGB), resized so the short side is the
resolution and centre-cropped, then kept as ``[N, 3, R, R]`` uint8 tensors like every other
dataset here; the decoded splits are cached on disk keyed by the folder's file list, sizes and
modification times (and the resolution), so a second run loads in seconds. Decoding is the one
per-image Python loop of the project, run once per folder version. Before decoding, the memory
the run will need is estimated and refused with one line when it exceeds the limit.
"""
from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from pathlib import Path

import torch

from .errors import UserError

SPLITS = ("train", "val", "test")
CACHE_VERSION = 1


@dataclass
class FolderScan:
    """What is in the folder, before any image is decoded."""

    root: Path
    classes: list[str]
    files: dict[str, list[tuple[str, int]]]  # split -> [(path, class index)]

    def count(self, split: str) -> int:
        return len(self.files.get(split, []))

    def fingerprint(self, resolution: int) -> str:
        """Identifies the decoded tensors: every file's relative path, size and mtime, and the resolution."""
        h = hashlib.sha256(f"v{CACHE_VERSION}|{resolution}|{','.join(self.classes)}".encode())
        for split, items in sorted(self.files.items()):
            for path, label in items:
                st = os.stat(path)
                h.update(f"{split}|{os.path.relpath(path, self.root)}|{label}|{st.st_size}|{st.st_mtime_ns}\n".encode())
        return h.hexdigest()[:16]


def scan(root: str | os.PathLike) -> FolderScan:
    """The classes and image files of each split; UserError for a folder that is not in the layout."""
    from torchvision.datasets.folder import IMG_EXTENSIONS, find_classes, make_dataset

    root = Path(root)
    if not (root / "train").is_dir():
        raise UserError(f"{root} has no train/ folder; --dataset folder expects PATH/train/<class>/<image> "
                        f"(and optionally PATH/val/ and PATH/test/ with the same classes)")
    files = {}
    classes = None
    for split in SPLITS:
        folder = root / split
        if not folder.is_dir():
            continue
        try:
            names, to_idx = find_classes(str(folder))
        except FileNotFoundError:
            raise UserError(f"{folder} holds no class folders; put each class's images in {folder}/<class>/") from None
        if classes is None:
            classes = names
        elif names != classes:
            only_here, only_train = sorted(set(names) - set(classes)), sorted(set(classes) - set(names))
            raise UserError(f"the classes of {folder} differ from train/'s (only in {split}/: {only_here[:5]}, "
                            f"missing there: {only_train[:5]}); every split needs the same class folders")
        try:
            items = make_dataset(str(folder), to_idx, extensions=IMG_EXTENSIONS)
        except FileNotFoundError as e:
            raise UserError(f"{folder}: {str(e).splitlines()[0]}") from None
        if not items:
            raise UserError(f"{folder} holds no images (extensions {', '.join(IMG_EXTENSIONS)})")
        files[split] = items
    if len(classes) < 2:
        raise UserError(f"{root / 'train'} has {len(classes)} class folder(s); classification needs at least two")
    return FolderScan(root, classes, files)


def estimate_bytes(n_images: int, n_train: int, resolution: int, num_classes: int, feature_dim: int,
                   search_copy: bool) -> int:
    """Memory a run holds: the uint8 images, the teacher outputs cached for both flip states
    (logits + penultimate features, float32), and for a search the object-store copy of both."""
    images = n_images * 3 * resolution * resolution
    outputs = 2 * n_train * (num_classes + feature_dim) * 4
    return (images + outputs) * (2 if search_copy else 1)


def check_memory(scan_: FolderScan, resolution: int, feature_dim: int, search_copy: bool, limit_bytes: int) -> int:
    total = sum(scan_.count(s) for s in SPLITS)
    need = estimate_bytes(total, scan_.count("train"), resolution, len(scan_.classes), feature_dim, search_copy)
    if need > limit_bytes:
        raise UserError(f"{scan_.root}: {total} images at {resolution}x{resolution} need about {need / 2**30:.1f} GiB "
                        f"in memory (images, teacher outputs{', the search object-store copy' if search_copy else ''})"
                        f", over the {limit_bytes / 2**30:.1f} GiB limit; lower --resolution or raise --max-memory-gb")
    return need


def decode(items: list[tuple[str, int]], resolution: int, desc: str) -> tuple[torch.Tensor, torch.Tensor]:
    """uint8 [N, 3, R, R] (short side resized to R, centre crop) and int64 labels; a file that cannot
    be decoded is named in the error, never skipped."""
    from PIL import Image, UnidentifiedImageError
    from torchvision.transforms import functional as TF
    from tqdm import tqdm

    images = torch.empty(len(items), 3, resolution, resolution, dtype=torch.uint8)
    labels = torch.tensor([label for _, label in items], dtype=torch.long)
    for i, (path, _) in enumerate(tqdm(items, desc=desc, unit="img", mininterval=1.0, leave=False)):
        try:
            with Image.open(path) as im:
                im = im.convert("RGB")  # grayscale, palette and RGBA images become RGB
                t = TF.pil_to_tensor(im)
        except (UnidentifiedImageError, OSError, ValueError) as e:
            raise UserError(f"cannot decode image {path} ({type(e).__name__}); remove or replace the file") from None
        t = TF.resize(t, resolution, antialias=True)
        images[i] = TF.center_crop(t, [resolution, resolution])
    return images, labels


def load(scan_: FolderScan, resolution: int, cache_dir: Path | None) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """Decoded splits, from the cache when the folder has not changed."""
    from .io import save_tensors

    path = cache_dir / f"folder-{scan_.fingerprint(resolution)}.pt" if cache_dir is not None else None
    if path is not None and path.exists():
        try:
            cached = torch.load(path, map_location="cpu", weights_only=True)
            return {s: (cached[s]["images"], cached[s]["labels"]) for s in scan_.files}
        except Exception:  # noqa: BLE001 - a corrupt cache is decoded again, never trusted
            pass
    out = {s: decode(items, resolution, f"decoding {s}/") for s, items in scan_.files.items()}
    if path is not None:
        save_tensors({s: {"images": x, "labels": y} for s, (x, y) in out.items()}, path)
    return out
