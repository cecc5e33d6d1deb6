"""sparsity: global unstructured magnitude pruning (PQD's P); masks persist through later training."""
from __future__ import annotations

from dataclasses import dataclass

from ..settings import check_settings, setting
from .registry import StepRun, StepSpec, register


@dataclass(frozen=True)
class SparsitySettings:
    target: float = setting(0.5, "fraction of conv + linear weights set to zero", lo=0, hi=1, hi_open=True)

    def __post_init__(self):
        check_settings(self)


def run(r: StepRun, s: SparsitySettings) -> None:
    from .. import quant, sparsity

    state = r.state
    if state.qat:
        state.sparsity = quant.sparsify_prepared(state.model.prepared, s.target)
    else:
        state.sparsity = sparsity.apply_sparsity(state.model, s.target)


register(StepSpec("sparsity", SparsitySettings, run, "global unstructured magnitude pruning (torch.nn.utils.prune); "
                  "masks kept through later training, also under fake-quant", fixes_architecture=True))
