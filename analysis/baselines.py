"""Baselines at one GMACs budget against the search's best, over seeds and two training budgets: what a
user would otherwise run, trained exactly like the search's finalized best.

    python analysis/baselines.py --budget-gmacs 0.02 --experiment frontier-resnet18-cifar100-b0.02 \\
        --seeds 0,1,2 --budgets short,long

Rows (analysis/study.py trains them all the same way: the same total KD epochs of the same batches,
the same KD settings, BN recalibration after every structural edit):

* **uniform width**: every planes / mid width scaled by one factor to the budget, |BN gamma| channels,
  one repair (m2mdc.compiler.BASELINES, as the search's first trial);
* **Torch-Pruning local / global**: the Torch-Pruning library's group-L1 pruning (one uniform ratio
  per layer, or its global ranking), the head kept, bisected to the budget, then the same repair
  (the teacher features it keeps are read from its pruning history, so feature alignment is ours);
  and its local pruning with group Taylor importance (the cross-entropy gradient on the 5,000-image
  probe set), the data-aware ranking a Torch-Pruning user would try next;
* **M2M-DC at the budget**: the paper's recipe (MI block pruning at ratio 0.5, planes, mid, a repair
  after each) with its widths scaled to the budget;
* **search best**: the finalized member of ``--experiment`` with the highest mean val (analysis/
  finalize.py: the K Pareto members nearest the budget, re-trained from the teacher), with the
  common KD settings, and again with its own sampled KD settings (a separate, labelled row);
  ``--experiment`` may repeat (two searches of different spaces), each adding its own two rows;
* **PQD at full width** (prune 50% -> QAT -> KD, INT8) and **Torch-Pruning + QAT** (INT8): latency
  rows, short budget only.
* **your configurations** (``--config LABEL=JSON``, repeatable): structural knob values as a search
  trial takes them, widths projected onto the budget, trained like every row (a candidate of your own,
  or a point outside the search space, judged on the same terms).

Each (row, budget, seed) result is a JSON file under results/baselines/ARCH-DATASET-bBUDGET/ (or
``--name``, for another teacher's table), reused while the teacher's weights match; the seed-0 model
of each row is timed at the end, all rows in one run (batch 1 and 64, compiled FP32, INT8 for the QAT
rows; backend recorded).
"""
from __future__ import annotations

import statistics
import sys
from pathlib import Path

from m2mdc.cli.args import add_data_args, add_teacher_args, teacher_and_data
from m2mdc.compiler import BASELINES, compile_within, dry_target, target_of
from m2mdc.context import prepare_context
from m2mdc.device import pick_device
from m2mdc.errors import Parser, UserError, check_range, cli, plain_name
from m2mdc.io import ensure_writable, out_root, write_json, write_text
from m2mdc.knobs import knob_for, parse_labelled_configs
from m2mdc.results import load_result
from search.pareto import figure

from analysis.finalize import (add_screen_args, best_member, check_screen_args, check_search_setting, finalize, members,
                               parse_budgets, parse_seeds, screen_table, search_store)
from analysis.study import BUDGETS, FIXED_KD, Run, execute, machine, mean_std, results_root


CONFIG_ROW = "{} (--config)"  # the row label of a --config configuration


def parse_configs(texts: list[str]) -> dict[str, dict]:
    """--config LABEL=JSON (m2mdc.knobs.parse_labelled_configs), keyed by row label. KD knobs are refused:
    every row trains with the same FIXED_KD settings, which would silently override them."""
    configs: dict[str, dict] = {}
    for label, config in parse_labelled_configs(texts).items():
        shared = sorted(set(config) & {knob_for(setting) for setting in FIXED_KD})
        if shared:
            raise UserError(f"--config {label}: {', '.join(shared)} set the KD settings every row of the table shares "
                            f"({', '.join(f'{knob_for(k)} {v:g}' for k, v in FIXED_KD.items())}); drop them")
        configs[CONFIG_ROW.format(label)] = config
    return configs


def check_configs(configs: dict[str, dict], arch: str, num_classes: int, resolution: int, budget: float) -> None:
    """Every --config compiles to a plan within the budget (widths projected onto it, as a trial's are),
    checked on the architecture alone, before the teacher or any row trains."""
    target = dry_target(arch, num_classes, resolution)
    for row, config in configs.items():
        compile_within(config, target, budget, row)


def baseline_runs(budget: str, seed: int, int8_seeds: list[int] | None = None,
                  configs: dict[str, dict] | None = None) -> list[Run]:
    """The rows of one (budget, seed), then the user's ``configs`` (label -> knob values); the INT8
    latency rows (full-width PQD, Torch-Pruning + QAT) only at the short budget and, when ``int8_seeds``
    is given, only at those seeds."""
    runs = [Run("uniform width (|BN gamma|, one repair)", "config", budget, seed, config=BASELINES["uniform width"]),
            Run("Torch-Pruning local (group-L1, one ratio)", "torch-pruning", budget, seed),
            Run("Torch-Pruning local (group Taylor, one ratio)", "torch-pruning", budget, seed,
                tp_importance="group_taylor"),
            Run("Torch-Pruning global (group-L1, global ranking)", "torch-pruning", budget, seed, tp_global=True),
            Run("M2M-DC paper recipe at the budget", "config", budget, seed, config=BASELINES["M2M-DC at the budget"])]
    if budget == "short" and (int8_seeds is None or seed in int8_seeds):
        runs += [Run("PQD at full width: prune 50% -> QAT -> KD (INT8)", "pqd", budget, seed, recipe="pqd"),
                 Run("Torch-Pruning local + QAT (INT8)", "torch-pruning", budget, seed, qat=True)]
    runs += [Run(label, "config", budget, seed, config=config) for label, config in (configs or {}).items()]
    return runs


def measure_latency(result: dict, models: Path) -> dict:
    """Batch-1 and batch-64 latency of a row's saved seed-0 model, as it ships (backend recorded)."""
    # m2mdc.latency (torch._inductor, torchao) costs ~1.1 s more to import (python -X importtime); --help and
    # the bad-input checks do not pay it
    from m2mdc.latency import shipped_latency

    model, meta = load_result(models / f"{result['run']['budget']}-seed{result['run']['seed']}-{result['key']}")
    b1 = shipped_latency(model, meta.get("resolution", 32), bool(meta.get("int8")), batch=1, repeats=50)
    b64 = shipped_latency(model, meta.get("resolution", 32), bool(meta.get("int8")), batch=64, repeats=10)
    return {"bs1_ms": b1["ms"], "bs1_spread_pct": b1["spread_pct"], "bs64_images_per_s": b64["images_per_s"],
            "backend": b1["backend"], "threads": b1["threads"], "machine": machine()}


def table(rows: dict[str, list[dict]], teacher: dict, budgets: list[str], latency: dict) -> str:
    head = ["method", "KD settings"]
    for b in budgets:
        head += [f"test top-1 ({b})", f"val top-1 ({b})"]
    head += ["GMACs", "params", "bs1 latency", "bs64", "backend", "seeds"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    cells = ["teacher", ""] + sum(([f"{teacher['test_top1']:.2f}", f"{teacher['val_top1']:.2f}"] for _ in budgets), [])
    lat = latency.get("teacher", {})
    lines.append("| " + " | ".join(cells + [f"{teacher['gmacs']:.4f}", f"{teacher['params'] / 1e6:.3f}M",
                                            _ms(lat), _ips(lat), lat.get("backend", ""), ""]) + " |")
    for label, results in rows.items():
        r0 = results[0]
        kd = "own (tuned)" if r0["run"]["tuned_kd"] else ("fixed" if r0["run"]["method"] != "pqd" else "fixed (D stage)")
        cells = [label.replace("|", "\\|") + (" (INT8)" if r0["int8"] and "(INT8)" not in label else ""), kd]
        for b in budgets:
            rs = [r for r in results if r["run"]["budget"] == b]
            cells += [mean_std([r["test_top1"] for r in rs]) if rs else "–",
                      f"{statistics.mean(r['val_top1'] for r in rs):.2f}" if rs else "–"]
        lat = latency.get(label, {})
        cells += [f"{r0['gmacs']:.4f}", f"{r0['params'] / 1e6:.3f}M", _ms(lat), _ips(lat), lat.get("backend", ""),
                  seeds_cell(results)]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def seeds_cell(results: list[dict]) -> str:
    """The seeds a row's means are over: one list, or one per budget where the budgets' seeds differ."""
    by_budget: dict[str, list[int]] = {}
    for r in results:
        by_budget.setdefault(r["run"]["budget"], []).append(r["run"]["seed"])
    text = {b: ",".join(map(str, sorted(set(s)))) for b, s in by_budget.items()}
    if len(set(text.values())) == 1:
        return next(iter(text.values()))
    return "; ".join(f"{b} {t}" for b, t in text.items())


def _ms(lat: dict) -> str:
    return f"{lat['bs1_ms']:.2f} ms ±{lat['bs1_spread_pct']:.0f}%" if lat else ""


def _ips(lat: dict) -> str:
    return f"{lat['bs64_images_per_s']:.0f} img/s" if lat else ""


MARKERS = "osD^v<>pP*Xh"  # with tab20's colours: every row of a 20-row table distinct in colour and marker


def dot_plot(rows: dict[str, list[dict]], teacher: dict, budget: float, path: Path, budgets) -> Path:
    """One row per method: test top-1 mean ± sample std over its seeds, a marker per budget (short, long),
    a colour per method, the teacher's test top-1 as a vertical line."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # matplotlib only when plotting (as search.pareto.figure)

    names = list(rows)
    fig, ax = plt.subplots(figsize=(9.5, 0.42 * len(names) + 1.6), dpi=120)
    try:
        colours = plt.get_cmap("tab20").colors
        for i, name in enumerate(names):
            y = len(names) - 1 - i
            for j, b in enumerate(budgets):
                vals = [r["test_top1"] for r in rows[name] if r["run"]["budget"] == b]
                if not vals:
                    continue
                sd = statistics.stdev(vals) if len(vals) > 1 else 0.0
                ax.errorbar([statistics.mean(vals)], [y + (j - (len(budgets) - 1) / 2) * 0.28], xerr=[sd],
                            fmt=MARKERS[j % len(MARKERS)], color=colours[i % len(colours)], ms=6, capsize=3,
                            mfc=colours[i % len(colours)] if b == budgets[-1] else "white")
        for j, b in enumerate(budgets):  # legend: the budgets' markers
            ax.errorbar([], [], xerr=[], fmt=MARKERS[j % len(MARKERS)], color="grey",
                        mfc="grey" if b == budgets[-1] else "white", label=f"{b} budget (mean ± std over seeds)")
        ax.axvline(teacher["test_top1"], ls="--", c="black", lw=1, label=f"teacher {teacher['test_top1']:.2f}")
        ax.set_yticks(range(len(names)), list(reversed(names)), fontsize=8)
        ax.set_xlabel("test top-1 (%)")
        ax.set_title(f"baselines at {budget:g} GMACs")
        ax.grid(axis="x", alpha=0.3)
        ax.legend(fontsize=7, loc="lower left")
        fig.tight_layout()
        fig.savefig(path)
    finally:
        plt.close(fig)
    return path


def plots(rows: dict[str, list[dict]], teacher: dict, latency: dict, budget: float, folder: Path, budgets) -> list:
    """The dot plot (baselines.png) and, with latency measured, test top-1 against latency and throughput."""
    out = [dot_plot(rows, teacher, budget, folder / "baselines.png", budgets)]
    files = {"bs1_ms": "baselines-latency.png", "bs64_images_per_s": "baselines-throughput.png"}
    from matplotlib import colormaps  # matplotlib only when plotting (as search.pareto.figure)

    colours = colormaps["tab20"].colors
    for x, label in (("bs1_ms", "batch-1 latency (ms, as shipped)"),
                     ("bs64_images_per_s", "batch-64 throughput (images/s, as shipped)")):
        if not latency:  # --no-latency: no empty latency plots
            continue
        path = folder / files[x]
        b = budgets[-1]
        with figure(path, label, f"test top-1 (%), {b} budget, mean over seeds", f"baselines at {budget:g} GMACs",
                    legend_outside=True) as ax:
            for i, (name, results) in enumerate(rows.items()):
                rs = [r for r in results if r["run"]["budget"] == b] or results
                xv = latency.get(name, {}).get(x)
                if xv is None:
                    continue
                ax.scatter([xv], [statistics.mean(r["test_top1"] for r in rs)], color=colours[i % len(colours)],
                           marker=MARKERS[i % len(MARKERS)], s=50, label=name)
            tx = latency.get("teacher", {}).get(x)
            if tx is not None:
                ax.scatter([tx], [teacher["test_top1"]], marker="*", s=160, c="black", label="teacher")
        out.append(path)
    return out


@cli
def main(argv=None):
    p = Parser(prog="python analysis/baselines.py", description=__doc__.split("\n\n")[0])
    p.add_argument("--budget-gmacs", type=float, required=True)
    p.add_argument("--experiment", action="append", default=[],
                   help="a frontier search whose finalized best joins the table (repeat it to compare searches)")
    p.add_argument("--k", type=int, default=2, help="Pareto members nearest the budget to finalize (default 2)")
    p.add_argument("--seeds", default="0,1,2", help="comma-separated seeds (default 0,1,2)")
    p.add_argument("--budgets", default="short,long", help=f"comma-separated, of {', '.join(BUDGETS)}")
    p.add_argument("--only", default=None, help="comma-separated words: rows whose label contains one of them")
    p.add_argument("--no-latency", action="store_true", help="skip the final latency measurements")
    p.add_argument("--name", default=None, help="the table's folder under OUT/baselines/ and results/baselines/ "
                   "(default ARCH-DATASET-bBUDGET); name another teacher's table, so it does not replace this one")
    p.add_argument("--int8-seeds", default=None, help="seeds of the INT8 latency rows (default: --seeds); "
                   "their accuracy is shown with the seeds it has")
    p.add_argument("--long-seeds", default=None, help="seeds of the long budget (default: --seeds), so its ~8-min "
                   "runs can be added over several sessions; each row says which seeds each budget has")
    p.add_argument("--config", action="append", default=[], metavar="LABEL=JSON",
                   help="a configuration of your own as a row: knob values as a search trial takes them (missing "
                        "knobs take their defaults), widths projected onto the budget, trained like every row; "
                        "repeatable, e.g. 'shallow={\"prune_ratio\": 0.8, \"planes_keep\": 1, \"mid_keep\": 1}'")
    add_screen_args(p)
    p.add_argument("--mlflow-uri", default=None)
    add_teacher_args(p)
    add_data_args(p)
    a = p.parse_args(argv)
    check_range("--budget-gmacs", a.budget_gmacs, 0.0, 10.0, lo_open=True)
    check_range("--k", a.k, 1, 100)
    check_screen_args(a)
    seeds, budgets = parse_seeds(a.seeds), parse_budgets(a.budgets)
    int8_seeds = None if a.int8_seeds is None else parse_seeds(a.int8_seeds, "--int8-seeds")
    if int8_seeds is not None and not set(int8_seeds) <= set(seeds):
        raise UserError(f"--int8-seeds {a.int8_seeds!r} must be among --seeds {a.seeds!r}")
    if a.long_seeds is not None and "long" not in budgets:
        raise UserError(f"--long-seeds {a.long_seeds!r} needs the long budget: add --budgets short,long")
    long_seeds = seeds if a.long_seeds is None else parse_seeds(a.long_seeds, "--long-seeds")
    if not set(long_seeds) <= set(seeds):
        raise UserError(f"--long-seeds {a.long_seeds!r} must be among --seeds {a.seeds!r}")
    seeds_of = {b: long_seeds if b == "long" else seeds for b in budgets}
    if a.name is not None:
        plain_name(a.name, "--name", "resnet18-cifar100-b0.02-teacher30")

    root = out_root(a.out_dir)
    client = None
    if len(set(a.experiment)) < len(a.experiment):
        raise UserError(f"--experiment repeats a search ({', '.join(a.experiment)}); name each once")
    if a.experiment:
        client = search_store(a.mlflow_uri, root, a.experiment)
        for experiment in a.experiment:  # a wrong experiment fails before anything trains
            search, _ = members(client, experiment, a.budget_gmacs, a.k)
            check_search_setting(search, a, experiment)
            if a.screen:
                search.screen_pool(a.budget_gmacs, a.screen, a.band)
    configs = parse_configs(a.config)
    source, ds = teacher_and_data(a)
    check_configs(configs, a.arch, ds.num_classes, ds.resolution, a.budget_gmacs)
    ctx = prepare_context(a.arch, ds, source, pick_device(a.device), a.out_dir)
    target = target_of(ctx)
    name = a.name or f"{a.arch}-{ds.name}-b{a.budget_gmacs:g}"
    folder, models = results_root() / "baselines" / name, ensure_writable(root / "baselines" / name / "models")
    rows: dict[str, list[dict]] = {}
    from_saved: list[str] = []  # searches this MLflow store does not hold, read from their saved record
    saved_in: dict[str, Path] = {}  # rows whose results live elsewhere than folder (finalized members)
    screenings: dict[str, list[str]] = {}  # search -> the screening that chose its finalized members

    def wanted(label):
        return not a.only or any(w in label for w in a.only.split(","))

    for b in budgets:
        for seed in seeds_of[b]:
            for run in baseline_runs(b, seed, int8_seeds, configs):
                if wanted(run.row):
                    print(f"[baselines] {run.row}: {b} budget, seed {seed}", flush=True)
                    rows.setdefault(run.row, []).append(execute(run, ctx, target, a.budget_gmacs, folder, models))
    for experiment in a.experiment if wanted("search best") else []:
        summaries = finalize(client, experiment, ctx, target, a.budget_gmacs, a.k, seeds_of, models=models,
                             screen_n=a.screen, band=a.band)
        if summaries[0]["search_from"] != "mlflow":
            from_saved.append(experiment)
        if summaries[0]["screened"]:
            screenings[experiment] = screen_table(summaries)
        best = best_member(summaries, budgets[-1])
        label = f"search best: finalized trial {best['trial_id']} of {experiment}"
        rows[label], saved_in[label] = best["results"], results_root() / "finalize" / experiment
        tuned = []
        for b in budgets:
            for seed in seeds_of[b]:
                run = Run(f"search best {best['trial_id']}, its own KD", "config", b, seed, config=best["config"],
                          tuned_kd=True)
                print(f"[baselines] {run.row}: {b} budget, seed {seed}", flush=True)
                tuned.append(execute(run, ctx, target, a.budget_gmacs, folder, models))
        rows[f"search best (trial {best['trial_id']}), its own sampled KD settings"] = tuned
    latency = {}
    if not a.no_latency:
        from m2mdc.latency import shipped_latency  # ~1.1 s to import: only when timing (see measure_latency)

        print("[baselines] timing every row's seed-0 model, one after another", flush=True)
        t1 = shipped_latency(ctx.teacher, ds.resolution, int8=False, batch=1, repeats=50)
        t64 = shipped_latency(ctx.teacher, ds.resolution, int8=False, batch=64, repeats=10)
        latency["teacher"] = {"bs1_ms": t1["ms"], "bs1_spread_pct": t1["spread_pct"], "backend": t1["backend"],
                              "bs64_images_per_s": t64["images_per_s"], "threads": t1["threads"]}
        for label, results in rows.items():
            # seed 0's model at the longest budget the row has (latency depends on the architecture and
            # format, which every budget of a row shares); re-trained if it is not on this machine
            first = min(results, key=lambda r: (r["run"]["seed"], -list(BUDGETS).index(r["run"]["budget"])))
            first = execute(Run(**first["run"]), ctx, target, a.budget_gmacs, saved_in.get(label, folder), models,
                            need_model=True)
            latency[label] = {**measure_latency(first, models), "model_retrained": bool(first.get("model_retrained"))}
    out = ensure_writable(root / "baselines" / name)
    md = table(rows, ctx.teacher_record, budgets, latency)
    settings = ", ".join(f"{k.split('.')[1]} {v:g}" for k, v in FIXED_KD.items())
    budget_text = "; ".join(f"{b}: {v['epochs']} epochs of {v['steps_per_epoch'] or 'all'} batches"
                            for b, v in BUDGETS.items() if b in budgets)
    md += (f"\nFixed KD settings of every row but the tuned one: {settings} (the paper's ramped loss plus Hinton's "
           f"KL). Every row trains the same total KD epochs ({budget_text}); a plan with k repairs splits them "
           f"(E // k each, the rest on the last); PQD splits its epochs P/Q/D 20/40/40. Test mean ± sample std over "
           f"the seeds the last column names (per budget where they differ); selection (the search's best member) by mean val. Machine: {machine()}.\n")
    if latency:
        again = [label for label, t in latency.items() if t.get("model_retrained")]
        md += ("\nLatency: each row's seed-0 model at the longest budget it has (a row's budgets share its "
               "architecture and format), all timed together in this run" +
               (f"; trained again on this machine to be timed (saved results stay the reported ones): "
                f"{'; '.join(again)}" if again else "") + ".\n")
    for experiment in from_saved:
        md += (f"\nSearch {experiment}: its members were read from results/finalize/{experiment}/search.json, the "
               f"record finalize saved of it (this machine's MLflow store does not hold the search).\n")
    for experiment, lines in screenings.items():
        md += f"\nSearch {experiment}: its finalized members were chosen by screening (--screen {a.screen}). " + \
              "\n".join(lines) + "\n"
    md = f"Command: `{a.command}`\n\n" + md
    write_text(out / "baselines.md", md)
    write_json(out / "baselines.json", {"rows": rows, "latency": latency, "teacher": ctx.teacher_record})
    for f in plots(rows, ctx.teacher_record, latency, a.budget_gmacs, out, budgets):
        print(f"plot: {f}")
    print(md)
    print(f"-> {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
