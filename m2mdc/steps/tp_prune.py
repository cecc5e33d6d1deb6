"""tp_prune: Torch-Pruning's own structured pruning at a GMACs budget (the baselines' reference method)."""
from __future__ import annotations

from dataclasses import dataclass

import torch

from ..data import probe_loader
from ..settings import check_settings, setting
from ..slicing import loss_gradients
from ..tp_prune import torch_pruning_student
from .block_prune import PROBE_SAMPLES
from .registry import StepRun, StepSpec, register

IMPORTANCES = ("group_l1", "group_taylor")


@dataclass(frozen=True)
class TorchPruningSettings:
    budget_gmacs: float = setting(0.02, "GMACs budget: the largest model within it is kept (bisection on the ratio)",
                                  lo=0, lo_open=True)
    global_pruning: bool = setting(False, "one global ranking of every group instead of one ratio per layer",
                                   choices=(False, True))
    importance: str = setting("group_l1", "group_l1 = group magnitude; group_taylor = |w * dL/dw| of the "
                              "cross-entropy on the probe set", choices=IMPORTANCES)
    probe_samples: int = PROBE_SAMPLES

    def __post_init__(self):
        check_settings(self)


def run(r: StepRun, s: TorchPruningSettings) -> None:
    ctx, state = r.ctx, r.state
    grads = None
    if s.importance == "group_taylor":
        grads = loss_gradients(state.model, probe_loader(ctx.ds, ctx.device, max_samples=s.probe_samples))
    student, keep, ratio = torch_pruning_student(state.model, ctx.adapter, s.budget_gmacs, ctx.ds.resolution,
                                                 global_pruning=s.global_pruning, grads=grads)
    base = state.feature_index if state.feature_index is not None else torch.arange(
        state.model.get_submodule(ctx.adapter.head_name).in_features)
    state.feature_index = base.cpu()[keep]
    state.model = student.to(ctx.device)
    state.notes["tp_ratio"] = ratio


register(StepSpec("tp_prune", TorchPruningSettings, run, "Torch-Pruning's pruning (one ratio per layer, or global), "
                  "the largest model within budget_gmacs", structural=True))
