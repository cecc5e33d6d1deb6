"""A compression plan is data: an ordered list of named steps with parameters.

    [{"step": "block_prune", "ratio": 0.5}, {"step": "kd"},
     {"step": "planes", "keep": 0.5}, {"step": "kd"}, {"step": "mid", "keep": 0.5}, {"step": "kd"}]

``run_plan`` executes it on a teacher and returns the final model with a JSON-able record of
every step (val/test top-1, params, GMACs, wall time), the keep_cfg and per-stage widths.
Expensive inputs shared by many plans (teacher, cached teacher outputs, MI scores, data) live
in a ``Context`` that is built once and reused.
"""
from __future__ import annotations

import copy
import time
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Callable

import torch
from torch import nn

from . import metrics
from .bn import recalibrate_bn
from .data import Dataset, Loader, probe_loader
from .distill import KDConfig, TeacherOutputs, distill
from .errors import UserError, check_range
from .models import get_adapter
from .models.base import Adapter
from .prune_blocks import keep_blocks_after, prune_student, select_blocks_to_prune
from .slicing import SIGNALS, mid_widths, planes_widths, slice_groups
from .train import evaluate

BN_RECAL_BATCHES = 50


@dataclass
class Context:
    """Inputs shared by every plan run against one teacher; built once (a search ships it to trials)."""

    arch: str
    ds: Dataset
    teacher: nn.Module
    device: torch.device
    teacher_record: dict = field(default_factory=dict)
    cache_dir: Path | None = None  # the teacher's cache folder: MI scores and teacher outputs go here
    teacher_outputs: TeacherOutputs | None = None
    block_scores: dict[tuple, dict[str, float]] = field(default_factory=dict)

    @property
    def adapter(self) -> Adapter:
        return get_adapter(self.arch)

    def get_block_scores(self, bins: int, probe_samples: int) -> dict[str, float]:
        key = (bins, probe_samples)
        if key not in self.block_scores:
            from .mi import load_or_compute_block_scores

            path = self.cache_dir / f"mi-blocks-b{bins}-n{probe_samples}.json" if self.cache_dir else None
            probe = probe_loader(self.ds, self.device, max_samples=probe_samples)
            self.block_scores[key] = load_or_compute_block_scores(path, self.teacher, self.adapter, probe, bins)
        return self.block_scores[key]

    def get_teacher_outputs(self) -> TeacherOutputs:
        if self.teacher_outputs is None:
            path = self.cache_dir / "teacher-outputs.pt" if self.cache_dir else None
            if path is not None and path.exists():
                try:
                    self.teacher_outputs = TeacherOutputs.load(path, self.device)
                    self.teacher_outputs.check_matches(self.ds.train, self.ds.resolution)
                except (UserError, ValueError, RuntimeError, OSError):
                    self.teacher_outputs = None  # stale or corrupt: recompute below
            if self.teacher_outputs is None:
                self.teacher_outputs = TeacherOutputs.compute(self.teacher, self.adapter, self.ds.train,
                                                              self.device, resolution=self.ds.resolution)
                if path is not None:
                    self.teacher_outputs.save(path)
        return self.teacher_outputs


@dataclass
class State:
    """What a step changes: the model, and which teacher phi channels its phi still matches."""

    model: nn.Module
    feature_index: torch.Tensor | None = None
    qat: bool = False  # model is a fake-quant (PT2E-prepared) student; converted to INT8 at the end
    sparsity: dict | None = None  # the last unstructured-pruning report


@dataclass(frozen=True)
class Step:
    name: str
    fn: Callable[..., None]
    defaults: dict
    structural: bool = False  # edits the architecture: BN is recalibrated afterwards


StepHook = Callable[[dict], bool | None]


def _recal(ctx: Context, state: State) -> None:
    loader = Loader(ctx.ds.train, 128, ctx.device, shuffle=True, resolution=ctx.ds.resolution, seed=1)
    recalibrate_bn(state.model, loader, batches=BN_RECAL_BATCHES)


def _step_block_prune(ctx: Context, state: State, ratio=None, keep_blocks=None, bins=10, probe_samples=5000,
                      **_):
    adapter = ctx.adapter
    if keep_blocks is None:
        scores = ctx.get_block_scores(bins, probe_samples)
        pruned = select_blocks_to_prune(scores, adapter, state.model, ratio)
        keep_blocks = keep_blocks_after(adapter, state.model, pruned)
    state.model = prune_student(state.model, adapter, keep_blocks, ctx.ds.num_classes).to(ctx.device)


def _slice(ctx: Context, state: State, widths: dict[str, int], signal: str, bins: int, probe_samples: int):
    adapter = ctx.adapter
    probe = probe_loader(ctx.ds, ctx.device, max_samples=probe_samples) if signal == "mi" else None
    new, kept = slice_groups(state.model, adapter, widths, ctx.ds.num_classes, signal, probe, bins,
                             check_input=torch.zeros(2, 3, ctx.ds.resolution, ctx.ds.resolution))
    head_in = adapter.channel_groups(state.model)[adapter.head_name][1]
    if head_in in kept:  # the head's input (phi) lost channels: track which teacher channels remain
        base = state.feature_index if state.feature_index is not None else torch.arange(
            adapter.group_widths(state.model)[head_in])
        state.feature_index = base.cpu()[kept[head_in]]
    state.model = new


def _step_planes(ctx: Context, state: State, keep=0.5, signal="bn", bins=10, probe_samples=5000, **_):
    _slice(ctx, state, planes_widths(state.model, ctx.adapter, keep), signal, bins, probe_samples)


def _step_mid(ctx: Context, state: State, keep=0.5, signal="bn", bins=10, probe_samples=5000, **_):
    _slice(ctx, state, mid_widths(state.model, ctx.adapter, keep), signal, bins, probe_samples)


def _step_widths(ctx: Context, state: State, keep_cfg=None, signal="bn", bins=10, probe_samples=5000, **_):
    """Absolute planes / mid widths (e.g. from the budget allocator's keep_cfg)."""
    widths = {}
    for stage, w in (keep_cfg or {}).get("planes", {}).items():
        widths[f"planes:{stage}"] = int(w)
    for block, w in (keep_cfg or {}).get("mid", {}).items():
        widths[f"mid:{block}"] = widths[f"mid2:{block}"] = int(w)
    current = ctx.adapter.group_widths(state.model)
    _slice(ctx, state, {g: w for g, w in widths.items() if g in current}, signal, bins, probe_samples)


def _step_kd(ctx: Context, state: State, hook: StepHook | None = None, log_prefix="kd", quiet=False, **params):
    cfg = KDConfig(**params)
    outputs = None if cfg.crop else ctx.get_teacher_outputs()
    distill(state.model, ctx.teacher, ctx.adapter, ctx.ds.train, ctx.ds.val, cfg, ctx.device,
            teacher_outputs=outputs, feature_index=state.feature_index, on_epoch=hook, log_prefix=log_prefix,
            quiet=quiet, resolution=ctx.ds.resolution)


def _step_train(ctx: Context, state: State, epochs=1, lr=1e-4, clip=1.0, batch_size=128, seed=0, hook=None,
                log_prefix="train", quiet=False, steps_per_epoch=None, **_):
    """Plain cross-entropy fine-tuning (Adam), e.g. PQD's repair after pruning or QAT without KD."""
    from .train import EpochLog, train_epoch_ce

    loader = Loader(ctx.ds.train, batch_size, ctx.device, shuffle=True, flip=True, resolution=ctx.ds.resolution,
                    seed=seed, drop_last=True, max_batches=steps_per_epoch)
    val_loader = Loader(ctx.ds.val, 512, ctx.device, resolution=ctx.ds.resolution)
    opt = torch.optim.Adam([p for p in state.model.parameters() if p.requires_grad], lr=lr)
    log = EpochLog(log_prefix, quiet)
    for epoch in range(1, epochs + 1):
        loader.set_epoch(epoch)
        row = {"epoch": epoch, **train_epoch_ce(state.model, loader, opt, clip=clip),
               "val_top1": evaluate(state.model, val_loader)}
        log(**row)
        if hook is not None and hook(row):
            break
    state.model.eval()


def _step_sparsity(ctx: Context, state: State, target=0.5, **_):
    """Global unstructured magnitude pruning; masks persist through later training steps."""
    from . import quant, sparsity

    if state.qat:
        state.sparsity = quant.sparsify_prepared(state.model.prepared, target)
    else:
        state.sparsity = sparsity.apply_sparsity(state.model, target)


def _step_qat(ctx: Context, state: State, calib_batches=10, **_):
    """Swap the model for its PT2E fake-quant twin; later train/kd steps run under fake-quant
    (PQD's QAT then KD-last) and the plan's end converts it to INT8. A few forward passes set
    the fake-quant ranges first, so the step's own accuracy row is meaningful."""
    from . import quant, sparsity

    if state.sparsity is not None:
        sparsity.make_permanent(state.model)  # zeros are kept through QAT by quant.prepare_qat
    example = torch.zeros(2, 3, ctx.ds.resolution, ctx.ds.resolution, device=ctx.device)
    state.model = quant.QATStudent.prepare(state.model.eval(), example, ctx.adapter.head_name, name=ctx.arch)
    state.qat = True
    state.model.train()
    calib = Loader(ctx.ds.train, 128, ctx.device, shuffle=True, resolution=ctx.ds.resolution, seed=2,
                   limit=128 * calib_batches)
    with torch.no_grad():
        for b in calib:
            state.model(b.x)
    state.model.eval()


_KD_DEFAULTS = {f.name: f.default for f in fields(KDConfig)}
_SLICE_DEFAULTS = {"signal": "bn", "bins": 10, "probe_samples": 5000}
STEPS: dict[str, Step] = {
    "block_prune": Step("block_prune", _step_block_prune,
                        {"ratio": None, "keep_blocks": None, "bins": 10, "probe_samples": 5000}, structural=True),
    "kd": Step("kd", _step_kd, _KD_DEFAULTS),
    "planes": Step("planes", _step_planes, {"keep": 0.5, **_SLICE_DEFAULTS}, structural=True),
    "mid": Step("mid", _step_mid, {"keep": 0.5, **_SLICE_DEFAULTS}, structural=True),
    "widths": Step("widths", _step_widths, {"keep_cfg": None, **_SLICE_DEFAULTS}, structural=True),
    "train": Step("train", _step_train, {"epochs": 1, "lr": 1e-4, "clip": 1.0, "batch_size": 128, "seed": 0,
                                         "steps_per_epoch": None}),
    "sparsity": Step("sparsity", _step_sparsity, {"target": 0.5}),
    "qat": Step("qat", _step_qat, {"calib_batches": 10}),
}
TRAINING_STEPS = ("kd", "train")  # report per epoch through on_epoch


def check_order(plan: list[dict]) -> None:
    """Reject orders that cannot run: the architecture is fixed once weights are masked or
    fake-quantised (slicing a pruned or prepared graph would have to re-derive masks and
    quantiser annotations), and a model is quantised once."""
    seen: dict[str, int] = {}
    for i, step in enumerate(plan):
        name = step["step"]
        if STEPS[name].structural:
            for later in ("sparsity", "qat"):
                if later in seen:
                    raise UserError(f"illegal stage order: {name} (step {i}) comes after {later} (step {seen[later]}); "
                                    f"structural steps (block_prune, planes, mid, widths) must precede sparsity and qat")
        if name == "qat" and "qat" in seen:
            raise UserError(f"illegal stage order: qat appears twice (steps {seen['qat']} and {i}); quantise once")
        seen.setdefault(name, i)


def validate_plan(plan: list[dict], arch: str | None = None, num_classes: int | None = None) -> list[dict]:
    """Normalise a plan (defaults filled in) or raise a UserError saying which step is wrong."""
    if not isinstance(plan, list) or not plan:
        raise UserError("a plan must be a non-empty list of steps like {\"step\": \"kd\", \"epochs\": 5}")
    out = []
    for i, raw in enumerate(plan):
        if not isinstance(raw, dict) or "step" not in raw:
            raise UserError(f"plan step {i} must be an object with a 'step' name")
        name = raw["step"]
        if name not in STEPS:
            raise UserError(f"plan step {i} is unknown step {name!r}; known steps: {', '.join(STEPS)}")
        spec = STEPS[name]
        params = {k: v for k, v in raw.items() if k != "step"}
        unknown = sorted(set(params) - set(spec.defaults))
        if unknown:
            raise UserError(f"plan step {i} ({name}) has unknown parameter(s) {unknown}; "
                            f"it takes {sorted(spec.defaults)}")
        step = {"step": name, **spec.defaults, **params}
        _check_step(i, step, arch, num_classes)
        out.append(step)
    check_order(out)
    return out


def _check_step(i: int, step: dict, arch: str | None, num_classes: int | None) -> None:
    name = step["step"]
    where = f"plan step {i} ({name})"
    if name == "block_prune":
        if (step["ratio"] is None) == (step["keep_blocks"] is None):
            raise UserError(f"{where} needs exactly one of 'ratio' or 'keep_blocks'")
        if step["ratio"] is not None:
            check_range(f"{where}: prune ratio", float(step["ratio"]), 0.0, 1.0, hi_open=True,
                        hint="it is the share of unprotected blocks removed")
        elif arch is not None:
            get_adapter(arch).validate_keep_cfg({"blocks": step["keep_blocks"]}, num_classes or 10)
    if name in ("planes", "mid", "widths", "block_prune"):
        check_range(f"{where}: bins", step["bins"], 2, 1000)
        check_range(f"{where}: probe_samples", step["probe_samples"], 1, 10 ** 7)
    if name in ("planes", "mid", "widths") and step["signal"] not in SIGNALS:
        raise UserError(f"{where}: unknown ranking signal {step['signal']!r}; choose one of {', '.join(SIGNALS)}")
    if name in ("planes", "mid"):
        keep = step["keep"]
        for k, v in (keep.items() if isinstance(keep, dict) else [("", keep)]):
            check_range(f"{where}: keep{'[' + k + ']' if k else ''}", float(v), 0.0, 1.0, lo_open=True,
                        hint="a keep fraction is the share of channels kept, in (0, 1]")
    if name == "widths" and arch is not None:
        get_adapter(arch).validate_keep_cfg(step["keep_cfg"] or {}, num_classes or 10)
    if name == "kd":
        KDConfig(**{k: v for k, v in step.items() if k != "step"})  # its own range checks
    if name == "sparsity":
        check_range(f"{where}: sparsity target", float(step["target"]), 0.0, 1.0, hi_open=True,
                    hint="it is the fraction of conv + linear weights set to zero")
    if name == "train":
        check_range(f"{where}: epochs", step["epochs"], 1, 10 ** 6)
        check_range(f"{where}: lr", float(step["lr"]), 0.0, 10.0, lo_open=True)


def m2mdc_plan(prune_ratio: float | None = 0.5, planes_keep: float | dict | None = 0.5,
               mid_keep: float | dict | None = 0.5, keep_blocks: dict | None = None, signal: str = "bn",
               **kd) -> list[dict]:
    """The paper's recipe: block prune -> KD -> planes -> KD -> mid -> KD (a slice step is
    left out when its keep is None or 1)."""
    plan: list[dict] = []
    if keep_blocks is not None:
        plan += [{"step": "block_prune", "keep_blocks": keep_blocks}, {"step": "kd", **kd}]
    elif prune_ratio:
        plan += [{"step": "block_prune", "ratio": prune_ratio}, {"step": "kd", **kd}]
    if planes_keep not in (None, 1, 1.0):
        plan += [{"step": "planes", "keep": planes_keep, "signal": signal}, {"step": "kd", **kd}]
    if mid_keep not in (None, 1, 1.0):
        plan += [{"step": "mid", "keep": mid_keep, "signal": signal}, {"step": "kd", **kd}]
    return plan


PQD_ORDERS = ("pqd", "pdq", "qpd", "qdp", "dpq", "dqp")  # the PQD paper's stage-order ablation
PRESETS = ("m2mdc", "m2mdc+qat", *PQD_ORDERS)


def pqd_plan(order: str = "pqd", sparsity: float = 0.5, epochs: int = 10, split=(0.2, 0.4, 0.4),
             lr: float = 1e-4, **kd) -> list[dict]:
    """Prune (P), quantise (Q), distil (D) in ``order``; ``epochs`` are shared P/Q/D by ``split``
    (PQD's ablation uses 20/40/40). P = unstructured pruning + CE repair, Q = QAT + CE training
    under fake-quant, D = KD (logit/feature alignment, ramped)."""
    if sorted(order) != ["d", "p", "q"]:
        raise UserError(f"PQD order {order!r} must be a permutation of p, q, d (e.g. pqd)")
    e = dict(zip("pqd", (max(1, round(f * epochs)) for f in split)))
    stages = {"p": [{"step": "sparsity", "target": sparsity}, {"step": "train", "epochs": e["p"], "lr": lr}],
              "q": [{"step": "qat"}, {"step": "train", "epochs": e["q"], "lr": lr}],
              "d": [{"step": "kd", "epochs": e["d"], "lr": lr, **kd}]}
    return [s for c in order for s in stages[c]]


def preset_plan(name: str, prune_ratio: float = 0.5, planes_keep=0.5, mid_keep=0.5, signal: str = "bn",
                sparsity: float = 0.5, epochs: int = 10, split=(0.2, 0.4, 0.4), **kd) -> list[dict]:
    """Named plans: ``m2mdc`` (paper 1), ``m2mdc+qat`` (then QAT with KD under fake-quant),
    and the PQD orders (paper 2: ``pqd`` and its five ablation permutations)."""
    if name == "m2mdc":
        return m2mdc_plan(prune_ratio, planes_keep, mid_keep, signal=signal, **kd)
    if name == "m2mdc+qat":
        return m2mdc_plan(prune_ratio, planes_keep, mid_keep, signal=signal, **kd) + [{"step": "qat"},
                                                                                      {"step": "kd", **kd}]
    if name in PQD_ORDERS:
        return pqd_plan(name, sparsity, epochs, split, **kd)
    raise UserError(f"unknown plan preset {name!r}; choose one of {', '.join(PRESETS)}")


def describe(model: nn.Module, adapter: Adapter, resolution: int) -> dict:
    """Structure and cost of an FP32 model: params, GMACs, checkpoint size, keep_cfg, stage widths."""
    cfg = adapter.keep_cfg_of(model)
    return {"params": metrics.count_params(model), "gmacs": metrics.gmacs(model, resolution),
            "size_bytes": metrics.checkpoint_size(model), "keep_cfg": cfg,
            "stage_widths": {s: {"blocks": len(b), "planes": cfg["planes"].get(s)} for s, b in cfg["blocks"].items()}}


def run_plan(plan: list[dict], ctx: Context, on_epoch: StepHook | None = None, quiet: bool = False,
             eval_test: bool = True, deploy: bool = False, init: tuple[nn.Module, list | None] | None = None
             ) -> tuple[nn.Module, dict]:
    """Run ``plan`` on a copy of ctx.teacher, or on ``init`` = (an FP32 student of ctx.arch, the
    teacher phi channels its phi matches or None) to continue from a saved result. ``on_epoch(row)`` sees every training epoch (row has
    'step_index', 'step' and 'gmacs' added) and may return True to stop the whole plan early.

    A plan with a qat step ends with the INT8 conversion; the returned model is then the INT8
    CPU model. ``deploy`` adds measured CPU latency and deployment sizes (m2mdc.deploy).
    Returns (final model, record). Selection uses val; test top-1 is measured for reporting only.
    """
    plan = validate_plan(plan, ctx.arch, ctx.ds.num_classes)
    adapter = ctx.adapter
    res = ctx.ds.resolution
    val_loader = Loader(ctx.ds.val, 512, ctx.device, resolution=res)
    test_loader = Loader(ctx.ds.test, 512, ctx.device, resolution=res)
    if init is None:
        state = State(copy.deepcopy(ctx.teacher).to(ctx.device))
    else:
        model0, feature_index = init
        state = State(copy.deepcopy(model0).to(ctx.device),
                      torch.as_tensor(feature_index) if feature_index is not None else None)
    shape = describe(state.model, adapter, res)  # structure of the FP32 architecture: fixed once qat starts
    rows: list[dict[str, Any]] = []
    stopped = False
    t_start = time.perf_counter()
    for i, step in enumerate(plan):
        spec = STEPS[step["step"]]
        params = {k: v for k, v in step.items() if k != "step"}
        t0 = time.perf_counter()
        epochs_run = [0]  # what this step actually trained (records say what was trained, not what was asked)
        if spec.name in TRAINING_STEPS:
            def hook(row, i=i, name=spec.name, cost=shape["gmacs"]):
                nonlocal stopped
                epochs_run[0] += 1
                stop = on_epoch({**row, "step_index": i, "step": name, "gmacs": cost}) if on_epoch else None
                stopped = stopped or bool(stop)
                return stop

            spec.fn(ctx, state, hook=hook, log_prefix=f"step {i} {spec.name}", quiet=quiet, **params)
        else:
            spec.fn(ctx, state, **params)
            if spec.structural:
                _recal(ctx, state)
                shape = describe(state.model, adapter, res)
        row = {"index": i, "step": spec.name, "params": params, "seconds": time.perf_counter() - t0,
               "val_top1": evaluate(state.model, val_loader),
               "test_top1": evaluate(state.model, test_loader) if eval_test else None,
               "params_count": shape["params"], "gmacs": shape["gmacs"], "keep_cfg": shape["keep_cfg"]}
        if spec.name in TRAINING_STEPS:
            row["epochs_trained"] = epochs_run[0]
        if state.sparsity is not None:
            row["sparsity"] = _achieved_sparsity(state)
        rows.append(row)
        if not quiet:
            print(f"[plan] step {i} {spec.name}: val top-1 {row['val_top1']:.2f}%  GMACs {row['gmacs']:.4f}  "
                  f"params {row['params_count'] / 1e6:.3f}M  ({row['seconds']:.0f} s)", flush=True)
        if stopped:
            break
    model = state.model
    record = {"arch": ctx.arch, "dataset": ctx.ds.name, "num_classes": ctx.ds.num_classes, "resolution": res,
              "plan": plan,
              "stopped_early": stopped, "teacher": {k: ctx.teacher_record.get(k) for k in
                                                    ("val_top1", "test_top1", "params", "gmacs", "path")},
              "steps": rows, **shape, "int8": False,
              "sparsity": _achieved_sparsity(state) if state.sparsity is not None else 0.0,
              "feature_index": state.feature_index.tolist() if state.feature_index is not None else None,
              "device": str(ctx.device)}
    if state.sparsity is not None and not state.qat:
        from .sparsity import make_permanent

        make_permanent(model)
    if state.qat:
        t0 = time.perf_counter()
        model = state.model.convert(name=ctx.arch)  # INT8, on the CPU
        cpu_val = Loader(ctx.ds.val, 512, "cpu", resolution=res)
        cpu_test = Loader(ctx.ds.test, 512, "cpu", resolution=res)
        record["int8"] = True
        record["convert_seconds"] = time.perf_counter() - t0
        record["fake_quant_val_top1"] = rows[-1]["val_top1"] if rows else None
        rows.append({"index": len(rows), "step": "convert", "params": {}, "seconds": record["convert_seconds"],
                     "val_top1": evaluate(model, cpu_val),
                     "test_top1": evaluate(model, cpu_test) if eval_test else None,
                     "params_count": shape["params"], "gmacs": shape["gmacs"]})
    record["val_top1"] = rows[-1]["val_top1"] if rows else None
    record["test_top1"] = rows[-1]["test_top1"] if rows else None
    if deploy:
        from .deploy import deployment_metrics

        record["deploy"] = deployment_metrics(model, res, int8=record["int8"])
    record["seconds"] = time.perf_counter() - t_start
    return model, record


def _achieved_sparsity(state: State) -> float:
    from . import quant, sparsity

    return quant.prepared_sparsity(state.model.prepared) if state.qat else sparsity.achieved_sparsity(state.model)


def prepare_context(arch: str, ds: Dataset, recipe, device: torch.device, out_dir=None, quiet=False) -> Context:
    """Teacher (cached), in a Context whose MI scores / teacher outputs cache next to it."""
    from .teacher import cache_dir, get_teacher

    teacher, record = get_teacher(arch, ds, recipe, device, out_dir, quiet=quiet)
    return Context(arch, ds, teacher, device, record, cache_dir(arch, ds, recipe, out_dir))


def save_result(model: nn.Module, record: dict, folder: Path) -> Path:
    """Write a loadable artefact, all or nothing: keep_cfg.json (rebuilds the architecture),
    record.json, and the weights: FP32 as model.pt (state_dict) + model.pt2 (torch.export);
    INT8 as model.pt2 (the converted torch.export program)."""
    from .io import atomic_dir, write_json

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
    import json

    from .io import load_state_dict

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
