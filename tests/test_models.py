"""Adapters: blocks, stages, protection, rebuild, and MACs recounted independently."""
import pytest
import torch
from hypothesis import given, settings, strategies as st
from torch import nn

from m2mdc import metrics
from m2mdc.errors import UserError
from m2mdc.models import get_adapter

EXPECTED = {
    "resnet18": (8, ["layer2.0", "layer3.0", "layer4.0"], [2, 2, 2, 2]),
    "resnet34": (16, ["layer2.0", "layer3.0", "layer4.0"], [3, 4, 6, 3]),
    "resnet50": (16, ["layer1.0", "layer2.0", "layer3.0", "layer4.0"], [3, 4, 6, 3]),
    "mobilenet_v2": (17, ["features.1", "features.2", "features.4", "features.7", "features.11",
                          "features.14", "features.17"], [1, 2, 3, 4, 3, 3, 1]),
}
_BASES = {}


def base(arch, nc=100):
    if (arch, nc) not in _BASES:
        _BASES[arch, nc] = get_adapter(arch).base_model(nc).eval()
    return _BASES[arch, nc]


def hooked_macs(model: nn.Module, resolution=32) -> float:
    """Independent count read off tensor shapes with forward hooks, using fvcore's conventions:
    conv/linear one MAC per multiply-add, eval-mode affine batch-norm 2 per element, adaptive
    average pooling 1 per input element."""
    total = 0

    def bn_hook(m, inp, out):
        nonlocal total
        total += 2 * out.numel()

    def pool_hook(m, inp, out):
        nonlocal total
        total += inp[0].numel()

    def conv_hook(m, inp, out):
        nonlocal total
        total += out.numel() * (m.in_channels // m.groups) * m.kernel_size[0] * m.kernel_size[1]

    def lin_hook(m, inp, out):
        nonlocal total
        total += out.numel() * m.in_features

    kinds = {nn.Conv2d: conv_hook, nn.Linear: lin_hook, nn.BatchNorm2d: bn_hook, nn.AdaptiveAvgPool2d: pool_hook}
    hs = [m.register_forward_hook(kinds[type(m)]) for m in model.modules() if type(m) in kinds]
    if not any(isinstance(m, nn.AdaptiveAvgPool2d) for m in model.modules()):
        # MobileNetV2 pools with the functional op right after `features`
        hs.append(model.features.register_forward_hook(lambda m, i, o: pool_hook(m, (o,), None)))
    with torch.no_grad():
        model.eval()(torch.zeros(1, 3, resolution, resolution))
    for h in hs:
        h.remove()
    return total / 1e9


@pytest.mark.parametrize("arch", list(EXPECTED))
def test_blocks_stages_protection(arch):
    n_blocks, protected, per_stage = EXPECTED[arch]
    a = get_adapter(arch)
    m = base(arch)
    assert len(a.blocks(m)) == n_blocks
    assert a.protected_blocks(m) == protected
    assert [len(v) for v in a.blocks_by_stage(m).values()] == per_stage
    for name in a.blocks(m):
        assert a.block_name(a.stage_of(name), a.block_index(name)) == name


def test_paper_anchor_gmacs():
    assert metrics.gmacs(base("resnet18")) == pytest.approx(0.0372, abs=5e-5)
    assert metrics.gmacs(base("resnet34")) == pytest.approx(0.0750, abs=5e-5)


@pytest.mark.parametrize("arch", list(EXPECTED))
def test_fvcore_matches_independent_count_on_full_model(arch):
    m = base(arch)
    assert metrics.gmacs(m) == pytest.approx(hooked_macs(m), rel=1e-9)


def random_keep_cfg(a, m, draw_frac, draw_bool):
    cfg = {"blocks": {}, "planes": {}, "mid": {}}
    for stage, names in a.blocks_by_stage(m).items():
        kept = [a.block_index(n) for n in names if a.is_protected(m, n) or draw_bool()]
        cfg["blocks"][stage] = kept or [a.block_index(names[0])]
    widths = a.group_widths(m)
    for g, w in widths.items():
        kind, _, owner = g.partition(":")
        if kind == "planes":
            cfg["planes"][owner] = max(1, int(w * draw_frac()))
        elif kind == "mid" and a._block_kept(owner, cfg):
            cfg["mid"][owner] = max(1, int(w * draw_frac()))
    return cfg


@pytest.mark.parametrize("arch", list(EXPECTED))
@settings(max_examples=4, deadline=None)
@given(data=st.data())
def test_rebuild_runs_and_macs_match_fresh_count(arch, data):
    a = get_adapter(arch)
    m = base(arch)
    cfg = random_keep_cfg(a, m, lambda: data.draw(st.floats(0.05, 1.0)), lambda: data.draw(st.booleans()))
    cfg = a.validate_keep_cfg(cfg, 100)
    r = a.rebuild(cfg, 100).eval()
    a.check_invariants(r)
    assert r(torch.randn(2, 3, 32, 32)).shape == (2, 100)
    assert a.keep_cfg_of(r) == {**cfg, "blocks": {s: v for s, v in cfg["blocks"].items()}}
    assert metrics.gmacs(r) == pytest.approx(hooked_macs(r), rel=1e-9)
    # a second rebuild of the same keep_cfg is the same architecture (MACs recounted from scratch)
    assert metrics.gmacs(a.rebuild(cfg, 100)) == metrics.gmacs(r)


@pytest.mark.parametrize("arch", ["resnet18", "mobilenet_v2"])
def test_slice_keeps_selected_weights(arch):
    a = get_adapter(arch)
    m = base(arch)
    widths = a.group_widths(m)
    g = next(k for k in widths if k.startswith("planes:"))
    idx = torch.tensor([0, 3, 5])
    s = a.slice(m, {g: idx}, 100)
    a.check_invariants(s)
    mods = dict(m.named_modules())
    for name, (g_out, _) in a.channel_groups(m).items():
        if g_out == g and isinstance(mods[name], nn.BatchNorm2d):
            assert torch.equal(s.get_submodule(name).weight, mods[name].weight[idx])


def test_head_sized_to_classes():
    for arch in EXPECTED:
        m = base(arch, 10)
        assert m.get_submodule(get_adapter(arch).head_name).out_features == 10


# invalid resnet18 keep_cfgs and the words their error must contain (also used by test_cost)
BAD_KEEP_CFGS = [
    ({"blocks": {"layer3": [0, 7]}}, "missing block"),
    ({"blocks": {"layer2": [1]}}, "protected"),
    ({"blocks": {"layer1": []}}, "empties"),
    ({"blocks": {"layer9": [0]}}, "stage"),
    ({"planes": {"layer1": 0}}, "must be in"),
    ({"mid": {"layer1.5": 4}}, "not a mid group"),
    ({"widths": {}}, "unknown key"),
]


@pytest.mark.parametrize("cfg,msg", BAD_KEEP_CFGS)
def test_bad_keep_cfg_is_a_user_error(cfg, msg):
    with pytest.raises(UserError, match=msg):
        get_adapter("resnet18").validate_keep_cfg(cfg, 100)


def test_unknown_arch():
    with pytest.raises(UserError, match="unknown architecture"):
        get_adapter("vgg16")


ALL_ARCHS = ["resnet18", "resnet34", "resnet50", "resnet101", "resnet152", "wide_resnet50_2", "wide_resnet101_2",
             "resnext50_32x4d", "resnext101_32x8d", "resnext101_64x4d", "mobilenet_v2", "resnet18-cifar",
             "mobilenet_v2-cifar"]


@pytest.mark.parametrize("arch", ALL_ARCHS)
def test_every_architecture_prunes_slices_rebuilds_and_is_priced_exactly(arch):
    """One fixed edit per architecture at 16x16 (CI-sized): drop the last free block, halve planes and mid
    channels (ResNeXt in whole conv groups, the same groups on both sides of its grouped conv), rebuild
    from the keep_cfg; fvcore, the analytic cost model and the sliced model agree."""
    from m2mdc.cost import CostModel
    from m2mdc.prune_blocks import keep_blocks_after, prune_student
    from m2mdc.slicing import mid_widths, planes_widths, slice_groups

    res = 16
    a = get_adapter(arch)
    m = a.base_model(10).eval()
    free = [b for b in a.blocks(m) if not a.is_protected(m, b)]
    s = prune_student(m, a, keep_blocks_after(a, m, [free[-1]]), 10)
    assert free[-1] not in a.blocks(s) and set(a.protected_blocks(m)) <= set(a.blocks(s))
    x = torch.zeros(2, 3, res, res)
    s, _ = slice_groups(s, a, planes_widths(s, a, 0.5), 10, "bn", check_input=x)
    s, kept = slice_groups(s, a, mid_widths(s, a, 0.5), 10, "l1", check_input=x)
    for g_in, g_out in a.linked_groups(s):  # ResNeXt: whole groups, the same on both sides
        size = a.conv_group_size(m)[g_in]
        assert torch.equal(kept[g_in], kept[g_out]) and len(kept[g_in]) % size == 0
        assert torch.equal(kept[g_in].view(-1, size) % size, torch.arange(size).expand(len(kept[g_in]) // size, -1))
    cfg = a.keep_cfg_of(s)
    rebuilt = a.rebuild(cfg, 10)
    assert rebuilt(x).shape == (2, 10)
    fv = metrics.gmacs(s, res)
    assert fv == metrics.gmacs(rebuilt, res) == pytest.approx(CostModel(a, 10, res).gmacs(cfg), abs=1e-15)
    assert fv < metrics.gmacs(m, res)
    if arch.endswith("-cifar"):  # the CIFAR stem keeps torchvision's parameter names
        assert set(m.state_dict()) == set(get_adapter(arch.split("-")[0]).base_model(10).state_dict())


@pytest.mark.parametrize("arch", ["resnet18", "resnet50", "resnext50_32x4d", "mobilenet_v2"])
def test_channel_groups_are_typed_and_survive_pickling(arch):
    """Channel groups carry their kind (no code parses "planes:..." names), and a cost model shipped to a
    Ray worker keeps them typed."""
    import pickle

    from m2mdc.cost import CostModel
    from m2mdc.models.base import Group, GroupKind

    a = get_adapter(arch)
    widths = a.group_widths(a.base_model(100))
    assert all(isinstance(g, Group) for g in widths)
    assert {g.kind for g in widths} >= {GroupKind.PLANES, GroupKind.MID}
    cost = pickle.loads(pickle.dumps(CostModel(a, 100, 32)))
    assert all(isinstance(k, Group) and k.kind in (GroupKind.PLANES, GroupKind.MID) for k in cost.knobs)
    g = pickle.loads(pickle.dumps(Group(GroupKind.MID2, "layer1.0")))
    assert (g, g.kind, g.owner, g.keep_cfg_kind) == ("mid2:layer1.0", GroupKind.MID2, "layer1.0", "mid")
