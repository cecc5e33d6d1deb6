"""How a trial ended: one rule, applied to Ray's record of the trial by everyone who needs it.

The searcher (what Optuna is told), the MLflow tracker (the run's ``status`` tag) and the final
tables all call ``trial_status`` on the same inputs (the trial's last result and whether it
raised), so they cannot disagree, and nothing is read back from MLflow to decide.
"""
from __future__ import annotations

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
