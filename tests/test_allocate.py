"""Budget allocation: fits the budget tightly, respects protection, follows the signals; its CLI."""
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from hypothesis import given, settings, strategies as st

from m2mdc import metrics
from m2mdc.allocate import allocate, allocation_plan
from m2mdc.cost import CostModel
from m2mdc.errors import UserError
from m2mdc.models import get_adapter
from m2mdc.steps import validate_plan
from m2mdc.slicing import channel_scores

ROOT = Path(__file__).resolve().parents[1]
NC = 10
A = get_adapter("resnet18")
PROTECTED = ["layer2.0", "layer3.0", "layer4.0"]
FREE = ["layer1.0", "layer1.1", "layer2.1", "layer3.1", "layer4.1"]


@pytest.fixture(scope="module")
def setup():
    torch.manual_seed(0)
    model = A.base_model(NC).eval()
    groups = [g for g in A.group_widths(model) if g.partition(":")[0] in ("planes", "mid", "mid2")]
    scores = channel_scores(model, A, groups, "bn")
    # untrained BN gammas are all 1: give them some spread, as training does
    gen = torch.Generator().manual_seed(1)
    scores = {g: s * torch.rand(len(s), generator=gen).add(0.05) for g, s in scores.items()}
    cost = CostModel(A, NC, 32)
    return model, scores, cost


def block_scores(**override):
    s = {b: 0.2 + 0.01 * i for i, b in enumerate(A.blocks(A.base_model(NC)))}
    return {**s, **override}


def run(setup, budget, bs=None, **kw):
    model, scores, cost = setup
    return allocate(A, model, budget, NC, 32, bs or block_scores(), scores, cost=cost, **kw)


def fvcore(cfg):
    return metrics.gmacs(A.rebuild(cfg, NC), 32)


def check_valid(res, budget):
    cfg = A.validate_keep_cfg(res["keep_cfg"], NC)
    for b in PROTECTED:
        assert A.block_index(b) in cfg["blocks"][A.stage_of(b)] and b not in res["removed_blocks"]
    assert all(cfg["blocks"][s] for s in ("layer1", "layer2", "layer3", "layer4"))
    fv = fvcore(res["keep_cfg"])
    assert res["gmacs"] == pytest.approx(fv, rel=1e-9)
    assert fv <= budget
    return fv


@pytest.mark.parametrize("budget", [0.02, 0.01, 0.005])
def test_meets_budget_tightly(setup, budget):
    res = run(setup, budget)
    fv = check_valid(res, budget)
    assert fv >= 0.95 * budget
    assert res["steps"] > 0 and res["removed_blocks"]
    assert res == run(setup, budget)  # deterministic


@settings(max_examples=4, deadline=None)
@given(scores=st.lists(st.floats(0, 1), min_size=8, max_size=8), frac=st.floats(0.1, 0.9),
       depth_share=st.floats(0, 1))
def test_random_scores_budgets_and_depth_shares(setup, scores, frac, depth_share):
    bs = dict(zip(A.blocks(setup[0]), scores))
    budget = round(frac * setup[2].full_gmacs, 6)
    res = run(setup, budget, bs, depth_share=depth_share)
    assert check_valid(res, budget) >= 0.95 * budget


def test_protected_blocks_are_never_removed(setup):
    bs = block_scores(**{b: 0.0 for b in PROTECTED})  # the least informative, yet untouchable
    res = run(setup, 0.004, bs, depth_share=1.0)
    check_valid(res, 0.004)
    assert set(res["removed_blocks"]) <= set(FREE)
    assert len(res["keep_cfg"]["blocks"]["layer1"]) == 1  # layer1 has no protected block: one stays


@pytest.mark.parametrize("low", FREE)
def test_lowest_scoring_block_goes_first(setup, low):
    # one block's worth of MACs to remove by depth: it must be the uninformative block
    res = run(setup, 0.03, block_scores(**{low: 1e-4}), depth_share=0.5)
    assert res["removed_blocks"] == [low]
    high = "layer3.1" if low != "layer3.1" else "layer2.1"
    res = run(setup, 0.02, block_scores(**{low: 1e-4, high: 10.0}), depth_share=0.5)
    assert low in res["removed_blocks"] and high not in res["removed_blocks"]


def test_depth_share_trades_depth_for_width(setup):
    removed = [len(run(setup, 0.012, depth_share=d)["removed_blocks"]) for d in (0.0, 0.5, 1.0)]
    assert removed[0] == 0 and removed[0] <= removed[1] <= removed[2] and removed[2] >= 3
    wide = run(setup, 0.012, depth_share=1.0)
    assert wide["depth_removed_gmacs"] <= wide["full_gmacs"] - 0.012


def test_min_keep_bounds_width_cuts(setup):
    res = run(setup, 0.01, min_keep=0.25)
    for knob, (w, full) in res["width_cuts"].items():
        assert w >= 0.25 * full, knob


def test_budget_at_minimum_and_above_full(setup):
    cost = setup[2]
    res = run(setup, cost.min_gmacs())
    assert check_valid(res, cost.min_gmacs()) == pytest.approx(cost.min_gmacs(), rel=1e-9)
    res = run(setup, 1.0)
    assert res["gmacs"] == cost.full_gmacs and res["removed_blocks"] == [] and res["steps"] == 0
    assert allocation_plan(res, "bn", {"epochs": 1}) == [{"step": "kd", "epochs": 1}]


@pytest.mark.parametrize("budget", [0.00001, 0.0, -1.0, float("nan")])
def test_budget_below_minimum_is_a_user_error(setup, budget):
    with pytest.raises(UserError, match=r"(below the smallest resnet18 this can build \(0\.0000\d+ GMACs\); "
                                        r"raise --budget-gmacs|not finite)"):
        run(setup, budget)


def test_bad_inputs(setup):
    with pytest.raises(UserError, match="depth_share"):
        run(setup, 0.01, depth_share=1.5)
    with pytest.raises(ValueError, match="miss"):
        run(setup, 0.01, {"layer1.0": 1.0})
    with pytest.raises(ValueError, match="already pruned"):
        allocate(A, A.rebuild({"blocks": {"layer1": [0]}}, NC), 0.01, NC, 32, block_scores(), setup[1])


def test_plan_realises_the_allocation(setup):
    res = run(setup, 0.01)
    plan = allocation_plan(res, "l1", {"epochs": 2})
    assert [s["step"] for s in plan] == ["block_prune", "kd", "widths", "kd"]
    assert plan[0]["keep_blocks"] == res["keep_cfg"]["blocks"] and plan[2]["signal"] == "l1"
    validate_plan(plan, "resnet18", NC)
    with pytest.raises(UserError, match="signal"):
        allocation_plan(res, "entropy", {})


def _cli(*args, out_dir):
    return subprocess.run([sys.executable, "-m", "m2mdc.allocate", "--arch", "resnet18",
                           "--dataset", "digits", "--epochs", "1", "--out-dir", str(out_dir), *args],
                          capture_output=True, text=True, cwd=ROOT, timeout=600)


def test_cli_allocates_within_budget(tmp_path):
    r = _cli("--budget-gmacs", "0.02", "--probe-samples", "300", out_dir=tmp_path)
    assert r.returncode == 0, r.stderr[-2000:]
    m = re.search(r"GMACs ([0-9.]+) \(fvcore recount", r.stdout)
    assert m and float(m.group(1)) <= 0.02, r.stdout
    assert "layer2.0" not in r.stdout.split("removed blocks:")[1].splitlines()[0]


def test_cli_bad_budget_is_one_line(tmp_path):
    r = _cli("--budget-gmacs", "0.000001", out_dir=tmp_path)
    assert r.returncode == 2 and r.stdout == ""
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and "below the smallest resnet18" in lines[0], r.stderr
    assert not (tmp_path / "teachers").exists()  # rejected before any teacher training
