"""Data: deterministic val split, batch-level augmentation, real datasets."""
import pytest
import torch

from m2mdc.data import Loader, Split, load_dataset, probe_loader, split_train_val
from m2mdc.errors import UserError

from .conftest import requires_cifar


def _split(n=1000):
    x = torch.arange(n, dtype=torch.int64).view(n, 1, 1, 1).expand(n, 3, 4, 4).to(torch.uint8)
    return Split(x.contiguous(), torch.arange(n))  # label = original position


def test_val_split_disjoint_and_seeded():
    s = _split()
    tr, va = split_train_val(s, 100, seed=3)
    assert len(tr) == 900 and len(va) == 100
    assert set(tr.labels.tolist()).isdisjoint(va.labels.tolist())
    assert set(tr.labels.tolist()) | set(va.labels.tolist()) == set(range(1000))
    tr2, va2 = split_train_val(s, 100, seed=3)
    assert torch.equal(va.labels, va2.labels)
    _, va3 = split_train_val(s, 100, seed=4)
    assert not torch.equal(va.labels, va3.labels)


def test_digits_is_embedded_and_shaped(digits):
    assert digits.num_classes == 10
    assert digits.train.images.dtype == torch.uint8 and digits.train.images.shape[1:] == (3, 32, 32)
    assert len(digits.train) + len(digits.val) + len(digits.test) == 1797
    assert set(digits.val.labels.unique().tolist()) == set(range(10))


def test_loader_flip_marks_and_mirrors(digits):
    plain = next(iter(Loader(digits.train, 64, resolution=32)))
    aug = next(iter(Loader(digits.train, 64, flip=True, resolution=32, seed=1)))
    assert aug.flipped.any() and (~aug.flipped).any()
    f = aug.flipped
    assert torch.allclose(aug.x[f], plain.x[f].flip(3))
    assert torch.allclose(aug.x[~f], plain.x[~f])


def test_loader_shuffle_is_seeded_and_covers_split(digits):
    a = torch.cat([b.index for b in Loader(digits.train, 100, shuffle=True, seed=5)])
    b = torch.cat([b.index for b in Loader(digits.train, 100, shuffle=True, seed=5)])
    assert torch.equal(a, b)
    assert sorted(a.tolist()) == list(range(len(digits.train)))


def test_crop_is_a_shifted_window(digits):
    b = next(iter(Loader(digits.train, 32, crop=True, seed=2)))
    assert b.x.shape == (32, 3, 32, 32)
    # a zero offset (4, 4) crop reproduces the image: check via the uint8 helper directly
    from m2mdc.data import _random_crop
    x = digits.train.images[:4]
    assert torch.equal(_random_crop(x, torch.full((4, 2), 4)), x)
    shifted = _random_crop(x, torch.tensor([[4, 5]] * 4))
    assert torch.equal(shifted[..., :-1], x[..., 1:])


def test_resolution_is_a_parameter(digits):
    b = next(iter(Loader(digits.val, 8, resolution=64)))
    assert b.x.shape == (8, 3, 64, 64)


def test_probe_loader_fixed_order_and_capped(digits):
    p = probe_loader(digits, "cpu", max_samples=500)
    idx = torch.cat([b.index for b in p])
    assert torch.equal(idx, torch.arange(500))
    assert p.batch_size == 64


def test_bad_dataset_and_offline_cifar(tmp_path):
    with pytest.raises(UserError, match="unknown dataset"):
        load_dataset("imagenet")
    with pytest.raises(UserError, match="could not be downloaded"):
        load_dataset("cifar10", data_dir=tmp_path, download=False)


@requires_cifar
def test_cifar100_real_data():
    ds = load_dataset("cifar100")
    assert (len(ds.train), len(ds.val), len(ds.test)) == (45000, 5000, 10000)
    assert ds.num_classes == 100 and ds.train.images.dtype == torch.uint8
    assert len(ds.val.labels.unique()) == 100
