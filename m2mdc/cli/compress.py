"""Run one compression plan end to end on a (cached) teacher; write the model + a JSON record.

    python -m m2mdc.compress --arch resnet18 --dataset cifar100 --prune-ratio 0.5 --planes-keep 0.5 --mid-keep 0.5

The knob flags (--prune-ratio, --kd-lr, ...) are the search's knobs (m2mdc.knobs), compiled into
a plan by the same compiler a search trial uses (m2mdc.compiler); --preset picks the recipe.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from ..compiler import RECIPES, compile_config, dry_target, target_of
from ..device import pick_device
from ..distill import KDConfig
from ..errors import Parser, UserError, check_range, cli
from ..io import ensure_writable, out_root, stable_hash
from ..knobs import KNOBS
from ..presets import PQD_EPOCHS, PQD_ORDERS
from ..steps import describe_steps, validate_plan
from ..train import pct
from ..trial import TrialSpec, compile_trial, run_trial
from .args import add_data_args, add_teacher_args, teacher_and_data


def _json_arg(text: str, what: str):
    try:
        return json.loads(Path(text).read_text() if Path(text).is_file() else text)
    except (ValueError, OSError) as e:
        raise UserError(f"{what} is neither valid JSON nor a readable JSON file ({e})") from None


def _knob_value(knob):
    """argparse type of a knob's flag: its rule's values (a fraction may also be a JSON object per stage)."""
    def parse(text: str):
        if knob.rule.choices is not None:
            by_text = {str(c).lower(): c for c in knob.rule.choices}
            if text.lower() not in by_text:
                raise argparse.ArgumentTypeError(f"{text!r} is not one of {', '.join(map(str, knob.rule.choices))}")
            return by_text[text.lower()]
        try:
            return float(text)
        except ValueError:
            if knob.per_stage:
                return _json_arg(text, knob.flag)
            raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    return parse


def knob_metavar(knob) -> str:
    if knob.rule.choices is not None:
        return "{" + ",".join(str(c).lower() if isinstance(c, bool) else str(c) for c in knob.rule.choices) + "}"
    return "F" + ("|JSON" if knob.per_stage else "")


def build_parser() -> Parser:
    p = Parser(prog="python -m m2mdc.compress", description=__doc__.split("\n\n")[0],
               formatter_class=argparse.RawDescriptionHelpFormatter,
               epilog="plan steps (for --plan; a step's settings and defaults in brackets):\n" + describe_steps())
    add_teacher_args(p)
    add_data_args(p)
    p.add_argument("--teacher-epochs", type=int, default=None, help="alias of --epochs (teacher training epochs)")
    r = p.add_argument_group("recipe and training budget")
    r.add_argument("--preset", default="m2mdc", choices=list(RECIPES),
                   help="m2mdc (default: the paper's block -> planes -> mid, KD after each), m2mdc+qat, a PQD order "
                   "(pqd = prune -> QAT -> KD; the others are its ablation), or a search recipe: fractions / allocator "
                   "(what a search trial runs; needs --budget-gmacs for allocator)")
    r.add_argument("--budget-gmacs", type=float, default=None, help="GMACs budget: fractions projects the widths "
                   "onto it, allocator spends it")
    r.add_argument("--kd-epochs", type=int, default=KDConfig.epochs, help=f"epochs T of each KD repair (default "
                   f"{KDConfig.epochs})")
    r.add_argument("--steps-per-epoch", type=int, default=None, help="batches per KD epoch (default: full passes)")
    r.add_argument("--pqd-epochs", type=int, default=PQD_EPOCHS, help="PQD epochs shared by P/Q/D per --split")
    r.add_argument("--split", default="20/40/40", help="PQD epoch split P/Q/D in percent (default 20/40/40)")
    g = p.add_argument_group("knobs (as in a search space; a recipe reads the ones it uses; ignored with --plan)")
    for knob in KNOBS.values():
        g.add_argument(knob.flag, dest=f"knob_{knob.name}", type=_knob_value(knob), default=None,
                       metavar=knob_metavar(knob), help=f"{knob.doc} (default {knob.default})")
    g.add_argument("--keep-blocks", default=None, help="explicit blocks to keep: JSON {stage: [original block "
                   "indices]} (a keep_cfg's blocks entry; m2mdc recipes; overrides the prune ratio)")
    p.add_argument("--plan", default=None, help="a plan as JSON text or a JSON file (list of steps); overrides "
                   "the recipe")
    p.add_argument("--init-from", default=None, metavar="RESULT_DIR",
                   help="start the plan from a saved FP32 student (a folder written by this command) instead "
                   "of the teacher, e.g. to add QAT to an M2M-DC result; same arch, dataset and teacher")
    p.add_argument("--no-deploy", action="store_true", help="skip the CPU latency / size measurements")
    p.add_argument("--name", default=None, help="output folder name under OUT/compress (default: derived)")
    return p


def config_from_args(a) -> dict:
    """The knobs given on the command line, each checked against its rule."""
    config = {}
    for knob in KNOBS.values():
        value = getattr(a, f"knob_{knob.name}")
        if value is None:
            continue
        for v in (value.values() if isinstance(value, dict) else [value]):
            msg = knob.rule.message(knob.flag, v)
            if msg is not None:
                raise UserError(msg)
        config[knob.name] = value
    if a.keep_blocks:
        if a.preset not in ("m2mdc", "m2mdc+qat"):
            raise UserError("--keep-blocks only applies to the m2mdc recipes")
        config["keep_blocks"] = _json_arg(a.keep_blocks, "--keep-blocks")
    return config


def training_from_args(a) -> dict:
    check_range("--kd-epochs", a.kd_epochs, 1, 10 ** 6)
    training = {"epochs": a.kd_epochs}
    if a.steps_per_epoch is not None:
        check_range("--steps-per-epoch", a.steps_per_epoch, 1, 10 ** 7)
        training["steps_per_epoch"] = a.steps_per_epoch
    if a.preset in PQD_ORDERS:
        check_range("--pqd-epochs", a.pqd_epochs, 1, 10 ** 6)
        try:
            split = tuple(float(x) / 100 for x in a.split.split("/"))
        except ValueError:
            split = ()
        if len(split) != 3 or any(x <= 0 for x in split):
            raise UserError(f"--split {a.split!r} must be three positive percentages like 20/40/40")
        training.update(pqd_epochs=a.pqd_epochs, split=split)
    if a.budget_gmacs is not None:
        check_range("--budget-gmacs", a.budget_gmacs, 0.0, 10.0 ** 6, lo_open=True)
    elif a.preset == "allocator":
        raise UserError("--preset allocator spends a budget: pass --budget-gmacs")
    return training


def _load_init(folder: str, arch: str, ds, device):
    """(model, feature_index, record) of a saved FP32 result that this run may continue."""
    from ..results import load_result

    model, meta = load_result(Path(folder), device)
    try:
        record = json.loads((Path(folder) / "record.json").read_text())
    except (OSError, ValueError):
        raise UserError(f"{folder}/record.json is missing or not JSON; --init-from needs a full result folder") from None
    if meta.get("int8"):
        raise UserError(f"--init-from {folder} is an INT8 model; only FP32 results can be trained further")
    if (record["arch"], record["dataset"], record["resolution"]) != (arch, ds.name, ds.resolution):
        raise UserError(f"--init-from {folder} is {record['arch']} on {record['dataset']} @{record['resolution']}, "
                        f"not {arch} on {ds.name} @{ds.resolution}; pass the matching --arch/--dataset")
    return model, record.get("feature_index"), record


def _check_same_teacher(init_record: dict, folder_t: Path, init_from: str) -> None:
    """--init-from continues a student distilled from this run's teacher (compared by cache folder)."""
    prior_t = init_record["teacher"]
    if prior_t.get("path"):
        same, had = Path(prior_t["path"]).name == folder_t.name, Path(prior_t["path"]).name
    else:  # records written before teacher paths were kept: compare the teacher's measured numbers
        cached = json.loads((folder_t / "record.json").read_text()) if (folder_t / "record.json").exists() else {}
        keys = ("val_top1", "test_top1", "params")
        same, had = all(cached.get(k) == prior_t.get(k) for k in keys), f"with val top-1 {prior_t.get('val_top1')}"
    if not same:
        raise UserError(f"--init-from {init_from} was distilled from teacher {had}, not {folder_t.name}; "
                        f"pass the same teacher recipe (--epochs, --seed, --weights, --split-seed)")


def print_result(record: dict, folder: Path) -> None:
    print(f"student{' (INT8)' if record['int8'] else ''}: val top-1 {record['val_top1']:.2f}%  "
          f"test top-1 {pct(record['test_top1'])}  params {record['params'] / 1e6:.3f}M  GMACs {record['gmacs']:.4f}"
          f"  sparsity {record['sparsity']:.2f}  -> {folder}")
    if "deploy" in record:
        d = record["deploy"]
        for key, t in d["latency"].items():
            print(f"  {key:<14} batch-1 {t['bs1_ms']:.2f} ms ±{t['bs1_spread_pct']:.0f}%   batch-64 "
                  f"{t['bs64_images_per_s']:.0f} img/s   ({t['backend']}, {d['threads']} threads)")
        if d["size_bytes"] is None:
            print(f"  shipped size unknown: {d['export_error']}")
        else:
            print(f"  {'INT8 artefact' if record['int8'] else 'checkpoint'} {d['size_bytes'] / 1e6:.2f} MB" +
                  (f", sparse {d['sparse_size_bytes'] / 1e6:.2f} MB" if d.get("sparse_size_bytes") else ""))


@cli
def main(argv=None):
    a = build_parser().parse_args(argv)
    if a.teacher_epochs is not None:
        a.epochs = a.teacher_epochs
    device = pick_device(a.device)
    config, training = config_from_args(a), training_from_args(a)
    recipe, ds = teacher_and_data(a)
    if a.plan:
        plan = validate_plan(_json_arg(a.plan, "--plan"), a.arch, ds.num_classes)
    else:  # everything that can be checked without the teacher, before it is trained
        compile_config(config, dry_target(a.arch, ds.num_classes, ds.resolution), recipe=a.preset,
                       budget_gmacs=a.budget_gmacs, training=training)
    init = _load_init(a.init_from, a.arch, ds, device) if a.init_from else None
    from ..context import prepare_context
    from ..runner import run_plan
    from ..teacher import cache_dir, teacher_line

    if init:
        _check_same_teacher(init[2], cache_dir(a.arch, ds, recipe, a.out_dir), a.init_from)
    out = ensure_writable(out_root(a.out_dir) / "compress")
    ctx = prepare_context(a.arch, ds, recipe, device, a.out_dir)
    spec = TrialSpec(recipe=a.preset, budget_gmacs=a.budget_gmacs, training=training, step_tests=True,
                     deploy=not a.no_deploy)
    if not a.plan:
        target = target_of(ctx)
        compiled = compile_trial(config, target, spec)
        if not compiled.feasible:
            raise UserError(f"the configuration does not fit --budget-gmacs {a.budget_gmacs:g}: "
                            + "; ".join(compiled.notes))
        plan = compiled.plan
        print(f"[plan] {a.preset}: {' -> '.join(s['step'] for s in plan)}; the student will have "
              f"{compiled.gmacs:.4f} GMACs" + (f" (widths scaled by {compiled.width_scale:.3f} to fit the budget)"
                                              if compiled.projected else ""), file=sys.stderr)
    name = a.name or f"{a.arch}-{ds.name}-{stable_hash({'plan': plan, 'recipe': repr(recipe)}, 8)}"
    folder = out / name
    print(f"{ds.describe()}; device {device}; plan: " + " -> ".join(s["step"] for s in plan), file=sys.stderr)
    print(teacher_line(ctx.teacher_record), flush=True)
    if a.plan or init:  # a plan given as data, or one continued from a saved result: the runner alone
        model, record = run_plan(plan, ctx, deploy=not a.no_deploy, init=init and init[:2])
    else:  # a configuration: the library's one trial path
        trial = run_trial(config, ctx, target, spec, quiet=False, compiled=compiled)
        model, record = trial.model, trial.record
    if init:
        prior = init[2]
        record["init_from"] = {"folder": str(a.init_from), "plan": prior["plan"], "steps": prior["steps"],
                               "seconds": prior.get("seconds")}
    from ..results import save_result

    save_result(model, record, folder)
    print_result(record, folder)
    return 0


if __name__ == "__main__":
    main()
