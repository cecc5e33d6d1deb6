"""Label-aware mutual information between pooled activations and class labels (M2M-DC).

A block's score is the mean over its output channels of I(bin(Z_c); Y), where Z_c is the
spatial mean of channel c over a fixed probe set and bin() is per-channel quantile binning.
Everything after the single forward pass is vectorised over channels (one sort, bins-1
compares and one bincount per chunk of modules), so scoring costs little more than inference.
"""
from __future__ import annotations

import json
import math
from collections import OrderedDict
from pathlib import Path
from typing import Iterable

import numpy as np
import torch
from torch import nn

from .data import Batch, Loader
from .io import write_json
from .models import Adapter

CACHE_VERSION = 1
MAX_CHUNK = 1 << 24  # activations binned in one go: ~1 GB of temporaries at most


def _pooled_on_device(model: nn.Module, module_names: list[str], loader: Iterable[Batch]
                      ) -> tuple["OrderedDict[str, torch.Tensor]", torch.Tensor]:
    """Pooled outputs left on the model's device, so scoring on a GPU never round-trips per module."""
    modules = OrderedDict((name, model.get_submodule(name)) for name in module_names)
    chunks: dict[str, list[torch.Tensor]] = {name: [] for name in modules}
    labels: list[torch.Tensor] = []

    def hook_for(name: str):
        def hook(_module, _inputs, out):
            out = out.detach()
            chunks[name].append(out.float().mean(dim=tuple(range(2, out.dim()))) if out.dim() > 2 else out.float())
        return hook

    # Per-module modes, not model.train(was): a caller's partly-frozen model must come back as it was.
    modes = {m: m.training for m in model.modules()}
    handles = [m.register_forward_hook(hook_for(name)) for name, m in modules.items()]
    try:
        model.eval()
        with torch.no_grad():
            for b in loader:
                model(b.x)
                labels.append(b.y)
    finally:
        for h in handles:
            h.remove()
        for m, training in modes.items():
            m.training = training
    if not labels:
        raise ValueError("the probe loader yielded no batches; MI needs at least one sample")
    acts = OrderedDict((name, torch.cat(c)) for name, c in chunks.items())
    return acts, torch.cat(labels)


def pooled_activations(model: nn.Module, module_names: list[str], loader: Iterable[Batch]
                       ) -> tuple["OrderedDict[str, torch.Tensor]", torch.Tensor]:
    """Spatially pooled outputs [N, C] (float32, cpu) of the named modules, from one forward pass."""
    acts, labels = _pooled_on_device(model, module_names, loader)
    return OrderedDict((k, v.cpu()) for k, v in acts.items()), labels.cpu()


def quantile_bin(z: torch.Tensor, bins: int = 10) -> torch.Tensor:
    """Per-channel equal-frequency bins of z [N, C] -> bin ids in [0, bins).

    Edges are the k/bins quantiles of each channel (linear interpolation, as torch.quantile),
    read off one sort of all channels, which unlike torch.quantile has no input-size limit. A
    value equal to an edge goes to the upper bin, so a constant channel falls entirely in one bin.
    """
    if z.dim() != 2:
        raise ValueError(f"quantile_bin expects [N, C], got shape {tuple(z.shape)}")
    if bins < 2:
        raise ValueError(f"bins must be >= 2, got {bins}")
    n = z.shape[0]
    if n == 0:
        return torch.zeros(z.shape, dtype=torch.long, device=z.device)
    zt = z.detach().to(z.dtype if z.dtype == torch.float64 else torch.float32).t().contiguous()
    zs = _sort_rows(zt)  # channel-major: sorts and compares run along contiguous rows
    # NaN sorts last and -inf first, so the ends of the sorted rows reveal any non-finite value.
    if not torch.isfinite(zs[:, [0, -1]]).all():
        raise ValueError("activations contain NaN or inf; the model diverged or the input is broken")
    pos = torch.arange(1, bins, dtype=torch.float64, device=z.device) * (n - 1) / bins
    lo = pos.floor().long()
    hi = (lo + 1).clamp_max(n - 1)
    edges = torch.lerp(zs[:, lo], zs[:, hi], (pos - lo).to(zt.dtype))  # [C, bins-1]; lerp(a, a, w) == a
    # Bin id = number of edges <= value (searchsorted, right=True); bins-1 whole-tensor compares
    # run several times faster than torch.searchsorted on CPU.
    ids = torch.zeros(zt.shape, dtype=torch.uint8 if bins <= 256 else torch.int32, device=z.device)
    for k in range(bins - 1):
        ids += zt >= edges[:, k:k + 1]
    return ids.long().t()


def _sort_rows(x: torch.Tensor) -> torch.Tensor:
    """Row-wise ascending sort; on CPU numpy's SIMD sort is ~6x faster than torch.sort."""
    if x.device.type == "cpu":
        return torch.from_numpy(np.sort(x.numpy(), axis=1))
    return x.sort(dim=1).values


def mutual_info(binned: torch.Tensor, labels: torch.Tensor, n_bins: int, n_classes: int) -> torch.Tensor:
    """I(binned[:, c]; labels) in nats for every channel c (float64), from one joint bincount."""
    n, c = binned.shape
    if labels.shape != (n,):
        raise ValueError(f"labels shape {tuple(labels.shape)} does not match {n} samples")
    if n == 0:
        return torch.zeros(c, dtype=torch.float64, device=binned.device)
    # Channel-major [C, N]: quantile_bin's output is a transposed view, so this side needs no copies.
    bt = binned.t()
    # Out-of-range ids would silently land in a neighbouring channel's counts.
    (b_lo, b_hi), (y_lo, y_hi) = bt.aminmax(), labels.aminmax()
    if b_lo < 0 or b_hi >= n_bins or y_lo < 0 or y_hi >= n_classes:
        raise ValueError(f"bin ids must lie in [0, {n_bins}) and labels in [0, {n_classes})")
    cell = n_bins * n_classes
    offsets = torch.arange(c, device=binned.device).unsqueeze(1) * cell
    idx = (offsets + labels.to(binned.device).unsqueeze(0)).add_(bt, alpha=n_classes)
    joint = torch.bincount(idx.reshape(-1), minlength=c * cell).view(c, n_bins, n_classes).double()
    # I = H(X) + H(Y) - H(X,Y) on counts: few passes over the [C, bins, classes] table, exact in float64.
    n_x, n_y = joint.sum(2), joint.sum(1)
    mi = (torch.xlogy(joint, joint).sum((1, 2)) - torch.xlogy(n_x, n_x).sum(1) - torch.xlogy(n_y, n_y).sum(1)) / n
    return (mi + math.log(n)).clamp_min(0.0)


def channel_mi_scores(model: nn.Module, module_names: list[str], loader: Iterable[Batch], bins: int = 10
                      ) -> "OrderedDict[str, torch.Tensor]":
    """Per-channel I(bin(Z_c); Y) [C] (float64, cpu) of each named module's pooled output."""
    acts, labels = _pooled_on_device(model, module_names, loader)
    n_classes = int(labels.max()) + 1
    out: OrderedDict[str, torch.Tensor] = OrderedDict()
    for group in _chunks(acts, len(labels)):
        # Modules side by side: a fixed handful of tensor ops per chunk, not per module.
        mi = mutual_info(quantile_bin(torch.cat([acts[g] for g in group], dim=1), bins), labels, bins, n_classes)
        out.update(zip(group, mi.cpu().split([acts[g].shape[1] for g in group])))
    return out


def _chunks(acts: dict[str, torch.Tensor], n: int) -> list[list[str]]:
    """Consecutive module groups of at most MAX_CHUNK activations (bounds the int64 temporaries)."""
    groups: list[list[str]] = []
    width = 0
    for name, z in acts.items():
        if not groups or (width + z.shape[1]) * n > MAX_CHUNK:
            groups.append([])
            width = 0
        groups[-1].append(name)
        width += z.shape[1]
    return groups


def block_mi_scores(model: nn.Module, adapter: Adapter, loader: Iterable[Batch], bins: int = 10
                    ) -> "OrderedDict[str, float]":
    """s_b = mean over channels of I(bin(Z_b,c); Y) for every block, in forward order."""
    per_channel = channel_mi_scores(model, list(adapter.blocks(model)), loader, bins)
    return OrderedDict((name, float(mi.mean())) for name, mi in per_channel.items())


def _probe_size(loader: Loader) -> int:
    return len(loader) * loader.batch_size if loader.drop_last else loader.n


def load_or_compute_block_scores(path: Path | None, model: nn.Module, adapter: Adapter, loader: Loader,
                                 bins: int = 10) -> dict[str, float]:
    """Block scores from the JSON cache at ``path`` when it matches (bins, probe size, blocks), else
    computed and written atomically; a stale or corrupt cache is recomputed, never trusted."""
    if path is None:
        return dict(block_mi_scores(model, adapter, loader, bins))
    path = Path(path)
    key = {"version": CACHE_VERSION, "bins": bins, "samples": _probe_size(loader)}
    names = list(adapter.blocks(model))
    try:
        cached = json.loads(path.read_text())
        if ({k: cached.get(k) for k in key} == key and list(cached["scores"]) == names
                and all(isinstance(v, (int, float)) and math.isfinite(v) for v in cached["scores"].values())):
            return {k: float(v) for k, v in cached["scores"].items()}
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        pass
    scores = dict(block_mi_scores(model, adapter, loader, bins))
    write_json(path, {**key, "scores": scores})
    return scores
