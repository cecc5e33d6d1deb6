"""Search the frontier from Python, on your own module and data (``python search/frontier.py`` as a call).

    from search import api
    frontier = api.search(model, train_ds, val_ds, budget_gmacs=0.02, num_samples=24)
    best = max(frontier.members, key=lambda m: m.val_top1)
    student = best.load()

It builds the same checked search request as the command line (search/frontier.py ``search_request``)
with your module as the teacher and your datasets as the data, then runs it: Ray Tune trials, Optuna's
sampler, MLflow records, promotion. This lives in ``search`` rather than ``m2mdc`` because the library
never imports Ray, Optuna or MLflow.

What is written, and what is cached: your module's weights go to ``OUT/api/teachers/<sha256>.pt`` (the
search's --teacher file, content-addressed); your data is read once through your transform
(m2mdc.user_data) and shipped to the trials in memory; the teacher's record, MI scores and outputs are
cached under ``OUT/teachers/``, keyed on the weights' and the data tensors' content hashes.
"""
from __future__ import annotations

import hashlib
import json
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd
import torch
from torch import nn

from m2mdc.errors import UserError
from m2mdc.io import ensure_writable, out_root
from m2mdc.models import get_adapter, recognise_module, split_arch
from m2mdc.results import load_result
from m2mdc.teacher import TeacherFile
from m2mdc.user_data import user_dataset
from search.driver import run_search
from search.frontier import build_parser, search_request


@dataclass
class Member:
    """One Pareto member, at the highest fidelity it reached."""

    trial_id: str
    origin: str
    fidelity: str
    val_top1: float
    gmacs: float
    config: dict
    run_id: str | None
    model_dir: Path

    def load(self) -> nn.Module:
        """The member's trained module (an INT8 member: its torch.export program, on the CPU)."""
        return load_result(self.model_dir)[0]


@dataclass
class Frontier:
    """A finished search: its Pareto members, every trial as a DataFrame (trials.csv), and where MLflow
    holds them (``mlflow ui --backend-store-uri {mlflow_uri}``)."""

    name: str
    members: list[Member]
    trials: pd.DataFrame
    mlflow_uri: str
    folder: Path
    record: dict = field(default_factory=dict)


def search(model: nn.Module, train, val, *, budget_gmacs: float | None = None, budget_ms: float | None = None,
           test=None, num_samples: int | None = None, profile: str = "quick", sampler: str = "tpe",
           name: str | None = None, out_dir: str | Path | None = None, mlflow_uri: str | None = None,
           address: str | None = None, resume: bool = False, device: str = "auto", quiet: bool = True,
           flags: tuple[str, ...] = ()) -> Frontier:
    """Search ``model``'s accuracy-compute frontier under ``budget_gmacs`` (and/or ``budget_ms``).

    ``model``, ``train``, ``val``, ``test``: as m2mdc.compress takes them (a recognised torchvision family;
    Datasets or DataLoaders of (image, label)). ``num_samples`` / ``profile`` / ``sampler``: as the
    command's flags; ``flags``: any other flag of ``python search/frontier.py --help``, e.g.
    ``("--promote", "0")``. ``address``: a Ray cluster to join (default: a private local one);
    ``mlflow_uri``: a tracking server (default: SQLite under ``out_dir``). Raises m2mdc.UserError on bad
    input, before anything runs, and when the search ends interrupted (``resume=True`` continues it).
    """
    arch, net = recognise_module(model)
    base, stem = split_arch(arch)
    num_classes = net.get_submodule(get_adapter(arch).head_name).out_features
    ds = user_dataset(train, val, test, num_classes)
    root = ensure_writable(out_root(out_dir))
    teacher = _write_teacher(net, root / "api" / "teachers")
    argv = ["--arch", base, "--stem", stem, "--teacher", str(teacher), "--resolution", str(ds.resolution),
            "--profile", profile, "--sampler", sampler, "--out-dir", str(root), "--device", device]
    for flag, value in (("--budget-gmacs", budget_gmacs), ("--budget-ms", budget_ms), ("--num-samples", num_samples),
                        ("--name", name), ("--mlflow-uri", mlflow_uri), ("--address", address)):
        if value is not None:
            argv += [flag, str(value)]
    argv += ["--resume"] * resume + ["--quiet"] * quiet + [str(f) for f in flags]
    try:
        a = build_parser().parse_args(argv)
    except SystemExit:  # argparse already printed the one line
        raise UserError(f"bad search flags: {' '.join(flags)} (see python search/frontier.py --help)") from None
    req = search_request(a, data=(TeacherFile.of(teacher), ds))
    if run_search(req) != 0:
        raise UserError(f"search {req.name} ended before all its trials did; call search(..., resume=True, "
                        f"name={req.name!r}) with the same arguments to continue it")
    return read_frontier(req.exp_dir, req.name, req.mlflow_uri)


def read_frontier(folder: Path, name: str, mlflow_uri: str) -> Frontier:
    """The members and trial table a finished search wrote (search/report.py: trials.csv)."""
    trials = pd.read_csv(folder / "trials.csv", dtype={"trial_id": str})
    members = [Member(r.trial_id, r.origin if isinstance(r.origin, str) else "",
                      r.fidelity if isinstance(r.fidelity, str) else "short", float(r.val_top1),
                      float(r.gmacs), json.loads(r.config), r.run_id if isinstance(r.run_id, str) else None,
                      Path(r.model_dir)) for r in trials[trials["pareto"]].itertuples()]
    record = json.loads((folder / "search.json").read_text()) if (folder / "search.json").exists() else {}
    return Frontier(name, sorted(members, key=lambda m: m.gmacs), trials, mlflow_uri, folder, record)


def _write_teacher(net: nn.Module, folder: Path) -> Path:
    """The module's state_dict as the search's --teacher file, named by its content hash (written once)."""
    folder.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=folder, suffix=".tmp")
    os.close(fd)
    torch.save({k: v.detach().cpu() for k, v in net.state_dict().items()}, tmp)
    digest = hashlib.sha256(Path(tmp).read_bytes()).hexdigest()[:16]
    path = folder / f"{digest}.pt"
    os.replace(tmp, path)
    return path
