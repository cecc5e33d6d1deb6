"""Does a latency budget hold? The pre-training latency a search fits its configurations to
(search/frontier.py --budget-ms: the untrained final architecture, compiled as shipped, cached per
machine) against fresh measurements of the trained models, taken in another process.

    python benchmarks/latency_budget.py --num-samples 24 --latency-batch 64

1. Times the fastest configuration the space can build and the full model, and sets the budget
   between them (``--budget-ms`` overrides; ``--budget-at`` says where, default 0.4 of the way up).
2. Runs a smoke frontier search on the embedded digits data (32x32, so the architectures and their
   latencies are CIFAR's) under that budget with ASHA off, so every feasible trial finishes.
3. In a fresh process (``--remeasure``), loads every finished trial's saved model and times it as it
   ships, at the same batch size and threads.

Reports, with the run-to-run spread of every figure: the median absolute error of the prediction
against the fresh measurement (target <= 10 %); whether every finished trial's fresh latency is
within the budget + ``--tolerance`` (10 %); and whether the most accurate trial lies within 15 %
under the budget (the projection is not over-cautious; and, separately, where every trial the projection
fitted onto the budget landed). Writes OUT/benchmarks/latency_budget/NAME/; ``--report NAME`` rewrites
that report from its saved measurements without timing anything.
"""
from __future__ import annotations

import argparse
import csv
import json
import statistics
import subprocess
import sys
import time
from argparse import Namespace
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from m2mdc.arch_latency import QUIET_ROUNDS, ArchLatency, machine  # noqa: E402
from m2mdc.errors import Parser, UserError, check_range, cli  # noqa: E402
from m2mdc.io import out_root, write_json, write_text  # noqa: E402

TOLERANCE = 0.10  # a finished trial may be this much over the budget (run-to-run noise of a shared CPU)
UNDER = 0.15  # the most accurate trial must be within this share under the budget


def build_parser() -> Parser:
    p = Parser(prog="python benchmarks/latency_budget.py", description=__doc__.split("\n\n")[0])
    p.add_argument("--num-samples", type=int, default=24, help="trials of the search (default 24; the seeded "
                   "baselines are among them)")
    p.add_argument("--latency-batch", type=int, default=64, help="batch size of every latency (default 64)")
    p.add_argument("--threads", type=int, default=2, help="threads of trials and of every timing (default 2)")
    p.add_argument("--budget-ms", type=float, default=None, help="the budget (default: --budget-at between the "
                   "fastest buildable configuration and the full model)")
    p.add_argument("--budget-at", type=float, default=0.4, help="where the default budget lies between the fastest "
                   "configuration (0) and the full model (1); default 0.4")
    p.add_argument("--tolerance", type=float, default=TOLERANCE, help="allowed excess over the budget of a finished "
                   "trial's fresh measurement (default 0.10)")
    p.add_argument("--space", default="resnet18", help="space of the search (default resnet18: FP32 and INT8)")
    p.add_argument("--name", default=None, help="search name (default latency-bench-bsB-<time>)")
    p.add_argument("--search", default=None, help="check an existing latency-budget search of this name instead of "
                   "running one (its budget, batch and threads; its trials re-timed in a fresh process)")
    p.add_argument("--report", default=None, metavar="NAME", help="only rewrite benchmark NAME's report from its "
                   "saved measurements (OUT/benchmarks/latency_budget/NAME/latency_budget.json); times nothing")
    p.add_argument("--out-dir", default=None, help="output root (default ./outputs)")
    p.add_argument("--remeasure", default=None, help=argparse.SUPPRESS)  # the inner, fresh process
    p.add_argument("--json", default=None, help=argparse.SUPPRESS)
    return p


def remeasure(search_dir: Path, batch: int, threads: int, json_path: Path) -> None:
    """The fresh process: every finished trial's saved model, timed as it ships."""
    # m2mdc.latency (torch._inductor, torchao) and m2mdc.results (m2mdc.models, torchvision) add ~2.5 s to the
    # import (python -X importtime); --help and --report do not pay them
    from m2mdc.latency import shipped_latency
    from m2mdc.results import load_result

    rows = {}
    folders = sorted(p.parent for p in search_dir.glob("trial_*/model/keep_cfg.json"))
    for i, folder in enumerate(folders, 1):
        model, meta = load_result(folder)
        t = shipped_latency(model, meta.get("resolution", 32), bool(meta.get("int8")), batch=batch, threads=threads,
                            rounds=QUIET_ROUNDS)
        rows[folder.parent.name.removeprefix("trial_")] = t
        print(f"  [{i}/{len(folders)}] {folder.parent.name}: {t['ms']:.2f} ms ±{t['spread_pct']:.0f}% "
              f"({'INT8' if meta.get('int8') else 'FP32'}, {t['backend']})", flush=True)
    write_json(json_path, rows)


def bounds(space_name: str, batch: int, threads: int, cache: Path):
    """(fastest configuration the space builds, full model) latencies on digits' shape (10 classes, 32x32),
    and the measurements (kept once the budget is known to be feasible)."""
    # these import m2mdc.models (torchvision: ~1.3 s, python -X importtime) that --help and --report do not pay
    from m2mdc.cost import CostModel
    from m2mdc.models import get_adapter
    from search.frontier import check_latency_budget
    from spaces import load_space

    space = load_space(space_name)
    adapter = get_adapter(space.arch)
    cost = CostModel(adapter, 10, 32)
    a = Namespace(arch=space.arch, budget_ms=float("inf"), latency_batch=batch, latency_threads=threads)
    fast = check_latency_budget(a, space, cost, cache)
    fastest = min(fast.memo.values(), key=lambda t: t["ms"])
    whole = ArchLatency(adapter, 10, 32, batch=batch, threads=threads, cache_dir=cache, write=False)
    full = whole(adapter.keep_cfg_of(adapter.base_model(10)), False)
    return fastest, full, (fast, whole)


def run_bench_search(a, root: Path, name: str):
    """Steps 1-2: the bounds, the budget between them, and the smoke search under it."""
    print(f"[1/3] the fastest configuration of space {a.space!r} and the full model, batch {a.latency_batch}, "
          f"{a.threads} threads", flush=True)
    fastest, full, measured = bounds(a.space, a.latency_batch, a.threads, root / "latency")
    budget = a.budget_ms if a.budget_ms is not None else round(
        fastest["ms"] + a.budget_at * (full["ms"] - fastest["ms"]), 3)
    if budget < fastest["ms"]:
        raise UserError(f"--budget-ms {budget:g} is below the fastest configuration the space can build "
                        f"({fmt(fastest)} ms at batch {a.latency_batch}); raise it")
    for oracle in measured:
        oracle.save_to(root / "latency")
    print(f"      fastest {fmt(fastest)} ms, full model {fmt(full)} ms -> budget {budget:g} ms", flush=True)

    print(f"[2/3] smoke search of {a.num_samples} trials under {budget:g} ms (digits, ASHA off)", flush=True)
    cmd = [sys.executable, "search/frontier.py", "--budget-ms", str(budget), "--latency-batch", str(a.latency_batch),
           "--cpus-per-trial", str(a.threads), "--profile", "smoke", "--dataset", "digits", "--space", a.space,
           "--num-samples", str(a.num_samples), "--no-asha", "--name", name, "--out-dir", str(root), "--quiet"]
    t0 = time.perf_counter()
    r = subprocess.run(cmd, cwd=REPO)  # its progress streams through
    search_s = time.perf_counter() - t0
    if r.returncode != 0:
        raise UserError(f"the search failed (exit {r.returncode}); its output above says why")
    return budget, fastest, full, search_s, root / "search" / name


def fmt(t: dict | None) -> str:
    return "" if not t else f"{t['ms']:.2f} ±{t['spread_pct']:.0f}%"


@cli
def main(argv=None):
    a = build_parser().parse_args(argv)
    if a.remeasure:  # the inner, fresh process
        remeasure(Path(a.remeasure), a.latency_batch, a.threads, Path(a.json))
        return 0
    if a.report:
        folder = out_root(a.out_dir) / "benchmarks" / "latency_budget" / a.report
        try:
            saved = json.loads((folder / "latency_budget.json").read_text())
            saved["header"], saved["rows"]
        except (OSError, ValueError, KeyError):
            raise UserError(f"no saved benchmark named {a.report} under {folder.parent} (or it predates --report); "
                            "run the benchmark first") from None
        write_report(folder, saved)
        return 0
    check_range("--num-samples", a.num_samples, 1, 10 ** 4)
    check_range("--latency-batch", a.latency_batch, 1, 4096)
    check_range("--threads", a.threads, 1, 1024)
    check_range("--budget-at", a.budget_at, 0.0, 1.0, lo_open=True, hi_open=True)
    check_range("--tolerance", a.tolerance, 0.0, 1.0)
    if a.budget_ms is not None:
        check_range("--budget-ms", a.budget_ms, 0.0, float("inf"), lo_open=True, hi_open=True)
    from spaces import load_space  # imports m2mdc.models (torchvision, ~1.3 s) that --help and --report do not pay

    load_space(a.space)  # a bad --space is one line before anything is timed
    root = out_root(a.out_dir)
    if a.search:  # an existing latency-budget search: steps 1-2 are its own
        search_dir = root / "search" / a.search
        try:
            identity = json.loads((search_dir / "search.json").read_text())["identity"]
        except (OSError, ValueError, KeyError):
            raise UserError(f"no search named {a.search} under {root / 'search'}; run search/frontier.py first") from None
        if identity.get("budget_ms") is None or not (search_dir / "trials.csv").exists():
            raise UserError(f"{a.search} is not a finished latency-budget search (search/frontier.py --budget-ms)")
        budget, a.latency_batch, a.threads = identity["budget_ms"], identity["latency_batch"], identity["latency_threads"]
        fastest = full = search_s = None
        folder = root / "benchmarks" / "latency_budget" / (a.name or f"recheck-{a.search}")
    else:
        name = a.name or f"latency-bench-bs{a.latency_batch}-{time.strftime('%Y%m%d-%H%M%S')}"
        folder = root / "benchmarks" / "latency_budget" / name
        if folder.exists():
            raise UserError(f"{folder} exists; pass another --name")
        budget, fastest, full, search_s, search_dir = run_bench_search(a, root, name)
    with open(search_dir / "trials.csv") as f:
        trials = {row["trial_id"]: row for row in csv.DictReader(f)}
    done = {k: v for k, v in trials.items() if v["status"] == "completed"}

    print(f"[3/3] {len(done)} finished trials re-timed in a fresh process", flush=True)
    fresh_path = folder / "fresh.json"
    folder.mkdir(parents=True, exist_ok=True)
    subprocess.run([sys.executable, __file__, "--remeasure", str(search_dir), "--latency-batch", str(a.latency_batch),
                    "--threads", str(a.threads), "--json", str(fresh_path)], cwd=REPO, check=True)
    fresh = json.loads(fresh_path.read_text())

    rows = []
    for tid, t in done.items():
        pred = float(t["predicted_latency_ms"])
        f = fresh.get(tid)
        rows.append({"trial": tid, "int8": t["int8"], "val_top1": float(t["val_top1"]), "gmacs": float(t["gmacs"]),
                     "predicted_ms": pred, "predicted_spread_pct": float(t["predicted_latency_spread_pct"] or 0),
                     "in_trial_ms": float(t["latency_ms"]), "fresh_ms": f and f["ms"],
                     "fresh_spread_pct": f and f["spread_pct"],
                     "abs_error_pct": None if f is None else 100.0 * abs(pred - f["ms"]) / f["ms"],
                     "sampled_ms": float(t["sampled_latency_ms"]), "width_scale": float(t["width_scale"]),
                     "measurements": int(float(t["latency_measurements"])),
                     "fit_seconds": float(t["latency_seconds"])})
    infeasible = [t for t in trials.values() if t["status"] == "infeasible"]
    took = f"search {search_s / 60:.1f} min " if search_s is not None else f"search {a.search} "
    header = [f"Command: `python benchmarks/latency_budget.py {' '.join(argv if argv is not None else sys.argv[1:])}`",
              "", f"Machine: {machine_line(a.threads)}; batch {a.latency_batch}; {took}"
              f"({len(done)} finished, {len(infeasible)} rejected before training as over the budget).", "",
              f"Budget {budget:g} ms (fastest buildable {fmt(fastest)} ms, full model {fmt(full)} ms)."
              if fastest else f"Budget {budget:g} ms (the search's).", ""]
    saved = {"budget_ms": budget, "fastest": fastest, "full": full, "rows": rows, "tolerance": a.tolerance,
             "header": header, "search": str(search_dir), "search_seconds": search_s}
    write_report(folder, saved)
    return 0


def write_report(folder: Path, saved: dict) -> None:
    """The table and verdicts of one benchmark from its saved measurements (``--report`` redoes only this)."""
    budget, rows, tolerance = saved["budget_ms"], saved["rows"], saved["tolerance"]
    errors = [r_["abs_error_pct"] for r_ in rows if r_["abs_error_pct"] is not None]
    median_err = statistics.median(errors) if errors else float("nan")
    over = [r_ for r_ in rows if r_["fresh_ms"] is not None and r_["fresh_ms"] > budget * (1 + tolerance)]
    best = max(rows, key=lambda r_: r_["val_top1"]) if rows else None
    best_ok = best is not None and best["fresh_ms"] is not None and best["fresh_ms"] >= budget * (1 - UNDER)
    projected = [r_ for r_ in rows if r_["width_scale"] < 1 and r_["fresh_ms"] is not None]
    under = [100 * (1 - r_["fresh_ms"] / budget) for r_ in projected]
    spreads = [r_["fresh_spread_pct"] for r_ in rows if r_["fresh_spread_pct"] is not None]
    verdict = {
        "prediction": f"median |predicted - fresh| / fresh = {median_err:.1f} % over {len(errors)} configurations "
                      f"(target <= 10 %): {'PASS' if median_err <= 10 and len(errors) >= 20 else 'FAIL'}"
                      f"{'' if len(errors) >= 20 else ' (fewer than 20 configurations)'}",
        "budget": f"{len(rows) - len(over)} of {len(rows)} finished trials within {budget:g} ms + "
                  f"{100 * tolerance:.0f} %: {'PASS' if not over and rows else 'FAIL'}",
        "not over-cautious": (f"most accurate trial {best['trial']} (val {best['val_top1']:.2f} %) at "
                              f"{fmt({'ms': best['fresh_ms'], 'spread_pct': best['fresh_spread_pct']})} ms, "
                              f"{100 * (1 - best['fresh_ms'] / budget):+.1f} % under the budget (target <= "
                              f"{100 * UNDER:.0f} %): {'PASS' if best_ok else 'FAIL'}"
                              + ("" if best_ok or best["width_scale"] < 1 else
                                 f" (sampled at {best['sampled_ms']:.2f} ms, under the budget as it was: no "
                                 "projection applied to it)")) if best else "no trial",
        "projection": (f"{len(projected)} of {len(rows)} trials were projected onto the budget (width scale < 1); "
                       f"fresh, they lie {min(under):+.1f} to {max(under):+.1f} % under it (target <= "
                       f"{100 * UNDER:.0f} %, >= -{100 * tolerance:.0f} %): "
                       f"{'PASS' if max(under) <= 100 * UNDER and min(under) >= -100 * tolerance else 'FAIL'}")
                      if projected else "no trial needed the projection",
    }
    lines = list(saved["header"]) + [
        "| trial | INT8 | val top-1 | GMACs | sampled (ms) | width scale | predicted (ms) | in trial (ms) | "
        "fresh process (ms) | error | fit: timings, s |", "|---|---|---|---|---|---|---|---|---|---|---|"]
    for r_ in sorted(rows, key=lambda r_: r_["predicted_ms"]):
        err = "" if r_["abs_error_pct"] is None else f"{r_['abs_error_pct']:.1f} %"
        lines.append(f"| {r_['trial']} | {r_['int8']} | {r_['val_top1']:.2f} | {r_['gmacs']:.4f} | "
                     f"{r_['sampled_ms']:.2f} | {r_['width_scale']:.3f} | "
                     f"{fmt({'ms': r_['predicted_ms'], 'spread_pct': r_['predicted_spread_pct']})} | "
                     f"{r_['in_trial_ms']:.2f} | "
                     f"{fmt({'ms': r_['fresh_ms'], 'spread_pct': r_['fresh_spread_pct']}) if r_['fresh_ms'] else ''} | "
                     f"{err} | "
                     f"{r_['measurements']}, {r_['fit_seconds']:.0f} |")
    lines += ["", f"Run-to-run spread of the fresh measurements (IQR / median): median "
              f"{statistics.median(spreads) if spreads else float('nan'):.1f} %, max "
              f"{max(spreads) if spreads else float('nan'):.1f} %.", ""]
    lines += [f"- {k}: {v}" for k, v in verdict.items()]
    text = "\n".join(lines) + "\n"
    write_text(folder / "latency_budget.md", text)
    write_json(folder / "latency_budget.json", {**saved, "verdict": verdict, "median_abs_error_pct": median_err})
    print(text)
    print(f"written: {folder}")


def machine_line(threads: int) -> str:
    m = machine()
    return f"{m['cpu']}, {threads} of {m['cpus']} CPUs, torch {m['torch']}"


if __name__ == "__main__":
    sys.exit(main())
