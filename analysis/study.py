"""Fair re-training for comparisons: every run of a table trains the same total KD epochs (of the
same batches per epoch) with the same KD settings, is BN-recalibrated after its structural edits,
and is saved as a small JSON record under a committed results folder, keyed by what determines it
(the teacher's weight hash included) and reused when it matches, so a table can be completed over
several sessions and on fresh machines.

A run is a *method* (a knob configuration compiled by m2mdc.compiler, Torch-Pruning's local or
global pruning, a PQD order) at a *budget* (short: 8 epochs of 40 batches, the quick profile's
total; long: 8 full epochs) and a *seed* (batch order, augmentation). Equal settings are asserted
on what the training code was handed: each record keeps the KD settings of the plan it ran.
"""
from __future__ import annotations

import hashlib
import json
import os
import platform
import statistics
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

from m2mdc.compiler import compile_config
from m2mdc.errors import UserError
from m2mdc.fidelity import ADAPTIVE_BN, LONG, plan_at, split_epochs
from m2mdc.io import stable_hash, write_json
from m2mdc.knobs import setting_config
from m2mdc.results import save_result
from m2mdc.runner import run_plan


def results_root() -> Path:
    """The committed results/ folder tables resume from ($M2MDC_RESULTS_DIR elsewhere: the tests' own)."""
    return Path(os.environ.get("M2MDC_RESULTS_DIR") or Path(__file__).resolve().parents[1] / "results")


# total KD epochs spread over a plan's repairs, batches per epoch (None: full passes); "search" gives every
# repair its own epochs instead (the quick search profile's proxy, per_repair); "adaptive_bn" trains nothing
BUDGETS = {"short": {"epochs": 8, "steps_per_epoch": 40},
           "long": {"epochs": LONG.total_epochs, "steps_per_epoch": LONG.steps_per_epoch},
           "search": {"epochs": 2, "steps_per_epoch": 40, "per_repair": True},
           "adaptive_bn": {"epochs": 0, "steps_per_epoch": None}}
# One KD setting for every row of a comparison: the paper's loss (ramped alpha*=beta*=0.1, Adam 1e-4,
# clip 1.0) plus Hinton's KL term (weight 1, T 4), the strongest repair measured here (shared notes),
# so no baseline is handicapped by its repair.
FIXED_KD = {"kd.alpha": 0.1, "kd.beta": 0.1, "kd.lr": 1e-4, "kd.kl_weight": 1.0, "kd.temperature": 4.0}
KD_COMPARED = ("alpha", "beta", "lr", "clip", "batch_size", "kl_weight", "temperature", "crop", "steps_per_epoch")


@dataclass
class Run:
    """One (method, budget, seed) of a table."""

    row: str  # the table's row label
    method: str  # "config" | "torch-pruning" | "pqd"
    budget: str  # key of BUDGETS
    seed: int
    config: dict = field(default_factory=dict)  # knobs (config / pqd methods)
    recipe: str = "fractions"
    tp_global: bool = False  # torch-pruning: one global ranking instead of one ratio per layer
    qat: bool = False  # torch-pruning: then INT8 QAT with KD under fake-quant (half the epochs each)
    tuned_kd: bool = False  # keep the configuration's own KD knobs instead of FIXED_KD
    tp_importance: str = "group_l1"  # torch-pruning: group_l1 (magnitude) or group_taylor (probe CE gradient)
    project: str = "down"  # config: widths projected onto the cost target only from above, or "both" (m2mdc.compiler)

    def key(self, teacher_sha: str, budget_gmacs: float) -> str:
        fields = asdict(self)
        if fields["tp_importance"] == "group_l1":  # the default before the field existed: saved keys stay valid
            del fields["tp_importance"]
        if fields["project"] == "down":  # likewise
            del fields["project"]
        return stable_hash({**fields, "teacher": teacher_sha, "budget_gmacs": budget_gmacs,
                            "budgets": BUDGETS[self.budget], "fixed_kd": None if self.tuned_kd else FIXED_KD,
                            "version": 1}, 12)


def teacher_sha(ctx) -> str:
    """The teacher's identity for reuse: the sha256 of its weights (file or cached model.pt)."""
    rec = ctx.teacher_record
    if rec.get("sha256"):
        return rec["sha256"]
    h = hashlib.sha256()
    with open(Path(rec["path"]) / "model.pt", "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _kd_knobs(run: Run, config: dict) -> dict:
    return config if run.tuned_kd else {**config, **setting_config(FIXED_KD)}


def plan_of(run: Run, target, budget_gmacs: float) -> list[dict]:
    """The plan a run trains: Torch-Pruning's pruning then the budget's KD (the tp_prune step), or a
    config / pqd run compiled; then the budget's total epochs spread over its repairs."""
    b = BUDGETS[run.budget]
    if run.method == "torch-pruning":
        kd = {"step": "kd", "seed": run.seed, "steps_per_epoch": b["steps_per_epoch"],
              **{k.split(".")[1]: v for k, v in FIXED_KD.items()}}
        prune = {"step": "tp_prune", "budget_gmacs": budget_gmacs, "global_pruning": run.tp_global,
                 "importance": run.tp_importance}
        return [prune, *split_epochs([kd] if not run.qat else [kd, {"step": "qat"}, dict(kd)], b["epochs"])]
    training = {"steps_per_epoch": b["steps_per_epoch"], "seed": run.seed}
    if run.method == "pqd":
        training.update(pqd_epochs=b["epochs"])
    if b.get("per_repair"):
        training["epochs"] = b["epochs"]
    compiled = compile_config(_kd_knobs(run, run.config), target, recipe=run.recipe, budget_gmacs=budget_gmacs,
                              training=training, project=run.project)
    if not compiled.feasible:
        raise UserError(f"{run.row}: does not fit {budget_gmacs:g} GMACs ({'; '.join(compiled.notes)})")
    if run.method == "pqd" or b.get("per_repair"):
        return compiled.plan
    return plan_at(compiled.plan, ADAPTIVE_BN) if b["epochs"] == 0 else split_epochs(compiled.plan, b["epochs"])


def kd_settings(plan: list[dict]) -> dict:
    """The KD settings the training code is handed (they must agree across a table's rows)."""
    kds = [{k: s[k] for k in KD_COMPARED} for s in plan if s["step"] == "kd"]
    if any(k != kds[0] for k in kds):
        raise ValueError(f"a plan's KD repairs disagree: {kds}")
    return kds[0] if kds else {}


def saved_result(run: Run, ctx, budget_gmacs: float, folder: Path) -> dict | None:
    """The run's saved result on this teacher, or None: what ``execute`` would reuse, without training."""
    path = folder / f"{run.budget}-seed{run.seed}-{run.key(teacher_sha(ctx), budget_gmacs)}.json"
    return json.loads(path.read_text()) if path.exists() else None


def execute(run: Run, ctx, target, budget_gmacs: float, folder: Path, models: Path | None = None,
            quiet: bool = True, need_model: bool = False) -> dict:
    """The run's result, from ``folder`` when it was done before on this teacher, else trained now.
    ``need_model``: the caller times the model, so a saved result whose model is not on this machine
    (models live under outputs/, results under the committed results/) is trained again to save the
    model; the saved result, not the re-run's, is returned, marked ``model_retrained``."""
    sha = teacher_sha(ctx)
    key = run.key(sha, budget_gmacs)
    path = folder / f"{run.budget}-seed{run.seed}-{key}.json"
    saved = saved_result(run, ctx, budget_gmacs, folder)
    if saved is not None and not (need_model and models is not None and not (models / path.stem).exists()):
        return saved
    if saved is not None:
        print(f"[study] {run.row}: {run.budget} budget, seed {run.seed}: its model is not on this machine; "
              f"training it again to time it (the saved result stays the one reported)", flush=True)
    t0 = time.perf_counter()
    plan = plan_of(run, target, budget_gmacs)

    def progress(row):  # one line an epoch when the step logs are off: a long-budget run is minutes of silence
        val = f", val top-1 {row['val_top1']:.2f}%" if "val_top1" in row else ""
        print(f"[study]   {run.row}: {run.budget} seed {run.seed}, step {row['step_index']} {row['step']} "
              f"epoch {row.get('epoch', '?')}{val} ({(time.perf_counter() - t0) / 60:.1f} min)", flush=True)

    model, record = run_plan(plan, ctx, quiet=quiet, on_epoch=progress if quiet else None)
    if models is not None:
        save_result(model, record, models / path.stem)
    if saved is not None:
        return {**saved, "model_retrained": True}
    result = {"row": run.row, "run": asdict(run), "key": key, "teacher_sha256": sha, "budget_gmacs": budget_gmacs,
              "val_top1": record["val_top1"], "test_top1": record["test_top1"], "gmacs": record["gmacs"],
              "params": record["params"], "int8": record["int8"], "keep_cfg": record["keep_cfg"],
              "kd_settings": kd_settings(record["plan"]),
              "kd_epochs_trained": sum(s["epochs_trained"] for s in record["steps"] if s["step"] == "kd"),
              "epochs_trained": sum(s.get("epochs_trained", 0) for s in record["steps"]),
              "steps": [s["step"] for s in record["plan"]],
              "step_epochs": [s.get("epochs_trained", 0) for s in record["steps"]],
              "minutes": (time.perf_counter() - t0) / 60, "machine": machine()}
    if run.method == "torch-pruning":
        result["tp_ratio"] = record["notes"]["tp_ratio"]
    write_json(path, result)
    return result


def machine() -> str:
    cpu = "unknown CPU"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{cpu}, {torch.get_num_threads()} threads, torch {torch.__version__}, {platform.system()}"


def mean_std(xs: list[float]) -> str:
    if not xs:
        return ""
    if len(xs) == 1:
        return f"{xs[0]:.2f}"
    return f"{statistics.mean(xs):.2f} ± {statistics.stdev(xs):.2f}"
