"""Staged KD repair (m2mdc.distill) and BatchNorm recalibration (m2mdc.bn) on digits."""
from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from m2mdc.bn import recalibrate_bn
from m2mdc.data import Batch, Loader, load_dataset
from m2mdc.device import pick_device
from m2mdc.distill import ROW_KEYS, FeatureTap, KDConfig, TeacherOutputs, distill, kd_loss
from m2mdc.errors import UserError
from m2mdc.metrics import torch_threads
from m2mdc.models import get_adapter
from m2mdc.train import evaluate, train_epoch_ce

ARCH = "resnet18"
# Every non-protected block of resnet18 removed: a big, reliable BN-statistics shift.
SHALLOW = {"layer1": [0], "layer2": [0], "layer3": [0], "layer4": [0]}


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    # Two OpenMP threads on two cores shared with other jobs spin-wait ~8x slower than one.
    with torch_threads(1):
        yield


@pytest.fixture(scope="module")
def device():
    return pick_device("auto")


@pytest.fixture(scope="module")
def ds():
    return load_dataset("digits")


@pytest.fixture(scope="module")
def adapter():
    return get_adapter(ARCH)


@pytest.fixture(scope="module")
def teacher(ds, adapter, device):
    """A resnet18 trained on digits just long enough (~88% val) for KD and BN effects to show."""
    torch.manual_seed(0)
    model = adapter.base_model(ds.num_classes).to(device)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    loader = Loader(ds.train, 64, device, shuffle=True, drop_last=True)
    for epoch in range(2):
        loader.set_epoch(epoch)
        train_epoch_ce(model, loader, opt)
    return model.eval()


def shallow_student(teacher, adapter):
    student = copy.deepcopy(teacher)
    adapter.drop_blocks(student, SHALLOW)
    return student


# ---- ramp and config ----------------------------------------------------------------------

def test_ramp_is_pure_ce_in_epoch_one_and_full_in_epoch_t():
    cfg = KDConfig(epochs=5, alpha=0.3, beta=0.2)
    assert cfg.ramp(1) == (0.0, 0.0)
    assert cfg.ramp(5) == pytest.approx((0.3, 0.2))
    assert cfg.ramp(3) == pytest.approx((0.15, 0.1))
    assert KDConfig(epochs=1).ramp(1) == (0.0, 0.0)
    with pytest.raises(ValueError):
        cfg.ramp(6)


def test_defaults_and_invalid_config():
    cfg = KDConfig()
    assert (cfg.epochs, cfg.alpha, cfg.beta, cfg.lr, cfg.clip, cfg.batch_size) == (5, 0.1, 0.1, 1e-4, 1.0, 128)
    assert (cfg.kl_weight, cfg.temperature, cfg.crop) == (0.0, 4.0, False)
    for bad in ({"epochs": 0}, {"lr": 0.0}, {"alpha": -1.0}, {"temperature": 0.0}, {"batch_size": 0}):
        with pytest.raises(UserError):
            KDConfig(**bad)


def reference_kd_loss(logits, phi, y, t_logits, t_phi, alpha, beta, kl_weight, tau):
    """The loss exactly as the paper writes it, through autograd."""
    ce = F.cross_entropy(logits, y)
    logit_align = (1 - F.cosine_similarity(logits, t_logits, dim=1)).mean()
    feature_align = (1 - F.cosine_similarity(phi, t_phi, dim=1)).mean()
    kl = F.kl_div(F.log_softmax(logits / tau, 1), F.log_softmax(t_logits / tau, 1), reduction="batchmean",
                  log_target=True)
    loss = ce + alpha * logit_align + beta * feature_align + kl_weight * tau ** 2 * kl
    return loss, torch.stack([ce, logit_align, feature_align, kl])


@settings(max_examples=25, deadline=None)
@given(batch=st.integers(1, 9), alpha=st.floats(0, 2), beta=st.floats(0, 2), kl_weight=st.sampled_from([0.0, 0.7]),
       tau=st.floats(0.5, 8), seed=st.integers(0, 2 ** 16))
def test_kd_loss_matches_the_formula_in_value_and_gradient(batch, alpha, beta, kl_weight, tau, seed):
    g = torch.Generator().manual_seed(seed)
    args = [torch.randn(batch, 7, generator=g, dtype=torch.double) * 3,
            torch.randn(batch, 5, generator=g, dtype=torch.double)]
    y = torch.randint(0, 7, (batch,), generator=g)
    t_logits = torch.randn(batch, 7, generator=g, dtype=torch.double) * 3
    t_phi = torch.randn(batch, 5, generator=g, dtype=torch.double).relu() + 0.1
    grads = []
    for fn in (kd_loss, reference_kd_loss):
        leaves = [a.clone().requires_grad_() for a in args]
        loss, terms = fn(*leaves, y, t_logits, t_phi, alpha, beta, kl_weight, tau)
        loss.backward()
        grads.append((loss.detach(), terms, *(leaf.grad for leaf in leaves)))
    for got, want in zip(*grads):
        torch.testing.assert_close(got, want, rtol=1e-9, atol=1e-9)


def test_kd_loss_of_a_student_equal_to_its_teacher_is_ce():
    torch.manual_seed(0)
    logits, phi, y = torch.randn(8, 10), torch.randn(8, 16), torch.randint(0, 10, (8,))
    loss, terms = kd_loss(logits, phi, y, logits, phi, alpha=0.5, beta=0.5, kl_weight=1.0)
    assert terms[1:].abs().max() < 1e-5
    assert loss.item() == pytest.approx(F.cross_entropy(logits, y).item(), abs=1e-5)


# ---- BN recalibration -----------------------------------------------------------------------

def test_recalibrate_bn_is_cumulative_average_and_restores_momentum():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4, momentum=0.3), nn.Dropout(0.5), nn.ReLU())
    bn = model[1]
    batches = [Batch(torch.randn(6, 3, 8, 8) * (i + 1) + i, None, None, None) for i in range(4)]
    model.train()
    recalibrate_bn(model, batches, batches=3)
    with torch.no_grad():
        acts = [model[0](b.x) for b in batches[:3]]
    want_mean = torch.stack([a.mean((0, 2, 3)) for a in acts]).mean(0)
    want_var = torch.stack([a.transpose(0, 1).flatten(1).var(1, unbiased=True) for a in acts]).mean(0)
    torch.testing.assert_close(bn.running_mean, want_mean, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(bn.running_var, want_var, rtol=1e-4, atol=1e-5)
    assert bn.num_batches_tracked.item() == 3
    assert bn.momentum == 0.3 and not model.training and not bn.training


def test_recalibrate_bn_rejects_empty_loader():
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4))
    before = copy.deepcopy(model[1].state_dict())
    with pytest.raises(ValueError):
        recalibrate_bn(model, [])
    for k, v in model[1].state_dict().items():
        assert torch.equal(v, before[k])


def test_recalibration_repairs_a_block_dropped_student(ds, adapter, teacher, device):
    student = shallow_student(teacher, adapter)
    val = Loader(ds.val, 512, device)
    before = evaluate(student, val)
    old = student.layer4[0].bn2.running_mean.clone()
    recalibrate_bn(student, Loader(ds.train, 128, device, shuffle=True, flip=True), batches=5)
    after = evaluate(student, val)
    assert not torch.allclose(student.layer4[0].bn2.running_mean, old)
    assert not student.training
    assert after > before + 10, (before, after)


# ---- teacher-output cache -----------------------------------------------------------------

def test_cached_teacher_outputs_equal_live_teacher(ds, adapter, teacher, device, tmp_path):
    split = ds.train.subset(torch.arange(96))
    cache = TeacherOutputs.compute(teacher, adapter, split, device, batch_size=40)  # ragged last batch
    assert len(cache) == 96 and cache.logits.shape == (2, 96, 10) and cache.features.shape == (2, 96, 512)
    # GPUs run convolutions in TF32 by default, so batch composition moves outputs by ~1e-3.
    tol = {"rtol": 1e-4, "atol": 1e-4} if device.type == "cpu" else {"rtol": 1e-2, "atol": 1e-2}
    seen = torch.zeros(2, dtype=torch.long)
    loader = Loader(split, 32, device, shuffle=True, flip=True, seed=3)
    with FeatureTap(teacher, adapter.head_name) as tap, torch.no_grad():
        for b in loader:
            logits, phi = cache.lookup(b)
            torch.testing.assert_close(logits, teacher(b.x), **tol)
            torch.testing.assert_close(phi, tap.value, **tol)
            seen += torch.bincount(b.flipped.long().cpu(), minlength=2)
    assert seen.min() > 0, "the batches must mix flipped and unflipped samples"
    # the two flip states really are different targets
    assert (cache.logits[0] - cache.logits[1]).abs().max() > 0.1

    path = tmp_path / "teacher_outputs.pt"
    cache.save(path)
    loaded = TeacherOutputs.load(path, device)
    assert torch.equal(loaded.logits, cache.logits) and torch.equal(loaded.features, cache.features)
    loaded.check_matches(split, 32)
    with pytest.raises(UserError):
        loaded.check_matches(ds.train.subset(torch.arange(1, 97)), 32)
    path.write_bytes(b"not a checkpoint")
    with pytest.raises(UserError):
        TeacherOutputs.load(path, device)


# ---- distill ------------------------------------------------------------------------------------

def test_distill_rows_ramp_and_on_epoch_stop(ds, adapter, teacher, device):
    student = shallow_student(teacher, adapter)
    seen = []

    def stop_after_two(row):
        seen.append(row)
        return row["epoch"] == 2

    cfg = KDConfig(epochs=3, alpha=0.2, beta=0.4, batch_size=32)
    rows = distill(student, teacher, adapter, ds.train.subset(torch.arange(64)), ds.val.subset(torch.arange(64)),
                   cfg, device, on_epoch=stop_after_two, quiet=True)
    assert [r["epoch"] for r in rows] == [1, 2] and seen == rows
    assert all(tuple(r) == ROW_KEYS for r in rows)
    assert (rows[0]["alpha"], rows[0]["beta"]) == (0.0, 0.0)
    assert (rows[1]["alpha"], rows[1]["beta"]) == pytest.approx((0.1, 0.2))
    assert rows[0]["loss"] == pytest.approx(rows[0]["ce"])  # epoch 1 is pure CE
    assert 0 <= rows[1]["val_top1"] <= 100 and rows[1]["seconds"] > 0
    assert not student.training


def test_distill_reduces_the_kd_objective(ds, adapter, teacher, device):
    student = recalibrate_bn(shallow_student(teacher, adapter), Loader(ds.train, 128, device), batches=3)
    train = ds.train.subset(torch.arange(256))
    cache = TeacherOutputs.compute(teacher, adapter, train, device)
    cfg = KDConfig(epochs=2, batch_size=64)

    def objective() -> float:
        tot = 0.0
        with FeatureTap(student, adapter.head_name) as tap, torch.no_grad():
            for b in Loader(train, 128, device):
                t_logits, t_phi = cache.lookup(b)
                tot += kd_loss(student(b.x), tap.value, b.y, t_logits, t_phi, cfg.alpha, cfg.beta)[0].item()
        return tot

    before = objective()
    rows = distill(student, teacher, adapter, train, ds.val.subset(torch.arange(64)), cfg, device,
                   teacher_outputs=cache, quiet=True)
    assert (rows[-1]["alpha"], rows[-1]["beta"]) == (cfg.alpha, cfg.beta)
    assert objective() < 0.8 * before


def test_feature_index_for_a_narrower_student(ds, adapter, teacher, device):
    keep = torch.arange(0, 512, 2)
    student = adapter.slice(teacher, {"planes:layer4": keep}, ds.num_classes).eval()
    train, val = ds.train.subset(torch.arange(64)), ds.val.subset(torch.arange(32))
    cfg = KDConfig(epochs=2, batch_size=32)
    with pytest.raises(ValueError):
        distill(student, teacher, adapter, train, val, cfg, device, quiet=True)
    with pytest.raises(ValueError):
        distill(student, teacher, adapter, train, val, cfg, device, feature_index=keep[:10], quiet=True)

    # The kept channels really are the student's phi: aligned they match, shifted they do not.
    b = next(iter(Loader(train, 64, device)))
    cache = TeacherOutputs.compute(teacher, adapter, train, device)
    with FeatureTap(student, adapter.head_name) as tap, torch.no_grad():
        logits = student(b.x)
        t_logits, t_phi = cache.lookup(b)
        right = kd_loss(logits, tap.value, b.y, t_logits, t_phi[:, keep], 0, 0)[1][2]
        wrong = kd_loss(logits, tap.value, b.y, t_logits, t_phi[:, keep + 1], 0, 0)[1][2]
    assert right < 0.5 * wrong

    cached = distill(copy.deepcopy(student), teacher, adapter, train, val, cfg, device,
                     teacher_outputs=cache, feature_index=keep, quiet=True)
    live = distill(copy.deepcopy(student), teacher, adapter, train, val, KDConfig(epochs=1, batch_size=32, crop=True),
                   device, feature_index=keep, quiet=True)
    for row in cached + live:
        assert all(isinstance(row[k], float) and row[k] == row[k] for k in ("ce", "logit_align", "feature_align", "kl"))


def test_non_finite_loss_raises(ds, adapter, teacher, device):
    student = copy.deepcopy(teacher)
    with torch.no_grad():
        student.get_submodule(adapter.head_name).bias.fill_(float("nan"))
    with pytest.raises(FloatingPointError):
        distill(student, teacher, adapter, ds.train.subset(torch.arange(32)), ds.val.subset(torch.arange(32)),
                KDConfig(epochs=1, batch_size=32), device, quiet=True)
