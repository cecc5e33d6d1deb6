"""Named fault-injection points between the writes of a search's stores (Ray Tune, Optuna, MLflow,
the trial folders), for the crash-consistency tests and benchmarks/crash_kills.py.

A point is a line of code where a crash leaves the stores in a distinct state. Unarmed it costs one
dict lookup (and, with ``M2MDC_FAULT_TRACE``, one appended line). Armed through the environment
(inherited by Ray's trial workers), the Nth pass of a point:

* ``M2MDC_FAULT=POINT[@N]``: appends ``POINT pid`` to ``M2MDC_FAULT_LOG`` (synced to disk, so a test
  can assert the point was hit) and SIGKILLs the search's whole process group (driver, Ray's
  daemons, trial workers): what ``kill -9`` of the job does, at a known place.
* ``M2MDC_FAULT=POINT[@N]:ENOSPC`` (or ``:EROFS``): raises that OSError instead, as a full disk or a
  read-only output folder would at that write.

``M2MDC_FAULT_TRACE=FILE`` appends every pass (time, point) to FILE: benchmarks/crash_kills.py kills
at random times and reads the last line to name the window each kill fell in.
"""
from __future__ import annotations

import errno
import os
import signal
import time

FAULT_ENV, LOG_ENV, TRACE_ENV = "M2MDC_FAULT", "M2MDC_FAULT_LOG", "M2MDC_FAULT_TRACE"
GROUP_ENV = "M2MDC_SEARCH_PGID"  # the driver's process group: Ray starts each trial worker in a group of its own

# Every point, in the order a trial passes them, and the window a crash there opens.
POINTS = {
    "searcher.asked": "Optuna holds a new RUNNING trial that neither Ray nor MLflow has seen",
    "trial.epoch": "during a trial's training (after an epoch's report)",
    "trial.final_saved": "the trial's final record is on disk; no store has heard of it",
    "asha.decided": "the scheduler persisted an early-stopping decision; Optuna and MLflow still say running",
    "mlflow.final_logged": "MLflow holds the final metrics; Optuna and Ray do not",
    "optuna.told": "Optuna closed the trial; MLflow's run and Ray's experiment checkpoint lag",
    "mlflow.closed": "all stores closed the trial but Ray's experiment checkpoint",
    "promotion": "the promotion list is written; no promoted trial has started",
    "report.pareto_tags": "during the final report: some runs tagged pareto=true/false, others not",
    "mlflow.member_artifacts": "while MLflow logs a Pareto member's model artefacts",
    "search.finished": "the parent run is closed; the process has not exited",
}
ERRNOS = {"ENOSPC": errno.ENOSPC, "EROFS": errno.EROFS}
_passes: dict[str, int] = {}


def _armed() -> tuple[str, int, str | None] | None:
    spec = os.environ.get(FAULT_ENV)
    if not spec:
        return None
    where, _, action = spec.partition(":")
    point, _, nth = where.partition("@")
    return point, int(nth or 1), action or None


def point(name: str, path: str | os.PathLike | None = None) -> None:
    """Pass the fault-injection point ``name`` (a key of POINTS); ``path`` is the file an injected
    OSError names."""
    if name not in POINTS:
        raise KeyError(f"unknown fault point {name!r}; declare it in search.faults.POINTS")
    trace = os.environ.get(TRACE_ENV)
    if trace:
        _append(trace, f"{time.time():.6f} {name}")
    armed = _armed()
    if armed is None or armed[0] != name:
        return
    _passes[name] = _passes.get(name, 0) + 1
    if _passes[name] != armed[1]:
        return
    log = os.environ.get(LOG_ENV)
    if log:
        _append(log, f"{name} {os.getpid()}")
    if armed[2]:
        code = ERRNOS[armed[2]]
        raise OSError(code, os.strerror(code), str(path) if path else None)
    group = int(os.environ.get(GROUP_ENV) or os.getpgid(0))
    if group != os.getpgid(0):  # a trial worker: the driver's group first, then its own
        os.killpg(group, signal.SIGKILL)
    os.killpg(os.getpgid(0), signal.SIGKILL)


def mark_search_group() -> None:
    """Called by the driver before Ray starts (its daemons and workers inherit the environment): a
    point passed in a trial worker then kills the whole search, not only the worker."""
    os.environ[GROUP_ENV] = str(os.getpgid(0))


def _append(path: str, line: str) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, (line + "\n").encode())
        os.fsync(fd)
    finally:
        os.close(fd)
