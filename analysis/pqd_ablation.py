"""PQD's stage-order ablation: all six orders of prune (P), quantise (Q) and distil (D) at equal
total epochs (split P/Q/D 20/40/40), over seeds, in one table.

    python analysis/pqd_ablation.py --seeds 0,1,2

Every order starts from the same teacher and ends with the same architecture and format (full width,
50 % unstructured sparsity, INT8 via PT2E QAT), so INT8 size and latency are measured once, on the
seed-0 P->Q->D model, and shown once. P = magnitude pruning + CE repair, Q = QAT with CE under
fake-quant, D = KD with the fixed KD settings of analysis/study.py (the paper's ramped loss plus
Hinton's KL). The short budget (the quick profile's 8 epochs of 40 batches) runs every order; the
long budget (8 full epochs) runs P->Q->D and the order with the best mean *val* at the short budget
(or the orders ``--long-orders`` names, e.g. to settle a short-budget tie).
An order is called the winner only when its mean test top-1 beats the runner-up's by more than
twice the larger of their seed standard deviations. Each (order, budget, seed) result is a small JSON
under results/pqd_ablation/ARCH-DATASET/, reused while the teacher's weights match.
"""
from __future__ import annotations

import statistics
import sys
from pathlib import Path

from m2mdc.cli.args import add_data_args, add_teacher_args, teacher_and_data
from m2mdc.compiler import target_of
from m2mdc.context import prepare_context
from m2mdc.device import pick_device
from m2mdc.errors import Parser, UserError, cli
from m2mdc.io import ensure_writable, out_root, write_json, write_text
from m2mdc.presets import PQD_ORDERS, PQD_SPLIT
from m2mdc.results import load_result

from analysis.finalize import parse_seeds
from analysis.study import BUDGETS, FIXED_KD, Run, execute, machine, mean_std, results_root

LABEL = {"p": "P", "q": "Q", "d": "D"}


def order_label(order: str) -> str:
    return " -> ".join(LABEL[c] for c in order)


def ablation_runs(orders, budget: str, seeds) -> list[Run]:
    return [Run(order_label(o), "pqd", budget, s, recipe=o) for o in orders for s in seeds]


def check_equal_training(results: list[dict]) -> None:
    """Every run of a budget trained the same epochs (summed over its steps, as trained), or an error."""
    for budget in {r["run"]["budget"] for r in results}:
        trained = {(r["run"]["recipe"], r["run"]["seed"]): r["epochs_trained"] for r in results
                   if r["run"]["budget"] == budget}
        if len(set(trained.values())) != 1:
            raise RuntimeError(f"orders trained unequal epochs at the {budget} budget: {trained}")


def summarise(results: list[dict], orders, budget: str) -> list[dict]:
    rows = []
    for o in orders:
        rs = [r for r in results if r["run"]["recipe"] == o and r["run"]["budget"] == budget]
        if not rs:
            continue
        tests = [r["test_top1"] for r in rs]
        rows.append({"recipe": o, "label": order_label(o), "budget": budget, "seeds": sorted(r["run"]["seed"] for r in rs),
                     "val_mean": statistics.mean(r["val_top1"] for r in rs), "test_mean": statistics.mean(tests),
                     "test_std": statistics.stdev(tests) if len(tests) > 1 else 0.0, "test": mean_std(tests),
                     "epochs_trained": rs[0]["epochs_trained"],
                     "step_epochs": rs[0].get("step_epochs"),
                     "steps": rs[0]["steps"], "int8": rs[0]["int8"]})
    return rows


def verdict(rows: list[dict]) -> str:
    """Whether one order wins: best mean test minus the runner-up's, against twice their larger std."""
    if len(rows) < 2:
        return "fewer than two orders: no comparison"
    ranked = sorted(rows, key=lambda r: -r["test_mean"])
    a, b = ranked[0], ranked[1]
    margin, noise = a["test_mean"] - b["test_mean"], 2 * max(a["test_std"], b["test_std"])
    if len(a["seeds"]) < 2:
        return f"{a['label']} leads {b['label']} by {margin:.2f} test points on one seed: no spread, no winner declared"
    if margin > noise:
        return (f"{a['label']} wins: {margin:.2f} test points above {b['label']}, more than twice the larger seed std "
                f"({noise:.2f})")
    return (f"no winner: the best order ({a['label']}) leads {b['label']} by {margin:.2f} test points, within twice "
            f"the larger seed std ({noise:.2f})")


def wall_time(results: list[dict]) -> str:
    """Each budget's runs: how many, their total and per-run wall time, as each JSON recorded it."""
    parts = []
    for budget in BUDGETS:
        minutes = [r["minutes"] for r in results if r["run"]["budget"] == budget]
        if minutes:
            where = sorted({r["machine"].split(",")[0] for r in results if r["run"]["budget"] == budget})
            parts.append(f"{budget} budget {len(minutes)} runs, {sum(minutes):.0f} min in all ({min(minutes):.1f}-"
                         f"{max(minutes):.1f} min a run, on {' and '.join(where)})")
    return "; ".join(parts)


def table(short: list[dict], long: list[dict]) -> str:
    lines = ["| order | steps | test top-1 (short) | val top-1 (short) | test top-1 (long) | val top-1 (long) | "
             "epochs trained | seeds |", "|---|---|---|---|---|---|---|---|"]
    longs = {r["recipe"]: r for r in long}
    for r in sorted(short, key=lambda r: -r["val_mean"]):
        lg = longs.get(r["recipe"])
        steps = " ".join(f"{s}({e})" if e else s for s, e in zip(r["steps"], r["step_epochs"] or [0] * len(r["steps"])))
        long_cells = [lg["test"], f"{lg['val_mean']:.2f}"] if lg else ["–", "–"]
        lines.append("| " + " | ".join([r["label"], steps, r["test"], f"{r['val_mean']:.2f}", *long_cells,
                                        str(r["epochs_trained"]), ",".join(map(str, r["seeds"]))]) + " |")
    return "\n".join(lines) + "\n"


def int8_deployment(result: dict, models: Path) -> dict:
    """INT8 artefact size and compiled batch-1 / batch-64 latency of one finished run (all orders ship alike)."""
    # m2mdc.deploy (m2mdc.latency: torch._inductor, torchao) costs ~1.2 s more to import (python -X importtime);
    # --help, the bad-input checks and --no-latency runs do not pay it
    from m2mdc.deploy import deployment_metrics

    model, meta = load_result(models / f"{result['run']['budget']}-seed{result['run']['seed']}-{result['key']}")
    d = deployment_metrics(model, meta.get("resolution", 32), int8=bool(meta.get("int8")))
    lat = next(iter(d["latency"].values()))
    return {"size_bytes": d["size_bytes"], "export_error": d["export_error"], "bs1_ms": lat["bs1_ms"],
            "bs1_spread_pct": lat["bs1_spread_pct"], "bs64_images_per_s": lat["bs64_images_per_s"],
            "backend": lat["backend"], "threads": d["threads"], "machine": machine(),
            "of": f"{result['row']}, {result['run']['budget']} budget, seed {result['run']['seed']}"
                  + (" (re-trained on this machine to time it; the saved accuracy is the one reported)"
                     if result.get("model_retrained") else "")}


def parse_orders(text: str, allowed, option: str, rule: str) -> list[str]:
    orders = [o.strip() for o in text.split(",") if o.strip()]
    if not orders or not set(orders) <= set(allowed):
        raise UserError(f"{option} {text!r}: {rule}")
    return orders


@cli
def main(argv=None):
    p = Parser(prog="python analysis/pqd_ablation.py", description=__doc__.split("\n\n")[0])
    p.add_argument("--seeds", default="0,1,2", help="comma-separated seeds (default 0,1,2)")
    p.add_argument("--orders", default=",".join(PQD_ORDERS), help="comma-separated orders (default: all six)")
    p.add_argument("--no-long", action="store_true", help="skip the long budget (P->Q->D and the short winner)")
    p.add_argument("--long-orders", default=None, help="comma-separated orders to run at the long budget "
                   "(default: P->Q->D and the order with the best mean val at the short budget), e.g. pqd,qpd "
                   "to settle a short-budget tie")
    p.add_argument("--no-latency", action="store_true", help="skip the INT8 size and latency measurement")
    add_teacher_args(p)
    add_data_args(p)
    a = p.parse_args(argv)
    seeds = parse_seeds(a.seeds)
    orders = parse_orders(a.orders, PQD_ORDERS, "--orders", f"each must be one of {', '.join(PQD_ORDERS)}")
    long_chosen = None if a.long_orders is None else parse_orders(
        a.long_orders, [] if a.no_long else orders, "--long-orders",
        f"each must be one of --orders ({', '.join(orders)}), and not with --no-long")

    root = out_root(a.out_dir)
    source, ds = teacher_and_data(a)
    ctx = prepare_context(a.arch, ds, source, pick_device(a.device), a.out_dir)
    target = target_of(ctx)
    name = f"{a.arch}-{ds.name}"
    folder, models = results_root() / "pqd_ablation" / name, ensure_writable(root / "pqd_ablation" / name / "models")
    results = []
    for run in ablation_runs(orders, "short", seeds):
        print(f"[pqd-ablation] {run.row}: short budget, seed {run.seed}", flush=True)
        results.append(execute(run, ctx, target, None, folder, models))
    short = summarise(results, orders, "short")
    long_orders = [] if a.no_long else long_chosen or list(dict.fromkeys(
        [o for o in ("pqd",) if o in orders] + [max(short, key=lambda r: r["val_mean"])["recipe"]]))
    for run in ablation_runs(long_orders, "long", seeds):
        print(f"[pqd-ablation] {run.row}: long budget, seed {run.seed}", flush=True)
        results.append(execute(run, ctx, target, None, folder, models))
    check_equal_training(results)
    long = summarise(results, long_orders, "long")
    deploy = {}
    if not a.no_latency:
        timed = min(ablation_runs(orders, "short", seeds), key=lambda r: (r.recipe != "pqd", r.seed))
        # A fresh clone has the saved result but not the model: re-train it (once) to time it.
        first = execute(timed, ctx, target, None, folder, models, need_model=True)
        print("[pqd-ablation] measuring the INT8 artefact once (every order ships the same architecture)", flush=True)
        deploy = int8_deployment(first, models)
    md = table(short, long)
    split = "/".join(f"{round(100 * f)}" for f in PQD_SPLIT)
    kd = ", ".join(f"{k.split('.')[1]} {v:g}" for k, v in FIXED_KD.items())
    md += (f"\nEvery order trains {BUDGETS['short']['epochs']} epochs in all, split P/Q/D {split} (P and Q: CE; D: KD "
           f"with {kd}); short = {BUDGETS['short']['steps_per_epoch']} batches per epoch, long = full epochs. "
           f"Ordered by mean val (short); test mean ± sample std over seeds. Short-budget verdict: {verdict(short)}.")
    if long:
        md += f" Long-budget verdict: {verdict(long)}."
    if deploy:
        size = f"{deploy['size_bytes'] / 1e6:.2f} MB" if deploy["size_bytes"] else f"n/a ({deploy['export_error']})"
        md += (f"\n\nINT8 artefact (every order): {size}, batch 1 {deploy['bs1_ms']:.2f} ms ±{deploy['bs1_spread_pct']:.0f}%,"
               f" batch 64 {deploy['bs64_images_per_s']:.0f} img/s, backend {deploy['backend']}, measured on "
               f"{deploy['of']}.")
    md = (f"Command: `{a.command}`\n\n" + md + f"\n\nWall time: {wall_time(results)} (wall clock on a shared machine: "
          f"other jobs may have run alongside).\n\nMachine of this run (the INT8 timing): {machine()}.\n")
    out = ensure_writable(root / "pqd_ablation" / name)
    write_text(out / "pqd_ablation.md", md)
    write_json(out / "pqd_ablation.json", {"short": short, "long": long, "deploy": deploy,
                                           "short_verdict": verdict(short), "wall_time": wall_time(results),
                                           "long_verdict": verdict(long) if long else None,
                                           "teacher": ctx.teacher_record})
    print(md)
    print(f"-> {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
