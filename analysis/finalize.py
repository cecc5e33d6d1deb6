"""Search, then train: re-train the K Pareto members of a search nearest its budget from the teacher,
at a full training budget, over seeds; log them under the search's MLflow parent run (role and tag
``finalized``) and report test mean ± std. Selection stays on val: the member a table calls the
search's best is the one with the highest mean val, never chosen by test.

    python analysis/finalize.py --experiment frontier-resnet18-cifar100-b0.02 --k 2 --seeds 0,1,2 --budgets long

Every run goes through analysis/study.py: the same KD settings as the baselines (or, with
``--kd tuned``, the member's own sampled ones), the budget's total epochs spread over its repairs,
its result saved under results/finalize/NAME/ and reused when the teacher matches. The search itself
(its settings and Pareto members) is saved there too, as search.json: on a machine whose MLflow store
does not hold the search (a fresh clone), finalize and baselines re-train its members from that record
and say so; only the MLflow children are then not logged.

With ``--screen N`` the K are chosen at the long budget instead of by the search's short proxy
(multi-fidelity selection): N completed trials near the budget, stratified by depth, are trained once
at the last budget and the K best by that val are finalized (``Search.screen_pool``, ``screen``).
"""
from __future__ import annotations

import copy
import json
import statistics
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace

from m2mdc.cli.args import add_data_args, add_teacher_args, teacher_and_data, teacher_from_args
from m2mdc.compiler import target_of
from m2mdc.config import nest, parse_tracked
from m2mdc.context import prepare_context
from m2mdc.device import pick_device
from m2mdc.errors import Parser, UserError, check_range, cli
from m2mdc.io import ensure_writable, out_root, write_json, write_text

from analysis.study import BUDGETS, Run, execute, mean_std, results_root


def config_of(params: dict) -> dict:
    """A trial's knob configuration from its MLflow params (``knob/stage`` entries nest)."""
    return nest(params, parse_tracked)


@dataclass
class Search:
    """A finished search as finalize needs it: its settings (the parent run's params), its budget and
    its Pareto members. Read from MLflow, or from ``results/finalize/NAME/search.json`` (what finalize
    saved of it) when this machine's MLflow store does not hold the search: the search is the longest
    measurement behind a table, and a table must resume on a fresh machine."""
    name: str
    params: dict
    budget: float
    front: list[dict]  # trial_id, run_id, config, val_top1, gmacs
    parent: object = None  # the MLflow parent run; None when read from the saved record
    saved: Path | None = None  # the record it was read from, if not MLflow
    trials: list[dict] | None = None  # every completed trial (+ depth); None in records saved before screening

    def nearest(self, budget: float, k: int) -> list[dict]:
        """The K Pareto members within ``budget`` nearest it."""
        within = [m for m in self.front if m["gmacs"] <= budget]
        if not within:
            raise UserError(f"search {self.name!r} has no Pareto member within {budget:g} GMACs")
        return sorted(within, key=lambda m: budget - m["gmacs"])[:k]

    def screen_pool(self, budget: float, n: int, band: float) -> list[dict]:
        """N completed trials within [budget*(1-band), budget] to screen at the long budget: the best
        by search val of each depth (blocks kept) in turn, best depth first, then the second best of
        each, and so on. Stratified by depth because the short proxy is biased against removing blocks
        (README: the order of recipes flips between budgets), so the top-N by short val alone would
        hardly ever promote a shallower network."""
        if self.trials is None:
            raise UserError(f"the saved record of search {self.name!r} ({self.saved}) predates screening and lists "
                            f"only its Pareto members; --screen needs every trial: run it where the search's "
                            f"MLflow store is (finalize then re-saves the record with its trials)")
        within = [t for t in self.trials if budget * (1 - band) <= t["gmacs"] <= budget]
        if not within:
            raise UserError(f"search {self.name!r} has no completed trial within {band:.0%} under {budget:g} GMACs")
        by_depth: dict[int, list[dict]] = {}
        for t in sorted(within, key=lambda t: -t["val_top1"]):
            by_depth.setdefault(t["depth"], []).append(t)
        pool, queues = [], list(by_depth.values())  # dicts keep insertion order: best depth first
        while len(pool) < n and any(queues):
            pool += [q.pop(0) for q in queues if q][:n - len(pool)]
        return pool

    def save(self) -> None:
        record = {"name": self.name, "params": self.params, "budget_gmacs": self.budget, "front": self.front}
        if self.trials is not None:
            record["trials"] = self.trials
        write_json(saved_search_path(self.name), record)


def saved_search_path(experiment: str) -> Path:
    return results_root() / "finalize" / experiment / "search.json"


def search_store(uri: str | None, root: Path, experiments: list[str]):
    """The MLflow store the searches wrote; None where this machine has no such store but every search
    has its saved record (a fresh clone): members() then reads the records."""
    # search.tracking imports ray.tune (~1.2 s more, python -X importtime); the CLIs that import this module
    # (finalize, baselines, pqd_ablation, proxy_*) do not pay it for --help or a bad argument
    from search.tracking import open_search_store

    try:
        return open_search_store(uri, root)
    except UserError:
        if experiments and all(saved_search_path(e).exists() for e in experiments):
            return None
        raise


def members(client, experiment: str, budget: float, k: int, say: bool = True) -> tuple[Search, list[dict]]:
    """(the search, its K Pareto members within ``budget`` nearest it), from the search's MLflow runs,
    or from its saved record where there is no MLflow store or it does not hold the search (said on
    stdout)."""
    exp = None if client is None else client.get_experiment_by_name(experiment)
    saved = saved_search_path(experiment)
    if exp is None and saved.exists():
        rec = json.loads(saved.read_text())
        search = Search(rec["name"], rec["params"], float(rec["budget_gmacs"]), rec["front"], saved=saved,
                        trials=rec.get("trials"))
        why = "no MLflow store here" if client is None else "this MLflow store does not hold the search"
        if say:
            print(f"[finalize] {experiment}: read from {saved} ({why}; finalized runs are saved under results/ but not "
                  f"logged to MLflow)", flush=True)
        return search, search.nearest(budget, k)
    if exp is None:
        raise UserError(f"no MLflow experiment named {experiment!r} and no saved record of it ({saved}); run "
                        f"search/frontier.py first")
    runs = client.search_runs([exp.experiment_id], max_results=10000, order_by=["attributes.start_time ASC"])
    parents = [r for r in runs if r.data.tags.get("role") == "search"]
    if not parents:
        raise UserError(f"experiment {experiment!r} holds no search run; it was not written by search/frontier.py")
    parent = parents[-1]
    trials = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id
              and r.data.tags.get("role") == "trial" and "gmacs" in r.data.metrics]

    def member(r) -> dict:
        return {"trial_id": r.data.tags.get("trial_id"), "run_id": r.info.run_id, "config": config_of(r.data.params),
                "val_top1": r.data.metrics.get("val_top1"), "gmacs": r.data.metrics["gmacs"]}
    front = [member(r) for r in trials if r.data.tags.get("pareto") == "true"]
    done = [{**member(r), "depth": depth(json.loads(r.data.tags["keep_cfg"]))} for r in trials
            if r.data.tags.get("status") == "completed" and "keep_cfg" in r.data.tags and "val_top1" in r.data.metrics]
    search = Search(experiment, dict(parent.data.params), float(parent.data.tags.get("budget_gmacs", budget)),
                    sorted(front, key=lambda m: m["gmacs"]), parent, trials=sorted(done, key=lambda m: m["gmacs"]))
    return search, search.nearest(budget, k)


def depth(keep_cfg: dict) -> int:
    """Blocks a compiled network keeps, over all stages (keep_cfg is the library's, for every adapter)."""
    return sum(len(kept) for kept in keep_cfg["blocks"].values())


SEARCH_DATA_FLAGS = ("dataset", "data_dir", "resolution", "val_size", "split_seed", "mean", "std")


def check_search_setting(search: Search, a, experiment: str) -> None:
    """Members re-trained from another teacher or on other data would not be the search's members:
    the teacher and data flags must name what the search ran with (its parent run's params). Checked
    before any teacher is trained or loaded."""

    params = search.params
    if "dataset" not in params:
        return  # not written by search/frontier.py: members() has already refused it
    if params.get("budget_ms", "None") != "None":
        raise UserError(f"search {experiment!r} ran under a latency budget (--budget-ms {params['budget_ms']}): its "
                        f"members' widths were fitted to latencies measured during the search, which re-training "
                        f"from their configurations does not redo yet; ship a member's saved model instead "
                        f"(python analysis/export.py --run-id RUN_ID)")
    def typed(k):
        v = params.get(k, "None")
        return None if v == "None" else parse_tracked(v) if k not in ("teacher", "weights", "arch", "stem") else v
    theirs = SimpleNamespace(**{k: typed(k) for k in ("arch", "stem", "teacher", "weights", "epochs", "lr", "seed",
                                                      "batch_size")})
    theirs.epochs = None if theirs.epochs is None else int(theirs.epochs)
    theirs.batch_size, theirs.seed = int(theirs.batch_size or 128), int(theirs.seed or 0)
    mine = copy.copy(a)
    differ = []
    if teacher_from_args(mine) != teacher_from_args(theirs) or mine.arch != theirs.arch:
        recipe = teacher_from_args(copy.copy(theirs))
        differ.append(f"the teacher --arch {theirs.arch} " + (
            f"--teacher {theirs.teacher}" if theirs.teacher else
            f"--weights {recipe.weights} --epochs {recipe.epochs} --seed {recipe.seed} --batch-size {recipe.batch_size}"
            + (f" --lr {recipe.lr:g}" if recipe.lr is not None else "")))
    for k in SEARCH_DATA_FLAGS:
        if k in params and params[k] != str(getattr(a, k)):
            differ.append(f"--{k.replace('_', '-')} {params[k]} (here {getattr(a, k)})")
    if differ:
        raise UserError(f"search {experiment!r} ran with {'; '.join(differ)}: pass the same teacher and data flags, "
                        f"so its members are re-trained from its teacher on its data")


def log_finalized(client, search: Search, member: dict, result: dict, screened: bool = False) -> None:
    """One MLflow child run of the search's parent per finalized (member, budget, seed); a screening
    run is one too, tagged ``screened``."""
    from mlflow.entities import Metric, Param  # mlflow costs ~1.2 s to import; only a finalize run needs it

    parent = search.parent
    run = client.create_run(parent.info.experiment_id, run_name=f"finalized {member['trial_id']} "
                            f"{result['run']['budget']} seed {result['run']['seed']}",
                            tags={"mlflow.parentRunId": parent.info.run_id, "role": "finalized", "finalized": "true",
                                  "trial_id": member["trial_id"], "budget": result["run"]["budget"],
                                  "seed": str(result["run"]["seed"]), "kd": "tuned" if result["run"]["tuned_kd"]
                                  else "fixed", "keep_cfg": str(result["keep_cfg"])[:5000],
                                  "screened": str(screened).lower()})
    now = int(time.time() * 1000)
    client.log_batch(run.info.run_id, metrics=[Metric(m, float(result[m]), now, 0) for m in
                                                ("val_top1", "test_top1", "gmacs", "params") if result.get(m) is not None],
                     params=[Param(k, str(v)) for k, v in result["kd_settings"].items()])
    client.set_terminated(run.info.run_id, status="FINISHED")


def member_run(trial: dict, budget: str, seed: int, tuned: bool) -> Run:
    """The study run that re-trains one trial of a search (the same key whether screened or finalized)."""
    return Run(f"search {trial['trial_id']}", "config", budget, seed, config=trial["config"], tuned_kd=tuned)


def screen(client, search: Search, ctx, target, budget: float, k: int, n: int, band: float, at: str, seed: int,
           tuned: bool, models: Path | None) -> tuple[list[dict], list[dict]]:
    """Multi-fidelity selection: train ``screen_pool``'s N trials once (budget ``at``, one seed) and keep
    the K best by that val. Returns (every screened trial with its screening val, the K kept)."""
    folder = results_root() / "finalize" / search.name
    screened = []
    for t in search.screen_pool(budget, n, band):
        run = member_run(t, at, seed, tuned)
        print(f"[finalize] {search.name} screening trial {t['trial_id']} (depth {t['depth']}): {at} budget, "
              f"seed {seed}", flush=True)
        result = execute(run, ctx, target, budget, folder, models)
        if search.parent is not None:
            log_finalized(client, search, t, result, screened=True)
        screened.append({**t, "screen_val": result["val_top1"], "screen_budget": at, "screen_seed": seed})
    return screened, sorted(screened, key=lambda t: -t["screen_val"])[:k]


def finalize(client, experiment: str, ctx, target, budget: float, k: int, seeds: dict[str, list[int]],
             tuned: bool = False, models: Path | None = None, screen_n: int = 0,
             band: float = 0.2) -> list[dict]:
    """Train the K members nearest the budget at every training budget and each of its seeds (``seeds``:
    budget -> seeds, in order); return one summary per member. With ``screen_n``, the K are instead the
    best by val of ``screen_n`` trials screened at the last budget on its first seed (``screen``); the
    summaries then carry that screening. The search's record is saved first
    (results/finalize/NAME/search.json), so its members can be re-trained where its MLflow store is not."""
    search, chosen = members(client, experiment, budget, k, say=False)  # the caller's check has said where from
    if search.parent is not None:
        search.save()
    folder = results_root() / "finalize" / experiment
    screened, logged = None, set()  # logged: (trial, budget, seed) runs screening has already logged
    if screen_n:
        at = list(seeds)[-1]
        screened, chosen = screen(client, search, ctx, target, budget, k, screen_n, band, at, seeds[at][0], tuned,
                                  models)
        logged = {(t["trial_id"], at, seeds[at][0]) for t in screened}
    out = []
    for member in chosen:
        config, tid = member["config"], member["trial_id"]
        results = []
        for b, budget_seeds in seeds.items():
            for seed in budget_seeds:
                run = member_run(member, b, seed, tuned)
                print(f"[finalize] {experiment} trial {tid}: {b} budget, seed {seed}", flush=True)
                result = execute(run, ctx, target, budget, folder, models)
                if search.parent is not None and (tid, b, seed) not in logged:
                    log_finalized(client, search, member, result)
                results.append(result)
        out.append({"trial_id": tid, "run_id": member["run_id"], "config": config, "search_val": member["val_top1"],
                    "results": results, "search_from": str(search.saved) if search.saved else "mlflow",
                    "screened": screened})
    return out


def best_member(summaries: list[dict], budget: str) -> dict:
    """The finalized member with the highest mean val at ``budget``: test never chooses."""
    def mean_val(s):
        vals = [r["val_top1"] for r in s["results"] if r["run"]["budget"] == budget]
        return statistics.mean(vals) if vals else -1.0
    return max(summaries, key=mean_val)


@cli
def main(argv=None):
    p = Parser(prog="python analysis/finalize.py", description=__doc__.split("\n\n")[0])
    p.add_argument("--experiment", required=True, help="the search to finalize (its MLflow experiment)")
    p.add_argument("--budget-gmacs", type=float, default=None, help="default: the search's own budget")
    p.add_argument("--k", type=int, default=2, help="Pareto members nearest the budget to re-train (default 2)")
    p.add_argument("--seeds", default="0,1,2", help="comma-separated seeds (default 0,1,2)")
    p.add_argument("--budgets", default="long", help=f"comma-separated, of {', '.join(BUDGETS)} (default long)")
    p.add_argument("--kd", default="fixed", choices=("fixed", "tuned"), help="fixed: the baselines' KD settings "
                   "(default); tuned: each member's own sampled KD knobs")
    add_screen_args(p)
    p.add_argument("--mlflow-uri", default=None, help="default sqlite:///OUT/mlflow.db")
    add_teacher_args(p)
    add_data_args(p)
    a = p.parse_args(argv)
    seeds, budgets = parse_seeds(a.seeds), parse_budgets(a.budgets)
    check_range("--k", a.k, 1, 100)
    check_screen_args(a)

    root = out_root(a.out_dir)
    client = search_store(a.mlflow_uri, root, [a.experiment])
    search, _ = members(client, a.experiment, a.budget_gmacs or 1e9, a.k)
    budget = a.budget_gmacs or search.budget
    check_search_setting(search, a, a.experiment)
    if a.screen:
        search.screen_pool(budget, a.screen, a.band)  # a record without its trials fails before anything trains
    source, ds = teacher_and_data(a)
    ctx = prepare_context(a.arch, ds, source, pick_device(a.device), a.out_dir)
    summaries = finalize(client, a.experiment, ctx, target_of(ctx), budget, a.k, {b: seeds for b in budgets},
                         a.kd == "tuned", ensure_writable(root / "finalize" / a.experiment), a.screen, a.band)
    lines = screen_table(summaries) + [
        "| trial | val top-1 in the search | budget | val top-1 | test top-1 | GMACs | params | seeds |",
        "|---|---|---|---|---|---|---|---|"]
    for s in summaries:
        for b in budgets:
            rs = [r for r in s["results"] if r["run"]["budget"] == b]
            lines.append(f"| {s['trial_id']} | {s['search_val']:.2f} | {b} | {mean_std([r['val_top1'] for r in rs])} | "
                         f"{mean_std([r['test_top1'] for r in rs])} | {rs[0]['gmacs']:.4f} | "
                         f"{rs[0]['params'] / 1e6:.3f}M | {len(rs)} |")
    best = f"best by mean val ({budgets[-1]}): trial {best_member(summaries, budgets[-1])['trial_id']}"
    kd = "each member's own sampled KD settings" if a.kd == "tuned" else "the baselines' fixed KD settings"
    md = "\n".join([f"Command: `{a.command}`", "", *lines, "",
                    f"Test and val: mean ± sample std over seeds {a.seeds}; {kd}; {best}."]) + "\n"
    write_text(root / "finalize" / a.experiment / "finalize.md", md)  # its first line names the command
    print(md)
    return 0


def add_screen_args(p) -> None:
    p.add_argument("--screen", type=int, default=0, metavar="N",
                   help="multi-fidelity selection: train N completed trials within --band of the budget (the best "
                        "of each depth in turn) once at the last --budgets budget, then finalize the K best by that "
                        "val instead of the K Pareto members nearest the budget (default 0: off)")
    p.add_argument("--band", type=float, default=0.2,
                   help="with --screen: trials within [budget*(1-band), budget] GMACs are screened (default 0.2)")


def check_screen_args(a) -> None:
    if a.screen:
        check_range("--screen", a.screen, a.k, 100, hint="screen at least --k trials, so K can be kept")
    check_range("--band", a.band, 0.0, 1.0, lo_open=True)


def screen_table(summaries: list[dict]) -> list[str]:
    """The screening behind the chosen members (empty without --screen): what each trial scored."""
    screened = summaries[0]["screened"] if summaries else None
    if not screened:
        return []
    kept = {s["trial_id"] for s in summaries}
    lines = [f"Screened at the {screened[0]['screen_budget']} budget, seed {screened[0]['screen_seed']} "
             f"(the {len(kept)} best by val are finalized):", "",
             "| trial | blocks kept | GMACs | val top-1 in the search | val top-1 screened | finalized |",
             "|---|---|---|---|---|---|"]
    for t in screened:
        lines.append(f"| {t['trial_id']} | {t['depth']} | {t['gmacs']:.4f} | {t['val_top1']:.2f} | "
                     f"{t['screen_val']:.2f} | {'yes' if t['trial_id'] in kept else 'no'} |")
    return lines + [""]


def parse_seeds(text: str, option: str = "--seeds") -> list[int]:
    try:
        seeds = [int(s) for s in text.split(",") if s.strip()]
    except ValueError:
        raise UserError(f"{option} {text!r} must be comma-separated integers, e.g. 0,1,2") from None
    if not seeds or len(set(seeds)) != len(seeds):
        raise UserError(f"{option} {text!r} must name distinct seeds")
    return seeds


def parse_budgets(text: str) -> list[str]:
    budgets = [b.strip() for b in text.split(",") if b.strip()]
    bad = [b for b in budgets if b not in BUDGETS]
    if bad or not budgets:
        raise UserError(f"--budgets {text!r}: choose from {', '.join(BUDGETS)}")
    return budgets


if __name__ == "__main__":
    sys.exit(main())
