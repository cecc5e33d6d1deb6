"""The Torch-Pruning baseline's bisection onto a GMACs budget, on the real library."""
import pytest
import torch
import torchvision

from m2mdc.tp_prune import torch_pruning_student
from m2mdc import metrics
from m2mdc.errors import UserError
from m2mdc.models import get_adapter

pytest.importorskip("torch_pruning")


@pytest.fixture(scope="module")
def teacher():
    torch.manual_seed(0)
    return torchvision.models.resnet18(num_classes=100).eval()


@pytest.mark.parametrize("budget", [0.02, 0.0111, 0.004])
def test_reaches_budgets_below_half_the_teacher(teacher, budget):
    """0.0111 GMACs was refused as unreachable: Torch-Pruning keeps a group whole once the ratio leaves it
    no channel, so the model at the ratio 0.99 the check used is larger than at 0.9."""
    student, keep, ratio = torch_pruning_student(teacher, get_adapter("resnet18"), budget, 32)
    g = metrics.gmacs(student, 32)
    assert 0.9 * budget < g <= budget
    assert 0 < ratio < 0.95
    assert len(keep) == student.fc.in_features and student.fc.out_features == 100  # classes kept


def test_an_unreachable_budget_is_one_line(teacher):
    with pytest.raises(UserError, match="cannot reach"):
        torch_pruning_student(teacher, get_adapter("resnet18"), 1e-6, 32)


@pytest.fixture(scope="module")
def ctx(digits, tmp_path_factory):
    from m2mdc.context import Context
    from m2mdc.teacher import TeacherRecipe, get_teacher

    out = tmp_path_factory.mktemp("tp")
    teacher, rec = get_teacher("resnet18", digits, TeacherRecipe(epochs=4), torch.device("cpu"), out, quiet=True)
    return Context("resnet18", digits, teacher, torch.device("cpu"), rec, out / "cache")


@pytest.mark.parametrize("importance", ["group_l1", "group_taylor"])
def test_the_step_in_a_plan_trains_what_pruning_then_a_plan_from_it_trained(ctx, importance):
    """The tp_prune step (its rows go through plans like every other) against the path the baselines took
    before it: prune outside the plan, recalibrate BN, hand the student and its kept phi channels to
    run_plan. Same model, same feature alignment, same KD: the same numbers, to the bit."""
    from m2mdc.bn import recalibrate_bn
    from m2mdc.data import Loader, probe_loader
    from m2mdc.runner import BN_RECAL_BATCHES, run_plan
    from m2mdc.slicing import loss_gradients

    kd = {"step": "kd", "epochs": 2, "steps_per_epoch": 3, "seed": 1, "kl_weight": 1.0, "temperature": 4.0}
    budget = 0.02
    _, rec = run_plan([{"step": "tp_prune", "budget_gmacs": budget, "importance": importance}, kd], ctx, quiet=True)
    grads = loss_gradients(ctx.teacher, probe_loader(ctx.ds, ctx.device, max_samples=5000)) \
        if importance == "group_taylor" else None
    student, keep, ratio = torch_pruning_student(ctx.teacher, ctx.adapter, budget, ctx.ds.resolution, grads=grads)
    recalibrate_bn(student, Loader(ctx.ds.train, 128, ctx.device, shuffle=True, resolution=ctx.ds.resolution,
                                   seed=1), batches=BN_RECAL_BATCHES)
    _, old = run_plan([kd], ctx, quiet=True, init=(student, keep.tolist()))
    assert rec["notes"]["tp_ratio"] == ratio and rec["feature_index"] == keep.tolist()
    assert rec["gmacs"] == old["gmacs"] <= budget and rec["keep_cfg"] == old["keep_cfg"]
    assert [s["step"] for s in rec["steps"]] == ["tp_prune", "kd"]
    assert (rec["val_top1"], rec["test_top1"]) == (old["val_top1"], old["test_top1"])
    assert rec["steps"][1]["epochs_trained"] == old["steps"][0]["epochs_trained"] == 2
