"""Constrained block pruning: protection, non-empty stages, exact counts, and students that run."""
from __future__ import annotations

import math

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from m2mdc.errors import UserError
from m2mdc.models import get_adapter
from m2mdc.prune_blocks import keep_blocks_after, prune_student, select_blocks_to_prune

ARCHS = ["resnet18", "resnet34", "resnet50", "mobilenet_v2"]
NUM_CLASSES = 10
FIXTURE_OK = [HealthCheck.function_scoped_fixture]  # the fixture is module-scoped; hypothesis cannot tell


@pytest.fixture(scope="module")
def models():
    torch.manual_seed(0)
    out = {}
    for arch in ARCHS:
        adapter = get_adapter(arch)
        out[arch] = (adapter, adapter.base_model(NUM_CLASSES).eval())
    return out


def _scores(adapter, model, ranks):
    return {b: float(r) for b, r in zip(adapter.blocks(model), ranks)}


def _check_selection(adapter, model, scores, ratio, pruned):
    blocks = list(adapter.blocks(model))
    by_stage = adapter.blocks_by_stage(model)
    protected = set(adapter.protected_blocks(model))
    free = [b for b in blocks if b not in protected]
    k = math.floor(ratio * len(free))
    removable = sum(min(sum(b not in protected for b in names), len(names) - 1) for names in by_stage.values())

    assert pruned == [b for b in blocks if b in set(pruned)]  # forward order, no duplicates
    assert not protected & set(pruned)
    assert len(pruned) == min(k, removable)
    keep = keep_blocks_after(adapter, model, pruned)
    assert list(keep) == list(by_stage) and all(keep.values())
    # Greedy by (score, position): a cheaper free block survives only if its stage is down to one block.
    order = {b: i for i, b in enumerate(blocks)}
    worst_pruned = max(((scores[b], order[b]) for b in pruned), default=None)
    for b in free:
        if b not in pruned and worst_pruned is not None and (scores[b], order[b]) < worst_pruned:
            assert len(keep[adapter.stage_of(b)]) == 1, b
    return keep


@pytest.mark.parametrize("arch", ARCHS)
@settings(max_examples=60, deadline=None, suppress_health_check=FIXTURE_OK)
@given(ratio=st.floats(0.0, 1.0, exclude_max=True), data=st.data())
def test_selection_properties(models, arch, ratio, data):
    adapter, model = models[arch]
    n = len(adapter.blocks(model))
    ranks = data.draw(st.lists(st.integers(0, 4), min_size=n, max_size=n))  # small range: many ties
    scores = _scores(adapter, model, ranks)
    pruned = select_blocks_to_prune(scores, adapter, model, ratio)
    _check_selection(adapter, model, scores, ratio, pruned)
    assert select_blocks_to_prune(dict(reversed(scores.items())), adapter, model, ratio) == pruned


@pytest.mark.parametrize("arch", ARCHS)
@settings(max_examples=5, deadline=None, suppress_health_check=FIXTURE_OK)
@given(ratio=st.floats(0.0, 1.0, exclude_max=True), data=st.data())
def test_pruned_student_runs_and_keeps_weights(models, arch, ratio, data):
    adapter, model = models[arch]
    n = len(adapter.blocks(model))
    scores = _scores(adapter, model, data.draw(st.permutations(range(n))))
    pruned = select_blocks_to_prune(scores, adapter, model, ratio)
    keep = _check_selection(adapter, model, scores, ratio, pruned)
    student = prune_student(model, adapter, keep, NUM_CLASSES)
    assert list(adapter.blocks(student)) == [b for b in adapter.blocks(model) if b not in pruned]
    teacher_sd = model.state_dict()
    assert all(torch.equal(t, teacher_sd[k]) for k, t in student.state_dict().items())
    with torch.no_grad():
        assert student(torch.randn(2, 3, 32, 32)).shape == (2, NUM_CLASSES)
    assert len(adapter.blocks(model)) == n  # the teacher is untouched


def test_lowest_scores_go_first_but_a_stage_is_never_emptied(models):
    adapter, model = models["resnet18"]
    # layer1's two free blocks score lowest; only one may go, so the next-lowest elsewhere is taken.
    scores = {"layer1.0": 0, "layer1.1": 0, "layer2.0": 9, "layer2.1": 5,
              "layer3.0": 9, "layer3.1": 2, "layer4.0": 9, "layer4.1": 7}
    assert select_blocks_to_prune(scores, adapter, model, 0.4) == ["layer1.0", "layer3.1"]
    assert select_blocks_to_prune(scores, adapter, model, 0.99) == ["layer1.0", "layer2.1", "layer3.1", "layer4.1"]
    assert select_blocks_to_prune(scores, adapter, model, 0.0) == []


def test_paper_frontier_keep_cfg(models):
    adapter, model = models["resnet18"]
    keep = {"layer1": [0], "layer2": [0], "layer3": [0, 1], "layer4": [0, 1]}
    student = prune_student(model, adapter, keep, NUM_CLASSES)
    assert list(adapter.blocks(student)) == ["layer1.0", "layer2.0", "layer3.0", "layer3.1", "layer4.0", "layer4.1"]
    assert adapter.keep_cfg_of(student)["blocks"] == keep
    assert torch.equal(student.layer3[1].conv1.weight, model.layer3[1].conv1.weight)
    assert student.layer3[1].conv1.weight is not model.layer3[1].conv1.weight
    with torch.no_grad():
        assert student(torch.randn(1, 3, 32, 32)).shape == (1, NUM_CLASSES)


@pytest.mark.parametrize("ratio", [1.0, -0.1, 1.5, float("nan")])
def test_ratio_outside_unit_interval_is_a_user_error(models, ratio):
    adapter, model = models["resnet18"]
    scores = _scores(adapter, model, range(8))
    with pytest.raises(UserError, match=r"prune ratio r=.* is outside \[0, 1\)"):
        select_blocks_to_prune(scores, adapter, model, ratio)


def test_missing_score_is_a_value_error(models):
    adapter, model = models["resnet18"]
    scores = _scores(adapter, model, range(8))
    del scores["layer3.1"]
    with pytest.raises(ValueError, match="layer3.1"):
        select_blocks_to_prune(scores, adapter, model, 0.5)


@pytest.mark.parametrize("keep,what", [
    ({"layer3": [0, 7]}, "layer3.7"),
    ({"layer2": [1]}, "layer2.0"),
    ({"layer4": []}, "empties stage"),
    ({"layer9": [0]}, "layer9"),
])
def test_invalid_keep_cfg_is_a_user_error(models, keep, what):
    adapter, model = models["resnet18"]
    with pytest.raises(UserError, match=what):
        prune_student(model, adapter, keep, NUM_CLASSES)


def test_keep_cfg_naming_a_block_the_teacher_lost_is_a_user_error(models):
    adapter, model = models["resnet34"]
    pruned_teacher = prune_student(model, adapter, {"layer3": [0, 1]}, NUM_CLASSES)
    with pytest.raises(UserError, match="layer3.2"):
        prune_student(pruned_teacher, adapter, {"layer3": [0, 2]}, NUM_CLASSES)


def test_keep_blocks_after_rejects_unknown_blocks(models):
    adapter, model = models["mobilenet_v2"]
    with pytest.raises(ValueError, match="features.30"):
        keep_blocks_after(adapter, model, ["features.30"])
