"""qat: INT8 quantisation-aware training (PQD's Q) through PT2E fake-quant; the plan ends converted to INT8."""
from __future__ import annotations

from dataclasses import dataclass

import torch

from ..data import Loader
from ..settings import check_settings, setting
from .registry import StepRun, StepSpec, register


@dataclass(frozen=True)
class QATSettings:
    calib_batches: int = setting(10, "forward passes that set the fake-quant ranges before training", lo=1,
                                 integer=True)

    def __post_init__(self):
        check_settings(self)


def run(r: StepRun, s: QATSettings) -> None:
    """Swap the model for its PT2E fake-quant twin; later train/kd steps run under fake-quant
    (PQD's QAT then KD-last) and the plan's end converts it to INT8. A few forward passes set the
    fake-quant ranges first, so the step's own accuracy row is meaningful."""
    from .. import quant, sparsity

    ctx, state = r.ctx, r.state
    if state.sparsity is not None:
        sparsity.make_permanent(state.model)  # zeros are kept through QAT by quant.prepare_qat
    example = torch.zeros(2, 3, ctx.ds.resolution, ctx.ds.resolution, device=ctx.device)
    state.model = quant.QATStudent.prepare(state.model.eval(), example, ctx.adapter.head_name, name=ctx.arch)
    state.qat = True
    state.model.train()
    calib = Loader(ctx.ds.train, 128, ctx.device, shuffle=True, resolution=ctx.ds.resolution, seed=2,
                   limit=128 * s.calib_batches)
    with torch.no_grad():
        for b in calib:
            state.model(b.x)
    state.model.eval()


register(StepSpec("qat", QATSettings, run, "PT2E fake-quant (torchao X86 inductor quantizer); later train/kd steps "
                  "run under fake-quant; the plan ends with the INT8 conversion", fixes_architecture=True, once=True))
