"""Baselines at the same budget, teacher, data and KD: what a user would otherwise pick.

    python analysis/baselines.py --budget-gmacs 0.02 --experiment frontier-resnet18-cifar100-b0.02

Rows, all trained and measured in this one run on the same cached teacher and teacher outputs:

* **uniform**: the teacher's planes and mid widths scaled by one common factor to the budget (no
  block removed; channels ranked by |BN gamma|), then KD.
* **torch-pruning**: Torch-Pruning's group L1-magnitude pruning (``MetaPruner``, one uniform ratio
  per layer, the head kept) to the budget, then the same KD (the teacher phi channels it keeps are
  read from its pruning history, so the feature alignment is the same as ours). Needs the optional
  extra: ``pip install -e '.[baselines]'``; without it the row says so.
* **m2mdc-defaults**: the paper's recipe with its defaults (prune ratio 0.5, planes 0.5, mid 0.5).
* **search-best**: the best finished trial of ``--experiment`` (highest val top-1 within the
  budget, read from MLflow), re-run here with the same KD settings.

Every row trains the same total number of KD epochs E (of the same batches per epoch): the search
best's own total (its number of KD repairs x T) when there is one, else M2M-DC's 3T. One-shot
baselines spend E in one repair; a plan with k repairs splits E over them (E // k each, the rest on
the last). The table lists every row's epochs.
"""
from __future__ import annotations

import copy
import sys
import time
from pathlib import Path

import torch

from m2mdc.errors import Parser, UserError, check_range, cli
from m2mdc.io import ensure_writable, out_root, write_json, write_text
from m2mdc.cli.args import add_data_args, add_teacher_args, recipe_from_args


def _typed(v: str):
    if v in ("True", "False"):
        return v == "True"
    try:
        return float(v)
    except ValueError:
        return v


def best_search_config(client, experiment: str, budget: float) -> tuple[dict, dict]:
    """(config, trial metrics) of the best finished trial of a search, from its MLflow runs."""
    exp = client.get_experiment_by_name(experiment)
    if exp is None:
        raise UserError(f"no MLflow experiment named {experiment!r}; run search/frontier.py first or drop --experiment")
    runs = [r for r in client.search_runs([exp.experiment_id], "tags.status = 'completed'", max_results=10000)
            if r.data.metrics.get("gmacs", 1e9) <= budget]
    if not runs:
        raise UserError(f"search {experiment!r} has no finished trial within {budget:g} GMACs")
    best = max(runs, key=lambda r: (r.data.metrics["val_top1"], -r.data.metrics["gmacs"]))
    config: dict = {}
    for k, v in best.data.params.items():
        head, _, tail = k.partition("/")
        if tail:
            config.setdefault(head, {})[tail] = _typed(v)
        else:
            config[k] = _typed(v)
    return config, {"run_id": best.info.run_id, **best.data.metrics}


def split_epochs(plan: list[dict], total: int) -> list[dict]:
    """``plan`` with ``total`` KD epochs spread over its KD repairs (E // k each, the rest on the last)."""
    kd_at = [i for i, st in enumerate(plan) if st["step"] == "kd"]
    plan = [dict(st) for st in plan]
    for j, i in enumerate(kd_at):
        plan[i]["epochs"] = total // len(kd_at) + (total % len(kd_at) if j == len(kd_at) - 1 else 0)
    if any(plan[i]["epochs"] < 1 for i in kd_at):
        raise UserError(f"{total} KD epochs cannot be shared by {len(kd_at)} repairs; raise --kd-epochs")
    return plan


def torch_pruning_student(teacher, adapter, budget: float, resolution: int):
    """Torch-Pruning L1 group pruning with one uniform ratio, bisected to the largest model within
    budget. Returns (student, kept teacher phi channels, ratio). The adapter names the head (kept
    whole) and the channel group that feeds it, whose pruned indices the history records."""
    import torch_pruning as tp

    from m2mdc import metrics

    head = adapter.head_name

    def prune(ratio):
        m = copy.deepcopy(teacher).cpu().eval()
        pruner = tp.pruner.MetaPruner(m, torch.zeros(1, 3, resolution, resolution),
                                      importance=tp.importance.GroupMagnitudeImportance(p=1), pruning_ratio=ratio,
                                      ignored_layers=[m.get_submodule(head)], global_pruning=False, iterative_steps=1)
        pruner.step()
        return m, pruner.pruning_history()

    lo, hi = 0.0, 0.99
    if metrics.gmacs(prune(hi)[0], resolution) > budget:
        raise UserError(f"Torch-Pruning cannot reach {budget:g} GMACs with one uniform ratio")
    for _ in range(14):
        mid = (lo + hi) / 2
        if metrics.gmacs(prune(mid)[0], resolution) <= budget:
            hi = mid
        else:
            lo = mid
    student, history = prune(hi)
    groups = adapter.channel_groups(teacher)
    phi = groups[head][1]
    writers = {name for name, (g_out, _) in groups.items() if g_out == phi}
    full = teacher.get_submodule(head).in_features
    removed: set[int] = set()
    for name, is_out, idxs in history:  # the group that feeds the head
        if is_out and name in writers:
            removed = set(int(i) for i in idxs)
    keep = torch.tensor([i for i in range(full) if i not in removed], dtype=torch.long)
    if len(keep) != student.get_submodule(head).in_features:
        raise RuntimeError("could not recover which teacher features the pruned model keeps")
    return student, keep, hi


def plot(rows: list[dict], teacher: dict, budget: float, path: Path, title: str) -> Path:
    from search.pareto import figure

    with figure(path, "GMACs", "test top-1 (%)", title) as ax:
        for i, r in enumerate(r for r in rows if "val_top1" in r):
            ax.scatter([r["gmacs"]], [r["test_top1"]], c=f"C{i}", s=50, label=r["baseline"])
        ax.scatter([teacher["gmacs"]], [teacher["test_top1"]], marker="*", s=160, c="black", label="teacher")
        ax.axvline(budget, ls="--", c="grey", label=f"budget {budget:g} GMACs")
    return path


@cli
def main(argv=None):
    p = Parser(prog="python analysis/baselines.py", description=__doc__.split("\n\n")[0])
    p.add_argument("--budget-gmacs", type=float, required=True)
    add_teacher_args(p)
    add_data_args(p)
    p.add_argument("--experiment", default=None, help="a frontier search whose best trial is the last row")
    p.add_argument("--kd-epochs", type=int, default=2, help="T of every KD repair (default 2, the quick profile)")
    p.add_argument("--steps-per-epoch", type=int, default=40, help="batches per KD epoch, 0 = full (default 40)")
    p.add_argument("--mlflow-uri", default=None)
    p.add_argument("--group-l1", action="store_true", help="also re-run the search best with its channels ranked "
                   "by group_l1 (Torch-Pruning's group magnitude): separates the architecture from the channel choice")
    p.add_argument("--only", default=None, help="comma-separated subset of uniform,torch-pruning,m2mdc-defaults,"
                   "search-best")
    a = p.parse_args(argv)
    check_range("--budget-gmacs", a.budget_gmacs, 0.0, 10.0, lo_open=True)
    check_range("--kd-epochs", a.kd_epochs, 1, 10 ** 4)
    recipe = recipe_from_args(a)
    rows_wanted = (a.only or "uniform,torch-pruning,m2mdc-defaults,search-best").split(",")
    from m2mdc import metrics
    from m2mdc.compiler import compile_config, target_of
    from m2mdc.context import prepare_context
    from m2mdc.data import Loader, load_dataset
    from m2mdc.device import pick_device
    from m2mdc.distill import KDConfig, distill
    from m2mdc.knobs import setting_config
    from m2mdc.runner import run_plan
    from m2mdc.train import evaluate
    from search.tracking import default_uri

    root = out_root(a.out_dir)
    best = None
    if "search-best" in rows_wanted and a.experiment:
        from mlflow.tracking import MlflowClient

        best = best_search_config(MlflowClient(a.mlflow_uri or default_uri(root)), a.experiment, a.budget_gmacs)
    device = pick_device(a.device)
    ds = load_dataset(a.dataset, a.data_dir, a.resolution, a.val_size, a.split_seed)
    ctx = prepare_context(a.arch, ds, recipe, device, a.out_dir)
    adapter, target = ctx.adapter, target_of(ctx)
    kd = {"epochs": a.kd_epochs, "steps_per_epoch": a.steps_per_epoch or None}
    test = Loader(ds.test, 512, device, resolution=ds.resolution)
    rows = []

    def trained(record: dict) -> int:  # KD epochs the plan actually ran, read off its record
        return sum(r["epochs_trained"] for r in record["steps"] if r["step"] == "kd")

    def add(name, model, record_or_none, epochs, seconds, note=""):
        int8 = bool(record_or_none and record_or_none.get("int8"))
        rows.append({"baseline": name, "val_top1": record_or_none["val_top1"] if record_or_none else
                     evaluate(model, Loader(ds.val, 512, device, resolution=ds.resolution)),
                     "test_top1": record_or_none["test_top1"] if record_or_none else evaluate(model, test),
                     "gmacs": record_or_none["gmacs"] if record_or_none else metrics.gmacs(model, ds.resolution),
                     "params": record_or_none["params"] if record_or_none else metrics.count_params(model),
                     "kd_epochs": epochs, "minutes": seconds / 60, "int8": int8, "note": note})
        r = rows[-1]
        print(f"[baselines] {name}: val {r['val_top1']:.2f}%  test {r['test_top1']:.2f}%  GMACs {r['gmacs']:.4f}  "
              f"({r['minutes']:.1f} min)", flush=True)

    search_plan = None
    if best is not None:
        search_plan = compile_config(best[0], target, budget_gmacs=a.budget_gmacs, training=kd)
    total = search_plan.kd_steps * a.kd_epochs if search_plan else 3 * a.kd_epochs  # E: every row's KD epochs
    if "uniform" in rows_wanted:
        t0 = time.perf_counter()
        full = setting_config({"block_prune.ratio": 0.0, "planes.keep": 1.0, "mid.keep": 1.0})
        tp_ = compile_config(full, target, budget_gmacs=a.budget_gmacs, training={**kd, "epochs": total})
        both = {"planes": tp_.keep_cfg["planes"], "mid": tp_.keep_cfg["mid"]}
        plan = [{"step": "widths", "keep_cfg": both, "signal": "bn"}, {"step": "kd", **{k: v for k, v in
                                                                                   tp_.plan[-1].items() if k != "step"}}]
        _, rec = run_plan(plan, ctx, quiet=True)
        add("uniform width", None, rec, trained(rec), time.perf_counter() - t0, f"scale {tp_.width_scale:.3f}")
    if "torch-pruning" in rows_wanted:
        try:
            import torch_pruning  # noqa: F401

            t0 = time.perf_counter()
            student, keep, ratio = torch_pruning_student(ctx.teacher, adapter, a.budget_gmacs, ds.resolution)
            student = student.to(device)
            cfg = KDConfig(epochs=total, steps_per_epoch=kd["steps_per_epoch"])
            log = distill(student, ctx.teacher, adapter, ds.train, ds.val, cfg, device, ctx.get_teacher_outputs(),
                          feature_index=keep, quiet=True, resolution=ds.resolution)
            add("Torch-Pruning (L1 group, uniform ratio)", student, None, len(log), time.perf_counter() - t0,
                f"ratio {ratio:.3f}")
        except ImportError:
            rows.append({"baseline": "Torch-Pruning", "note": "not installed: pip install -e '.[baselines]'"})
    if "m2mdc-defaults" in rows_wanted:
        t0 = time.perf_counter()
        paper = compile_config({}, target, recipe="m2mdc", training=kd).plan  # the recipe's defaults: 0.5 / 0.5 / 0.5
        _, rec = run_plan(split_epochs(paper, total), ctx, quiet=True)
        add("M2M-DC defaults (r 0.5, planes 0.5, mid 0.5)", None, rec, trained(rec), time.perf_counter() - t0)
    if best is not None:
        config, trial = best
        signal_knob = setting_config({"widths.signal": None})
        (knob,) = signal_knob
        for signal in dict.fromkeys([config[knob]] + (["group_l1"] if a.group_l1 else [])):
            t0 = time.perf_counter()
            plan = compile_config({**config, knob: signal}, target, budget_gmacs=a.budget_gmacs, training=kd).plan
            _, rec = run_plan(plan, ctx, quiet=True)
            label = f"search best ({a.experiment}, run {trial['run_id'][:8]})"
            if signal != config[knob]:
                label = f"search best, channels ranked by group_l1 instead of {config[knob]}"
            add(label, None, rec, trained(rec), time.perf_counter() - t0,
                f"in the search: val {trial['val_top1']:.2f}%" if signal == config[knob] else "")
    folder = ensure_writable(root / "baselines") / f"{a.arch}-{ds.name}-b{a.budget_gmacs:g}"
    folder.mkdir(parents=True, exist_ok=True)
    lines = ["| baseline | val top-1 | test top-1 | GMACs | params | KD epochs | time | note |",
             "|---|---|---|---|---|---|---|---|"]
    t = ctx.teacher_record
    lines.append(f"| teacher | {t['val_top1']:.2f}% | {t['test_top1']:.2f}% | {t['gmacs']:.4f} | "
                 f"{t['params'] / 1e6:.3f}M | | | |")
    for r in rows:
        if "val_top1" not in r:
            lines.append(f"| {r['baseline']} | | | | | | | {r['note']} |")
            continue
        lines.append(f"| {r['baseline']}{' (INT8)' if r['int8'] else ''} | {r['val_top1']:.2f}% | {r['test_top1']:.2f}% | {r['gmacs']:.4f} | "
                     f"{r['params'] / 1e6:.3f}M | {r['kd_epochs']} | {r['minutes']:.1f} min | {r['note']} |")
    md = "\n".join(lines) + "\n"
    write_text(folder / "baselines.md", md)
    write_json(folder / "baselines.json", rows)
    plot(rows, t, a.budget_gmacs, folder / "baselines.png", f"baselines at {a.budget_gmacs:g} GMACs ({a.arch} / {ds.name})")
    print(md)
    print(f"-> {folder}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
