"""m2mdc.trial: the library's one path from a configuration to a measured trial (the search's trainable,
the compress CLI and the demo call it)."""
import pytest
import torch

from m2mdc import metrics
from m2mdc.compiler import target_of
from m2mdc.context import Context
from m2mdc.objectives import METRICS
from m2mdc.teacher import TeacherRecipe, get_teacher
from m2mdc.train import evaluate_split
from m2mdc.trial import TrialSpec, run_trial

CONTROL = {"final", "feasible"}  # what a row may carry besides METRICS (search/outcome.py CONTROL)


@pytest.fixture(scope="module")
def ctx(digits, tmp_path_factory):
    out = tmp_path_factory.mktemp("trial")
    teacher, rec = get_teacher("resnet18", digits, TeacherRecipe(epochs=4), torch.device("cpu"), out, quiet=True)
    return Context("resnet18", digits, teacher, torch.device("cpu"), rec, out / "cache")


def test_a_trial_is_compiled_trained_and_measured_in_one_call(ctx):
    seen = []
    spec = TrialSpec(budget_gmacs=0.01, training={"epochs": 1, "steps_per_epoch": 2}, project="both", adaptive_bn=True)
    trial = run_trial({"prune_ratio": 0.5, "planes_keep": 0.5, "mid_keep": 0.5, "cost_target": 1.0}, ctx,
                      target_of(ctx), spec, on_epoch=lambda before, row: seen.append((dict(before), row)))
    row = trial.row(final=True)
    assert set(row) <= set(METRICS) | CONTROL, set(row) - set(METRICS) - CONTROL
    assert trial.feasible and row["fidelity"] == "short" and row["epochs_done"] == len(seen) >= 1
    assert "val_top1_adaptive_bn" in seen[0][0]  # measured before the first training epoch is reported
    assert metrics.gmacs(trial.model, 32) == pytest.approx(row["gmacs"]) and row["gmacs"] <= 0.01
    assert 0.98 * 0.01 <= row["gmacs"]  # projected up onto its target, not left under it
    assert row["test_top1"] == evaluate_split(trial.model, ctx.ds.test, ctx.device, ctx.ds.resolution)


def test_an_infeasible_configuration_is_priced_and_never_trained(ctx):
    trial = run_trial({"prune_ratio": 0.0, "planes_keep": 1.0, "mid_keep": 1.0}, ctx, target_of(ctx),
                      TrialSpec(budget_gmacs=1e-6, training={"epochs": 1, "steps_per_epoch": 1}))
    row = trial.row(final=True)
    assert not trial.feasible and trial.model is None and row["val_top1"] == 0.0 and row["violation"] > 0
