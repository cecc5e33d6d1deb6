"""Early stopping for a frontier search: ASHA's rungs, a cut that only removes collapsing trials.

ASHA keeps the top 1/reduction_factor of the trials recorded at each rung. In a frontier search
that is the wrong cut: at equal epochs a smaller model is less accurate by design, so ASHA with
its default cut removed 11 of 12 trials of a quick digits search here (mostly the small,
frontier-relevant ones). This scheduler keeps ASHA's asynchronous rungs (grace_period * rf^k)
but stops a trial only when its val top-1 at a rung falls in the bottom ``stop_fraction`` of the
trials recorded there, and only once ``min_recorded`` trials give that quantile a meaning.

Ray Tune does not restore a scheduler's state on ``Tuner.restore`` (ray#30838), and a resumed search
builds a new scheduler anyway (search/reconcile.py). With ``state_path`` the rungs, the order trials
were added in, and every stop decision with the row it was taken on are written (atomically) after
every decision and read back the first time the scheduler is used: a resumed search records what an
uninterrupted one does, and a trial stopped just before a crash is closed as stopped early on resume
(the decision is the first write of a stop; Optuna's and MLflow's come after it).
"""
from __future__ import annotations

import functools
import json
from pathlib import Path
from typing import Callable

import numpy as np
from ray.tune.schedulers import AsyncHyperBandScheduler

from m2mdc.io import write_json

from . import faults
from .outcome import row_fields


def _quantile_cutoff(recorded: dict, stop_fraction: float, min_recorded: int):
    if len(recorded) < min_recorded:
        return None
    return np.nanpercentile(list(recorded.values()), stop_fraction * 100)


class CollapseStoppingASHA(AsyncHyperBandScheduler):
    """ASHA's rungs with the collapse-only cut, compared within cohorts (``cohort(config)``: e.g. a
    one-shot trial reports after all its edits, a progressive one after its first, so each is ranked
    against its own kind), the first ``exempt_first`` trials (configurations seeded as baselines)
    recorded but never stopped, and the rungs persisted to ``state_path``."""

    def __init__(self, *, stop_fraction: float = 0.25, min_recorded: int = 4, state_path: str | Path | None = None,
                 cohort: Callable[[dict], str] | None = None, exempt_first: int = 0, **kwargs):
        super().__init__(**kwargs)
        if not 0.0 < stop_fraction < 1.0:
            raise ValueError(f"stop_fraction must be in (0, 1), got {stop_fraction}")
        self._cutoff = functools.partial(_quantile_cutoff, stop_fraction=stop_fraction, min_recorded=min_recorded)
        for bracket in self._brackets:  # Ray's _Bracket asks self.cutoff(recorded) at every rung
            bracket.cutoff = self._cutoff
        self._bracket_args = kwargs
        self._cohort = cohort
        self._cohorts: dict[str, list] = {}  # cohort -> its own brackets (the default cohort uses Ray's)
        self._exempt_first = int(exempt_first)
        self._added: list[str] = []  # trial ids in the order they were added (the first ones are exempt)
        self._stopped: dict[str, dict] = {}  # trial id -> the report row it was stopped on
        self._state_path = str(state_path) if state_path else None
        self._restored = False

    def _brackets_of(self, name: str) -> list:
        if not self._cohorts:
            self._cohorts[name] = self._brackets  # the first cohort seen keeps Ray's brackets
        if name not in self._cohorts:
            fresh = AsyncHyperBandScheduler(**self._bracket_args)._brackets
            for b in fresh:
                b.cutoff = self._cutoff
            self._cohorts[name] = fresh
        return self._cohorts[name]

    # ---- persistence of the rungs ------------------------------------------------------
    def rungs(self) -> dict:
        """Per cohort and bracket, [milestone, {trial_id: recorded value}] for every rung."""
        return {name: [[[m, dict(rec)] for m, rec in b._rungs] for b in brackets]
                for name, brackets in self._cohorts.items()}

    def _restore_once(self) -> None:
        if self._restored:
            return
        self._restored = True
        if not self._state_path or not Path(self._state_path).exists():
            return
        saved = json.loads(Path(self._state_path).read_text())
        self._added = list(saved.get("added", []))
        self._stopped = dict(saved.get("stopped", {}))
        for name, brackets in saved["rungs"].items():
            for bracket, rungs in zip(self._brackets_of(name), brackets):
                for (milestone, recorded), (m, values) in zip(bracket._rungs, rungs):
                    if milestone != m:
                        raise ValueError(f"{self._state_path} holds rungs of another schedule (milestone {m} vs "
                                         f"{milestone}); resume with the original settings")
                    recorded.update(values)

    def _persist(self) -> None:
        if self._state_path:
            write_json(Path(self._state_path), {"rungs": self.rungs(), "added": self._added, "stopped": self._stopped})

    # ---- scheduler hooks -----------------------------------------------------------------
    def on_trial_add(self, tune_controller, trial):
        self._restore_once()
        if trial.trial_id not in self._added:
            self._added.append(trial.trial_id)
        name = self._cohort(trial.config) if self._cohort else "all"
        self._trial_info[trial.trial_id] = self._brackets_of(name)[0]

    def on_trial_result(self, tune_controller, trial, result):
        self._restore_once()
        action = super().on_trial_result(tune_controller, trial, result)
        if trial.trial_id in self._added[:self._exempt_first] and action == self.STOP \
                and result.get(self._time_attr, 0) < self._max_t:
            action = self.CONTINUE  # a seeded baseline runs to the end: it is the yardstick
        decided = action == self.STOP and not result.get("final") and trial.trial_id not in self._stopped
        if decided:
            self._stopped[trial.trial_id] = row_fields(result)
        self._persist()
        if decided:
            faults.point("asha.decided")
        return action

    @staticmethod
    def stopped(state_path: Path) -> dict[str, dict]:
        """The stop decisions a search's scheduler persisted: trial id -> the row it was stopped on."""
        return json.loads(Path(state_path).read_text()).get("stopped", {}) if Path(state_path).exists() else {}

    def on_trial_complete(self, tune_controller, trial, result):
        self._restore_once()
        super().on_trial_complete(tune_controller, trial, result)
        self._persist()
