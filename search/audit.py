"""Audit a search's stores against each other: Ray Tune's trial table, the Optuna study, the MLflow runs
and the early-stopping record must tell one story. Run after a crash and a resume (the crash-consistency
tests and benchmarks/crash_kills.py do), or by hand:

    python -m search.audit --name NAME [--out-dir OUT] [--num-samples N]

prints every disagreement, one per line, and exits 1 if there is any (0: the stores agree)."""
from __future__ import annotations

import json
import sys
from pathlib import Path

import optuna

from m2mdc.errors import Parser, UserError, cli

from .driver import search_folder
from .early_stop import CollapseStoppingASHA
from .optuna_search import RAY_ID, optuna_status
from .outcome import COMPLETED, FAILED, INFEASIBLE, MLFLOW_RUN_STATUS, STATUSES, STOPPED_EARLY
from .pareto import non_dominated
from .promotion import PROMOTED_FROM, PROMOTIONS
from .tracking import open_search_store

RAY_STATUS = {COMPLETED: "TERMINATED", INFEASIBLE: "TERMINATED", STOPPED_EARLY: "TERMINATED", FAILED: "ERROR"}


def ray_trials(exp_dir: Path) -> dict[str, str]:
    """Ray Tune's trial table as its latest experiment checkpoint holds it: trial id -> Ray status."""
    states = sorted(Path(exp_dir).glob("experiment_state-*.json"), key=lambda p: p.stat().st_mtime)
    if not states:
        return {}
    data = json.loads(states[-1].read_text())
    trials = (json.loads(t[0]) for t in data["trial_data"])
    return {t["trial_id"]: t["status"] for t in trials}


def audit(exp_dir: Path, client, name: str, num_samples: int | None = None, ended: bool = True) -> list[str]:
    """Every disagreement between the stores of the search ``name`` (folder ``exp_dir``, MLflow ``client``).
    ``ended=False``: of a search that was killed, before its resume; only what must hold at every moment
    (nothing recorded twice or deleted, no MLflow run without its Optuna trial, no trial closed with two
    different outcomes)."""
    from mlflow.entities import ViewType  # mlflow: ~0.5 s more to import (python -X importtime), not paid by --help

    problems = []
    exp_dir = Path(exp_dir)
    study = optuna.load_study(study_name=name, storage=f"sqlite:///{exp_dir / 'optuna.db'}")
    trials = study.get_trials(deepcopy=False)
    ids = [t.user_attrs.get(RAY_ID) for t in trials if ended or t.state.is_finished()]  # a kill may come
    if len(ids) != len(set(ids)) or None in ids:  # between Optuna's ask and the naming of its Ray trial
        problems.append(f"optuna: trials without their own Ray trial id: {ids}")
    optuna_of = {t.user_attrs.get(RAY_ID): t for t in trials}
    exp = client.get_experiment_by_name(name)
    runs = client.search_runs([exp.experiment_id], run_view_type=ViewType.ALL, max_results=10000)
    deleted = [r.info.run_id for r in runs if r.info.lifecycle_stage != "active"]
    if deleted:
        problems.append(f"mlflow: {len(deleted)} deleted run(s) {deleted}")
    parents = [r for r in runs if r.data.tags.get("role") == "search"]
    if len(parents) != 1:
        return problems + [f"mlflow: {len(parents)} parent runs, want 1"]
    parent = parents[0]
    children = [r for r in runs if r.data.tags.get("role") == "trial"]
    run_ids = [r.data.tags.get("trial_id") for r in children]
    if len(run_ids) != len(set(run_ids)):
        problems.append(f"mlflow: a trial recorded twice: {sorted(run_ids)}")
    promoted_runs = {r.data.tags.get("trial_id"): r for r in children if PROMOTED_FROM in r.data.tags}
    listed = exp_dir / PROMOTIONS
    promoted = {p["trial_id"]: p for p in json.loads(listed.read_text())["promotions"]} if listed.exists() else {}
    if set(promoted_runs) - set(promoted):
        problems.append(f"mlflow: promoted run(s) {sorted(set(promoted_runs) - set(promoted))} not in {PROMOTIONS}")
    for tid, r in promoted_runs.items():
        if tid in promoted and r.data.tags.get(PROMOTED_FROM) != promoted[tid]["source"]:
            problems.append(f"trial {tid}: promoted from {r.data.tags.get(PROMOTED_FROM)} in MLflow, from "
                            f"{promoted[tid]['source']} in {PROMOTIONS}")
    searched = [r for r in children if PROMOTED_FROM not in r.data.tags]
    if not ended:
        return problems + _partial(optuna_of, {r.data.tags.get("trial_id"): r for r in searched})
    if parent.info.status != "FINISHED":
        problems.append(f"mlflow: the parent run is {parent.info.status}")
    if any(r.data.tags.get("mlflow.parentRunId") != parent.info.run_id for r in children):
        problems.append("mlflow: a trial run under another parent")
    run_of = {r.data.tags.get("trial_id"): r for r in children}
    ray = {**ray_trials(exp_dir), **ray_trials(exp_dir / "promotion")}
    if not (set(ray) == set(optuna_of) | set(promoted) == set(run_of)):
        problems.append(f"trial sets differ: ray {sorted(ray)}, optuna {sorted(optuna_of)}, promoted "
                        f"{sorted(promoted)}, mlflow {sorted(run_of)}")
    if num_samples is not None and len(optuna_of) != num_samples:
        problems.append(f"{len(optuna_of)} trials, {num_samples} requested")
    asha = exp_dir / "asha-rungs.json"
    stopped = CollapseStoppingASHA.stopped(asha) if asha.exists() else None
    for tid in sorted(set(promoted) & set(run_of)):
        run, status = run_of[tid], run_of[tid].data.tags.get("status")
        if status not in STATUSES or run.info.status != MLFLOW_RUN_STATUS[status] or ray.get(tid) != RAY_STATUS[status]:
            problems.append(f"promoted trial {tid}: mlflow says {status} ({run.info.status}), Ray says {ray.get(tid)}")
    for tid in sorted((set(ray) | set(optuna_of) | set(run_of)) - set(promoted)):
        trial, run = optuna_of.get(tid), run_of.get(tid)
        said = {"optuna": optuna_status(trial) if trial else None,
                "mlflow": run.data.tags.get("status") if run else None}
        if said["optuna"] is None or said["mlflow"] not in STATUSES or said["optuna"] != said["mlflow"]:
            problems.append(f"trial {tid}: optuna says {trial.state.name if trial else None}, mlflow says "
                            f"{said['mlflow']}")
            continue
        status = said["optuna"]
        if run.info.status != MLFLOW_RUN_STATUS[status]:
            problems.append(f"trial {tid}: {status} but its MLflow run is {run.info.status}")
        if ray.get(tid) != RAY_STATUS[status]:
            problems.append(f"trial {tid}: {status} but Ray says {ray.get(tid)}")
        if stopped is not None and (status == STOPPED_EARLY) != (tid in stopped):
            problems.append(f"trial {tid}: {status}, {'' if tid in stopped else 'not '}in the scheduler's stop record")
    objectives = parent.data.tags.get("objectives", "val_top1,gmacs").split(",")
    # each configuration at the highest fidelity it completed: a completed promotion stands for its source
    done = {r.data.tags["trial_id"]: {"id": r.data.tags["trial_id"], **r.data.metrics} for r in searched
            if r.data.tags.get("status") == COMPLETED}
    for r in promoted_runs.values():
        if r.data.tags.get("status") == COMPLETED and r.data.tags.get(PROMOTED_FROM) in done:
            done[r.data.tags[PROMOTED_FROM]] = {"id": r.data.tags["trial_id"], **r.data.metrics}
    done = list(done.values())
    lacking = [r["id"] for r in done if any(o not in r for o in objectives)]
    if lacking:
        problems.append(f"completed trial(s) {lacking} lack an objective's metric in MLflow")
        done = [r for r in done if r["id"] not in lacking]
    front = {r["id"] for r in non_dominated(done, objectives)}
    tagged = {r.data.tags["trial_id"] for r in children if r.data.tags.get("pareto") == "true"}
    untagged = [r.data.tags["trial_id"] for r in children if r.data.tags.get("pareto") not in ("true", "false")]
    if tagged != front or untagged:
        problems.append(f"pareto tags {sorted(tagged)} (untagged {untagged}), recount {sorted(front)}")
    return problems


def _partial(optuna_of: dict, run_of: dict) -> list[str]:
    problems = [f"mlflow: run of trial {tid} has no Optuna trial" for tid in sorted(set(run_of) - set(optuna_of))]
    for tid in sorted(set(run_of) & set(optuna_of)):
        a, b = optuna_status(optuna_of[tid]), run_of[tid].data.tags.get("status")
        if a is not None and b in STATUSES and a != b:
            problems.append(f"trial {tid}: optuna says {a}, mlflow says {b}")
    return problems


@cli
def main(argv=None) -> int:
    p = Parser(description=__doc__.split("\n\n")[0])
    p.add_argument("--name", required=True, help="the search's name (--name of search/frontier.py)")
    p.add_argument("--out-dir", default="outputs", help="its output root (default outputs)")
    p.add_argument("--mlflow-uri", default=None, help="its MLflow tracking URI (default sqlite:///OUT/mlflow.db)")
    p.add_argument("--num-samples", type=int, default=None, help="the trials it was asked for (checked if given)")
    a = p.parse_args(argv)
    exp_dir = search_folder(Path(a.out_dir), a.name)
    if not (exp_dir / "optuna.db").exists():
        raise UserError(f"no search named {a.name} under {Path(a.out_dir) / 'search'}; pass its --name and --out-dir")
    problems = audit(exp_dir, open_search_store(a.mlflow_uri, Path(a.out_dir)), a.name, a.num_samples)
    for line in problems:
        print(line)
    print(f"{a.name}: {'the stores agree' if not problems else f'{len(problems)} disagreement(s)'}",
          file=sys.stderr)
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
