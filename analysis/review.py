"""Review a frontier search from its MLflow records: Pareto table, frontier plots, hypervolume curve.

    python analysis/review.py --experiment frontier-resnet18-cifar100-b0.02
    python analysis/review.py --experiment tpe-run --compare nsga2-run random-run

Everything is read back from the MLflow store (not from files the search left behind). The
Pareto set is recomputed from the finished trials over all of the search's objectives (and
checked against the runs' pareto tags); the hypervolume after each trial is computed over all of
them too (search/pareto.py: moocore, each min-objective as a share of its reference: GMACs of the
budget, latency and size of the teacher's; accuracy in % up from 0), non-decreasing as trials
finish. One plot per objective against accuracy. Plots go to OUT/review/NAME/ and, unless
--no-log, onto the search's parent run.
"""
from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path

from m2mdc.errors import Parser, UserError, cli
from m2mdc.io import ensure_writable, out_root, write_text
from m2mdc.knobs import summarise
from m2mdc.objectives import METRICS, OBJECTIVE_SETS, OBJECTIVES, table_columns
from search.outcome import COMPLETED
from search.pareto import figure, frontier_plot, hypervolume, non_dominated, references
from search.promotion import highest_fidelity
from search.tracking import open_search_store


@dataclass
class Search:
    name: str
    parent: object  # mlflow Run
    trials: list[dict]  # one per child run, in the order they finished

    @property
    def budget(self) -> float:
        return float(self.parent.data.tags.get("budget_gmacs") or self.parent.data.params["budget_gmacs"])

    @property
    def budget_ms(self) -> float | None:
        value = self.parent.data.params.get("budget_ms")
        return float(value) if value not in (None, "", "None") else None

    @property
    def objectives(self) -> tuple[str, ...]:
        """The objectives the search optimised (its tag; older searches: the named set it was given)."""
        tag = self.parent.data.tags.get("objectives")
        names = tuple(tag.split(",")) if tag else OBJECTIVE_SETS[self.parent.data.params.get("objectives",
                                                                                             "acc-gmacs")]
        unknown = [n for n in names if n not in OBJECTIVES]
        if unknown:
            raise UserError(f"search {self.name!r} names objectives {unknown} this version does not know")
        return names

    @property
    def teacher(self) -> dict:
        m = self.parent.data.metrics
        return {k[len("teacher_"):]: v for k, v in m.items() if k.startswith("teacher_")}

    @property
    def finished(self) -> list[dict]:
        """Completed configurations, each at the highest fidelity it completed (search/promotion.py)."""
        return [t for t in highest_fidelity(self.trials) if t["status"] == COMPLETED]

    @property
    def references(self) -> dict[str, float]:
        return references(self.objectives, self.budget, self.teacher)


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
        if r.data.tags.get("mlflow.parentRunId") != parent.info.run_id or r.data.tags.get("role") != "trial":
            continue  # (finalized re-trainings are children too: analysis/finalize.py)
        values = {k: (r.data.tags.get(k) if m.kind == "tag" else r.data.metrics.get(k)) for k, m in METRICS.items()}
        values["int8"] = r.data.tags.get("int8") == "true"
        trials.append({"run_id": r.info.run_id, "trial_id": r.data.tags.get("trial_id"),
                       "status": r.data.tags.get("status"), "pareto_tag": r.data.tags.get("pareto"),
                       "origin": r.data.tags.get("origin"),
                       "start": r.info.start_time, "end": r.info.end_time or 0, "config": dict(r.data.params),
                       **values})
    trials.sort(key=lambda t: (t["end"], t["start"]))  # the order trials finished in
    return Search(name, parent, trials)


def front(search: Search) -> list[dict]:
    return non_dominated(search.finished, search.objectives)


def hypervolume_curve(search: Search) -> list[float]:
    """Hypervolume of the finished trials after each trial (any status) ends, in finishing order."""
    out, done = [], []
    refs = search.references
    for t in search.trials:
        if t["status"] == COMPLETED:
            done.append(t)
        out.append(hypervolume(highest_fidelity(done), search.objectives, refs))
    return out


def pareto_table(search: Search) -> tuple[str, list[dict]]:
    members = front(search)
    cols = table_columns(search.objectives, members)
    lines = [f"### {search.name}: {len(members)} Pareto of {len(search.finished)} finished "
             f"({len(search.trials)} trials; budget {search.budget:g} GMACs"
             f"{f' and {search.budget_ms:g} ms' if search.budget_ms is not None else ''}; objectives "
             f"{', '.join(search.objectives)})", "",
             "| trial | config | " + " | ".join(METRICS[c].label for c in cols) + " | MLflow run |",
             "|---|---|" + "---|" * len(cols) + "---|"]
    for t in sorted(members, key=lambda t: t["gmacs"]):
        lines.append(f"| {t['trial_id']} | {summarise(t['config'])} | " +
                     " | ".join(METRICS[c].cell(t.get(c)) for c in cols) + f" | {t['run_id']} |")
    return "\n".join(lines) + "\n", members


def plot_hypervolume(curves: dict[str, list[float]], path: Path, objectives) -> Path:
    units = " x ".join("%" if OBJECTIVES[o].direction == "max" else f"{o} share" for o in objectives)
    with figure(path, "trials ended", f"hypervolume ({units})", height=4.0) as ax:
        for name, hv in curves.items():
            ax.plot(range(1, len(hv) + 1), hv, "-o", ms=3, label=name)
    return path


def plot_compare(searches: list[Search], path: Path) -> Path:
    with figure(path, METRICS["gmacs"].label, METRICS["val_top1"].label) as ax:
        for i, s in enumerate(searches):
            c = f"C{i}"
            ax.scatter([t["gmacs"] for t in s.finished], [t["val_top1"] for t in s.finished], c=c, alpha=0.25)
            members = sorted(non_dominated(s.finished, ("val_top1", "gmacs")), key=lambda t: t["gmacs"])
            ax.plot([t["gmacs"] for t in members], [t["val_top1"] for t in members], "-o", c=c, drawstyle="steps-post",
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

    root = out_root(a.out_dir)
    client = open_search_store(a.mlflow_uri, root)
    searches = [load_search(client, n) for n in [a.experiment, *a.compare]]
    if len({s.objectives for s in searches}) > 1:
        raise UserError("--compare needs searches with the same objectives (their hypervolumes are not comparable): "
                        + "; ".join(f"{s.name}: {', '.join(s.objectives)}" for s in searches))
    folder = ensure_writable(root / "review") / "-vs-".join(s.name for s in searches)
    folder.mkdir(parents=True, exist_ok=True)
    md_parts, curves = [], {}
    for s in searches:
        md, members = pareto_table(s)
        tagged = {t["trial_id"] for t in s.trials if t["pareto_tag"] == "true"}
        if tagged and tagged != {t["trial_id"] for t in members}:
            md += f"\nwarning: the runs' pareto tags ({sorted(tagged)}) differ from this recomputation\n"
        curves[s.name] = hypervolume_curve(s)
        refs = ", ".join(f"{o} {v:g}" for o, v in s.references.items())
        md += (f"\nhypervolume after {len(s.trials)} trials over {', '.join(s.objectives)}: "
               f"{curves[s.name][-1] if curves[s.name] else 0:.3f} (reference point: {refs})\n")
        md_parts.append(md)
    main_search = searches[0]
    members = front(main_search)
    files = []
    for x in (o for o in main_search.objectives if o != "val_top1"):
        name = "frontier.png" if x == "gmacs" else f"frontier-{x}.png"
        files.append(frontier_plot(main_search.finished, members, folder / name, main_search.budget,
                                   main_search.teacher, f"{main_search.name}: {len(main_search.finished)} finished "
                                   f"trials", x=x, budget_ms=main_search.budget_ms))
    files.append(plot_hypervolume(curves, folder / "hypervolume.png", main_search.objectives))
    if len(searches) > 1:
        files.append(plot_compare(searches, folder / "compare.png"))
    md_parts.insert(0, f"Command: `{a.command}`\n")
    write_text(folder / "pareto.md", "\n".join(md_parts))
    files.append(folder / "pareto.md")
    print("\n".join(md_parts))
    if not a.no_log:
        for f in files:
            client.log_artifact(main_search.parent.info.run_id, str(f), "review")
    print(f"plots: {', '.join(str(f) for f in files)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
