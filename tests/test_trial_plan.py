"""Config -> plan: every sampled configuration trains a model within the budget, known before training."""
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from m2mdc import metrics
from m2mdc.cost import CostModel
from m2mdc.models import get_adapter
from m2mdc.compiler import Target, compile_config
from m2mdc.steps import validate_plan

ADAPTER = get_adapter("resnet18")
TEACHER = ADAPTER.base_model(10)
COST = CostModel(ADAPTER, 10, 32)
# Deterministic, distinct block scores (the plan only needs an order of the blocks).
SCORES = {b: float((i * 7) % 11) + i / 100 for i, b in enumerate(ADAPTER.blocks(TEACHER))}
KD = {"epochs": 1, "steps_per_epoch": 2}

frac = st.floats(0.05, 1.0)
configs = st.fixed_dictionaries({
    "prune_ratio": st.floats(0.0, 0.99),
    "planes_keep": st.fixed_dictionaries({s: frac for s in ("layer1", "layer2", "layer3", "layer4")}),
    "mid_keep": frac,
    "order": st.sampled_from(["bpm", "bmp", "pbm", "pmb", "mbp", "mpb"]),
    "signal": st.sampled_from(["bn", "l1", "mi"]),
    "alpha": st.floats(0, 0.5), "beta": st.floats(0, 0.5), "kd_lr": st.floats(1e-5, 1e-3),
    "qat": st.booleans(), "sparsity": st.sampled_from([0.0, 0.3]), "tail_order": st.sampled_from(["sq", "qs"]),
})


def plan_for(cfg, budget):
    return compile_config(cfg, Target(ADAPTER, TEACHER, COST, SCORES), budget_gmacs=budget, training=KD)


@settings(max_examples=60, deadline=None)
@given(cfg=configs, budget=st.floats(0.003, 0.04))
def test_plans_fit_the_budget_and_validate(cfg, budget):
    tp = plan_for(cfg, budget)
    if not tp.feasible:
        assert tp.gmacs > budget and not tp.plan
        return
    assert tp.gmacs <= budget
    assert COST.gmacs(tp.keep_cfg) == tp.gmacs
    assert tp.width_scale == 1.0 or tp.sampled_gmacs > budget  # only over-budget configurations are projected
    plan = validate_plan(tp.plan, "resnet18", 10)  # a legal plan: structural steps, then sparsity / QAT
    names = [s["step"] for s in plan]
    assert names.count("qat") == int(cfg["qat"])
    assert names.count("sparsity") == int(cfg["sparsity"] > 0)
    protected = set(ADAPTER.protected_blocks(TEACHER))
    kept = {ADAPTER.block_name(s, i) for s, idx in tp.keep_cfg["blocks"].items() for i in idx}
    assert protected <= kept


@pytest.mark.parametrize("budget", [0.006, 0.012, 0.02])
def test_fvcore_recount_of_the_planned_architecture(budget):
    cfg = {"prune_ratio": 0.3, "planes_keep": {"layer1": 1.0, "layer2": 0.9, "layer3": 0.8, "layer4": 0.7},
           "mid_keep": 0.9, "order": "bpm", "signal": "bn", "alpha": 0.1, "beta": 0.1, "kd_lr": 1e-4, "qat": False,
           "sparsity": 0.0}
    tp = plan_for(cfg, budget)
    assert tp.projected and tp.sampled_gmacs > budget
    assert metrics.gmacs(ADAPTER.rebuild(tp.keep_cfg, 10), 32) == pytest.approx(tp.gmacs, abs=1e-12)
    assert tp.gmacs <= budget
    # the projection is the largest common scale that fits: 5% more width would not
    from m2mdc.compiler import fraction_widths as _widths

    kept = frozenset(ADAPTER.block_name(s, i) for s, idx in tp.keep_cfg["blocks"].items() for i in idx)
    wider = _widths(COST, cfg["planes_keep"], cfg["mid_keep"], tp.width_scale + 0.05)
    assert COST.macs_of(kept, wider) > budget * 1e9


def test_full_model_within_budget_gets_one_kd_pass():
    cfg = {"prune_ratio": 0.0, "planes_keep": 1.0, "mid_keep": 1.0, "order": "bpm", "signal": "bn", "alpha": 0.1,
           "beta": 0.1, "kd_lr": 1e-4, "qat": False, "sparsity": 0.0}
    tp = plan_for(cfg, 1.0)
    assert [s["step"] for s in tp.plan] == ["kd"] and not tp.projected


def test_order_controls_the_structural_sequence():
    cfg = {"prune_ratio": 0.5, "planes_keep": 0.5, "mid_keep": 0.5, "signal": "bn", "alpha": 0.1, "beta": 0.1,
           "kd_lr": 1e-4, "qat": True, "sparsity": 0.3, "tail_order": "qs"}
    a = [s["step"] for s in plan_for({**cfg, "order": "bpm"}, 1.0).plan]
    b = plan_for({**cfg, "order": "mpb"}, 1.0).plan
    assert a == ["block_prune", "kd", "widths", "kd", "widths", "kd", "qat", "kd", "sparsity", "kd"]
    assert [s["step"] for s in b][:5] == ["widths", "kd", "widths", "kd", "block_prune"]
    assert "mid" in b[0]["keep_cfg"] and "planes" in b[2]["keep_cfg"]


def test_one_shot_plan_has_one_kd_step_with_all_epochs():
    cfg = {"prune_ratio": 0.5, "planes_keep": 0.6, "mid_keep": 0.6, "order": "bpm", "signal": "bn", "qat": False,
           "sparsity": 0.0, "schedule": "one-shot"}
    progressive = plan_for({**cfg, "schedule": "progressive"}, 1.0)
    one_shot = plan_for(cfg, 1.0)
    assert [s["step"] for s in one_shot.plan] == ["block_prune", "widths", "widths", "kd"]
    kd_epochs = [s["epochs"] for s in one_shot.plan if s["step"] == "kd"]
    assert kd_epochs == [sum(s["epochs"] for s in progressive.plan if s["step"] == "kd")] == [3 * KD["epochs"]]
    assert one_shot.keep_cfg == progressive.keep_cfg and one_shot.reports == progressive.reports


@settings(max_examples=25, deadline=None)
@given(budget=st.floats(0.005, 0.02), prune=st.sampled_from([0.0, 0.4]))
def test_global_ranking_keeps_different_fractions_per_stage_and_meets_the_budget(budget, prune):
    """Global ranking: one threshold over every channel's group-L1 importance divided by its group's mean
    (recomputed here independently from the scores), projected to the budget."""
    torch = pytest.importorskip("torch")
    from m2mdc.compiler import Target

    gen = torch.Generator().manual_seed(3)
    widths = ADAPTER.group_widths(TEACHER)
    # groups whose importance is spread differently, as training makes them
    scores = {g: torch.rand(w, generator=gen) ** (1 + 3 * (i % 3)) for i, (g, w) in enumerate(widths.items())
              if g.split(":")[0] in ("planes", "mid", "mid2")}
    target = Target(ADAPTER, TEACHER, COST, SCORES, {"group_l1": scores})
    cfg = {"prune_ratio": prune, "planes_keep": 1.0, "mid_keep": 1.0, "signal": "bn", "qat": False, "sparsity": 0.0,
           "schedule": "one-shot", "ranking": "global"}
    tp = compile_config(cfg, target, budget_gmacs=budget, training=KD)
    assert tp.feasible and tp.gmacs <= budget and COST.gmacs(tp.keep_cfg) == tp.gmacs
    planes = {s: w / COST.full_knob_widths[f"planes:{s}"] for s, w in tp.keep_cfg["planes"].items()}
    assert len({round(f, 3) for f in planes.values()}) > 1  # not one uniform ratio
    kept_blocks = {ADAPTER.block_name(s, i) for s, idx in tp.keep_cfg["blocks"].items() for i in idx}
    got = {f"planes:{s}": w for s, w in tp.keep_cfg["planes"].items()}
    got.update({f"mid:{b}": w for b, w in tp.keep_cfg["mid"].items() if b in kept_blocks})
    norm = {k: scores[k] / scores[k].mean() for k in got}
    order = torch.cat([v for v in norm.values()]).sort(descending=True).values
    threshold = order[sum(got.values()) - 1]
    for k, w in got.items():  # the widths are what one global threshold keeps (at least one channel each)
        assert w == max(1, int((norm[k] >= threshold).sum())), k
    assert all(s["signal"] == "group_l1" for s in tp.plan if s["step"] == "widths")


@settings(max_examples=25, deadline=None)
@given(data=st.data(), budget=st.floats(0.008, 0.03))
def test_width_local_space_trains_full_depth_one_shot_group_l1_plans(data, budget):
    """spaces/width-local.yaml, the neighbourhood of the Torch-Pruning-like baselines: every configuration
    it can sample keeps every block, prunes channels by group-L1 and trains one repair carrying every edit's
    epochs (both edits whenever the budget projects the widths, as at 0.02 GMACs), so its trials differ in
    width allocation, ranking scope and KD loss, not in training; its
    seeded trials are exactly the two Torch-Pruning-like baselines (the others are named as skipped)."""
    torch = pytest.importorskip("torch")
    from analysis.finalize import config_of
    from search.frontier import seeded_points
    from spaces import load_space

    space = load_space("width-local", arch="resnet18")
    points, skipped = seeded_points(space)
    assert set(points) == {"Torch-Pruning-like local", "Torch-Pruning-like global"}
    assert len(skipped) == 3 and all("skipped" in s for s in skipped)
    assert any("removes no blocks" in s for s in skipped)  # prune_ratio fixed at 0: no shallowest point
    flat = {name: p.fixed if not p.sampled else data.draw(
        st.sampled_from(p.choices) if p.choices is not None else st.floats(p.low, p.high), label=name)
        for name, p in space.params.items()}
    cfg = config_of(flat)  # knob/stage names nest, as a trial's MLflow params do
    gen = torch.Generator().manual_seed(5)
    scores = {g: torch.rand(w, generator=gen) for g, w in ADAPTER.group_widths(TEACHER).items()
              if g.split(":")[0] in ("planes", "mid", "mid2")}
    tp = compile_config(cfg, Target(ADAPTER, TEACHER, COST, SCORES, {"group_l1": scores}), budget_gmacs=budget,
                        training=KD)
    assert tp.feasible and tp.gmacs <= budget and COST.gmacs(tp.keep_cfg) == tp.gmacs
    kept = {ADAPTER.block_name(s, i) for s, idx in tp.keep_cfg["blocks"].items() for i in idx}
    assert kept == set(ADAPTER.blocks(TEACHER))
    edits = [s for s in tp.plan if s["step"] == "widths"]
    # planes and mid each cut once; a width the configuration leaves whole (keep 1.0, under the budget) is no edit
    assert [s["step"] for s in tp.plan] == ["widths"] * len(edits) + ["kd"] and 1 <= len(edits) <= 2
    assert all(s["signal"] == "group_l1" for s in edits)
    assert tp.plan[-1]["epochs"] == len(edits) * KD["epochs"]


def plan_both(cfg, budget):
    return compile_config(cfg, Target(ADAPTER, TEACHER, COST, SCORES), budget_gmacs=budget, training=KD,
                          project="both")


@settings(max_examples=60, deadline=None)
@given(cfg=configs, budget=st.floats(0.004, 0.03), share=st.floats(0.3, 1.0))
def test_projection_both_ways_reaches_the_cost_target_within_two_percent(cfg, budget, share):
    """project="both" (a search's default): every feasible configuration ends at or under its cost target
    (budget x cost_target) and within 2 % of it, whether its widths were scaled down or up, unless every
    width is already the teacher's (then it stays at the cost it reaches). fvcore recounts the cost."""
    tp = plan_both({**cfg, "cost_target": share}, budget)
    target = budget * share
    assert tp.target_gmacs == pytest.approx(target)
    if not tp.feasible:
        assert tp.gmacs > target and not tp.plan
        return
    assert tp.gmacs <= target
    assert tp.gmacs >= 0.98 * target or tp.full_width, (tp.gmacs, target, tp.width_scale)
    assert tp.under_target == (tp.gmacs < 0.98 * target)
    assert metrics.gmacs(ADAPTER.rebuild(tp.keep_cfg, 10), 32) == pytest.approx(tp.gmacs, abs=1e-12)


def test_a_deep_cut_under_its_target_at_full_width_stays_at_full_width():
    """The deepest cut (one block per stage) at the teacher's widths costs less than a generous target:
    it is recorded at the cost it reaches, never stretched past full width."""
    cfg = {"prune_ratio": 0.95, "planes_keep": 0.6, "mid_keep": 0.7}
    tp = plan_both(cfg, 0.03)
    assert tp.full_width and tp.under_target and tp.width_scale > 1
    assert tp.keep_cfg["planes"] == plan_for({**cfg, "planes_keep": 1.0, "mid_keep": 1.0}, None).keep_cfg["planes"]
    assert tp.gmacs < 0.03 and COST.gmacs(tp.keep_cfg) == tp.gmacs
    down = plan_for(cfg, 0.03)  # "down" leaves it where the fractions put it
    assert down.width_scale == 1.0 and down.gmacs < tp.gmacs


def test_shape_alone_sets_the_architecture_at_a_given_cost():
    """Two configurations that differ only in the overall level of their fractions (same shape) reach the
    same target at nearly the same architecture: the fractions describe shape, the target sets cost."""
    shape = {"layer1": 1.0, "layer2": 0.8, "layer3": 0.6, "layer4": 0.4}
    narrow = plan_both({"prune_ratio": 0.3, "planes_keep": {k: v * 0.5 for k, v in shape.items()}, "mid_keep": 0.4},
                       0.02)
    wide = plan_both({"prune_ratio": 0.3, "planes_keep": shape, "mid_keep": 0.8}, 0.02)
    assert narrow.width_scale > 1 > wide.width_scale or narrow.width_scale > wide.width_scale
    assert narrow.gmacs == pytest.approx(wide.gmacs, rel=0.02) and narrow.gmacs <= 0.02
