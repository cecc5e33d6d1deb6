"""A compressed model on disk: written all or nothing, reloaded exactly (weights_only)."""
from __future__ import annotations

import copy
import json
from pathlib import Path

import torch
from torch import nn

from .errors import UserError
from .io import atomic_dir, load_state_dict, write_json
from .models import get_adapter


def save_result(model: nn.Module, record: dict, folder: Path) -> Path:
    """Write a loadable artefact, all or nothing: keep_cfg.json (rebuilds the architecture),
    record.json, and the weights: FP32 as model.pt (state_dict) + model.pt2 (torch.export);
    INT8 as model.pt2 (the converted torch.export program)."""
    res = record.get("resolution", 32)
    with atomic_dir(folder) as tmp:
        if not record.get("int8"):
            torch.save({k: v.cpu() for k, v in model.state_dict().items()}, tmp / "model.pt")
        # INT8 models are CPU-only already, and deep copies of exported graphs lose their eval switch
        cpu_model = model if record.get("int8") else copy.deepcopy(model).cpu().eval()
        ep = torch.export.export(cpu_model, (torch.zeros(2, 3, res, res),),
                                 dynamic_shapes=({0: torch.export.Dim("batch")},))
        torch.export.save(ep, tmp / "model.pt2")
        write_json(tmp / "keep_cfg.json", {"arch": record["arch"], "num_classes": record["num_classes"],
                                           "keep_cfg": record["keep_cfg"], "int8": bool(record.get("int8")),
                                           "resolution": res})
        write_json(tmp / "record.json", record)
    return folder


def load_result(folder: Path, device: torch.device | str = "cpu") -> tuple[nn.Module, dict]:
    """Rebuild a saved student from keep_cfg.json and load its weights (weights_only)."""
    folder = Path(folder)
    try:
        meta = json.loads((folder / "keep_cfg.json").read_text())
    except (OSError, ValueError):
        raise UserError(f"{folder} has no readable keep_cfg.json; point to a folder written by m2mdc.compress") from None
    if meta.get("int8"):
        from . import quant  # noqa: F401 - registers the quantized_decomposed ops the program uses

        try:
            model = torch.export.load(folder / "model.pt2").module()
            quant.strip_unused(model)  # artefacts written before strip_unused still carry FP32 weights
            quant._inference_only(model)  # exported modules refuse .eval(); the INT8 graph is eval-only
            return model, meta
        except Exception as e:  # noqa: BLE001 - any unreadable artefact is the same user problem
            raise UserError(f"{folder / 'model.pt2'} is not a loadable torch.export file ({type(e).__name__})") from None
    adapter = get_adapter(meta["arch"])
    model = adapter.rebuild(meta["keep_cfg"], meta["num_classes"])
    try:
        model.load_state_dict(load_state_dict(folder / "model.pt", "student checkpoint"))
    except RuntimeError:
        raise UserError(f"{folder / 'model.pt'} does not match its keep_cfg.json; re-export the model") from None
    return model.to(device).eval(), meta
