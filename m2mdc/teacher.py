"""Teacher: fine-tuned from ImageNet weights when they can be had, else trained from scratch;
cached on disk keyed by everything that determines it, so a search trains it once.

    python -m m2mdc.teacher --arch resnet18 --dataset cifar100 --epochs 15     (m2mdc/cli/teacher.py)
"""
from __future__ import annotations

import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from torch import nn

from . import metrics
from .data import Dataset, Loader
from .errors import UserError
from .io import atomic_dir, ensure_writable, file_sha256, load_state_dict, out_root, stable_hash, write_json
from .models import IMAGENET_WEIGHTS, get_adapter
from .train import EpochLog, evaluate, train_epoch_ce


@dataclass(frozen=True)
class TeacherRecipe:
    """Everything about training that changes the resulting weights."""

    weights: str = "none"  # "none" (from scratch), "imagenet" (torchvision), or a path to a state_dict
    epochs: int = 15
    batch_size: int = 128
    lr: float | None = None  # default: 0.1 one-cycle max (scratch), 1e-3 Adam (fine-tune)
    weight_decay: float = 5e-4
    crop: bool = True  # scratch only; the paper's fine-tune uses flip only
    seed: int = 0

    @property
    def mode(self) -> str:
        return "scratch" if self.weights == "none" else "finetune"


def weights_identity(weights: str) -> str:
    if weights in ("none", "imagenet"):
        return weights
    p = Path(weights)
    if not p.is_file():
        raise UserError(f"--weights {weights!r} is neither 'none', 'imagenet' nor an existing state_dict file")
    return f"file:{file_sha256(p)}"


def cache_key(arch: str, ds: Dataset, recipe: TeacherRecipe) -> dict:
    r = asdict(recipe)
    r["weights"] = weights_identity(recipe.weights)
    return {"arch": arch, "dataset": ds.name, "resolution": ds.resolution, "val_size": len(ds.val),
            "split_seed": ds.meta.get("split_seed"), "recipe": r, "version": 1}


def cache_dir(arch: str, ds: Dataset, recipe: TeacherRecipe, out_dir=None) -> Path:
    key = cache_key(arch, ds, recipe)
    return out_root(out_dir) / "teachers" / f"{arch}-{ds.name}-r{ds.resolution}-{stable_hash(key)}"


def _imagenet_state_dict(arch: str) -> dict:
    from torchvision.models import get_weight

    try:
        return get_weight(IMAGENET_WEIGHTS[arch]).get_state_dict(progress=True)
    except Exception as e:
        raise UserError(f"could not fetch torchvision ImageNet weights for {arch} ({type(e).__name__}); "
                        f"pass --weights PATH to a local state_dict, or --weights none to train from scratch"
                        ) from None


def init_model(arch: str, num_classes: int, weights: str) -> nn.Module:
    """The base architecture, with ImageNet backbone weights loaded if asked (head re-initialised)."""
    adapter = get_adapter(arch)
    model = adapter.base_model(num_classes)
    if weights == "none":
        return model
    sd = _imagenet_state_dict(arch) if weights == "imagenet" else load_state_dict(Path(weights), "weights file")
    head = adapter.head_name + "."
    sd = {k: v for k, v in sd.items() if not k.startswith(head)}
    own = model.state_dict()
    bad = [k for k, v in sd.items() if k not in own or own[k].shape != v.shape]
    missing = [k for k in own if not k.startswith(head) and k not in sd]
    if bad or missing:
        ex = (bad or missing)[0]
        raise UserError(f"weights {weights!r} do not match {arch}: {len(bad)} unexpected/mis-shaped and "
                        f"{len(missing)} missing tensors (e.g. {ex}); use weights saved from torchvision {arch}")
    model.load_state_dict(sd, strict=False)
    return model


def _unfreeze_last_third(model: nn.Module, arch: str) -> list[nn.Parameter]:
    """The paper's fine-tune: train the last third of the blocks and the head, freeze the rest."""
    adapter = get_adapter(arch)
    blocks = list(adapter.blocks(model))
    trainable = set(blocks[len(blocks) - max(1, len(blocks) // 3):])
    params = []
    for name, p in model.named_parameters():
        keep = name.startswith(adapter.head_name + ".") or any(name.startswith(b + ".") for b in trainable)
        p.requires_grad_(keep)
        if keep:
            params.append(p)
    return params


def train_teacher(arch: str, ds: Dataset, recipe: TeacherRecipe, device: torch.device, quiet=False) -> tuple[nn.Module, dict]:
    torch.manual_seed(recipe.seed)
    model = init_model(arch, ds.num_classes, recipe.weights).to(device)
    scratch = recipe.mode == "scratch"
    train_loader = Loader(ds.train, recipe.batch_size, device, shuffle=True, flip=True, crop=scratch and recipe.crop,
                          resolution=ds.resolution, seed=recipe.seed, drop_last=True)
    val_loader = Loader(ds.val, 512, device, resolution=ds.resolution)
    if scratch:
        lr = recipe.lr or 0.1
        opt = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9, nesterov=True, weight_decay=recipe.weight_decay)
        sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, epochs=recipe.epochs,
                                                    steps_per_epoch=len(train_loader))
    else:
        opt = torch.optim.Adam(_unfreeze_last_third(model, arch), lr=recipe.lr or 1e-3)
        sched = None
    log = EpochLog(f"teacher {arch}/{ds.name}", quiet)
    t0 = time.perf_counter()
    for epoch in range(1, recipe.epochs + 1):
        train_loader.set_epoch(epoch)
        stats = train_epoch_ce(model, train_loader, opt, sched)
        log(epoch=epoch, **stats, val_top1=evaluate(model, val_loader))
    for p in model.parameters():
        p.requires_grad_(True)
    model.eval()
    return model, {"train_seconds": time.perf_counter() - t0, "epochs_log": log.rows}


def get_teacher(arch: str, ds: Dataset, recipe: TeacherRecipe, device: torch.device, out_dir=None,
                force: bool = False, quiet: bool = False) -> tuple[nn.Module, dict]:
    """Load the cached teacher for (arch, data, recipe), training and caching it on a miss.

    Returns (model in eval mode on ``device``, record); record["cache_hit"] says which happened.
    """
    adapter = get_adapter(arch)
    folder = cache_dir(arch, ds, recipe, out_dir)
    ckpt = folder / "model.pt"
    if ckpt.exists() and not force:
        model = adapter.base_model(ds.num_classes)
        sd = load_state_dict(ckpt, "cached teacher")
        try:
            model.load_state_dict(sd)
        except RuntimeError:
            raise UserError(f"cached teacher {ckpt} does not match {arch} with {ds.num_classes} classes; "
                            f"delete {folder} or pass --force to retrain") from None
        import json

        record = json.loads((folder / "record.json").read_text())
        record["cache_hit"] = True
        record["path"] = str(folder)
        return model.to(device).eval(), record
    ensure_writable(folder.parent)
    model, train_info = train_teacher(arch, ds, recipe, device, quiet)
    test_loader = Loader(ds.test, 512, device, resolution=ds.resolution)
    val_loader = Loader(ds.val, 512, device, resolution=ds.resolution)
    record = {"arch": arch, "dataset": ds.name, "key": cache_key(arch, ds, recipe),
              "val_top1": evaluate(model, val_loader), "test_top1": evaluate(model, test_loader),
              "params": metrics.count_params(model), "gmacs": metrics.gmacs(model, ds.resolution),
              "size_bytes": metrics.checkpoint_size(model), "device": str(device), **train_info}
    with atomic_dir(folder) as tmp:
        torch.save(model.state_dict(), tmp / "model.pt")
        write_json(tmp / "record.json", record)
    record["cache_hit"] = False
    record["path"] = str(folder)
    return model, record


if __name__ == "__main__":  # python -m m2mdc.teacher: the CLI lives with the others
    from .cli.teacher import main

    main()
