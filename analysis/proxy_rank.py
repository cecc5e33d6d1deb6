"""Is the search's cheap proxy trustworthy? Kendall's tau between short-budget and long-budget val
top-1 over N configurations of a finished search that lie within 20 % of its budget.

    python analysis/proxy_rank.py --experiment frontier-resnet18-cifar100-b0.02 --n 12

The N configurations are the search's completed trials with budget*(1 - band) <= GMACs <= budget,
picked evenly over their rank in the search's own val top-1 (so the set spans good and bad trials,
not only the front). Each is re-trained from the teacher at both budgets of analysis/study.py
(short: the quick profile's 8 epochs of 40 batches; long: 8 full epochs) with the fixed KD settings
of the comparison tables, seed by seed; results are the same per-run JSON files analysis/finalize.py
writes (results/finalize/EXPERIMENT/), so finalized members are reused and an interrupted run
resumes. Tau is computed on the mean val over seeds, with a percentile bootstrap interval over
configurations (2,000 resamples). Selection and tau use val only; test is never read.
"""
from __future__ import annotations

import sys

import numpy as np

from m2mdc.cli.args import add_data_args, add_teacher_args, teacher_and_data
from m2mdc.compiler import target_of
from m2mdc.context import prepare_context
from m2mdc.device import pick_device
from m2mdc.errors import Parser, UserError, check_range, cli
from m2mdc.io import ensure_writable, out_root, write_json, write_text

from analysis.finalize import check_search_setting, config_of, member_run, members, parse_seeds
from analysis.study import BUDGETS, execute, machine, results_root

BOOTSTRAP = 2000
COMPARED = ("short", "long")  # the study budgets re-trained (analysis/proxy_depth.py measures every fidelity)


def candidates(client, parent, budget: float, band: float) -> list:
    """The search's completed trials within [budget*(1-band), budget], by its val, best first."""
    runs = client.search_runs([parent.info.experiment_id], f"tags.mlflow.parentRunId = '{parent.info.run_id}'",
                              max_results=10000)
    done = [r for r in runs if r.data.tags.get("role") == "trial" and r.data.tags.get("status") == "completed"
            and budget * (1 - band) <= r.data.metrics.get("gmacs", 1e9) <= budget]
    return sorted(done, key=lambda r: -r.data.metrics["val_top1"])


def spread_pick(items: list, n: int) -> list:
    """n items evenly spaced over a ranked list (its first and last included)."""
    if len(items) <= n:
        return list(items)
    return [items[round(i * (len(items) - 1) / (n - 1))] for i in range(n)]


def kendall_with_interval(short: list[float], long: list[float], seed: int = 0) -> dict:
    """Kendall's tau-b and its 95 % percentile-bootstrap interval over configurations."""
    # scipy.stats costs ~0.6 s more to import (python -X importtime); this CLI's and analysis/proxy_depth.py's
    # --help and bad-input paths do not pay it
    from scipy.stats import kendalltau

    tau = float(kendalltau(short, long).statistic)
    rng = np.random.default_rng(seed)
    s, lg = np.asarray(short), np.asarray(long)
    taus = []
    for _ in range(BOOTSTRAP):
        idx = rng.integers(0, len(s), len(s))
        t = kendalltau(s[idx], lg[idx]).statistic
        if np.isfinite(t):  # a resample of one distinct configuration has no ranking
            taus.append(t)
    lo, hi = np.percentile(taus, [2.5, 97.5])
    return {"tau": tau, "ci_low": float(lo), "ci_high": float(hi), "bootstrap": len(taus)}


@cli
def main(argv=None):
    p = Parser(prog="python analysis/proxy_rank.py", description=__doc__.split("\n\n")[0])
    p.add_argument("--experiment", required=True, help="a finished frontier search (its MLflow experiment)")
    p.add_argument("--n", type=int, default=12, help="configurations to re-train at both budgets (default 12)")
    p.add_argument("--band", type=float, default=0.2, help="GMACs window below the budget, as a share (default 0.2)")
    p.add_argument("--seeds", default="0", help="comma-separated seeds; tau uses the mean val (default 0)")
    p.add_argument("--budget-gmacs", type=float, default=None, help="default: the search's own budget")
    p.add_argument("--mlflow-uri", default=None, help="default sqlite:///OUT/mlflow.db")
    add_teacher_args(p)
    add_data_args(p)
    a = p.parse_args(argv)
    seeds = parse_seeds(a.seeds)
    check_range("--n", a.n, 3, 1000)
    check_range("--band", a.band, 0.0, 1.0, lo_open=True)
    from search.tracking import open_search_store  # imports ray.tune: ~1.2 s that --help and bad flags do not pay

    root = out_root(a.out_dir)
    client = open_search_store(a.mlflow_uri, root)
    search, _ = members(client, a.experiment, a.budget_gmacs or 1e9, 1)
    if search.parent is None:
        raise UserError(f"proxy_rank draws from every completed trial of {a.experiment!r}, which only its MLflow "
                        f"store holds ({search.saved} keeps its Pareto members); pass --mlflow-uri of that store")
    budget = a.budget_gmacs or search.budget
    check_search_setting(search, a, a.experiment)
    pool = candidates(client, search.parent, budget, a.band)
    if len(pool) < 3:
        raise UserError(f"search {a.experiment!r} has {len(pool)} completed trial(s) within {a.band:.0%} of "
                        f"{budget:g} GMACs; tau needs at least 3 (widen --band or search longer)")
    chosen = spread_pick(pool, a.n)
    source, ds = teacher_and_data(a)
    ctx = prepare_context(a.arch, ds, source, pick_device(a.device), a.out_dir)
    target = target_of(ctx)
    folder = results_root() / "finalize" / a.experiment  # shared with finalize.py: its members are reused
    rows = []
    for i, trial in enumerate(chosen, 1):
        tid, config = trial.data.tags.get("trial_id"), config_of(trial.data.params)
        vals = {}
        for b in COMPARED:
            got = []
            for seed in seeds:
                print(f"[proxy-rank] {i}/{len(chosen)} trial {tid}: {b} budget, seed {seed}", flush=True)
                got.append(execute(member_run({"trial_id": tid, "config": config}, b, seed, tuned=False), ctx,
                                   target, budget, folder)["val_top1"])
            vals[b] = sum(got) / len(got)
        rows.append({"trial_id": tid, "gmacs": trial.data.metrics["gmacs"], "search_val": trial.data.metrics["val_top1"],
                     "short_val": vals["short"], "long_val": vals["long"]})
    stats = kendall_with_interval([r["short_val"] for r in rows], [r["long_val"] for r in rows])
    lines = ["| trial | GMACs | val in the search | val short | val long |", "|---|---|---|---|---|"]
    lines += [f"| {r['trial_id']} | {r['gmacs']:.4f} | {r['search_val']:.2f} | {r['short_val']:.2f} | "
              f"{r['long_val']:.2f} |" for r in rows]
    md = "\n".join(lines) + (
        f"\n\nKendall tau (short vs long val top-1, {len(rows)} configurations within {a.band:.0%} of {budget:g} "
        f"GMACs, seeds {','.join(map(str, seeds))}): **{stats['tau']:.2f}** (95% bootstrap interval "
        f"{stats['ci_low']:.2f} to {stats['ci_high']:.2f}, {stats['bootstrap']} resamples).\n\nMachine: {machine()}.\n")
    md = f"Command: `{a.command}`\n\n" + md
    out = ensure_writable(root / "proxy_rank" / a.experiment)
    write_text(out / "proxy_rank.md", md)
    write_json(out / "proxy_rank.json", {"rows": rows, **stats, "seeds": seeds, "budget_gmacs": budget,
                                         "band": a.band, "budgets": {b: BUDGETS[b] for b in COMPARED}})
    print(md)
    print(f"-> {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
