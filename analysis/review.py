"""Review a frontier search from its MLflow records: Pareto table, frontier plot, hypervolume curve.

    python analysis/review.py --experiment frontier-resnet18-cifar100-b0.02
    python analysis/review.py --experiment tpe-run --compare nsga2-run random-run

Everything is read back from the MLflow store (not from files the search left behind). The
Pareto set is recomputed from the finished trials (and checked against the runs' pareto tags);
the hypervolume after each trial uses Optuna's implementation in (val top-1 %, GMACs / budget)
space with reference point (0 %, 1): the area between that corner and the front, in % x share
of the budget (100 would be a 100 %-accurate model at 0 GMACs), non-decreasing as trials finish. Plots go to OUT/review/NAME/ and, unless --no-log, onto
the search's parent run.
"""
from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from m2mdc.errors import Parser, UserError, cli
from m2mdc.io import ensure_writable, out_root
from search.pareto import figure, frontier_plot, non_dominated


@dataclass
class Search:
    name: str
    parent: object  # mlflow Run
    trials: list[dict]  # one per child run, start order

    @property
    def budget(self) -> float:
        return float(self.parent.data.tags.get("budget_gmacs") or self.parent.data.params["budget_gmacs"])

    @property
    def teacher(self) -> dict:
        m = self.parent.data.metrics
        return {"val_top1": m.get("teacher_val_top1"), "gmacs": m.get("teacher_gmacs")}

    @property
    def finished(self) -> list[dict]:
        return [t for t in self.trials if t["status"] == "completed"]


def load_search(client, name: str) -> Search:
    exp = client.get_experiment_by_name(name)
    if exp is None:
        names = [e.name for e in client.search_experiments(max_results=50)]
        raise UserError(f"no MLflow experiment named {name!r} in this store; experiments: {', '.join(names) or 'none'}")
    runs = client.search_runs([exp.experiment_id], max_results=10000, order_by=["attributes.start_time ASC"])
    parents = [r for r in runs if r.data.tags.get("role") == "search"]
    if not parents:
        raise UserError(f"experiment {name!r} holds no search run; it was not written by search/frontier.py")
    parent = parents[-1]  # the latest search of that name
    trials = []
    for r in runs:
        if r.data.tags.get("mlflow.parentRunId") != parent.info.run_id:
            continue
        m = r.data.metrics
        trials.append({"run_id": r.info.run_id, "trial_id": r.data.tags.get("trial_id"),
                       "status": r.data.tags.get("status"), "pareto_tag": r.data.tags.get("pareto"),
                       "start": r.info.start_time, "end": r.info.end_time or 0, "config": dict(r.data.params),
                       **{k: m.get(k) for k in ("val_top1", "test_top1", "gmacs", "params", "size_bytes",
                                                "latency_ms", "sparsity")},
                       "int8": r.data.tags.get("int8") == "true"})
    trials.sort(key=lambda t: (t["end"], t["start"]))  # the order trials finished in
    return Search(name, parent, trials)


def hypervolume(rows: list[dict], budget: float) -> float:
    """Area dominated by rows in (val top-1 %, GMACs / budget) space inside the reference corner
    (0 %, 1 = the budget), i.e. in % x share of the budget; Optuna's implementation."""
    from optuna._hypervolume import compute_hypervolume

    pts = np.array([[-r["val_top1"], r["gmacs"] / budget] for r in rows if r["gmacs"] <= budget and r["val_top1"] > 0],
                   dtype=float)
    if len(pts) == 0:
        return 0.0
    return float(compute_hypervolume(pts, np.array([0.0, 1.0])))


def hypervolume_curve(search: Search) -> list[float]:
    """Hypervolume of the finished trials after each trial (any status) ends, in finishing order."""
    out, done = [], []
    for t in search.trials:
        if t["status"] == "completed":
            done.append(t)
        out.append(hypervolume(done, search.budget))
    return out


def _config(params: dict) -> str:
    keys = ("prune_ratio", "mid_keep", "depth_share", "order", "signal", "alpha", "beta", "kd_lr", "sparsity", "qat")
    parts = [f"{k}={params[k]}" if k in ("order", "signal", "qat") else f"{k}={float(params[k]):.3g}"
             for k in keys if k in params]
    planes = [f"{float(v):.2f}" for k, v in sorted(params.items()) if k.startswith("planes_keep")]
    if planes:
        parts.insert(1, "planes=" + "/".join(planes))
    return " ".join(parts)


def pareto_table(search: Search) -> tuple[str, list[dict]]:
    front = non_dominated(search.finished, ("val_top1", "gmacs"))
    lines = [f"### {search.name}: {len(front)} Pareto of {len(search.finished)} finished "
             f"({len(search.trials)} trials; budget {search.budget:g} GMACs)", "",
             "| trial | config | val top-1 | test top-1 | GMACs | params | size | latency bs1 | INT8 | MLflow run |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for t in sorted(front, key=lambda t: t["gmacs"]):
        lat = f"{t['latency_ms']:.2f} ms" if t.get("latency_ms") is not None else ""
        size = f"{t['size_bytes'] / 1e6:.1f} MB" if t.get("size_bytes") else ""
        lines.append(f"| {t['trial_id']} | {_config(t['config'])} | {t['val_top1']:.2f}% | {t['test_top1']:.2f}% | "
                     f"{t['gmacs']:.4f} | {t['params'] / 1e6:.3f}M | {size} | {lat} | {'yes' if t['int8'] else 'no'} | "
                     f"{t['run_id']} |")
    return "\n".join(lines) + "\n", front


def plot_hypervolume(curves: dict[str, list[float]], path: Path) -> Path:
    with figure(path, "trials ended", "hypervolume (% x budget share; ref: 0 %, budget)", height=4.0) as ax:
        for name, hv in curves.items():
            ax.plot(range(1, len(hv) + 1), hv, "-o", ms=3, label=name)
    return path


def plot_compare(searches: list[Search], path: Path) -> Path:
    with figure(path, "GMACs", "val top-1 (%)") as ax:
        for i, s in enumerate(searches):
            c = f"C{i}"
            ax.scatter([t["gmacs"] for t in s.finished], [t["val_top1"] for t in s.finished], c=c, alpha=0.25)
            front = sorted(non_dominated(s.finished, ("val_top1", "gmacs")), key=lambda t: t["gmacs"])
            ax.plot([t["gmacs"] for t in front], [t["val_top1"] for t in front], "-o", c=c, drawstyle="steps-post",
                    label=f"{s.name} ({len(s.finished)} finished)")
        ax.axvline(searches[0].budget, ls="--", c="grey")
    return path


@cli
def main(argv=None):
    p = Parser(prog="python analysis/review.py", description=__doc__.split("\n\n")[0])
    p.add_argument("--experiment", required=True, help="the search name (its MLflow experiment)")
    p.add_argument("--compare", nargs="*", default=[], help="more searches to overlay (e.g. other samplers)")
    p.add_argument("--mlflow-uri", default=None, help="default sqlite:///OUT/mlflow.db")
    p.add_argument("--out-dir", default=None)
    p.add_argument("--no-log", action="store_true", help="do not attach the plots to the search's parent run")
    a = p.parse_args(argv)
    from mlflow.tracking import MlflowClient

    from search.tracking import check_reachable, default_uri

    root = out_root(a.out_dir)
    uri = a.mlflow_uri or default_uri(root)
    if uri.startswith("sqlite:///") and not Path(uri[len("sqlite:///"):]).exists():
        raise UserError(f"no MLflow store at {uri}; pass --mlflow-uri or --out-dir of the search")
    check_reachable(uri)
    client = MlflowClient(tracking_uri=uri)
    searches = [load_search(client, n) for n in [a.experiment, *a.compare]]
    folder = ensure_writable(root / "review") / "-vs-".join(s.name for s in searches)
    folder.mkdir(parents=True, exist_ok=True)
    md_parts, curves = [], {}
    for s in searches:
        md, front = pareto_table(s)
        tagged = {t["trial_id"] for t in s.trials if t["pareto_tag"] == "true"}
        if tagged and tagged != {t["trial_id"] for t in front}:
            md += f"\nwarning: the runs' pareto tags ({sorted(tagged)}) differ from this recomputation\n"
        curves[s.name] = hypervolume_curve(s)
        md += f"\nhypervolume after {len(s.trials)} trials: {curves[s.name][-1] if curves[s.name] else 0:.3f} " \
              f"(val top-1 % x share of the budget; reference: 0 %, {s.budget:g} GMACs)\n"
        md_parts.append(md)
    main_search = searches[0]
    files = [frontier_plot(main_search.finished, non_dominated(main_search.finished, ("val_top1", "gmacs")),
                           folder / "frontier.png", main_search.budget, main_search.teacher,
                           f"{main_search.name}: {len(main_search.finished)} finished trials"),
             plot_hypervolume(curves, folder / "hypervolume.png")]
    if len(searches) > 1:
        files.append(plot_compare(searches, folder / "compare.png"))
    (folder / "pareto.md").write_text("\n".join(md_parts))
    files.append(folder / "pareto.md")
    print("\n".join(md_parts))
    if not a.no_log:
        for f in files:
            client.log_artifact(main_search.parent.info.run_id, str(f), "review")
    print(f"plots: {', '.join(str(f) for f in files)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
