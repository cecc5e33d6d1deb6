"""The Torch-Pruning baseline's bisection onto a GMACs budget, on the real library."""
import pytest
import torch
import torchvision

from analysis.baselines import torch_pruning_student
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
