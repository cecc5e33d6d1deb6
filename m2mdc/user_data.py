"""A user's own torch Datasets / DataLoaders as the library's in-memory splits.

The library trains from in-memory tensors with batch-level augmentation (m2mdc.data): a 2-core CPU
cannot afford per-image Python in every epoch. A user's data is therefore read **once per call**, in
order, through the user's own ``__getitem__`` / loader, so their transform runs on every sample exactly
once. What that means:

* a deterministic transform (resize, normalise, ...) is applied exactly as the user wrote it;
* a random transform is drawn once per sample and frozen for the call (the KD repairs add the paper's
  horizontal flip on top, as for every dataset);
* ``m2mdc.compress`` caches nothing across calls: the tensors, the teacher's outputs and the MI scores
  live in memory for one call. A search (search.api) caches the teacher's record, MI scores and outputs
  under OUT/teachers/, keyed on a content hash of these tensors (``fingerprint``) and of the model's
  weights, so data read through another transform never reuses them.
"""
from __future__ import annotations

import hashlib

import torch
from torch.utils.data import DataLoader
from torch.utils.data import Dataset as TorchDataset

from .data import Dataset, Split
from .errors import UserError

# Split normalises x as (x - mean*255) / (std*255): with these the user's tensors pass through unchanged
IDENTITY_MEAN = (0.0, 0.0, 0.0)
IDENTITY_STD = (1 / 255, 1 / 255, 1 / 255)


def read_split(data, what: str, num_classes: int, batch_size: int = 256) -> Split:
    """All (image, label) pairs of a Dataset or DataLoader, checked, as one float32 Split."""
    if isinstance(data, TorchDataset):
        try:
            n = len(data)
        except TypeError:
            n = None
        if n == 0:
            raise UserError(f"{what} is empty; pass a Dataset or DataLoader with at least one (image, label) pair")
        loader = DataLoader(data, batch_size=batch_size, shuffle=False, num_workers=0)
    elif isinstance(data, DataLoader):
        loader = data
    else:
        raise UserError(f"{what} is a {type(data).__name__}; pass a torch Dataset or DataLoader yielding "
                        f"(image tensor [3, H, W], integer label)")
    xs, ys = [], []
    for batch in loader:
        if not isinstance(batch, (tuple, list)) or len(batch) != 2:
            raise UserError(f"{what} yields {type(batch).__name__} items; each must be an (image, label) pair")
        x, y = batch
        x, y = torch.as_tensor(x), torch.as_tensor(y)
        if x.dim() != 4 or x.shape[1] != 3 or x.shape[2] != x.shape[3]:
            raise UserError(f"{what} yields images of shape {list(x.shape[1:])}; each must be a square 3-channel "
                            f"tensor [3, H, W] (e.g. transforms.ToTensor() after .convert('RGB'))")
        if xs and x.shape[1:] != xs[0].shape[1:]:
            raise UserError(f"{what} yields images of shapes {list(xs[0].shape[1:])} and {list(x.shape[1:])}; "
                            f"resize them to one size in the transform")
        if y.dim() != 1 or y.is_floating_point() or y.dtype == torch.bool:
            raise UserError(f"{what} yields labels of shape {list(y.shape)} and dtype {y.dtype}; each must be "
                            f"one integer class index")
        xs.append(x.detach().to("cpu", torch.float32))
        ys.append(y.detach().to("cpu", torch.long))
    if not xs:
        raise UserError(f"{what} is empty; pass a Dataset or DataLoader with at least one (image, label) pair")
    labels = torch.cat(ys)
    lo, hi = int(labels.min()), int(labels.max())
    if lo < 0 or hi >= num_classes:
        raise UserError(f"{what} has labels {lo}..{hi}, but the model's head has {num_classes} classes "
                        f"(0..{num_classes - 1}); remap the labels or give the model a head for {hi + 1} classes")
    return Split(torch.cat(xs), labels, IDENTITY_MEAN, IDENTITY_STD)


def user_dataset(train, val, test, num_classes: int) -> Dataset:
    """The library's Dataset over a user's train / val (/ test) data (see the module docstring)."""
    splits = {what: read_split(d, what, num_classes) for what, d in (("train", train), ("val", val),
                                                                       ("test", test)) if d is not None}
    sizes = {what: s.images.shape[-1] for what, s in splits.items()}
    if len(set(sizes.values())) > 1:
        raise UserError(f"the splits' images differ in size ({sizes}); resize them to one size in the transforms")
    resolution = sizes["train"]
    if resolution < 8:
        raise UserError(f"images of {resolution}x{resolution} are too small; resize them to 32x32 or larger")
    return Dataset("user", num_classes, splits["train"], splits["val"], splits.get("test"), resolution=resolution,
                   meta={"source": "python", "mean": list(IDENTITY_MEAN), "std": list(IDENTITY_STD),
                         "val_from_train": False, "fingerprint": fingerprint(splits)})


def fingerprint(splits: dict[str, Split]) -> str:
    """A content hash of the splits' tensors: what keys a search's cached teacher outputs and MI scores
    (m2mdc.teacher.cache_key), so data read through another transform never reuses them."""
    h = hashlib.sha256()
    for what in sorted(splits):
        h.update(what.encode())
        h.update(splits[what].images.contiguous().numpy().tobytes())
        h.update(splits[what].labels.contiguous().numpy().tobytes())
    return h.hexdigest()[:16]
