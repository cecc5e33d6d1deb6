"""Label-aware MI: exact agreement with scikit-learn, equal-frequency binning, block scores, caching."""
from __future__ import annotations

import json
from collections import OrderedDict

import pytest
import torch
from sklearn.metrics import mutual_info_score
from torch import nn

from m2mdc import mi as mi_module
from m2mdc.data import Batch, load_dataset, probe_loader
from m2mdc.mi import (block_mi_scores, channel_mi_scores, load_or_compute_block_scores, mutual_info,
                      pooled_activations, quantile_bin)
from m2mdc.models import get_adapter

PROBE = 256


@pytest.fixture(scope="module")
def digits():
    return load_dataset("digits")


@pytest.fixture(scope="module")
def probe(digits):
    return probe_loader(digits, "cpu", max_samples=PROBE, batch_size=128)


def _model(arch: str, num_classes: int = 10):
    torch.manual_seed(0)
    adapter = get_adapter(arch)
    return adapter, adapter.base_model(num_classes).eval()


@pytest.mark.parametrize("n,channels,bins,classes,seed", [
    (200, 7, 10, 10, 0), (500, 33, 5, 3, 1), (97, 1, 2, 2, 2), (300, 16, 20, 100, 3), (1000, 64, 10, 10, 4),
])
def test_mutual_info_matches_sklearn(n, channels, bins, classes, seed):
    g = torch.Generator().manual_seed(seed)
    labels = torch.randint(0, classes, (n,), generator=g)
    binned = torch.randint(0, bins, (n, channels), generator=g)
    binned[:, 0] = labels % bins  # one strongly dependent channel, not just near-zero MI
    mi = mutual_info(binned, labels, bins, classes)
    assert mi.shape == (channels,)
    for c in range(channels):
        assert abs(mi[c].item() - mutual_info_score(labels.numpy(), binned[:, c].numpy())) < 1e-6


def test_mutual_info_of_quantile_bins_matches_sklearn():
    g = torch.Generator().manual_seed(5)
    labels = torch.randint(0, 10, (400,), generator=g)
    z = torch.randn(400, 12, generator=g) + labels.unsqueeze(1).float() * torch.linspace(0, 1, 12)
    binned = quantile_bin(z, 8)
    mi = mutual_info(binned, labels, 8, 10)
    expected = [mutual_info_score(labels.numpy(), binned[:, c].numpy()) for c in range(12)]
    assert torch.allclose(mi, torch.tensor(expected, dtype=torch.float64), atol=1e-6, rtol=0)


def test_mutual_info_rejects_out_of_range_ids():
    with pytest.raises(ValueError):
        mutual_info(torch.tensor([[0], [3]]), torch.tensor([0, 1]), n_bins=3, n_classes=2)


@pytest.mark.parametrize("bins", [2, 7, 10])
def test_quantile_bins_have_equal_counts_and_match_torch_quantile(bins):
    g = torch.Generator().manual_seed(bins)
    n = 100 * bins
    z = torch.randn(n, 6, generator=g) * torch.tensor([1, 10, 0.1, 3, 1, 5]) + torch.arange(6)
    z[:, 4] = z[:, 4].exp()  # skewed
    binned = quantile_bin(z, bins)
    assert binned.dtype == torch.long and binned.shape == z.shape
    for c in range(6):
        counts = torch.bincount(binned[:, c], minlength=bins)
        assert counts.min() >= 99 and counts.max() <= 101, counts
        edges = torch.quantile(z[:, c].double(), torch.arange(1, bins, dtype=torch.float64) / bins)
        ref = torch.bucketize(z[:, c].double(), edges, right=True)
        assert (ref != binned[:, c]).sum() <= 1  # float32 vs float64 edges may differ at one value


def test_constant_channel_falls_in_one_bin():
    z = torch.randn(50, 3)
    z[:, 1] = 0.1
    binned = quantile_bin(z, 10)
    assert binned[:, 1].unique().numel() == 1
    # zero up to float64 rounding: log n is added back to -n log n / n (an exact 0.0 failed for some labels)
    assert mutual_info(binned, torch.randint(0, 3, (50,)), 10, 3)[1].item() == pytest.approx(0.0, abs=1e-12)


def test_quantile_bin_rejects_non_finite():
    z = torch.randn(10, 2)
    z[3, 1] = float("nan")
    with pytest.raises(ValueError, match="NaN"):
        quantile_bin(z)


def _label_batches(n_batches: int = 4, batch: int = 64, classes: int = 5):
    """Batches whose channel 0 is the label plus pixel noise and channel 1 is pure noise."""
    g = torch.Generator().manual_seed(0)
    out = []
    for i in range(n_batches):
        y = torch.randint(0, classes, (batch,), generator=g)
        x = torch.randn(batch, 2, 4, 4, generator=g)
        x[:, 0] += 3 * y.view(-1, 1, 1).float()
        idx = torch.arange(i * batch, (i + 1) * batch)
        out.append(Batch(x, y, idx, torch.zeros(batch, dtype=torch.bool)))
    return out


def test_informative_channel_scores_higher_than_noise():
    model = nn.Sequential(OrderedDict(probe=nn.Identity()))
    mi = channel_mi_scores(model, ["probe"], _label_batches(), bins=10)["probe"]
    assert mi.shape == (2,)
    assert mi[0] > 1.0 and mi[1] < 0.2, mi


def test_scores_do_not_depend_on_chunking(monkeypatch):
    torch.manual_seed(0)
    model = nn.Sequential(OrderedDict(a=nn.Identity(), b=nn.Conv2d(2, 3, 1)))
    batches = _label_batches()
    whole = channel_mi_scores(model, ["a", "b"], batches)
    monkeypatch.setattr(mi_module, "MAX_CHUNK", 1)  # every module in a chunk of its own
    split = channel_mi_scores(model, ["a", "b"], batches)
    assert list(split) == ["a", "b"] and [v.shape for v in split.values()] == [(2,), (3,)]
    assert all(torch.equal(whole[k], split[k]) for k in whole)


def test_pooled_activations_pool_once_and_restore_the_model():
    model = nn.Sequential(OrderedDict(probe=nn.Identity(), drop=nn.Dropout(0.5)))
    model.train()
    model.drop.eval()
    batches = _label_batches(n_batches=2, batch=8)
    acts, labels = pooled_activations(model, ["probe", "drop"], batches)
    expected = torch.cat([b.x.mean((2, 3)) for b in batches])
    assert torch.equal(acts["probe"], expected) and torch.equal(acts["drop"], expected)  # eval: no dropout
    assert torch.equal(labels, torch.cat([b.y for b in batches]))
    assert model.training and model.probe.training and not model.drop.training
    assert not model.probe._forward_hooks and not model.drop._forward_hooks


@pytest.mark.parametrize("arch", ["resnet18", "mobilenet_v2"])
def test_block_scores_cover_every_block_and_are_deterministic(arch, probe):
    adapter, model = _model(arch)
    first = block_mi_scores(model, adapter, probe)
    assert list(first) == list(adapter.blocks(model))
    assert all(0.0 <= s <= torch.log(torch.tensor(10.0)).item() for s in first.values())
    assert any(s > 0 for s in first.values())
    assert block_mi_scores(model, adapter, probe) == first


def test_block_score_cache(tmp_path, digits):
    adapter, model = _model("resnet18")
    small = probe_loader(digits, "cpu", max_samples=32, batch_size=32)
    path = tmp_path / "scores" / "mi.json"
    scores = load_or_compute_block_scores(path, model, adapter, small, bins=10)
    data = json.loads(path.read_text())
    assert data["bins"] == 10 and data["samples"] == 32 and data["scores"] == scores
    assert not [p for p in path.parent.iterdir() if p.name != "mi.json"]  # no temp file left

    data["scores"] = {k: 0.5 for k in scores}  # a hit must come from the file, not a recompute
    path.write_text(json.dumps(data))
    assert load_or_compute_block_scores(path, model, adapter, small, bins=10) == data["scores"]

    other_bins = load_or_compute_block_scores(path, model, adapter, small, bins=5)
    assert json.loads(path.read_text())["bins"] == 5 and set(other_bins.values()) != {0.5}

    more = probe_loader(digits, "cpu", max_samples=64, batch_size=32)
    more_scores = load_or_compute_block_scores(path, model, adapter, more, bins=5)
    assert json.loads(path.read_text())["samples"] == 64 and more_scores != other_bins

    path.write_text("{not json")
    assert load_or_compute_block_scores(path, model, adapter, more, bins=5) == more_scores
    assert load_or_compute_block_scores(None, model, adapter, small, bins=10) == scores
