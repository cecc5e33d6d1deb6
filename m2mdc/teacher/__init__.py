"""Teacher: fine-tuned from ImageNet weights when they can be had, else trained from scratch;
cached on disk keyed by everything that determines it, so a search trains it once.

    python -m m2mdc.teacher --arch resnet18 --dataset cifar100 --epochs 15     (m2mdc/cli/teacher.py)
"""
from __future__ import annotations

import time
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from torch import nn

from .. import metrics
from ..data import IMAGENET_MEAN, IMAGENET_STD, Dataset, Loader
from ..errors import UserError
from ..io import atomic_dir, ensure_writable, file_sha256, load_state_dict, out_root, stable_hash, write_json
from ..models import IMAGENET_WEIGHTS, get_adapter
from ..train import EpochLog, evaluate, evaluate_split, pct, train_epoch_ce


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


@dataclass(frozen=True)
class TeacherFile:
    """The user's trained model: a state_dict (or a checkpoint holding one) of the chosen
    architecture. Used as it is, never retrained; identified by its content hash, so the MI scores
    and teacher outputs cached next to it are reused while the file is unchanged."""

    path: str
    sha256: str

    mode = "file"

    @classmethod
    def of(cls, path: str | Path) -> "TeacherFile":
        p = Path(path)
        if not p.is_file():
            raise UserError(f"--teacher {path}: no such file; pass the path of your trained model's checkpoint")
        return cls(str(p.resolve()), file_sha256(p))


CHECKPOINT_KEYS = ("state_dict", "model_state_dict", "model", "net", "weights")  # where trainers keep the weights


def read_checkpoint(path: str | Path, arch: str, num_classes: int | None = None) -> nn.Module:
    """The model in ``path`` (weights_only), built as ``arch``: a plain state_dict, or a dict holding
    one under a usual key, ``module.`` prefixes (DataParallel / DDP) stripped. One clear UserError for
    a corrupt file, another architecture, or a head for another number of classes."""
    try:
        with warnings.catch_warnings():  # torch comments on odd pickle protocols before failing on them
            warnings.simplefilter("ignore")
            obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - unreadable, truncated, pickled code: all the same to the user
        raise UserError(f"--teacher {path} is corrupt or not a weights-only PyTorch checkpoint "
                        f"({type(e).__name__}); save it with torch.save(model.state_dict(), PATH)") from None
    for key in CHECKPOINT_KEYS:
        if isinstance(obj, dict) and isinstance(obj.get(key), dict):
            obj = obj[key]
            break
    if not isinstance(obj, dict) or not obj or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise UserError(f"--teacher {path} holds no state_dict of tensors (looked at the top level and under "
                        f"{', '.join(CHECKPOINT_KEYS)})")
    sd = {k[len("module."):] if k.startswith("module.") else k: v for k, v in obj.items()}
    adapter = get_adapter(arch)
    head = f"{adapter.head_name}.weight"
    if head not in sd:
        raise UserError(f"--teacher {path} has no {head}: it is not a {arch} checkpoint (its first keys: "
                        f"{', '.join(list(sd)[:3])}); pass the --arch it was trained as")
    num_classes = num_classes or sd[head].shape[0]
    if sd[head].shape[0] != num_classes:
        raise UserError(f"--teacher {path} has a {sd[head].shape[0]}-class head but the dataset has {num_classes} "
                        f"classes; pass the data it was trained on")
    model = adapter.base_model(num_classes)
    own = model.state_dict()
    missing = [k for k in own if k not in sd]
    unexpected = [k for k in sd if k not in own]
    shaped = [f"{k} {tuple(sd[k].shape)} vs {tuple(own[k].shape)}" for k in own if k in sd and
              sd[k].shape != own[k].shape]
    if missing or unexpected or shaped:
        example = (shaped or missing or unexpected)[0]
        hint = " (a CIFAR-style stem? try --stem cifar)" if shaped and "conv" in example and adapter.stem != "cifar" \
            else ""
        raise UserError(f"--teacher {path} does not match {arch}: {len(missing)} missing, {len(unexpected)} "
                        f"unexpected, {len(shaped)} mis-shaped tensors (e.g. {example}){hint}")
    model.load_state_dict(sd)
    return model.eval()


def weights_identity(weights: str) -> str:
    if weights in ("none", "imagenet"):
        return weights
    p = Path(weights)
    if not p.is_file():
        raise UserError(f"--weights {weights!r} is neither 'none', 'imagenet' nor an existing state_dict file")
    return f"file:{file_sha256(p)}"


def cache_key(arch: str, ds: Dataset, source: TeacherRecipe | TeacherFile) -> dict:
    """Everything that determines the teacher (and its cached MI scores and outputs): data, split,
    and the recipe that trains it or the content hash of the user's file."""
    key = {"arch": arch, "dataset": ds.name, "resolution": ds.resolution, "val_size": len(ds.val),
           "split_seed": ds.meta.get("split_seed")}
    if isinstance(source, TeacherFile):
        key["teacher_file"] = source.sha256
    else:
        r = asdict(source)
        r["weights"] = weights_identity(source.weights)
        key["recipe"] = r
    key["version"] = 1
    if ds.meta.get("fingerprint"):  # a user's folder: its content, not just its name
        key["data"] = ds.meta["fingerprint"]
    if (tuple(ds.train.mean), tuple(ds.train.std)) != (IMAGENET_MEAN, IMAGENET_STD):
        key["norm"] = [list(ds.train.mean), list(ds.train.std)]
    return key


def cache_dir(arch: str, ds: Dataset, source: TeacherRecipe | TeacherFile, out_dir=None) -> Path:
    key = cache_key(arch, ds, source)
    kind = "-file" if isinstance(source, TeacherFile) else ""
    return out_root(out_dir) / "teachers" / f"{arch}-{ds.name}-r{ds.resolution}{kind}-{stable_hash(key)}"


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


def evaluate_teacher(model: nn.Module, ds: Dataset, device) -> dict:
    """Accuracy and cost of a teacher, as every record states it."""
    val = evaluate(model, Loader(ds.val, 512, device, resolution=ds.resolution))
    return {"val_top1": val, "test_top1": evaluate_split(model, ds.test, device, ds.resolution),
            "params": metrics.count_params(model), "gmacs": metrics.gmacs(model, ds.resolution),
            "size_bytes": metrics.checkpoint_size(model), "device": str(device),
            "mean": list(ds.train.mean), "std": list(ds.train.std)}


def load_teacher_file(arch: str, ds: Dataset, source: TeacherFile, device: torch.device, out_dir=None
                      ) -> tuple[nn.Module, dict]:
    """The user's model, evaluated on val and test before anything else (and refused when it scores
    near chance, the sign of a preprocessing mismatch); its record goes to its cache folder."""
    import json

    model = read_checkpoint(source.path, arch, ds.num_classes).to(device)
    folder = cache_dir(arch, ds, source, out_dir)
    key = cache_key(arch, ds, source)
    try:
        record = json.loads((folder / "record.json").read_text())
        hit = record.get("key") == key
    except (OSError, ValueError):
        hit = False
    if not hit:
        record = {"arch": arch, "dataset": ds.name, "key": key, "source": "file", "file": source.path,
                  "sha256": source.sha256, **evaluate_teacher(model, ds, device),
                  "val_seen_by_teacher": bool(ds.meta.get("val_from_train"))}
        chance = 100.0 / ds.num_classes
        if record["val_top1"] <= 2 * chance:
            raise UserError(f"--teacher {source.path} scores {record['val_top1']:.2f}% on val, near chance "
                            f"({chance:.2f}% for {ds.num_classes} classes): its inputs are probably prepared "
                            f"differently from its training; check --resolution ({ds.resolution}), --mean / --std "
                            f"(now {list(ds.train.mean)} / {list(ds.train.std)}) and --stem")
        ensure_writable(folder.parent)
        folder.mkdir(exist_ok=True)
        write_json(folder / "record.json", record)
    record.update(cache_hit=hit, path=str(folder))
    return model.eval(), record


def get_teacher(arch: str, ds: Dataset, recipe: TeacherRecipe | TeacherFile, device: torch.device, out_dir=None,
                force: bool = False, quiet: bool = False) -> tuple[nn.Module, dict]:
    """The teacher for (arch, data, source): the user's file as it is, or the cached teacher of a
    recipe, trained and cached on a miss.

    Returns (model in eval mode on ``device``, record); record["cache_hit"] says which happened.
    """
    if isinstance(recipe, TeacherFile):
        return load_teacher_file(arch, ds, recipe, device, out_dir)
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
    record = {"arch": arch, "dataset": ds.name, "key": cache_key(arch, ds, recipe),
              **evaluate_teacher(model, ds, device), **train_info}
    with atomic_dir(folder) as tmp:
        torch.save(model.state_dict(), tmp / "model.pt")
        write_json(tmp / "record.json", record)
    record["cache_hit"] = False
    record["path"] = str(folder)
    return model, record


def teacher_line(record: dict) -> str:
    """The teacher's numbers as every CLI prints them; a val split the teacher has probably seen is said so."""
    seen = " (val held out of train/: the teacher has probably seen it)" if record.get("val_seen_by_teacher") else ""
    return (f"[teacher] val top-1 {record['val_top1']:.2f}%{seen}  test top-1 {pct(record.get('test_top1'))}  "
            f"GMACs {record['gmacs']:.4f}")
