"""Compress from Python, on your own module and data (what the command-line tools do, as one call).

    import m2mdc
    result = m2mdc.compress(model, train_ds, val_ds, budget_gmacs=0.02)
    result.model, result.keep_cfg, result.record["val_top1"]

The call goes through the library's one trial path (m2mdc.trial.run_trial): the configuration is
compiled against your model, projected onto the budget, trained by KD repairs from your model (the
teacher) and measured. The search over configurations is ``search.api.search`` (it needs Ray, Optuna
and MLflow, which this library never imports).
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from .compiler import RECIPES, target_of
from .context import Context
from .device import pick_device
from .errors import UserError
from .knobs import KNOBS
from .models import get_adapter, recognise_module
from .teacher import evaluate_teacher
from .trial import TrialSpec, compile_trial, run_trial
from .user_data import user_dataset


@dataclass
class Compressed:
    """What ``compress`` returns: the compressed module (a torchvision module of the recognised family,
    on the CPU for INT8, else on the call's device), the structure it keeps, and its record (val / test
    top-1, GMACs, params, size, the plan trained and the teacher's numbers)."""

    model: nn.Module
    keep_cfg: dict
    record: dict
    arch: str

    @property
    def val_top1(self) -> float:
        return self.record["val_top1"]

    @property
    def gmacs(self) -> float:
        return self.record["gmacs"]


def compress(model: nn.Module, train, val, *, budget_gmacs: float | None = None, knobs: dict | None = None,
             recipe: str | None = None, test=None, teacher: nn.Module | None = None,
             device: str | torch.device | None = None, kd_epochs: int = 5, steps_per_epoch: int | None = None,
             batch_size: int | None = None, seed: int = 0, out_dir: str | Path | None = None,
             quiet: bool = True) -> Compressed:
    """Compress ``model`` on ``train`` (KD repairs), selecting on ``val``; measure ``test`` if given.

    ``model``: a torchvision ResNet / ResNeXt / wide ResNet / MobileNetV2 instance, a subclass, or one with
    its head replaced (an ``nn.Linear``); recognised from its structure (m2mdc.models.recognise_module).
    It is not modified. ``train`` / ``val`` / ``test``: torch Datasets or DataLoaders yielding (image tensor
    [3, H, W] as the model takes it, integer label); each is read once, through your transform
    (m2mdc.user_data says what that means for random transforms and caching).
    ``budget_gmacs``: the student's cost; the widths are projected onto it, up or down (without it the
    knobs fix the widths). ``knobs``: the search's knob values (m2mdc.knobs; missing ones take their
    defaults). ``recipe``: m2mdc.compiler.RECIPES (default: ``fractions`` with a budget, the paper's
    ``m2mdc`` without). ``teacher``: the KD teacher (default: ``model`` itself); the same architecture,
    since the blocks are ranked on it. ``kd_epochs`` / ``steps_per_epoch`` / ``batch_size``: each KD
    repair's budget (T = 5 epochs of full passes by default, as in the paper). ``out_dir``: also save the
    result there (m2mdc.results.save_result: keep_cfg.json, record.json, model.pt, model.pt2).

    Raises m2mdc.UserError, with what is wrong and how to fix it, on a module no adapter fits, data of the
    wrong shape, labels outside the head's classes, an empty loader, or a budget the architecture cannot meet.
    """
    arch, student = recognise_module(model)
    num_classes = student.get_submodule(get_adapter(arch).head_name).out_features
    recipe = recipe or ("fractions" if budget_gmacs is not None else "m2mdc")
    if recipe not in RECIPES:
        raise UserError(f"unknown recipe {recipe!r}; choose one of {', '.join(RECIPES)}")
    if budget_gmacs is not None and not budget_gmacs > 0:
        raise UserError(f"budget_gmacs must be > 0, not {budget_gmacs!r}")
    config = _checked_knobs(knobs or {})
    if teacher is not None and teacher is not model:
        t_arch, teacher_net = recognise_module(teacher)
        if t_arch != arch:
            raise UserError(f"teacher is {t_arch} but model is {arch}; pass a teacher of the model's architecture")
    else:
        teacher_net = student
    dev = pick_device(str(device) if device is not None else "auto")
    ds = user_dataset(train, val, test, num_classes)
    teacher_net = teacher_net.to(dev).eval()
    record = {"arch": arch, "source": "python", **evaluate_teacher(teacher_net, ds, dev)}
    ctx = Context(arch, ds, teacher_net, dev, record)
    training = {"epochs": kd_epochs, "seed": seed}
    if steps_per_epoch is not None:
        training["steps_per_epoch"] = steps_per_epoch
    if batch_size is not None:
        training["batch_size"] = batch_size
    spec = TrialSpec(recipe=recipe, budget_gmacs=budget_gmacs, training=training, project="both",
                     eval_test=test is not None)
    target = target_of(ctx)
    compiled = compile_trial(config, target, spec)
    if not compiled.feasible:
        raise UserError(f"{arch} cannot meet budget_gmacs={budget_gmacs:g} with this configuration ("
                        + "; ".join(compiled.notes) + "); raise the budget or remove more blocks (knobs)")
    start = student.to(dev) if teacher_net is not student else None  # else the plan starts from the teacher
    trial = run_trial(config, ctx, target, spec, quiet=quiet, compiled=compiled, init=start)
    out = {**trial.row(), **trial.record, "recipe": recipe, "budget_gmacs": budget_gmacs, "config": config,
           "teacher": {k: record[k] for k in ("val_top1", "test_top1", "gmacs", "params")}}
    result = Compressed(trial.model.eval(), trial.record["keep_cfg"], out, arch)
    if out_dir is not None:
        from .results import save_result  # torch.export at save time only

        save_result(result.model, out, Path(out_dir))
    return result


def _checked_knobs(knobs: dict) -> dict:
    """The knob values, each checked against its rule (m2mdc.knobs) before anything is read or trained."""
    config = {}
    for name, value in knobs.items():
        knob = KNOBS.get(name)
        if knob is None:
            raise UserError(f"unknown knob {name!r}; choose from {', '.join(KNOBS)}")
        for v in (value.values() if isinstance(value, dict) else [value]):
            msg = knob.rule.message(name, v)
            if msg is not None:
                raise UserError(msg)
        config[name] = value
    return config

