"""Global unstructured magnitude pruning (the "P" of Prune-Quantize-Distill) and sparse checkpoints.

Pruning goes through ``torch.nn.utils.prune`` so each weight becomes ``weight_orig * weight_mask``
recomputed before every forward: masked weights stay exactly zero through any later training,
whatever the optimizer does to ``weight_orig``. ``make_permanent`` bakes the masks in.

Global magnitude pruning ranks |w| over all conv + linear weights together, so layers end up with
different sparsities; only the total is set. The number of masked weights is
``k = round(sparsity * N)`` exactly (N = all conv + linear weights), ties at the threshold broken
by ``torch.topk``.
"""
from __future__ import annotations

import math

import torch
from torch import nn
from torch.nn.utils import prune

from .errors import UserError, check_range
from .metrics import state_dict_bytes

PRUNABLE = (nn.modules.conv._ConvNd, nn.Linear)
_BITS = torch.tensor([1, 2, 4, 8, 16, 32, 64, 128], dtype=torch.uint8)


def prunable_weights(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """(name, module) of every conv and linear layer whose ``weight`` is pruned."""
    return [(n, m) for n, m in model.named_modules() if isinstance(m, PRUNABLE)]


def _effective_weight(m: nn.Module) -> torch.Tensor:
    """The weight the next forward uses (``m.weight`` is stale between an optimizer step and it)."""
    if hasattr(m, "weight_mask"):
        return m.weight_orig.detach() * m.weight_mask
    return m.weight.detach()


def _masked_count(m: nn.Module) -> int:
    return int((m.weight_mask == 0).sum()) if hasattr(m, "weight_mask") else 0


def apply_sparsity(model: nn.Module, sparsity: float) -> dict:
    """Mask the smallest-|w| conv + linear weights, globally, so ``sparsity`` of them are zero.

    Works in place and on an already pruned model (it only masks more weights; asking for less
    sparsity than the masks already give raises). Returns the counts, per-layer sparsities and
    ``min_kept_abs``, the smallest |w| kept: the global threshold every masked weight is below.
    """
    check_range("sparsity", sparsity, 0.0, 1.0, hi_open=True,
                hint="give the fraction of conv + linear weights to zero, e.g. 0.5")
    layers = prunable_weights(model)
    if not layers:
        raise ValueError(f"{type(model).__name__} has no conv or linear layer to prune")
    total = sum(m.weight.numel() for _, m in layers)
    target = round(sparsity * total)
    already = sum(_masked_count(m) for _, m in layers)
    if target < already:
        raise UserError(f"sparsity={sparsity} is below the {already / total:.4f} the model's masks already give; "
                        f"masks cannot be undone, so prune a fresh (unpruned) copy for less sparsity")
    # An integer amount means "this many more weights" to torch's PruningContainer, which is what
    # makes repeated calls reach the asked-for total instead of compounding fractions.
    prune.global_unstructured([(m, "weight") for _, m in layers], pruning_method=prune.L1Unstructured,
                              amount=target - already)
    kept_min = min(float(torch.where(m.weight_mask.bool(), m.weight_orig.detach().abs(), math.inf).min())
                   for _, m in layers)
    per_layer = {n: _masked_count(m) / m.weight.numel() for n, m in layers}
    return {"target": sparsity, "achieved": achieved_sparsity(model), "masked": target, "total": total,
            "min_kept_abs": kept_min, "per_layer": per_layer}


def achieved_sparsity(model: nn.Module) -> float:
    """Fraction of exactly-zero conv + linear weights (what the forward pass uses)."""
    layers = prunable_weights(model)
    zeros = sum(int((_effective_weight(m) == 0).sum()) for _, m in layers)
    return zeros / max(1, sum(m.weight.numel() for _, m in layers))


def make_permanent(model: nn.Module) -> nn.Module:
    """Replace ``weight_orig * weight_mask`` by a plain ``weight`` (needed before export / PT2E QAT)."""
    for _, m in prunable_weights(model):
        if prune.is_pruned(m) and hasattr(m, "weight_mask"):
            prune.remove(m, "weight")
    return model


def effective_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """state_dict with ``*.weight_orig`` / ``*.weight_mask`` pairs folded into ``*.weight``."""
    sd = model.state_dict()
    out: dict[str, torch.Tensor] = {}
    for key, t in sd.items():
        if key.endswith(".weight_mask"):
            continue
        if key.endswith(".weight_orig"):
            stem = key[: -len("_orig")]
            out[stem] = t * sd[stem + "_mask"]
        else:
            out[key] = t
    return out


def _pack_bits(flags: torch.Tensor) -> torch.Tensor:
    flat = flags.flatten().to(torch.uint8)
    flat = torch.cat([flat, flat.new_zeros(-len(flat) % 8)]).view(-1, 8)
    return (flat * _BITS.to(flat.device)).sum(1, dtype=torch.uint8)


def _unpack_bits(packed: torch.Tensor, n: int) -> torch.Tensor:
    return ((packed.view(-1, 1) & _BITS.to(packed.device)) != 0).flatten()[:n]


def _encode(t: torch.Tensor) -> torch.Tensor | dict:
    """The smallest of: dense, bitmask + non-zero values, int32 CSR over ``t.view(rows, -1)``."""
    t = t.detach().cpu()
    if not t.is_floating_point() or t.dim() == 0:
        return t
    nz = t != 0
    nnz, elem = int(nz.sum()), t.element_size()
    rows = t.shape[0]
    sizes = {"dense": t.numel() * elem,
             "bitmask": math.ceil(t.numel() / 8) + nnz * elem,
             "csr": (rows + 1) * 4 + nnz * (4 + elem)}
    fmt = min(sizes, key=sizes.get)
    if fmt == "dense":
        return t
    if fmt == "bitmask":
        return {"format": "bitmask", "shape": list(t.shape), "mask": _pack_bits(nz), "values": t[nz]}
    nz2 = nz.reshape(rows, -1)
    crow = torch.cat([torch.zeros(1, dtype=torch.long), nz2.sum(1).cumsum(0)])
    return {"format": "csr", "shape": list(t.shape), "crow": crow.to(torch.int32),
            "col": nz2.nonzero()[:, 1].to(torch.int32), "values": t.reshape(rows, -1)[nz2]}


def _decode(v: torch.Tensor | dict) -> torch.Tensor:
    if isinstance(v, torch.Tensor):
        return v
    shape = torch.Size(v["shape"])
    if v["format"] == "bitmask":
        out = v["values"].new_zeros(shape.numel())
        out[_unpack_bits(v["mask"], shape.numel())] = v["values"]
        return out.view(shape)
    rows = shape[0]
    out = v["values"].new_zeros(rows, shape.numel() // max(rows, 1))
    row_of = torch.repeat_interleave(torch.arange(rows), v["crow"].long().diff())
    out[row_of, v["col"].long()] = v["values"]
    return out.view(shape)


def pack_sparse(state_dict: dict[str, torch.Tensor]) -> dict:
    """A lossless checkpoint: each float tensor stored dense, as bitmask + values, or as CSR,
    whichever is smallest. For float32, bitmask wins from ~3% to ~97% zeros, CSR beyond.
    Plain tensors, strings and lists only, so ``torch.load(weights_only=True)`` reads it."""
    return {k: _encode(t) for k, t in state_dict.items()}


def unpack_sparse(packed: dict) -> dict[str, torch.Tensor]:
    """Inverse of ``pack_sparse`` (CPU tensors, ready for ``load_state_dict``)."""
    return {k: _decode(v) for k, v in packed.items()}


def dense_checkpoint_bytes(model: nn.Module) -> int:
    """``torch.save`` size of the effective dense weights (masks folded in, not stored twice)."""
    return state_dict_bytes({k: t.cpu() for k, t in effective_state_dict(model).items()})


def sparse_checkpoint_bytes(model: nn.Module) -> int:
    """``torch.save`` size of ``pack_sparse(effective_state_dict(model))``."""
    return state_dict_bytes(pack_sparse(effective_state_dict(model)))


def sparse_formats(model: nn.Module) -> dict[str, int]:
    """How many state_dict tensors ``pack_sparse`` stores in each format (dense/bitmask/csr)."""
    counts = {"dense": 0, "bitmask": 0, "csr": 0}
    for v in pack_sparse(effective_state_dict(model)).values():
        counts["dense" if isinstance(v, torch.Tensor) else v["format"]] += 1
    return counts
