"""CostModel: the analytic MAC count equals fvcore's on rebuilt students, and is far faster."""
import time

import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

from m2mdc import metrics
from m2mdc.cost import CostModel
from m2mdc.errors import UserError
from m2mdc.models import get_adapter

from .test_models import BAD_KEEP_CFGS

ARCHS = ["resnet18", "resnet34", "resnet50", "mobilenet_v2"]
NC = 10
_COST = {}


def cost_model(arch, res=32):
    if (arch, res) not in _COST:
        _COST[arch, res] = CostModel(get_adapter(arch), NC, res)
    return _COST[arch, res]


def fvcore_gmacs(cm, cfg, res=32):
    return metrics.gmacs(cm.adapter.rebuild(cfg, NC), res)


def draw_keep_cfg(cm, data):
    """A random valid keep_cfg: random free blocks dropped, random planes / mid widths."""
    a = cm.adapter
    cfg = {"blocks": {}, "planes": {}, "mid": {}}
    for stage, names in cm.stage_blocks.items():
        kept = [a.block_index(n) for n in names if n in cm.protected or data.draw(st.booleans())]
        cfg["blocks"][stage] = kept or [a.block_index(names[data.draw(st.integers(0, len(names) - 1))])]
    kept_names = {a.block_name(s, i) for s, idxs in cfg["blocks"].items() for i in idxs}
    for knob, full in cm.full_knob_widths.items():
        kind, _, owner = knob.partition(":")
        if kind == "mid" and owner not in kept_names:
            continue
        if data.draw(st.booleans()):  # leave some entries out: "missing means full width"
            cfg[kind][owner] = data.draw(st.integers(1, full))
    return cfg


@pytest.mark.parametrize("arch", ARCHS)
def test_full_model_equals_fvcore(arch):
    cm = cost_model(arch)
    full = metrics.gmacs(cm.adapter.base_model(NC))
    assert cm.full_gmacs == pytest.approx(full, rel=1e-9)
    assert cm.gmacs(None) == cm.gmacs({}) == cm.full_gmacs


@pytest.mark.parametrize("arch", ARCHS)
@settings(max_examples=3, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_random_keep_cfgs_equal_fvcore(arch, data):
    cm = cost_model(arch)
    cfg = draw_keep_cfg(cm, data)
    cm.adapter.validate_keep_cfg(cfg, NC)
    assert cm.gmacs(cfg) == pytest.approx(fvcore_gmacs(cm, cfg), rel=1e-9)


def test_other_resolution_and_classes():
    cm = CostModel(get_adapter("mobilenet_v2"), 100, 64)
    cfg = {"blocks": {"stage3": [0], "stage6": [0, 2]}, "planes": {"stage2": 7, "stage7": 100},
           "mid": {"features.4": 3, "features.16": 500}}
    assert cm.gmacs(cfg) == pytest.approx(metrics.gmacs(cm.adapter.rebuild(cfg, 100), 64), rel=1e-9)


@pytest.mark.parametrize("arch", ARCHS)
def test_min_gmacs_is_the_minimal_rebuild(arch):
    cm = cost_model(arch)
    cfg = cm.min_keep_cfg()
    cm.adapter.validate_keep_cfg(cfg, NC)
    assert all(w == 1 for kind in ("planes", "mid") for w in cfg[kind].values())
    assert set(cfg["planes"]) == set(cm.stage_blocks)
    for stage, names in cm.stage_blocks.items():
        prot = [cm.adapter.block_index(n) for n in names if n in cm.protected]
        assert cfg["blocks"][stage] == (prot or cfg["blocks"][stage]) and len(cfg["blocks"][stage]) == max(1, len(prot))
    assert cm.min_gmacs() == pytest.approx(fvcore_gmacs(cm, cfg), rel=1e-9)
    assert 0 < cm.min_gmacs() < cm.full_gmacs


def test_incremental_prices_agree_with_full_sums():
    cm = cost_model("resnet50")
    kept, widths = cm.resolve({"blocks": {"layer3": [0, 2, 5]}, "planes": {"layer2": 100}, "mid": {"layer3.2": 9}})
    base = cm.macs_of(kept, widths)
    for knob in ("planes:layer2", "planes:layer3", "mid:layer3.2", "mid:layer1.0"):
        new = max(1, widths.get(knob, cm.full_knob_widths[knob]) // 3)
        assert cm.knob_delta(kept, widths, knob, new) == cm.macs_of(kept, {**widths, knob: new}) - base
    assert cm.block_macs("layer3.2", widths) == base - cm.macs_of(kept - {"layer3.2"}, widths)
    kept2, widths2 = cm.resolve(cm.keep_cfg(kept, widths))  # explicit keep_cfg round-trips
    assert kept2 == kept and widths2 == {k: widths.get(k, w) for k, w in cm.full_knob_widths.items()
                                         if cm.knob_block[k] in (None, *kept)}
    assert cm.macs(cm.keep_cfg(kept, widths)) == base


@pytest.mark.parametrize("cfg,msg", BAD_KEEP_CFGS + [
    ({"planes": {"layer1": 65}}, "must be in"),
    ({"blocks": {"layer1": [0]}, "mid": {"layer1.1": 4}}, "removes"),
])
def test_bad_keep_cfg_is_a_user_error(cfg, msg):
    with pytest.raises(UserError, match=msg):
        cost_model("resnet18").gmacs(cfg)


def test_much_faster_than_fvcore():
    cm = cost_model("resnet18")
    cfg = {"blocks": {"layer1": [1], "layer3": [0]}, "planes": {"layer2": 77}, "mid": {"layer1.1": 5, "layer4.1": 300}}
    t0 = time.perf_counter()
    ref = fvcore_gmacs(cm, cfg)
    t_fv = time.perf_counter() - t0
    n = 200
    t0 = time.perf_counter()
    for _ in range(n):
        got = cm.gmacs(cfg)
    t_cm = (time.perf_counter() - t0) / n
    assert got == pytest.approx(ref, rel=1e-9)
    assert t_fv / t_cm >= 100, f"CostModel {t_cm * 1e6:.0f} us vs fvcore {t_fv * 1e3:.0f} ms"


@pytest.mark.parametrize("arch, budget", [("resnet18", 0.02), ("mobilenet_v2", 0.004)])
def test_depth_latency_rows_spend_the_budget_on_fewer_blocks(arch, budget):
    """benchmarks/depth_latency.py times these rows; what they are is checked here, untimed: one row per
    number of blocks, each within the budget by fvcore's count, transition blocks and a block per stage
    kept, and the Torch-Pruning-like reference at full depth."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("depth_latency", "benchmarks/depth_latency.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    rows, adapter = bench.architectures(arch, NC, 32, budget)
    teacher, *edited, floor = rows
    model = adapter.base_model(NC)
    total = len(adapter.blocks(model))
    protected = {b for b in adapter.blocks(model) if adapter.is_protected(model, b)}
    assert teacher["blocks"] == total and edited[0]["blocks"] == total and edited[0]["name"].startswith("Torch-Pruning")
    assert [r["blocks"] for r in edited] == sorted({r["blocks"] for r in edited}, reverse=True)
    assert floor["blocks"] == edited[-1]["blocks"] < total
    for r in edited + [floor]:
        kept = {adapter.block_name(s, i) for s, idx in r["keep_cfg"]["blocks"].items() for i in idx}
        assert protected <= kept and all(r["keep_cfg"]["blocks"].values())
        assert r["gmacs"] == pytest.approx(metrics.gmacs(adapter.rebuild(r["keep_cfg"], NC), 32), rel=1e-6)
        assert r["gmacs"] <= budget * (1 + 1e-9)
    assert metrics.gmacs(adapter.rebuild(teacher["keep_cfg"], NC), 32) > budget


def test_depth_latency_config_rows_are_built_as_a_trial_builds_them():
    """--config rows (a front member's knob values, per-stage planes as a trial's config holds them) come
    after the ladder, labelled, with the architecture the compiler builds at the budget (widths projected
    down when over it), recounted by fvcore; an INT8 plan or a per-stage object missing a stage is one
    clear error, since the benchmark times FP32 and stages are the model's."""
    import importlib.util

    from m2mdc.compiler import compile_config, dry_target
    from m2mdc.errors import UserError

    spec = importlib.util.spec_from_file_location("depth_latency", "benchmarks/depth_latency.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    member = {"prune_ratio": 0.92, "planes_keep": {"layer1": 0.85, "layer2": 0.43, "layer3": 0.71, "layer4": 0.89},
              "mid_keep": 0.78}
    wide = {"prune_ratio": 0.0, "planes_keep": 1.0, "mid_keep": 0.9}  # over 0.02 GMACs: projected down
    plain, _ = bench.architectures("resnet18", NC, 32, 0.02)
    rows, adapter = bench.architectures("resnet18", NC, 32, 0.02, {"member": member, "wide": wide})
    assert [r["name"] for r in rows] == [r["name"] for r in plain] + ["member (--config)", "wide (--config)"]
    target = dry_target("resnet18", NC, 32)
    for row, config in zip(rows[-2:], (member, wide)):
        plan = compile_config(config, target, budget_gmacs=0.02)
        assert row["keep_cfg"] == plan.keep_cfg and row["gmacs"] == plan.gmacs <= 0.02
        assert row["gmacs"] == pytest.approx(metrics.gmacs(adapter.rebuild(row["keep_cfg"], NC), 32), rel=1e-6)
    assert rows[-2]["blocks"] == 4 and rows[-2]["width_scale"] == 1.0 and rows[-2]["gmacs"] < 0.012
    assert rows[-1]["blocks"] == 8 and rows[-1]["width_scale"] < 1.0
    with pytest.raises(UserError, match="ships INT8"):
        bench.architectures("resnet18", NC, 32, 0.02, {"q": {"qat": True}})
    with pytest.raises(UserError, match="must name every stage"):
        bench.architectures("resnet18", NC, 32, 0.02, {"s": {"planes_keep": {"layer1": 0.5}}})


def test_counting_macs_raises_no_deprecation_warning_in_a_fresh_process():
    """fvcore.nn's package import scripts its focal losses (torch.jit.script: a FutureWarning on torch >= 2.10)
    and printed it inside every trial; m2mdc.metrics imports it with that one warning silenced."""
    import subprocess
    import sys

    code = ("import torchvision, m2mdc.metrics as m; "
            "print(m.gmacs(torchvision.models.resnet18(num_classes=100), 32))")
    r = subprocess.run([sys.executable, "-W", "error::FutureWarning", "-c", code], capture_output=True, text=True,
                       timeout=300)
    assert r.returncode == 0 and "FutureWarning" not in r.stderr, r.stderr[-2000:]
    assert float(r.stdout) == pytest.approx(0.0372, abs=1e-4)
