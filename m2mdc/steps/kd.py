"""kd: staged knowledge-distillation repair (M2M-DC's loss; Hinton's KL term optional)."""
from __future__ import annotations

from ..distill import KDConfig, distill
from .registry import StepRun, StepSpec, register


def run(r: StepRun, cfg: KDConfig) -> None:
    ctx, state = r.ctx, r.state
    outputs = None if cfg.crop else ctx.get_teacher_outputs()
    distill(state.model, ctx.teacher, ctx.adapter, ctx.ds.train, ctx.ds.val, cfg, ctx.device,
            teacher_outputs=outputs, feature_index=state.feature_index, on_epoch=r.on_epoch, log_prefix=r.log_prefix,
            quiet=r.quiet, resolution=ctx.ds.resolution)


register(StepSpec("kd", KDConfig, run, "CE + ramped cosine logit / feature alignment to the teacher (+ optional KL); "
                  "teacher outputs cached for both flip states", trains=True))
