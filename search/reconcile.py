"""Resuming a search from its stores, whatever moment a crash (``kill -9``, a full disk, a lost server) hit.

A trial's end is written to several places in turn: the scheduler's stop decision (asha-rungs.json),
the trial's own final row (trial_<id>/final.json), MLflow's final metrics, Optuna's ``tell``, MLflow's
run status, and, every few seconds and not atomically, Ray Tune's experiment checkpoint. A crash
between any two leaves them disagreeing. On resume:

1. **What a store recorded as finished is the truth.** A trial closed in Optuna, closed in MLflow, or
   stopped by a persisted scheduler decision is closed in the others with the same outcome (Optuna is
   told here; MLflow is closed as the trial replays), and written to the ledger (closed-trials.json).
2. **Ray's trial table is rebuilt, not restored**: Ray's checkpoint can lag the study by a whole trial,
   so the resumed search starts a new Tuner whose generator re-creates every trial of the study in
   order, under its own Ray id (search/optuna_search.py). A trial in the ledger, or with its final
   row on disk, reports that row again without training (search/trainable.py), so its Ray, Optuna and
   MLflow records agree; a trial that had not ended trains again from the start. A trial may thus run
   more than once; it is recorded once (search/tracking.py: every write is idempotent).
"""
from __future__ import annotations

import json
from pathlib import Path

import optuna

from m2mdc.io import write_json

from .early_stop import CollapseStoppingASHA
from .optuna_search import BUDGET, OPTUNA_STATE, RAY_ID, optuna_status
from .outcome import COMPLETED, FINAL_RECORD, INFEASIBLE, LEDGER, STATUSES, STOPPED_EARLY

TrialState = optuna.trial.TrialState


def reconcile(exp_dir: Path, study: optuna.Study, tracker, objectives, budget_gmacs: float,
              asha_state: Path | None) -> dict:
    """Close, in every store, each trial one store closed; write and return the ledger (trial id ->
    status, the row a replay reports, the error of a failed trial)."""
    runs = {r.data.tags["trial_id"]: r for r in tracker.child_runs()}
    stopped = CollapseStoppingASHA.stopped(asha_state) if asha_state else {}
    ledger = {}
    for trial in study.get_trials(deepcopy=False):
        tid = trial.user_attrs.get(RAY_ID)
        if tid is None:
            continue  # asked, then killed before it was named: re-attached and run as new
        run = runs.get(tid)
        run_status = run.data.tags.get("status") if run is not None else None
        status = optuna_status(trial)
        if status is None and run_status in STATUSES:  # MLflow closed it (or tagged it, then the crash)
            status = run_status
        if status is None and tid in stopped:  # the scheduler decided; no store heard of it
            status = STOPPED_EARLY
        if status is None:
            continue
        final_file = exp_dir / f"trial_{tid}" / FINAL_RECORD
        row = json.loads(final_file.read_text()) if final_file.exists() else None
        if status in (COMPLETED, INFEASIBLE) and row is None:
            raise RuntimeError(f"trial {tid} is recorded {status} but its final row {final_file} is missing")
        if status == STOPPED_EARLY:
            row = stopped.get(tid) or _last_row(run)
        if trial.state == TrialState.RUNNING:
            _tell(study, trial, status, row, objectives, budget_gmacs)
        ledger[tid] = {"status": status, "row": row,
                       "error": run.data.tags.get("error") if run is not None else None}
    write_json(exp_dir / LEDGER, ledger)
    return ledger


def _last_row(run) -> dict:
    """A stopped trial's last report as MLflow holds it (its per-epoch metrics)."""
    return {**(run.data.metrics if run is not None else {}), "final": False}


def _tell(study, trial, status: str, row: dict | None, objectives, budget_gmacs: float) -> None:
    handle = optuna.Trial(study, trial._trial_id)
    values = None
    if status in (COMPLETED, INFEASIBLE):
        values = [float(row.get(m, 0.0)) for m in objectives]
        excess = row.get("violation", row.get("sampled_gmacs", budget_gmacs) / budget_gmacs - 1.0)
        if BUDGET not in trial.constraints:  # set before a crash that came before the tell
            handle.set_constraint(BUDGET, 0.0 if status == COMPLETED else float(excess))
    study.tell(handle, values, state=OPTUNA_STATE[status])
