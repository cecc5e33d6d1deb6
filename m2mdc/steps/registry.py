"""The step registry: what a plan step is, how a plan is validated, how a step runs.

A plan is data: an ordered list of ``{"step": name, **settings}``. Each step declares itself
once, in its own module of this package, as a ``StepSpec``: its settings dataclass (defaults,
ranges, one doc line per field), whether it edits the architecture, whether it fixes it for the
rest of the plan, and how many progress reports it emits. Plan validation, the compress CLI's
help, the presets, the knob table and ASHA's report budget all read it from here.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields
from typing import Any, Callable

import torch
from torch import nn

from ..errors import UserError

StepHook = Callable[[dict], "bool | None"]


@dataclass
class State:
    """What steps change: the model, and which teacher phi channels its phi still matches."""

    model: nn.Module
    feature_index: torch.Tensor | None = None
    qat: bool = False  # model is a fake-quant (PT2E-prepared) student; converted to INT8 at the end
    sparsity: dict | None = None  # the last unstructured-pruning report
    notes: dict = field(default_factory=dict)  # what a step found (e.g. tp_prune's ratio); in the run's record


@dataclass
class StepRun:
    """Everything a step function is handed besides its settings."""

    ctx: Any  # m2mdc.context.Context
    state: State
    on_epoch: StepHook | None = None  # training steps call it after every epoch; True stops the plan
    log_prefix: str = ""
    quiet: bool = False


@dataclass(frozen=True)
class StepSpec:
    name: str
    settings: type  # a dataclass of m2mdc.settings.setting fields; validates itself in __post_init__
    run: Callable[[StepRun, Any], None]
    doc: str
    structural: bool = False  # edits the architecture: BN is recalibrated and the model priced again after it
    fixes_architecture: bool = False  # masks or fake-quant: no structural step may follow
    once: bool = False  # may appear at most once in a plan
    trains: bool = False  # emits one progress report per epoch (settings.epochs)
    check: Callable[[Any, str, int], None] | None = None  # validation against the architecture (arch, classes)

    def reports(self, settings) -> int:
        return int(settings.epochs) if self.trains else 0

    def make(self, params: dict, where: str, arch: str | None = None, num_classes: int | None = None):
        """The step's settings from plan parameters, validated; UserError prefixed with ``where``."""
        names = {f.name for f in fields(self.settings)}
        unknown = sorted(set(params) - names)
        if unknown:
            raise UserError(f"{where} has unknown parameter(s) {unknown}; it takes {sorted(names)}")
        try:
            settings = self.settings(**params)
            if self.check is not None and arch is not None:
                self.check(settings, arch, num_classes or 10)
        except UserError as e:
            raise UserError(f"{where}: {e}") from None
        return settings


STEPS: dict[str, StepSpec] = {}


def register(spec: StepSpec) -> StepSpec:
    if spec.name in STEPS and STEPS[spec.name] is not spec:
        raise ValueError(f"step {spec.name!r} is registered twice")
    STEPS[spec.name] = spec
    return spec


def unregister(name: str) -> None:
    STEPS.pop(name, None)


def structural_steps() -> list[str]:
    return [n for n, s in STEPS.items() if s.structural]


def check_order(plan: list[dict]) -> None:
    """Reject orders that cannot run: the architecture is fixed once weights are masked or
    fake-quantised (slicing a pruned or prepared graph would have to re-derive masks and
    quantiser annotations), and a once-only step (quantisation) runs once."""
    seen: dict[str, int] = {}
    for i, step in enumerate(plan):
        name, spec = step["step"], STEPS[step["step"]]
        if spec.structural:
            for later, j in seen.items():
                if STEPS[later].fixes_architecture:
                    fixing = ", ".join(n for n, s in STEPS.items() if s.fixes_architecture)
                    raise UserError(f"illegal stage order: {name} (step {i}) comes after {later} (step {j}); "
                                    f"structural steps ({', '.join(structural_steps())}) must precede {fixing}")
        if spec.once and name in seen:
            raise UserError(f"illegal stage order: {name} appears twice (steps {seen[name]} and {i}); "
                            f"it may run once")
        seen.setdefault(name, i)


def validate_plan(plan: list[dict], arch: str | None = None, num_classes: int | None = None) -> list[dict]:
    """Normalise a plan (every setting filled in) or raise a UserError saying which step is wrong."""
    if not isinstance(plan, list) or not plan:
        raise UserError("a plan must be a non-empty list of steps like {\"step\": \"kd\", \"epochs\": 5}")
    out = []
    for i, raw in enumerate(plan):
        if not isinstance(raw, dict) or "step" not in raw:
            raise UserError(f"plan step {i} must be an object with a 'step' name")
        name = raw["step"]
        if name not in STEPS:
            raise UserError(f"plan step {i} is unknown step {name!r}; known steps: {', '.join(STEPS)}")
        spec = STEPS[name]
        settings = spec.make({k: v for k, v in raw.items() if k != "step"}, f"plan step {i} ({name})", arch,
                             num_classes)
        out.append({"step": name, **asdict(settings)})
    check_order(out)
    return out


def settings_of(step: dict):
    """The settings object of one (validated) plan step."""
    return STEPS[step["step"]].settings(**{k: v for k, v in step.items() if k != "step"})


def plan_reports(plan: list[dict]) -> int:
    """Progress reports a plan emits (one per training epoch)."""
    return sum(STEPS[s["step"]].reports(settings_of(s)) for s in plan)


def describe_steps() -> str:
    """One line per registered step with its settings and defaults (CLI help)."""
    lines = []
    for name, spec in STEPS.items():
        params = ", ".join(f"{f.name}={f.default!r}" for f in fields(spec.settings))
        lines.append(f"  {name}: {spec.doc} [{params}]")
    return "\n".join(lines)
