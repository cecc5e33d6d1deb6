"""Torch-Pruning's own pruning (DepGraph, Fang et al. CVPR 2023) as the library's baseline: one uniform
ratio per layer, or its global ranking, bisected to the largest model within a GMACs budget. The
``tp_prune`` step (m2mdc/steps/tp_prune.py) runs it inside a plan, so its rows train like every other."""
from __future__ import annotations

import copy

import torch
import torch_pruning as tp

from . import metrics
from .errors import UserError

FEASIBLE_RATIO = 0.95  # the largest ratio the feasibility check prunes at (see torch_pruning_student)


def torch_pruning_student(teacher, adapter, budget: float, resolution: int, global_pruning: bool = False,
                          grads: dict | None = None):
    """Torch-Pruning pruning (one uniform ratio per layer, or its global ranking), bisected to the
    largest model within budget: group-L1 importance, or group Taylor when ``grads`` (module name ->
    the teacher's weight gradient of the probe loss, ``m2mdc.slicing.loss_gradients``) are given.
    Returns (student, kept teacher phi channels, ratio). The adapter names the head (kept whole) and
    the channel group that feeds it, whose pruned indices the history records."""
    head = adapter.head_name

    def prune(ratio):
        m = copy.deepcopy(teacher).cpu().eval()
        if grads is None:
            importance = tp.importance.GroupMagnitudeImportance(p=1)
        else:  # Torch-Pruning's Taylor reads .grad; every bisection step prunes a fresh copy
            importance = tp.importance.GroupTaylorImportance()
            for name, mod in m.named_modules():
                if name in grads:
                    mod.weight.grad = grads[name].detach().cpu().clone()
        pruner = tp.pruner.MetaPruner(m, torch.zeros(1, 3, resolution, resolution),
                                      importance=importance, pruning_ratio=ratio,
                                      ignored_layers=[m.get_submodule(head)], global_pruning=global_pruning,
                                      iterative_steps=1)
        pruner.step()
        return m, pruner.pruning_history()

    lo, hi = 0.0, 0.99
    # Torch-Pruning keeps a group whole once a ratio would leave it no channel (ResNet-18's 64-channel
    # stem at 0.99 keeps all 64, so that model is larger than at 0.9): feasibility is checked at a ratio
    # that leaves every group a channel; bisection from 0.99 stays in the monotone range for any budget
    # feasible there.
    if metrics.gmacs(prune(FEASIBLE_RATIO)[0], resolution) > budget:
        raise UserError(f"Torch-Pruning cannot reach {budget:g} GMACs with one {'global' if global_pruning else 'uniform'} "
                        f"ratio")
    for _ in range(14):
        mid = (lo + hi) / 2
        if metrics.gmacs(prune(mid)[0], resolution) <= budget:
            hi = mid
        else:
            lo = mid
    student, history = prune(hi)
    groups = adapter.channel_groups(teacher)
    phi = groups[head][1]
    writers = {name for name, (g_out, _) in groups.items() if g_out == phi}
    full = teacher.get_submodule(head).in_features
    removed: set[int] = set()
    for name, is_out, idxs in history:  # the group that feeds the head
        if is_out and name in writers:
            removed = set(int(i) for i in idxs)
    keep = torch.tensor([i for i in range(full) if i not in removed], dtype=torch.long)
    if len(keep) != student.get_submodule(head).in_features:
        raise RuntimeError("could not recover which teacher features the pruned model keeps")
    return student, keep, hi
