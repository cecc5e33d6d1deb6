"""Compression steps: the registry (``registry``) and one module per step, each registering itself.

Importing this package imports every module in it, so a new step is one new file here (plus, to
make it searchable, its knob line in ``m2mdc.knobs``).
"""
from __future__ import annotations

import importlib
import pkgutil

from .registry import (STEPS, State, StepRun, StepSpec, check_order, describe_steps, plan_reports, register,
                       settings_of, unregister, validate_plan)

_BUILT_IN = ("block_prune", "slicing", "tp_prune", "kd", "train", "sparsity", "qat")  # registration (and --help) order
for _name in (*_BUILT_IN, *sorted(m.name for m in pkgutil.iter_modules(__path__))):
    if _name != "registry":
        importlib.import_module(f"{__name__}.{_name}")

__all__ = ["STEPS", "State", "StepRun", "StepSpec", "check_order", "describe_steps", "plan_reports", "register",
           "settings_of", "unregister", "validate_plan"]
