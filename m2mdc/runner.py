"""Run a plan end to end on a teacher: each step from the registry, BN recalibration after every
structural edit, a JSON-able record of every step (val/test top-1, params, GMACs, epochs trained,
wall time), and for plans with QAT the INT8 conversion at the end.

    [{"step": "block_prune", "ratio": 0.5}, {"step": "kd"},
     {"step": "planes", "keep": 0.5}, {"step": "kd"}, {"step": "mid", "keep": 0.5}, {"step": "kd"}]
"""
from __future__ import annotations

import copy
import time
from typing import Any

import torch
from torch import nn

from . import metrics
from .bn import recalibrate_bn
from .context import Context
from .data import Loader
from .models.base import Adapter
from .steps import STEPS, State, StepRun, settings_of, validate_plan
from .steps.registry import StepHook
from .train import evaluate, evaluate_split

BN_RECAL_BATCHES = 50  # the paper's ~50 recalibration batches after every structural edit


def describe(model: nn.Module, adapter: Adapter, resolution: int) -> dict:
    """Structure and cost of an FP32 model: params, GMACs, checkpoint size, keep_cfg, stage widths."""
    cfg = adapter.keep_cfg_of(model)
    return {"params": metrics.count_params(model), "gmacs": metrics.gmacs(model, resolution),
            "size_bytes": metrics.checkpoint_size(model), "keep_cfg": cfg,
            "stage_widths": {s: {"blocks": len(b), "planes": cfg["planes"].get(s)} for s, b in cfg["blocks"].items()}}


def _recalibrate(ctx: Context, state: State) -> None:
    loader = Loader(ctx.ds.train, 128, ctx.device, shuffle=True, resolution=ctx.ds.resolution, seed=1)
    recalibrate_bn(state.model, loader, batches=BN_RECAL_BATCHES)


def run_plan(plan: list[dict], ctx: Context, on_epoch: StepHook | None = None, quiet: bool = False,
             eval_test: bool = True, deploy: bool = False, init: tuple[nn.Module, list | None] | None = None
             ) -> tuple[nn.Module, dict]:
    """Run ``plan`` on a copy of ctx.teacher, or on ``init`` = (an FP32 student of ctx.arch, the
    teacher phi channels its phi matches or None) to continue from a saved result. ``on_epoch(row)``
    sees every training epoch (row has 'step_index', 'step' and 'gmacs' added) and may return True
    to stop the whole plan early.

    A plan with a qat step ends with the INT8 conversion; the returned model is then the INT8
    CPU model. ``deploy`` adds measured CPU latency and deployment sizes (m2mdc.deploy).
    Returns (final model, record). Selection uses val; test top-1 is measured for reporting only.
    """
    plan = validate_plan(plan, ctx.arch, ctx.ds.num_classes)
    adapter = ctx.adapter
    res = ctx.ds.resolution
    val_loader = Loader(ctx.ds.val, 512, ctx.device, resolution=res)
    if init is None:
        state = State(copy.deepcopy(ctx.teacher).to(ctx.device))
    else:
        model0, feature_index = init
        state = State(copy.deepcopy(model0).to(ctx.device),
                      torch.as_tensor(feature_index) if feature_index is not None else None)
    shape = describe(state.model, adapter, res)  # structure of the FP32 architecture: fixed once qat starts
    rows: list[dict[str, Any]] = []
    stopped = False
    t_start = time.perf_counter()
    for i, step in enumerate(plan):
        spec = STEPS[step["step"]]
        settings = settings_of(step)
        t0 = time.perf_counter()
        epochs_run = [0]  # what this step actually trained (records say what was trained, not what was asked)

        def hook(row, i=i, name=spec.name, cost=shape["gmacs"]):
            nonlocal stopped
            epochs_run[0] += 1
            stop = on_epoch({**row, "step_index": i, "step": name, "gmacs": cost}) if on_epoch else None
            stopped = stopped or bool(stop)
            return stop

        spec.run(StepRun(ctx, state, hook if spec.trains else None, f"step {i} {spec.name} on {ctx.device}", quiet),
                 settings)
        if spec.structural:
            _recalibrate(ctx, state)
            shape = describe(state.model, adapter, res)
        row = {"index": i, "step": spec.name, "params": {k: v for k, v in step.items() if k != "step"},
               "seconds": time.perf_counter() - t0, "val_top1": evaluate(state.model, val_loader),
               "test_top1": evaluate_split(state.model, ctx.ds.test, ctx.device, res) if eval_test else None,
               "params_count": shape["params"], "gmacs": shape["gmacs"], "keep_cfg": shape["keep_cfg"]}
        if spec.trains:
            row["epochs_trained"] = epochs_run[0]
        if state.sparsity is not None:
            row["sparsity"] = _achieved_sparsity(state)
        rows.append(row)
        if not quiet:
            print(f"[plan] step {i} {spec.name}: val top-1 {row['val_top1']:.2f}%  GMACs {row['gmacs']:.4f}  "
                  f"params {row['params_count'] / 1e6:.3f}M  ({row['seconds']:.0f} s)", flush=True)
        if stopped:
            break
    model = state.model
    record = {"arch": ctx.arch, "dataset": ctx.ds.name, "num_classes": ctx.ds.num_classes, "resolution": res,
              "plan": plan,
              "stopped_early": stopped, "teacher": {k: ctx.teacher_record.get(k) for k in
                                                    ("val_top1", "test_top1", "params", "gmacs", "path")},
              "steps": rows, **shape, "int8": False,
              "sparsity": _achieved_sparsity(state) if state.sparsity is not None else 0.0,
              "feature_index": state.feature_index.tolist() if state.feature_index is not None else None,
              "device": str(ctx.device)}
    if state.notes:
        record["notes"] = dict(state.notes)
    if state.sparsity is not None and not state.qat:
        from .sparsity import make_permanent

        make_permanent(model)
    if state.qat:
        t0 = time.perf_counter()
        model = state.model.convert(name=ctx.arch)  # INT8, on the CPU
        cpu_val = Loader(ctx.ds.val, 512, "cpu", resolution=res)
        record["int8"] = True
        record["convert_seconds"] = time.perf_counter() - t0
        record["fake_quant_val_top1"] = rows[-1]["val_top1"] if rows else None
        rows.append({"index": len(rows), "step": "convert", "params": {}, "seconds": record["convert_seconds"],
                     "val_top1": evaluate(model, cpu_val),
                     "test_top1": evaluate_split(model, ctx.ds.test, "cpu", res) if eval_test else None,
                     "params_count": shape["params"], "gmacs": shape["gmacs"]})
    record["val_top1"] = rows[-1]["val_top1"] if rows else None
    record["test_top1"] = rows[-1]["test_top1"] if rows else None
    if deploy:
        from .deploy import deployment_metrics

        record["deploy"] = deployment_metrics(model, res, int8=record["int8"])
    record["seconds"] = time.perf_counter() - t_start
    return model, record


def _achieved_sparsity(state: State) -> float:
    from . import quant, sparsity

    return quant.prepared_sparsity(state.model.prepared) if state.qat else sparsity.achieved_sparsity(state.model)
