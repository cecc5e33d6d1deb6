"""The library owns one vocabulary: a step registered in one place (plus its knob line) is runnable,
compilable, listed by the compress CLI, accepted by space validation and shown by review; knob
names appear only in the knob table and the compiler; hypervolume over any number of objectives."""
import itertools
import re
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from m2mdc.compiler import compile_config, dry_target
from m2mdc.context import Context
from m2mdc.knobs import KNOBS, from_setting
from m2mdc.models import get_adapter
from m2mdc.runner import run_plan
from m2mdc.settings import check_settings, setting
from m2mdc.steps import STEPS, StepSpec, register, unregister
from search.pareto import hypervolume

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture
def noop():
    """A throwaway step with one setting and its knob line, registered through the public API only."""
    calls = []

    @dataclass(frozen=True)
    class NoopSettings:
        strength: float = setting(1.0, "how hard the noop step does nothing", lo=0, hi=10)

        def __post_init__(self):
            check_settings(self)

    def run(r, s):
        calls.append((s.strength, r.state.model is not None))

    register(StepSpec("noop", NoopSettings, run, "does nothing (a test step)"))
    KNOBS["noop_strength"] = from_setting("noop_strength", "noop.strength", adds="noop",
                                          recipes=("fractions", "allocator", "m2mdc"))
    try:
        yield calls
    finally:
        unregister("noop")
        del KNOBS["noop_strength"]
    assert "noop" not in STEPS and "noop_strength" not in KNOBS


def test_a_registered_step_runs_compiles_and_shows_everywhere(noop, digits, capsys):
    teacher = get_adapter("resnet18").base_model(digits.num_classes).eval()
    ctx = Context("resnet18", digits, teacher, torch.device("cpu"))
    _, record = run_plan([{"step": "noop", "strength": 2.5}], ctx, quiet=True, eval_test=False)
    assert noop == [(2.5, True)] and record["steps"][0]["step"] == "noop"

    target = dry_target("resnet18", 10, 32)
    compiled = compile_config({"noop_strength": 3.0}, target, recipe="m2mdc", training={"epochs": 1})
    assert compiled.plan[-1] == {"step": "noop", "strength": 3.0}  # the knob line placed it
    assert compile_config({}, target, recipe="m2mdc").plan[-1]["step"] == "kd"  # at its default: not added

    from m2mdc.cli.compress import main as compress

    with pytest.raises(SystemExit) as e:
        compress(["--help"])
    assert e.value.code == 0
    help_text = capsys.readouterr().out
    assert "--noop-strength" in help_text and "noop: does nothing (a test step) [strength=1.0]" in help_text

    from m2mdc.errors import UserError
    from spaces import parse_space

    space = parse_space({"arch": "resnet18", "params": {"noop_strength": {"low": 0.5, "high": 4.0}}}, "s.yaml")
    assert "noop_strength" in space.sampled_names()
    with pytest.raises(UserError, match="noop_strength: 11 is outside"):
        parse_space({"arch": "resnet18", "params": {"noop_strength": 11}}, "s.yaml")

    from analysis import review

    parent = SimpleNamespace(data=SimpleNamespace(tags={"budget_gmacs": "0.02", "objectives": "val_top1,gmacs"},
                                                  params={}, metrics={"teacher_val_top1": 90.0}))
    trial = {"trial_id": "t1", "run_id": "r1", "status": "completed", "config": {"noop_strength": "3.0"},
             "val_top1": 80.0, "gmacs": 0.01, "test_top1": 79.0, "params": 1e6}
    table, front = review.pareto_table(review.Search("s", parent, [trial]))
    assert front == [trial] and "noop_strength=3" in table


def test_a_registered_recipe_compiles_and_is_a_preset(capsys):
    """A recipe is one module calling register_recipe (m2mdc/recipes/): compile_config dispatches to it and
    the compress CLI offers it as a --preset."""
    from m2mdc.compiler import RECIPES, CompiledPlan, Recipe, kd_step, register_recipe

    def compile_full_width(r):
        cost = r.target.cost
        full = cost.keep_cfg(frozenset(cost.blocks), cost.full_knob_widths)
        return CompiledPlan([kd_step(r.kd)], full, cost.full_gmacs, cost.full_gmacs)

    register_recipe(Recipe("full-width-kd", compile_full_width, "the teacher's architecture, distilled (a test)"))
    try:
        compiled = compile_config({}, dry_target("resnet18", 10, 32), recipe="full-width-kd", training={"epochs": 1})
        assert [s["step"] for s in compiled.plan] == ["kd"] and compiled.gmacs == pytest.approx(0.0372, abs=1e-4)
        from m2mdc.cli.compress import main as compress

        with pytest.raises(SystemExit):
            compress(["--help"])
        assert "full-width-kd" in capsys.readouterr().out
    finally:
        del RECIPES["full-width-kd"]


def test_a_registered_family_is_an_architecture():
    """A family is one module with its adapter and a register_family line (m2mdc/models/): get_adapter finds it."""
    from m2mdc.models import FAMILIES, Family, get_adapter, register_family
    from m2mdc.models.resnet import ResNetAdapter

    register_family(Family("resnet-test", ResNetAdapter, ("resnext101_32x8d_test",)))
    try:
        with pytest.raises(AttributeError):  # found as a family; torchvision has no such builder
            get_adapter("resnext101_32x8d_test")
        with pytest.raises(ValueError, match="registered already"):
            register_family(Family("resnet-again", ResNetAdapter, ("resnet18",)))
    finally:
        del FAMILIES["resnet-test"]


# Knob names that are nothing else (not a step, a step setting or a metric): a config key or
# subscript spelled with one of them outside the knob table and the compiler is vocabulary leaking.
def _knob_only_names():
    from dataclasses import fields

    from m2mdc.objectives import METRICS

    other = set(STEPS) | set(METRICS) | {f.name for s in STEPS.values() for f in fields(s.settings)}
    return sorted(set(KNOBS) - other)


# where knob names may be spelled: the knob table, the compiler, the recipes and what a search reads of them
VOCABULARY_MODULES = ("m2mdc/knobs.py", "m2mdc/compiler", "m2mdc/recipes", "m2mdc/trial_budget.py")


def test_no_knob_name_literal_outside_the_table_and_the_compiler():
    names = _knob_only_names()
    assert {"kd_lr", "prune_ratio", "planes_keep", "mid_keep", "depth_share"} <= set(names)
    pattern = re.compile(r"""(\[\s*|[{,(]\s*)["'](%s)["']\s*(\]|:)""" % "|".join(map(re.escape, names)))
    offenders = []
    for folder in ("m2mdc", "search", "analysis", "benchmarks", "spaces"):
        for path in (REPO / folder).rglob("*.py"):
            if any(path.is_relative_to(REPO / v) for v in VOCABULARY_MODULES):
                continue
            for i, line in enumerate(path.read_text().splitlines(), 1):
                if pattern.search(line):
                    offenders.append(f"{path.relative_to(REPO)}:{i}: {line.strip()}")
    assert not offenders, "\n".join(offenders)


# ---- hypervolume over N objectives, against inclusion-exclusion ------------------------------------

def _exact_hv(points, ref):
    """Union volume of the boxes [p, ref] (minimisation) by inclusion-exclusion: independent of moocore."""
    total = 0.0
    for k in range(1, len(points) + 1):
        for subset in itertools.combinations(points, k):
            corner = [max(p[d] for p in subset) for d in range(len(ref))]
            vol = 1.0
            for c, r in zip(corner, ref):
                vol *= max(0.0, r - c)
            total += (-1) ** (k + 1) * vol
    return total


rows3 = st.lists(st.tuples(st.floats(1, 99), st.floats(0.001, 0.03), st.floats(0.5, 3.0)), min_size=1, max_size=7)


@settings(max_examples=60, deadline=None)
@given(rows=rows3, n_obj=st.sampled_from([2, 3]))
def test_hypervolume_matches_inclusion_exclusion(rows, n_obj):
    objectives = ("val_top1", "gmacs", "latency_ms")[:n_obj]
    refs = {"val_top1": 0.0, "gmacs": 0.02, "latency_ms": 2.0}
    data = [dict(zip(("val_top1", "gmacs", "latency_ms"), r)) for r in rows]
    pts = [[-r["val_top1"], r["gmacs"] / 0.02, r["latency_ms"] / 2.0][:n_obj] for r in data]
    inside = [p for p in pts if all(x < r for x, r in zip(p, [0.0, 1.0, 1.0]))]
    assert hypervolume(data, objectives, refs) == pytest.approx(_exact_hv(inside, [0.0, 1.0, 1.0][:n_obj]),
                                                                rel=1e-9, abs=1e-9)
