"""Run one compression plan end to end on a (cached) teacher; write the model + a JSON record.

    python -m m2mdc.compress --arch resnet18 --dataset cifar100 --prune-ratio 0.5 --planes-keep 0.5 --mid-keep 0.5
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

from .data import load_dataset
from .device import pick_device
from .errors import Parser, UserError, cli
from .io import ensure_writable, out_root, stable_hash
from .pipeline import PRESETS, m2mdc_plan, prepare_context, preset_plan, run_plan, save_result, validate_plan
from .slicing import SIGNALS
from .teacher import add_data_args, add_teacher_args, recipe_from_args


def _json_arg(text: str, what: str):
    try:
        return json.loads(Path(text).read_text() if Path(text).is_file() else text)
    except (ValueError, OSError) as e:
        raise UserError(f"{what} is neither valid JSON nor a readable JSON file ({e})") from None


def plan_from_args(a) -> list[dict]:
    if a.plan:
        return _json_arg(a.plan, "--plan")
    kd = {"epochs": a.kd_epochs, "alpha": a.alpha, "beta": a.beta, "lr": a.kd_lr, "kl_weight": a.kl_weight,
          "temperature": a.temperature}
    keep_blocks = _json_arg(a.keep_blocks, "--keep-blocks") if a.keep_blocks else None
    if a.preset and a.preset != "m2mdc":
        if keep_blocks is not None:
            raise UserError("--keep-blocks only applies to the m2mdc preset")
        try:
            split = tuple(float(x) / 100 for x in a.split.split("/"))
        except ValueError:
            split = ()
        if len(split) != 3 or any(x <= 0 for x in split):
            raise UserError(f"--split {a.split!r} must be three positive percentages like 20/40/40")
        return preset_plan(a.preset, a.prune_ratio, a.planes_keep, a.mid_keep, a.signal, a.sparsity,
                           a.pqd_epochs, split, **{k: v for k, v in kd.items() if k not in ("lr", "epochs")})
    return m2mdc_plan(None if keep_blocks else a.prune_ratio, a.planes_keep, a.mid_keep, keep_blocks, a.signal, **kd)


def _load_init(folder: str, arch: str, ds, device):
    """(model, feature_index, record) of a saved FP32 result that this run may continue."""
    from .pipeline import load_result

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


@cli
def main(argv=None):
    p = Parser(prog="python -m m2mdc.compress", description=__doc__.split("\n\n")[0])
    add_teacher_args(p)
    add_data_args(p)
    p.add_argument("--teacher-epochs", type=int, default=None, help="alias of --epochs (teacher training epochs)")
    g = p.add_argument_group("M2M-DC plan (ignored when --plan is given)")
    g.add_argument("--prune-ratio", type=float, default=0.5, help="share of unprotected blocks removed, in [0,1)")
    g.add_argument("--keep-blocks", default=None, help='explicit blocks to keep, JSON, e.g. \'{"layer1":[0],'
                   '"layer2":[0],"layer3":[0,1],"layer4":[0,1]}\' (overrides --prune-ratio)')
    g.add_argument("--planes-keep", type=float, default=0.5, help="share of residual planes kept per stage, (0,1]")
    g.add_argument("--mid-keep", type=float, default=0.5, help="share of mid channels kept per block, (0,1]")
    g.add_argument("--signal", default="bn", choices=SIGNALS, help="channel ranking signal (default bn = |BN gamma|)")
    g.add_argument("--kd-epochs", type=int, default=5, help="epochs T of each KD repair (default 5)")
    g.add_argument("--alpha", type=float, default=0.1, help="alpha*: target logit-alignment weight")
    g.add_argument("--beta", type=float, default=0.1, help="beta*: target feature-alignment weight")
    g.add_argument("--kd-lr", type=float, default=1e-4, help="Adam learning rate of KD (default 1e-4)")
    g.add_argument("--kl-weight", type=float, default=0.0, help="weight of a Hinton KL term (default 0: paper)")
    g.add_argument("--temperature", type=float, default=4.0, help="temperature of the KL term")
    q = p.add_argument_group("presets and Prune-Quantize-Distill")
    q.add_argument("--preset", default="m2mdc", choices=PRESETS,
                   help="m2mdc (default), m2mdc+qat, or a PQD order (pqd = prune -> QAT -> KD; others: ablation)")
    q.add_argument("--sparsity", type=float, default=0.5, help="PQD unstructured sparsity target, in [0,1)")
    q.add_argument("--pqd-epochs", type=int, default=10, help="PQD epochs shared by P/Q/D per --split")
    q.add_argument("--split", default="20/40/40", help="PQD epoch split P/Q/D in percent (default 20/40/40)")
    p.add_argument("--plan", default=None, help="a plan as JSON text or a JSON file (list of steps); overrides "
                   "the preset")
    p.add_argument("--init-from", default=None, metavar="RESULT_DIR",
                   help="start the plan from a saved FP32 student (a folder written by this command) instead "
                   "of the teacher, e.g. to add QAT to an M2M-DC result; same arch, dataset and teacher")
    p.add_argument("--no-deploy", action="store_true", help="skip the CPU latency / size measurements")
    p.add_argument("--name", default=None, help="output folder name under OUT/compress (default: derived)")
    a = p.parse_args(argv)
    if a.teacher_epochs is not None:
        a.epochs = a.teacher_epochs
    recipe = recipe_from_args(a)
    device = pick_device(a.device)
    plan = plan_from_args(a)
    ds = load_dataset(a.dataset, a.data_dir, a.resolution, a.val_size, a.split_seed)
    plan = validate_plan(plan, a.arch, ds.num_classes)
    name = a.name or f"{a.arch}-{ds.name}-{stable_hash({'plan': plan, 'recipe': repr(recipe)}, 8)}"
    folder = ensure_writable(out_root(a.out_dir) / "compress") / name
    print(f"{ds.describe()}; device {device}; plan: " + " -> ".join(s["step"] for s in plan), file=sys.stderr)
    init = _load_init(a.init_from, a.arch, ds, device) if a.init_from else None
    if init:  # same teacher, compared by its cache folder name (a hash of arch, data, split and recipe)
        from .teacher import cache_dir

        folder_t = cache_dir(a.arch, ds, recipe, a.out_dir)
        prior_t = init[2]["teacher"]
        if prior_t.get("path"):
            same, had = Path(prior_t["path"]).name == folder_t.name, Path(prior_t["path"]).name
        else:  # records written before teacher paths were kept: compare the teacher's measured numbers
            cached = json.loads((folder_t / "record.json").read_text()) if (folder_t / "record.json").exists() else {}
            keys = ("val_top1", "test_top1", "params")
            same, had = all(cached.get(k) == prior_t.get(k) for k in keys), f"with val top-1 {prior_t.get('val_top1')}"
        want = folder_t.name
        if not same:
            raise UserError(f"--init-from {a.init_from} was distilled from teacher {had}, not {want}; "
                            f"pass the same teacher recipe (--epochs, --seed, --weights, --split-seed)")
    ctx = prepare_context(a.arch, ds, recipe, device, a.out_dir)
    t = ctx.teacher_record
    print(f"[teacher] val top-1 {t['val_top1']:.2f}%  test top-1 {t['test_top1']:.2f}%  GMACs {t['gmacs']:.4f}",
          flush=True)
    model, record = run_plan(plan, ctx, deploy=not a.no_deploy, init=init and init[:2])
    if init:
        prior = init[2]
        record["init_from"] = {"folder": str(a.init_from), "plan": prior["plan"], "steps": prior["steps"],
                               "seconds": prior.get("seconds")}
    save_result(model, record, folder)
    print(f"student{' (INT8)' if record['int8'] else ''}: val top-1 {record['val_top1']:.2f}%  "
          f"test top-1 {record['test_top1']:.2f}%  params {record['params'] / 1e6:.3f}M  GMACs {record['gmacs']:.4f}"
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
    return 0


if __name__ == "__main__":
    main()
