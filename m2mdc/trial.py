"""One path from a configuration to a measured trial: compile it (priced and projected before training),
measure the no-training fidelity on the way, run its plan at the asked fidelity, then measure what the
objectives table names (test top-1, size as shipped, latency as shipped). A search trial, the compress
CLI and the demo call this; it returns the model and a typed record whose ``row`` is the objectives row.

    trial = run_trial(config, ctx, target_of(ctx), TrialSpec(budget_gmacs=0.02, training={"epochs": 2}))
    trial.row(final=True)   # {"val_top1": ..., "gmacs": ..., "test_top1": ..., ...}
"""
from __future__ import annotations

import json
import time
from dataclasses import dataclass, field, replace
from typing import Callable

from torch import nn

from .arch_latency import QUIET_ROUNDS
from .compiler import CompiledPlan, Target, compile_config
from .fidelity import ADAPTIVE_BN, FIDELITIES, SHORT, plan_at
from .runner import run_plan
from .train import evaluate_split


@dataclass(frozen=True)
class TrialSpec:
    """How a configuration is compiled, trained and measured (everything but the configuration)."""

    recipe: str = "fractions"
    budget_gmacs: float | None = None
    training: dict = field(default_factory=dict)  # the repairs' KD budget: epochs (T), steps_per_epoch, batch_size
    bins: int = 10
    probe_samples: int = 5000
    budget_ms: float | None = None  # latency budget of the shipped model (needs ``latency`` in run_trial)
    project: str = "down"  # widths onto the cost target only from above, or "both" (m2mdc.compiler)
    fidelity: str = SHORT.name  # m2mdc.fidelity: how long the compiled plan trains
    long_steps: int | None = None  # batches per epoch of the long budget (None: full passes)
    adaptive_bn: bool = False  # at the short fidelity, also measure val after the edits and BN recalibration alone
    eval_test: bool = True
    step_tests: bool = False  # test top-1 after every step too (the compress CLI's per-step table)
    deploy: bool = False  # the runner's deployment measurements (CPU latency at batch 1 / 64, sizes: m2mdc.deploy)
    measure_latency: bool = False  # time the trained model as shipped (latency_ms), at latency_batch / threads
    latency_batch: int = 1
    latency_threads: int = 1


@dataclass
class Trial:
    """A configuration's trial: its compiled plan, what was known before training (``before``: cost,
    projection, fidelity, predicted latency, adaptive-BN val) and, once trained, the model, the runner's
    record and the measurements (``after``)."""

    config: dict
    compiled: CompiledPlan
    before: dict
    model: nn.Module | None = None
    record: dict | None = None
    after: dict = field(default_factory=dict)

    @property
    def feasible(self) -> bool:
        return self.compiled.feasible

    def row(self, **extra) -> dict:
        """The objectives row (m2mdc.objectives.METRICS names): what was known before training, then the
        measurements, or for an infeasible configuration its cost and how far over a budget it stays."""
        if not self.feasible:
            return {**self.before, **extra, "val_top1": 0.0, "gmacs": self.compiled.gmacs,
                    "note": "; ".join(self.compiled.notes), "violation": self.compiled.violation}
        return {**self.before, **extra, **self.after}


def compile_trial(config: dict, target: Target, spec: TrialSpec, latency=None) -> CompiledPlan:
    return compile_config(config, target, recipe=spec.recipe, budget_gmacs=spec.budget_gmacs, training=spec.training,
                          bins=spec.bins, probe_samples=spec.probe_samples, budget_ms=spec.budget_ms,
                          latency=latency, project=spec.project)


def run_trial(config: dict, ctx, target: Target, spec: TrialSpec, *, latency=None, before: dict | None = None,
              on_epoch: Callable[[dict, dict], None] | None = None, quiet: bool = True,
              log: Callable[[str], None] | None = None, compiled: CompiledPlan | None = None,
              init: nn.Module | None = None) -> Trial:
    """Compile ``config`` against ``target`` and, when feasible, train and measure it on ``ctx`` (its device).

    ``latency``: an m2mdc.arch_latency.ArchLatency, for ``spec.budget_ms``. ``before``: fields the caller
    adds to every row (e.g. which trial a promoted one came from). ``on_epoch(before, row)`` sees every
    training epoch with the pre-training fields as they stand (the adaptive-BN val included). ``compiled``:
    the configuration compiled already (compile_trial with the same spec), e.g. to show its plan first.
    ``init``: the FP32 module the plan starts from when it is not the teacher (same architecture).
    """
    t_plan = time.perf_counter()
    compiled = compiled or compile_trial(config, target, spec, latency)
    base = {"sampled_gmacs": compiled.sampled_gmacs, "width_scale": compiled.width_scale,
            "feasible": compiled.feasible, "fidelity": spec.fidelity, "under_target": compiled.under_target}
    if compiled.target_gmacs is not None:
        base["target_gmacs"] = compiled.target_gmacs
    base.update(before or {})
    if compiled.latency is not None:  # a latency budget: the prediction made before training
        lat = compiled.latency
        base.update(predicted_latency_ms=lat["predicted_ms"], predicted_latency_spread_pct=lat["spread_pct"],
                    sampled_latency_ms=lat["sampled_ms"], latency_measurements=lat.get("measurements", 1),
                    latency_seconds=time.perf_counter() - t_plan, latency_batch=spec.latency_batch)
        if log is not None:
            log(f"[latency] predicted {lat['predicted_ms']:.2f} ms ±{lat['spread_pct']:.0f}% at batch "
                f"{spec.latency_batch} (sampled {lat['sampled_ms']:.2f} ms, {base['latency_measurements']} "
                f"measurement(s), {base['latency_seconds']:.0f} s)")
    trial = Trial(config, compiled, base)
    if not compiled.feasible:
        return trial
    t0 = time.perf_counter()
    if spec.fidelity == SHORT.name and spec.adaptive_bn and any(s["step"] != "kd" for s in compiled.plan):
        # the no-training fidelity, on the way: edits + BN recalibration, val (seconds beside the repairs)
        _, untrained = run_plan(plan_at(compiled.plan, ADAPTIVE_BN), ctx, quiet=True, eval_test=False,
                                init=None if init is None else (init, None))
        base["val_top1_adaptive_bn"] = untrained["val_top1"]
    at = FIDELITIES[spec.fidelity]
    if at.total_epochs and spec.long_steps is not None:
        at = replace(at, steps_per_epoch=spec.long_steps)
    epochs_done = 0

    def each_epoch(row: dict):
        nonlocal epochs_done
        epochs_done += 1
        if on_epoch is not None:
            return on_epoch(base, {**row, "epochs_done": epochs_done})

    model, record = run_plan(plan_at(compiled.plan, at), ctx, on_epoch=each_epoch, quiet=quiet,
                             eval_test=spec.step_tests, deploy=spec.deploy, init=None if init is None else (init, None))
    res = ctx.ds.resolution
    if spec.eval_test and not spec.step_tests:  # only the final model's (the runner measured every step's)
        record["test_top1"] = evaluate_split(model, ctx.ds.test, "cpu" if record["int8"] else ctx.device, res)
    after = {"final": True, "val_top1": record["val_top1"], "test_top1": record["test_top1"],
             "gmacs": record["gmacs"], "params": record["params"], "size_bytes": record["size_bytes"],
             "int8": record["int8"], "sparsity": record["sparsity"], "train_seconds": time.perf_counter() - t0,
             "epochs_done": epochs_done, "keep_cfg": json.dumps(record["keep_cfg"], sort_keys=True),
             "device": str(ctx.device), "plan": json.dumps([s["step"] for s in record["plan"]])}
    # m2mdc.deploy and m2mdc.latency import torch._dynamo: ~1.9 s a process (python -X importtime), which a
    # trial that ships no INT8 and times nothing does not pay
    if record["int8"]:  # what ships is the converted torch.export program, not the FP32 state_dict
        from .deploy import shipped_size

        after["size_bytes"], export_error = shipped_size(model, res)
        if export_error:
            after["export_error"] = export_error
    if spec.measure_latency:
        from .latency import shipped_latency

        t = shipped_latency(model, res, record["int8"], batch=spec.latency_batch, threads=spec.latency_threads,
                            rounds=QUIET_ROUNDS)
        after.update(latency_ms=t["ms"], latency_spread_pct=t["spread_pct"], latency_backend=t["backend"],
                     latency_batch=spec.latency_batch)
    trial.model, trial.record, trial.after = model, record, after
    return trial
