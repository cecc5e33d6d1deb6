"""Reproduction report: the M2M-DC paper's CIFAR-100 numbers beside this project's, over seeds.

    python analysis/paper_table.py --archs resnet18 --seeds 0,1,2

For every architecture the teacher is trained (or read from the cache) once; then the paper's
recipe (block prune -> KD -> planes -> KD -> mid -> KD, T KD epochs each, alpha* = beta* = 0.1,
Adam 1e-4, clip 1.0, 10 MI bins, <= 5,000 probe samples) runs once per seed. A seed sets every KD
repair's seed (initial order of batches, augmentation); the teacher and its MI ranking are shared.

Which student? The paper's abstract gives the final student's parameters and GMACs relative to the
teacher but not the keep fractions that produced them, so ``--size paper`` (default) picks, before
any training, the (prune ratio, planes keep, mid keep) on a 0.05 grid whose student has the
paper's reductions (params and GMACs as shares of the teacher's), priced with the analytic
CostModel on the teacher's MI ranking; ``--size defaults`` runs the 0.5 / 0.5 / 0.5 defaults.

Each seed's stage rows are saved as a small JSON under results/paper_table/DATASET/ (keyed by the
plan and the teacher's weight hash; the model itself under OUT/paper_table/) and reused by a later
call, so a report resumes where it stopped, also on a fresh machine. Architectures whose paper
claim is a student *above* its teacher (MobileNetV2) also get a control row: the teacher itself
trained on with the same KD repairs, for the same total epochs the student's repairs took (a student
can beat an under-trained teacher through extra training alone). The report (markdown + JSON) goes
to OUT/paper_table/paper_table-<dataset>.md; its list of differences follows the flags used.
"""
from __future__ import annotations

import json
import sys
import time
from pathlib import Path

from m2mdc import metrics
from m2mdc.cli.args import add_data_args, add_teacher_args, dataset_from_args, teacher_from_args
from m2mdc.compiler import compile_config, target_of
from m2mdc.context import prepare_context
from m2mdc.device import pick_device
from m2mdc.errors import Parser, UserError, check_range, cli
from m2mdc.io import ensure_writable, out_root, stable_hash, write_json, write_text
from m2mdc.knobs import setting_config
from m2mdc.models import arch_id, split_arch
from m2mdc.results import save_result
from m2mdc.runner import run_plan
from m2mdc.teacher import TeacherFile

from analysis.compress_table import rows_of
from analysis.study import mean_std, results_root, teacher_sha

SOURCE = "arXiv:2511.06842v2 (M2M-DC), abstract"
# What the paper states for CIFAR-100 (its abstract; the full tables were not available offline).
# Student params / GMACs are absolute; *_share is the student's share of its teacher
# (1 - the stated reduction), from which the teacher's params / GMACs are derived.
PAPER = {
    "resnet18": {"best_top1": 85.46, "mean_top1": 85.29, "params_m": 3.09, "gmacs": 0.0139,
                 "params_share": 0.28, "gmacs_share": 0.37},
    "resnet34": {"best_top1": 85.02, "mean_top1": 84.62, "params_m": 5.46, "gmacs": 0.0195,
                 "params_share": 0.26, "gmacs_share": 0.26},
    "mobilenet_v2": {"teacher_top1": 66.03, "mean_top1": 68.54, "params_m": 1.71, "gmacs": 0.0186,
                     "params_share": 0.73, "gmacs_share": 0.76, "above_teacher": True},
}
CONTROL = "control: teacher + the same KD epochs"
ROWS = ("teacher", "block-KD", "planes-KD", "inner-slice (mid-KD)")
GRID = [round(0.30 + 0.05 * i, 2) for i in range(15)]  # 0.30 ... 1.00
PRUNE_RATIOS = (0.25, 0.5, 0.75)

def differences(report: dict) -> list[str]:
    """What differs from the paper, written from the settings this report actually used."""
    t = report["teacher"]
    if t["source"] == "file":
        teacher = (f"Teacher: the user's checkpoint {t['file']} (sha256 {t['sha256'][:12]}), as it is; the paper "
                   f"fine-tunes ImageNet-pretrained teachers.")
    elif t["source"] == "finetune":
        teacher = (f"Teacher: fine-tuned here from {t['weights']} ({t['epochs']} epoch(s), last third of the blocks + "
                   f"head, Adam), the paper's recipe.")
    else:
        teacher = (f"Teacher: trained from scratch on {report['dataset']} here ({t['epochs']} epoch(s), SGD one-cycle), "
                   f"because ImageNet weights cannot be downloaded on this machine (the paper fine-tunes ImageNet-"
                   f"pretrained teachers); `--weights PATH` runs the fine-tuning path with a local state_dict.")
    steps = f" of {report['steps_per_epoch']} batches" if report["steps_per_epoch"] else " (full epochs)"
    size = ("the keep fractions are the 0.05-grid point whose params and GMACs shares of the teacher are closest to "
            "the paper's stated reductions: " + "; ".join(
                f"{arch} prune {r['fractions']['block_prune.ratio']}, planes {r['fractions']['planes.keep']}, mid "
                f"{r['fractions']['mid.keep']} -> params {r['shares']['params_share']:.3f}, GMACs "
                f"{r['shares']['gmacs_share']:.3f} of the teacher (paper {PAPER[split_arch(arch)[0]]['params_share']:.2f}, "
                f"{PAPER[split_arch(arch)[0]]['gmacs_share']:.2f})" for arch, r in report["archs"].items())
            if report["size"] == "paper" else "the defaults prune 0.5, planes 0.5, mid 0.5 are used")
    stems = "; ".join(f"{arch}: {split_arch(arch)[1]} stem" for arch in report["archs"])
    nc = report["num_classes"]
    out = [teacher,
           f"KD: {report['kd_epochs']} epoch(s) per repair{steps} here; the paper's recipe is T = 5 full epochs.",
           "Seeds: " + ", ".join(f"{len(arch_seeds(report, arch))} for {arch}" for arch in report["archs"]) +
           " (a seed varies the KD repairs: batch order, augmentation); one teacher and one MI ranking per "
           "architecture are shared by its seeds. The paper's seeds may also retrain the teacher.",
           f"Student size: the paper's keep fractions are not in its abstract; here {size}.",
           f"Parameters: the paper's ResNet-18/34 counts match a 10-class head (teacher 11.18M / 21.29M); ours have a "
           f"{nc}-class head" + (", so both are listed (" + f"{nc} / 10 classes)." if nc != 10 else "."),
           f"GMACs: fvcore at {report['resolution']}x{report['resolution']} input ({stems}). The paper's ResNet GMACs "
           f"imply the torchvision stem (0.0139 / 0.37 = 0.0376 for the teacher; torchvision ResNet-18 at 32x32 = "
           f"0.0372); its MobileNetV2 \"conv-GMacs\" (teacher ~0.0245) match a stride-1 stem (MobileNetV2 with "
           f"--stem cifar: 0.0257 at 32x32), not torchvision's (0.0065).",
           "Paper rows other than the final student (teacher, block-KD, planes-KD) are not stated in the abstract and "
           "are left blank rather than guessed; the paper's teacher params / GMACs are derived from its stated "
           "reductions."]
    if any(CONTROL in r["stages"] for r in report["archs"].values()):
        out.append(f"Control ({CONTROL}): the teacher, uncompressed, repaired with KD from itself for the same total "
                   f"epochs as the student's three repairs, per seed: what extra training alone buys.")
    return out


def _m2mdc_config(fractions: dict) -> dict:
    """Knobs of the m2mdc recipe from fractions keyed by the step settings they set."""
    return setting_config(fractions)


def paper_size_config(ctx, target, arch: str) -> tuple[dict, dict]:
    """(prune ratio, planes keep, mid keep) whose student has the paper's params and GMACs shares
    of the teacher, on the GRID, priced by the compiler before any training; returns
    ({step setting: fraction}, {params_share, gmacs_share}) of the pick."""
    want = PAPER[split_arch(arch)[0]]
    nc, adapter, cost = ctx.ds.num_classes, ctx.adapter, target.cost
    t_params = metrics.count_params(adapter.base_model(nc))
    candidates = []
    for ratio in PRUNE_RATIOS:
        for planes in GRID:
            for mid in GRID:
                fractions = {"block_prune.ratio": ratio, "planes.keep": planes, "mid.keep": mid}
                compiled = compile_config(_m2mdc_config(fractions), target, recipe="m2mdc")
                g_share = compiled.gmacs / cost.full_gmacs
                candidates.append((abs(g_share - want["gmacs_share"]), fractions, compiled.keep_cfg, g_share))
    candidates.sort(key=lambda c: c[0])
    scored = []  # params need a rebuild (slower than the cost model): only for the GMACs-closest 60
    for g_err, fractions, keep_cfg, g_share in candidates[:60]:
        p_share = metrics.count_params(adapter.rebuild(keep_cfg, nc)) / t_params
        err = g_err / want["gmacs_share"] + abs(p_share - want["params_share"]) / want["params_share"]
        scored.append((err, fractions, {"params_share": p_share, "gmacs_share": g_share}))
    _, fractions, shares = min(scored, key=lambda c: c[0])
    return fractions, shares


def stage_rows(record: dict, adapter) -> dict[str, dict]:
    """Per reported stage (block-KD, planes-KD, inner-slice): val/test top-1, params (both heads), GMACs."""
    out = {}
    kd_rows = [s for s in record["steps"] if s["step"] == "kd"]
    for (label, val, test, params, gmacs, _), step in zip(rows_of(record)[1:], kd_rows):
        out[label] = {"val_top1": val, "test_top1": test, "params": params, "gmacs": gmacs,
                      "params_10": metrics.count_params(adapter.rebuild(step["keep_cfg"], 10))}
    return out


def run_seed(ctx, plan: list[dict], root: Path, name: str, results: Path, adapter) -> dict:
    """One seed's stage rows: from its JSON under ``results`` when the plan and the teacher's weights
    match, else from a saved record of the same plan on the same teacher, else trained now."""
    sha = teacher_sha(ctx)
    small = results / f"{name.rsplit('-', 1)[0]}-{stable_hash({'plan': plan, 'teacher': sha}, 12)}.json"
    if small.exists():
        print(f"[paper] reusing {small}", flush=True)
        return json.loads(small.read_text())
    record = None
    for path in sorted(root.glob(f"{name.rsplit('-', 1)[0]}-*/record.json")):
        saved = json.loads(path.read_text())
        if saved["plan"] == json.loads(json.dumps(plan)) and saved["teacher"].get("path") == ctx.teacher_record.get("path"):
            print(f"[paper] reusing {path.parent}", flush=True)
            record = saved
            break
    if record is None:
        model, record = run_plan(plan, ctx)
        save_result(model, record, root / name)
    out = {"plan": record["plan"], "teacher_sha256": sha, "keep_cfg": record["keep_cfg"], "seconds": record.get("seconds"),
           "stages": stage_rows(record, adapter) if record["plan"][0]["step"] != "kd" or len(record["plan"]) > 1
           else {CONTROL: {k: record[k] for k in ("val_top1", "test_top1", "params", "gmacs")}}}
    write_json(small, out)
    return out


@cli
def main(argv=None):
    p = Parser(prog="python analysis/paper_table.py", description=__doc__.split("\n\n")[0])
    p.add_argument("--archs", default="resnet18", help="comma-separated, of resnet18,resnet34,mobilenet_v2")
    p.add_argument("--seeds", default="0,1,2", help="comma-separated KD seeds (default 0,1,2)")
    p.add_argument("--size", default="paper", choices=("paper", "defaults"),
                   help="paper: keep fractions matching the paper's reported student size; defaults: 0.5/0.5/0.5")
    p.add_argument("--kd-epochs", type=int, default=5, help="T of every KD repair (default 5, the paper's)")
    p.add_argument("--steps-per-epoch", type=int, default=0, help="batches per KD epoch, 0 = full (default)")
    add_teacher_args(p, arch=False)
    add_data_args(p)
    a = p.parse_args(argv)
    archs = [x.strip() for x in a.archs.split(",") if x.strip()]
    bad = [x for x in archs if split_arch(x)[0] not in PAPER]
    if bad or not archs:
        raise UserError(f"--archs {a.archs!r}: the paper reports {', '.join(PAPER)} (a name may carry its stem, "
                        f"e.g. mobilenet_v2-cifar); pick from those")
    try:
        seeds = [int(s) for s in a.seeds.split(",")]
    except ValueError:
        raise UserError(f"--seeds {a.seeds!r} must be comma-separated integers, e.g. 0,1,2") from None
    if len(set(seeds)) != len(seeds):
        raise UserError(f"--seeds {a.seeds!r} repeats a seed")
    check_range("--kd-epochs", a.kd_epochs, 1, 10 ** 4)
    check_range("--steps-per-epoch", a.steps_per_epoch, 0, 10 ** 9)
    archs = [x if split_arch(x)[1] != "torchvision" or "-" in x else arch_id(x, a.stem) for x in archs]
    source = teacher_from_args(a)

    device = pick_device(a.device)
    ds = dataset_from_args(a, arch=archs[0])
    root = ensure_writable(out_root(a.out_dir) / "paper_table")
    results = results_root() / "paper_table" / ds.name
    report = {"source": SOURCE, "dataset": ds.name, "num_classes": ds.num_classes, "resolution": ds.resolution,
              "seeds": seeds, "kd_epochs": a.kd_epochs, "steps_per_epoch": a.steps_per_epoch or None,
              "teacher": teacher_summary(source), "size": a.size, "archs": {}}
    t0 = time.perf_counter()
    for arch in archs:
        ctx = prepare_context(arch, ds, source, device, a.out_dir)
        adapter, target = ctx.adapter, target_of(ctx)
        if a.size == "paper":
            fractions, shares = paper_size_config(ctx, target, arch)
        else:
            fractions, shares = {"block_prune.ratio": 0.5, "planes.keep": 0.5, "mid.keep": 0.5}, {}
        print(f"[paper] {arch}: prune ratio {fractions['block_prune.ratio']}, planes keep {fractions['planes.keep']}, "
              f"mid keep {fractions['mid.keep']}" + (f" (params {shares['params_share']:.3f}, GMACs "
                                                     f"{shares['gmacs_share']:.3f} of the teacher)" if shares else ""),
              flush=True)
        per_seed, controls, seconds = [], [], []
        for seed in seeds:
            training = {"epochs": a.kd_epochs, "steps_per_epoch": a.steps_per_epoch or None, "seed": seed}
            plan = compile_config(_m2mdc_config(fractions), target, recipe="m2mdc", training=training).plan
            name = f"{arch}-{ds.name}-seed{seed}-{stable_hash({'plan': plan, 'recipe': repr(source)}, 8)}"
            print(f"[paper] {arch} seed {seed} -> {root / name}", flush=True)
            got = run_seed(ctx, plan, root, name, results, adapter)
            per_seed.append(got["stages"])
            seconds.append(got.get("seconds"))
            if PAPER[split_arch(arch)[0]].get("above_teacher"):  # the control: extra training, no compression
                epochs = sum(st["epochs"] for st in plan if st["step"] == "kd")
                control = compile_config({}, target, recipe="m2mdc", training={**training, "epochs": epochs}).plan
                control = [st for st in control if st["step"] == "kd"][:1]
                name = f"{arch}-{ds.name}-control-seed{seed}-{stable_hash({'plan': control}, 8)}"
                print(f"[paper] {arch} control, seed {seed} -> {root / name}", flush=True)
                controls.append(run_seed(ctx, control, root, name, results, adapter)["stages"][CONTROL])
        t = ctx.teacher_record
        teacher = {"val_top1": [t["val_top1"]], "test_top1": [t["test_top1"]], "params": t["params"],
                   "gmacs": t["gmacs"], "params_10": metrics.count_params(adapter.base_model(10))}
        stages = {"teacher": teacher}
        for label in ROWS[1:]:
            got = [s[label] for s in per_seed if label in s]
            if got:
                stages[label] = {"val_top1": [g["val_top1"] for g in got], "test_top1": [g["test_top1"] for g in got],
                                 "params": got[0]["params"], "gmacs": got[0]["gmacs"],
                                 "params_10": got[0]["params_10"]}
        entry = {"fractions": fractions, "shares": shares, "stages": stages, "seeds": seeds,
                 "teacher_train_minutes": (t.get("train_seconds") or 0) / 60 or None,
                 "seed_train_minutes": [x / 60 if x else None for x in seconds]}
        if controls:
            entry["control"] = {"val_top1": [c["val_top1"] for c in controls],
                                "test_top1": [c["test_top1"] for c in controls], "params": controls[0]["params"],
                                "gmacs": controls[0]["gmacs"], "params_10": teacher["params_10"]}
            entry["student_minus_teacher"] = [x - t["test_top1"] for x in stages[ROWS[-1]]["test_top1"]]
            entry["student_minus_control"] = [x - c for x, c in zip(stages[ROWS[-1]]["test_top1"],
                                                                     entry["control"]["test_top1"])]
        entry["command"] = a.command
        report["archs"][arch] = entry
    report["minutes"] = (time.perf_counter() - t0) / 60
    report["command"] = a.command
    report = merged_with_earlier(report, root / f"paper_table-{ds.name}.json")
    md = render(report)
    write_json(root / f"paper_table-{ds.name}.json", report)
    write_text(root / f"paper_table-{ds.name}.md", md)
    print(md)
    print(f"-> {root / f'paper_table-{ds.name}.md'}")
    return 0


# what must match for two calls to share a table; seeds may differ (each architecture lists its own)
SETTINGS = ("source", "dataset", "num_classes", "resolution", "kd_epochs", "steps_per_epoch", "teacher", "size")


def merged_with_earlier(report: dict, path: Path) -> dict:
    """One table per dataset, completed over several calls: architectures an earlier call measured
    under the same settings stay in it (each row keeps the command that made it)."""
    if not path.exists():
        return report
    earlier = json.loads(path.read_text())
    if any(earlier.get(k) != report.get(k) for k in SETTINGS):
        print(f"[paper] {path.name} was made with other settings: replaced, not merged", flush=True)
        return report
    kept = {arch: {"seeds": earlier.get("seeds"), **e} for arch, e in earlier["archs"].items()
            if arch not in report["archs"]}
    return {**report, "archs": {**kept, **report["archs"]}}


def teacher_summary(source) -> dict:
    if isinstance(source, TeacherFile):
        return {"source": "file", "file": source.path, "sha256": source.sha256}
    return {"source": "scratch" if source.weights == "none" else "finetune", "weights": source.weights,
            "epochs": source.epochs}


def arch_seeds(report: dict, arch: str) -> list[int]:
    """The seeds an architecture's rows are over (reports before per-architecture seeds: the report's)."""
    return report["archs"][arch].get("seeds") or report["seeds"]


def _minutes(m) -> str:
    return f"{m:.0f} min" if m else "n/a (a user-supplied or older cached teacher)"


def render(report: dict) -> str:
    nc = report.get("num_classes", 100)
    lines = ["| arch | model | paper top-1 | here test top-1 | here val top-1 | paper params | here params "
             f"({nc} / 10 cls) | paper GMACs | here GMACs |", "|---|---|---|---|---|---|---|---|---|"]
    for arch, r in report["archs"].items():
        paper = PAPER[split_arch(arch)[0]]
        for label in ROWS:
            s = r["stages"].get(label)
            if s is None:
                continue
            if label == "teacher":
                p_top1 = f"{paper['teacher_top1']:.2f}" if "teacher_top1" in paper else ""
                p_params = f"~{paper['params_m'] / paper['params_share']:.2f}M"
                p_gmacs = f"~{paper['gmacs'] / paper['gmacs_share']:.4f}"
            elif label == ROWS[-1]:
                p_top1 = (f"{paper['mean_top1']:.2f} (mean)" +
                          (f", {paper['best_top1']:.2f} (best)" if "best_top1" in paper else ""))
                p_params, p_gmacs = f"{paper['params_m']:.2f}M", f"{paper['gmacs']:.4f}"
            else:
                p_top1 = p_params = p_gmacs = ""
            lines.append(f"| {arch} | {label} | {p_top1} | {mean_std(s['test_top1'])} | {mean_std(s['val_top1'])} | "
                         f"{p_params} | {s['params'] / 1e6:.2f}M / {s['params_10'] / 1e6:.2f}M | {p_gmacs} | "
                         f"{s['gmacs']:.4f} |")
    for arch, r in report["archs"].items():
        if "control" in r:
            c = r["control"]
            lines.append(f"| {arch} | {CONTROL} | | {mean_std(c['test_top1'])} | {mean_std(c['val_top1'])} | | "
                         f"{c['params'] / 1e6:.2f}M / {c['params_10'] / 1e6:.2f}M | | {c['gmacs']:.4f} |")
    seeds = "; ".join(f"{arch} {','.join(map(str, arch_seeds(report, arch)))}" for arch in report["archs"])
    lines += ["", f"Here: {report['dataset']}, mean ± sample std over each architecture's seeds ({seeds}); "
              f"selection on val, test reported. Paper: {SOURCE}."]
    for arch, r in report["archs"].items():
        if "student_minus_teacher" in r:
            lines.append(f"{arch}: final student minus its teacher, test top-1: {mean_std(r['student_minus_teacher'])} "
                         f"points (the paper: +2.51); minus the control: {mean_std(r['student_minus_control'])} points.")
    lines += ["", "Differences of setting:", ""]
    lines += [f"- {d}" for d in differences(report)]
    if report.get("command"):
        head = []
        for arch, r in report["archs"].items():
            head.append(f"Command ({arch}): `{r.get('command', report['command'])}`")
            runs = [m for m in r.get("seed_train_minutes", []) if m]
            head.append(f"Wall time, {arch}: teacher {_minutes(r.get('teacher_train_minutes'))} of training; "
                        f"each seed's compression run {', '.join(f'{m:.0f}' for m in runs) or 'n/a'} min (wall clock on a "
                        f"shared machine: other jobs may have run alongside).")
        lines = [*head, "", *lines]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.exit(main())
