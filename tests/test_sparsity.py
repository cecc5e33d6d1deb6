"""Global magnitude pruning: exact counts, global-threshold bookkeeping, masks that survive
training, lossless sparse checkpoints smaller than dense ones, and input checks.

What "achieved equals target" means here: global pruning sets one |w| threshold for all conv +
linear weights, so per-layer sparsities differ by design. Asserted exactly: the number of masked
weights is round(target * N) (N = all conv + linear weights), so the achieved fraction is within
0.5 / N of the target (less than one weight per layer); every layer's masked count is what the
global threshold implies (all masked |w| <= every kept |w|, across layers).
"""
from __future__ import annotations

import io

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from m2mdc import metrics, sparsity
from m2mdc.device import pick_device
from m2mdc.errors import UserError
from m2mdc.models import get_adapter

DEVICE = pick_device("auto")


def _small_net() -> nn.Module:
    return nn.Sequential(nn.Conv2d(3, 8, 3), nn.BatchNorm2d(8), nn.ReLU(), nn.Conv2d(8, 8, 3, groups=2),
                         nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 5)).to(DEVICE)


@pytest.fixture(scope="module")
def pruned50() -> tuple[nn.Module, dict]:
    torch.manual_seed(0)
    model = get_adapter("resnet18").base_model(10).to(DEVICE)
    return model, sparsity.apply_sparsity(model, 0.5)


def _check_global_threshold(model: nn.Module) -> None:
    layers = sparsity.prunable_weights(model)
    masked = torch.cat([m.weight_orig.detach()[m.weight_mask == 0].abs().flatten() for _, m in layers])
    kept = torch.cat([m.weight_orig.detach()[m.weight_mask == 1].abs().flatten() for _, m in layers])
    if len(masked) and len(kept):
        assert masked.max() <= kept.min()


def _masked(model: nn.Module) -> int:
    return sum(int((m.weight_mask == 0).sum()) for _, m in sparsity.prunable_weights(model))


def test_resnet18_exact_count_and_global_threshold(pruned50):
    model, stats = pruned50
    n = sum(m.weight.numel() for _, m in sparsity.prunable_weights(model))
    assert stats["total"] == n == 11_172_032  # 20 convs + fc of resnet18 with 10 classes
    assert _masked(model) == stats["masked"] == round(0.5 * n)
    assert abs(sparsity.achieved_sparsity(model) - 0.5) <= 0.5 / n
    assert stats["achieved"] == sparsity.achieved_sparsity(model)
    assert len(stats["per_layer"]) == 21 and len(set(stats["per_layer"].values())) > 1  # global, not per layer
    _check_global_threshold(model)
    kept_min = min(float(m.weight_orig.detach()[m.weight_mask == 1].abs().min())
                   for _, m in sparsity.prunable_weights(model))
    assert stats["min_kept_abs"] == kept_min


@settings(max_examples=25, deadline=None)
@given(first=st.floats(0.0, 0.98), second=st.floats(0.0, 0.98), seed=st.integers(0, 2**16))
def test_exact_count_holds_for_any_target_and_repeated_pruning(first, second, seed):
    torch.manual_seed(seed)
    model = _small_net()
    n = sum(m.weight.numel() for _, m in sparsity.prunable_weights(model))
    sparsity.apply_sparsity(model, first)
    assert _masked(model) == round(first * n)
    if round(second * n) < round(first * n):
        with pytest.raises(UserError, match="masks cannot be undone"):
            sparsity.apply_sparsity(model, second)
        return
    sparsity.apply_sparsity(model, second)  # pruning more reaches the new total, not a compound
    assert _masked(model) == round(second * n)
    _check_global_threshold(model)


def test_masks_survive_optimizer_steps_and_make_permanent():
    torch.manual_seed(0)
    model = _small_net()
    sparsity.apply_sparsity(model, 0.6)
    masks = {name: m.weight_mask.clone() for name, m in sparsity.prunable_weights(model)}
    opt = torch.optim.SGD(model.parameters(), lr=0.5, momentum=0.9, weight_decay=1e-2)
    x = torch.randn(4, 3, 10, 10, device=DEVICE)
    for _ in range(3):
        loss = model(x).square().mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    before = sparsity.achieved_sparsity(model)
    n = sum(m.weight.numel() for _, m in sparsity.prunable_weights(model))
    assert before == round(0.6 * n) / n
    sparsity.make_permanent(model)
    for name, m in sparsity.prunable_weights(model):
        assert not hasattr(m, "weight_orig") and isinstance(m.weight, nn.Parameter)
        assert torch.all(m.weight[masks[name] == 0] == 0)
        assert torch.all(m.weight[masks[name] == 1] != 0)
    assert sparsity.achieved_sparsity(model) == before


def _assert_lossless(model: nn.Module, fresh: nn.Module) -> None:
    buf = io.BytesIO()
    torch.save(sparsity.pack_sparse(sparsity.effective_state_dict(model)), buf)
    buf.seek(0)
    fresh.load_state_dict(sparsity.unpack_sparse(torch.load(buf, weights_only=True)))
    for key, t in sparsity.effective_state_dict(model).items():
        assert torch.equal(fresh.state_dict()[key], t.cpu()), key


def test_sparse_checkpoint_at_50_percent(pruned50):
    model, _ = pruned50
    dense, sparse = sparsity.dense_checkpoint_bytes(model), sparsity.sparse_checkpoint_bytes(model)
    unpruned = metrics.checkpoint_size(get_adapter("resnet18").base_model(10))
    assert dense == pytest.approx(unpruned, rel=1e-3)  # masks are folded in, not stored twice
    # bitmask + float32 values: 1/32 + 1/2 of the dense weight bytes (+ BN tensors, dense)
    assert sparse < 0.54 * dense
    packed = sparsity.pack_sparse(sparsity.effective_state_dict(model))
    weights = [f"{name}.weight" for name, _ in sparsity.prunable_weights(model)]
    assert all(packed[k]["format"] == "bitmask" for k in weights)
    assert isinstance(packed["bn1.weight"], torch.Tensor)  # all ones: dense is smallest
    assert sparsity.sparse_formats(model)["csr"] == 0
    _assert_lossless(model, get_adapter("resnet18").base_model(10))


def test_sparse_checkpoint_at_99_percent_uses_csr_where_smaller():
    def make() -> nn.Module:
        return nn.Sequential(nn.Conv2d(16, 64, 3), nn.Conv2d(64, 64, 3), nn.Linear(64, 1000))

    torch.manual_seed(1)
    model = make().to(DEVICE)
    sparsity.apply_sparsity(model, 0.99)
    assert sparsity.sparse_checkpoint_bytes(model) < 0.05 * sparsity.dense_checkpoint_bytes(model)
    assert sparsity.sparse_formats(model)["csr"] >= 1
    _assert_lossless(model, make())


def test_sparsity_zero_keeps_every_weight():
    model = _small_net()
    stats = sparsity.apply_sparsity(model, 0.0)
    assert stats["masked"] == 0 and sparsity.achieved_sparsity(model) == 0.0


@pytest.mark.parametrize("bad", [-0.1, 1.0, 1.5])
def test_sparsity_outside_unit_interval_is_user_error(bad):
    with pytest.raises(UserError, match=r"sparsity=.* is outside \[0\.0, 1\.0\)"):
        sparsity.apply_sparsity(_small_net(), bad)
