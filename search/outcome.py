"""How a trial ended: one rule, applied to Ray's record of the trial by everyone who needs it.

The searcher (what Optuna is told), the MLflow tracker (the run's ``status`` tag) and the final
tables all call ``trial_status`` on the same inputs (the trial's last result and whether it
raised), so they cannot disagree, and nothing is read back from MLflow to decide.
"""
from __future__ import annotations

import errno
import json
import os
from pathlib import Path
from urllib.parse import urlparse

from m2mdc.objectives import METRICS

from .mlflow_store import STORE_FAILURES

COMPLETED, STOPPED_EARLY, FAILED, INFEASIBLE = "completed", "stopped_early", "failed", "infeasible"
STATUSES = (COMPLETED, STOPPED_EARLY, FAILED, INFEASIBLE)
MLFLOW_RUN_STATUS = {COMPLETED: "FINISHED", INFEASIBLE: "FINISHED", STOPPED_EARLY: "KILLED", FAILED: "FAILED"}


def trial_status(last_result: dict | None, error: bool) -> str:
    """failed if it raised; completed / infeasible if its last report is the final one (a trial
    reports ``final: True`` only once its plan ran to the end, or when it was rejected before
    training); else it was stopped early by the scheduler."""
    if error:
        return FAILED
    if not last_result or not last_result.get("final"):
        return STOPPED_EARLY
    return COMPLETED if last_result.get("feasible", True) else INFEASIBLE


# Report fields that steer the search rather than describe the model. REPORT_INDEX counts a trial's reports
# (1, 2, ...): ASHA's rungs and MLflow's steps use it rather than Ray's training_iteration, so a row a
# resumed search replays (search/reconcile.py) lands where it first did.
REPORT_INDEX = "report_index"
CONTROL = ("final", "feasible", "plan_step", REPORT_INDEX)


def row_fields(result: dict) -> dict:
    """The trial's own fields of a Ray result (its report row: METRICS and CONTROL), without Ray's bookkeeping."""
    return {k: v for k, v in result.items() if k in METRICS or k in CONTROL}


# What a trial leaves behind for a resume (search/reconcile.py): its own final row, written in its folder
# before it is reported, and the search's ledger of trials a store closed before a crash.
FINAL_RECORD = "final.json"  # in trial_<id>/
LEDGER = "closed-trials.json"  # in the search's folder: trial id -> {"status", "row", "error"}


class EnvironmentFailure(RuntimeError):
    """The machine or a service failed a trial (a full disk, a read-only folder), not its configuration:
    the search stops with one line and the trial stays unfinished in every store, for --resume."""


ENVIRONMENT_ERRNOS = {errno.ENOSPC: "the disk is full", errno.EDQUOT: "the disk quota is exhausted",
                      errno.EROFS: "the output folder is read-only", errno.EACCES: "the output folder is not writable"}
ENVIRONMENT_REPORT = "environment_error"  # a trial reports this field instead of failing (search/tracking.py)


def unwritable(folder: Path) -> OSError | None:
    """The OSError of ENVIRONMENT_ERRNOS a write into ``folder`` meets now (None: it can be written). Asked after
    any failure of a trial: torch.save, for one, reports a read-only or full disk as a RuntimeError."""
    probe = Path(folder) / f".writable-{os.getpid()}"
    try:
        Path(folder).mkdir(parents=True, exist_ok=True)
        probe.write_bytes(b"0" * 4096)
        probe.unlink()
    except OSError as e:
        return e if e.errno in ENVIRONMENT_ERRNOS else None
    return None


def environment_message(e: OSError, where: str = "") -> str:
    """What failed, in one line, for an OSError of ENVIRONMENT_ERRNOS (``where``: e.g. " in trial X")."""
    file = f" writing {e.filename}" if e.filename else ""
    return f"{ENVIRONMENT_ERRNOS[e.errno]} ({e.strerror}{file}{where}); free space or make it writable"


class ReplayedFailure(RuntimeError):
    """A trial the study recorded as failed, failed again on resume without running."""


def replay(trials_dir: Path, trial_id: str) -> dict | None:
    """How a re-created trial ends without training, if a store or its own folder says it ended: the row to
    report (``{"row": ...}``; a non-final row ends it stopped early), or ``{"error": ...}``; None: run it."""
    ledger = Path(trials_dir) / LEDGER
    closed = json.loads(ledger.read_text()).get(trial_id) if ledger.exists() else None
    if closed is not None:
        return {"error": closed.get("error") or "failed"} if closed["status"] == FAILED else {"row": closed["row"]}
    final = Path(trials_dir) / f"trial_{trial_id}" / FINAL_RECORD
    return {"row": json.loads(final.read_text())} if final.exists() else None


def environment_failure(exc: BaseException, mlflow_uri: str, study_file: Path | None = None) -> str | None:
    """One line for a failure of the machine or a service rather than of the search (None for any other
    error): what failed, and that ``--resume`` continues once it is mended."""
    # mlflow costs ~0.5 s more to import (python -X importtime); the CLIs importing this module (search/frontier.py,
    # analysis/review.py, search/audit.py) do not pay it for --help or a bad argument
    from mlflow.exceptions import MlflowException

    resume = "then continue with the same command plus --resume"
    for e in _chain(exc):
        if isinstance(e, EnvironmentFailure):
            return f"{e}; {resume}"
        if isinstance(e, OSError) and e.errno in ENVIRONMENT_ERRNOS:
            return f"{environment_message(e)}; {resume}"
        if isinstance(e, MlflowException):
            text = str(e)
            if any(k in text for k in STORE_FAILURES):
                why = text.splitlines()[0].removeprefix("(sqlite3.OperationalError) ")[:200]
                return f"the MLflow store {mlflow_uri} cannot be written: {why}; {resume}"
            if urlparse(mlflow_uri).scheme in ("http", "https") and ("Max retries" in text or "Connection" in text):
                return (f"the MLflow tracking server {mlflow_uri} went away mid-search; restart it "
                        f"(mlflow server ...), {resume}")
        elif type(e).__module__.split(".")[0] in ("sqlalchemy", "sqlite3") and any(k in str(e) for k in STORE_FAILURES):
            why = str(e).splitlines()[0].removeprefix("(sqlite3.OperationalError) ")[:200]
            return f"the Optuna study {study_file or 'optuna.db'} cannot be written: {why}; {resume}"
    return None


def _chain(exc: BaseException):
    """An exception and its causes (Ray wraps a trial's error; MLflow wraps requests')."""
    seen = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        yield exc
        exc = exc.__cause__ or exc.__context__
