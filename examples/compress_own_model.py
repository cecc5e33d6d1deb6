"""Train a small torchvision model with a plain PyTorch loop on scikit-learn's digits, then compress it
to a compute budget with m2mdc's Python API, on the same Dataset objects.

    python examples/compress_own_model.py --out outputs/examples/compress
"""
import argparse
import json
from pathlib import Path

import torch
import torch.nn.functional as F
from sklearn.datasets import load_digits
from torch import nn
from torch.utils.data import DataLoader, Dataset
from torchvision.models import resnet18

import m2mdc


class Digits(Dataset):
    """scikit-learn's 8x8 digits as 32x32 RGB tensors, split by a fixed permutation; ``invert`` is this
    dataset's own transform (white digits on black become black on white), applied in __getitem__."""

    SPLITS = {"train": slice(0, 1077), "val": slice(1077, 1437), "test": slice(1437, None)}

    def __init__(self, split: str, invert: bool = True):
        d = load_digits()
        order = torch.randperm(len(d.target), generator=torch.Generator().manual_seed(0))[self.SPLITS[split]]
        x = torch.from_numpy(d.images).float()[order].unsqueeze(1) / 16.0
        self.images = F.interpolate(x, size=32, mode="bilinear", align_corners=False).clamp(0, 1)
        self.labels = torch.from_numpy(d.target)[order]
        self.invert = invert

    def __len__(self):
        return len(self.labels)

    def __getitem__(self, i):
        x = self.images[i].expand(3, -1, -1)
        x = 1.0 - x if self.invert else x
        return (x - 0.5) / 0.25, int(self.labels[i])


def train_plainly(model: nn.Module, data: Dataset, epochs: int) -> nn.Module:
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    for _ in range(epochs):
        for x, y in DataLoader(data, batch_size=64, shuffle=True, generator=torch.Generator().manual_seed(0)):
            opt.zero_grad()
            F.cross_entropy(model(x), y).backward()
            opt.step()
    return model.eval()


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", default="outputs/examples/compress", help="where the compressed model is saved")
    p.add_argument("--epochs", type=int, default=4, help="epochs of the plain training loop")
    p.add_argument("--budget-gmacs", type=float, default=0.015, help="the student's compute (resnet18: 0.037)")
    a = p.parse_args(argv)
    torch.manual_seed(0)
    model = resnet18()
    model.fc = nn.Linear(512, 10)  # a 10-class head
    model = train_plainly(model, Digits("train"), a.epochs)

    # --- the API: compress to the budget, keep the result on disk ---
    result = m2mdc.compress(model, Digits("train"), Digits("val"), test=Digits("test"),
                            budget_gmacs=a.budget_gmacs, kd_epochs=1, out_dir=a.out)
    print(f"teacher val {result.record['teacher']['val_top1']:.2f}% at {result.record['teacher']['gmacs']:.4f} "
          f"GMACs -> student val {result.val_top1:.2f}% at {result.gmacs:.4f} GMACs; saved to {a.out}")
    Path(a.out, "api.json").write_text(json.dumps({"val_top1": result.val_top1, "gmacs": result.gmacs,
                                                   "budget_gmacs": a.budget_gmacs}))


if __name__ == "__main__":
    main()
