"""Train a small torchvision model with a plain PyTorch loop on scikit-learn's digits, then search its
accuracy-compute frontier with the Python API (Ray Tune trials, Optuna, MLflow), on the same Datasets.

    python examples/search_own_model.py --out outputs/examples/search
"""
import argparse
import json
from pathlib import Path

import torch
from compress_own_model import Digits, train_plainly
from torch import nn
from torchvision.models import resnet18

from search import api


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", default="outputs/examples/search", help="the search's output root (MLflow store too)")
    p.add_argument("--epochs", type=int, default=3, help="epochs of the plain training loop")
    p.add_argument("--num-samples", type=int, default=7,
                   help="trials: the 5 seeded points, then sampled ones (smoke profile: seconds each)")
    a = p.parse_args(argv)
    torch.manual_seed(0)
    model = resnet18()
    model.fc = nn.Linear(512, 10)  # a 10-class head
    model = train_plainly(model, Digits("train"), a.epochs)

    # --- the API: a small search under 0.02 GMACs, then its Pareto members ---
    frontier = api.search(model, Digits("train"), Digits("val"), budget_gmacs=0.02, profile="smoke",
                          num_samples=a.num_samples, out_dir=a.out, flags=("--cpus-per-trial", "1"))
    for m in frontier.members:
        print(f"{m.trial_id} ({m.origin}, {m.fidelity}): val {m.val_top1:.2f}% at {m.gmacs:.4f} GMACs")
    Path(a.out, "frontier.json").write_text(json.dumps(
        [{"trial_id": m.trial_id, "val_top1": m.val_top1, "gmacs": m.gmacs, "model_dir": str(m.model_dir),
          "run_id": m.run_id} for m in frontier.members]))
    print(f"review: mlflow ui --backend-store-uri {frontier.mlflow_uri}")


if __name__ == "__main__":
    main()
