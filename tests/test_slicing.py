"""Residual-safe slicing: invariants, forward passes, MACs recounted, ranking signals."""
import copy

import pytest
import torch
from hypothesis import given, settings, strategies as st
from torch import nn

from m2mdc import metrics
from m2mdc.data import probe_loader
from m2mdc.errors import UserError
from m2mdc.models import get_adapter
from m2mdc.slicing import channel_scores, mid_widths, planes_widths, slice_groups, top_k, verify

from .test_models import base, hooked_macs

ARCHS = ["resnet18", "resnet34", "resnet50", "mobilenet_v2"]


@pytest.mark.parametrize("arch", ARCHS)
@settings(max_examples=3, deadline=None)
@given(planes=st.floats(0.05, 1.0), mid=st.floats(0.05, 1.0), signal=st.sampled_from(["bn", "l1", "group_l1"]))
def test_random_slices_keep_invariants_and_macs(arch, planes, mid, signal):
    a = get_adapter(arch)
    m = base(arch)
    s, kept_p = slice_groups(m, a, planes_widths(m, a, planes), 100, signal)
    s, kept_m = slice_groups(s, a, mid_widths(s, a, mid), 100, signal)
    a.check_invariants(s)
    assert s(torch.randn(2, 3, 32, 32)).shape == (2, 100)
    # MACs of the sliced model == fvcore on a fresh rebuild of its keep_cfg == independent count
    g = metrics.gmacs(s)
    assert g == metrics.gmacs(a.rebuild(a.keep_cfg_of(s), 100))
    assert g == pytest.approx(hooked_macs(s), rel=1e-9)
    widths = a.group_widths(s)
    for grp, idx in {**kept_p, **kept_m}.items():
        assert widths[grp] == len(idx) and torch.equal(idx, idx.sort().values)


def test_bn_signal_keeps_largest_gammas():
    a = get_adapter("resnet18")
    m = base("resnet18")
    m2 = a.rebuild(None, 100)
    m2.load_state_dict(m.state_dict())
    with torch.no_grad():
        for name in ("layer4.0.bn2", "layer4.1.bn2", "layer4.0.downsample.1"):
            m2.get_submodule(name).weight.fill_(0.01)
            m2.get_submodule(name).weight[[7, 100, 300]] = 5.0
    s, kept = slice_groups(m2, a, {"planes:layer4": 3}, 100, "bn")
    assert kept["planes:layer4"].tolist() == [7, 100, 300]
    assert s.fc.in_features == 3
    assert torch.equal(s.fc.weight, m2.fc.weight[:, [7, 100, 300]])


def test_mi_signal_runs_on_probe(digits):
    """The mi signal equals an independent computation: each writing BN's spatially pooled output over
    the probe, per-channel quantile bins (numpy), sklearn's mutual_info_score with the labels, each
    module's scores divided by their mean, summed over the group's writers."""
    import numpy as np
    from sklearn.metrics import mutual_info_score

    a = get_adapter("resnet18")
    torch.manual_seed(0)
    m = a.base_model(10).eval()
    probe = probe_loader(digits, "cpu", max_samples=256)
    sc = channel_scores(m, a, ["planes:layer2", "mid:layer2.1"], "mi", probe)
    assert sc["planes:layer2"].shape == (128,) and sc["mid:layer2.1"].shape == (128,)
    assert (sc["planes:layer2"] >= 0).all()
    writers = {"planes:layer2": ["layer2.0.bn2", "layer2.0.downsample.1", "layer2.1.bn2"],
               "mid:layer2.1": ["layer2.1.bn1"]}
    pooled = {n: [] for ns in writers.values() for n in ns}
    hooks = [m.get_submodule(n).register_forward_hook(
        lambda _m, _i, out, n=n: pooled[n].append(out.detach().mean((2, 3)))) for n in pooled]
    labels = []
    with torch.no_grad():
        for b in probe:
            m(b.x)
            labels.append(b.y)
    for h in hooks:
        h.remove()
    y = torch.cat(labels).numpy()

    def channel_mi(z: np.ndarray) -> np.ndarray:
        out = []
        for c in range(z.shape[1]):
            edges = np.quantile(z[:, c], np.arange(1, 10) / 10)
            out.append(mutual_info_score(y, np.searchsorted(edges, z[:, c], side="right")))
        return np.array(out)

    for group, names in writers.items():
        want = sum(torch.from_numpy(v / max(v.mean(), 1e-12)) for v in
                   (channel_mi(torch.cat(pooled[n]).double().numpy()) for n in names))
        assert torch.allclose(sc[group].double(), want, rtol=1e-4, atol=1e-6), group
    assert sc["planes:layer2"].std() > 0  # a real ranking, not a constant


def test_top_k_is_deterministic_with_ties():
    assert top_k(torch.tensor([1.0, 3.0, 3.0, 0.5, 3.0]), 2).tolist() == [1, 2]


def test_invariant_violation_names_the_block():
    a = get_adapter("resnet18")
    m = a.base_model(10)
    m.layer3[1].conv2 = nn.Conv2d(256, 200, 3, padding=1, bias=False)
    with pytest.raises(ValueError, match="layer3.1"):
        a.check_invariants(m)
    mb = get_adapter("mobilenet_v2").base_model(10)
    mb.features[5].conv[2] = nn.Conv2d(192, 30, 1, bias=False)
    with pytest.raises(ValueError, match="features.5"):
        get_adapter("mobilenet_v2").check_invariants(mb)


def test_forward_failure_is_reported():
    a = get_adapter("resnet18")
    m = a.base_model(10)
    m.fc = nn.Linear(7, 10)
    with pytest.raises(ValueError, match="forward pass"):
        verify(m, a)


@pytest.mark.parametrize("bad", [0.0, -0.2, 1.5])
def test_bad_keep_fraction(bad):
    a = get_adapter("resnet18")
    with pytest.raises(UserError, match="keep"):
        planes_widths(base("resnet18"), a, bad)
    with pytest.raises(UserError, match="keep"):
        mid_widths(base("resnet18"), a, bad)


@pytest.mark.parametrize("arch, layer", [("resnet18", "layer1.0.conv1"), ("resnet18", "layer3.0.conv2"),
                                         ("resnet18", "layer4.1.conv2"), ("mobilenet_v2", "features.3.conv.0.0")])
def test_group_l1_is_torch_pruning_group_magnitude(arch, layer):
    """Cross-check with the independent implementation: Torch-Pruning's dependency graph finds the
    group a conv's out-channels belong to (our adapter's channel group, found another way) and its
    GroupMagnitudeImportance(p=1) must equal our group_l1 scores for that group."""
    tp = pytest.importorskip("torch_pruning")
    a = get_adapter(arch)
    m = base(arch).eval()
    with torch.no_grad():  # distinct BN gammas and filter norms, so the ranking is not a tie
        for mod in m.modules():
            if isinstance(mod, nn.BatchNorm2d):
                mod.weight.uniform_(0.1, 2.0)
    conv = dict(m.named_modules())[layer]
    group = tp.DependencyGraph().build_dependency(m, torch.zeros(1, 3, 32, 32)).get_pruning_group(
        conv, tp.prune_conv_out_channels, idxs=list(range(conv.out_channels)))
    theirs = tp.importance.GroupMagnitudeImportance(p=1, normalizer=None)(group)
    ours = channel_scores(m, a, [a.channel_groups(m)[layer][0]], "group_l1")
    assert torch.allclose(next(iter(ours.values())), theirs.float(), rtol=1e-5)


@pytest.mark.parametrize("arch, layer", [("resnet18", "layer1.0.conv1"), ("resnet18", "layer3.0.conv2"),
                                         ("resnet18", "layer4.1.conv2"), ("mobilenet_v2", "features.3.conv.0.0")])
def test_group_taylor_is_torch_pruning_group_taylor(arch, layer):
    """Cross-check with the independent implementation: with the cross-entropy of the same labelled
    batches back-propagated into the model, Torch-Pruning's GroupTaylorImportance over the group its
    dependency graph finds must equal our group_taylor scores, which compute their own gradients."""
    tp = pytest.importorskip("torch_pruning")
    from m2mdc.data import Batch

    a = get_adapter(arch)
    m = copy.deepcopy(base(arch)).eval()  # its gradients are filled below: not the shared model
    g = torch.Generator().manual_seed(0)
    probe = [Batch(torch.randn(8, 3, 32, 32, generator=g), torch.randint(0, 100, (8,), generator=g),
                   torch.arange(8), torch.zeros(8, dtype=torch.bool)) for _ in range(2)]
    ours = channel_scores(m, a, [a.channel_groups(m)[layer][0]], "group_taylor", probe)
    assert all(p.grad is None for p in m.parameters())  # the caller's model is left as it was
    for b in probe:
        (nn.functional.cross_entropy(m(b.x), b.y, reduction="sum") / 16).backward()
    conv = dict(m.named_modules())[layer]
    group = tp.DependencyGraph().build_dependency(m, torch.zeros(1, 3, 32, 32)).get_pruning_group(
        conv, tp.prune_conv_out_channels, idxs=list(range(conv.out_channels)))
    theirs = tp.importance.GroupTaylorImportance(normalizer=None)(group)
    assert torch.allclose(next(iter(ours.values())), theirs.float(), rtol=1e-4, atol=1e-12)
    assert len(set(theirs.tolist())) > conv.out_channels // 2  # a ranking, not a tie


def test_group_taylor_needs_a_probe():
    a = get_adapter("resnet18")
    with pytest.raises(ValueError, match="probe"):
        channel_scores(base("resnet18"), a, ["planes:layer1"], "group_taylor")
