"""Early stopping for a frontier search: ASHA's rungs, a cut that only removes collapsing trials.

ASHA keeps the top 1/reduction_factor of the trials recorded at each rung. In a frontier search
that is the wrong cut: at equal epochs a smaller model is less accurate by design, so ASHA with
its default cut removed 11 of 12 trials of a quick digits search here (mostly the small,
frontier-relevant ones). This scheduler keeps ASHA's asynchronous rungs (grace_period * rf^k)
but stops a trial only when its val top-1 at a rung falls in the bottom ``stop_fraction`` of the
trials recorded there, and only once ``min_recorded`` trials give that quantile a meaning.

Ray Tune does not restore a scheduler's state on ``Tuner.restore`` (ray#30838): the scheduler
comes back as it was pickled when the search started, with empty rungs, so a resumed search
would stop different trials than an uninterrupted one. With ``state_path`` the rungs are
written (atomically) after every decision and read back the first time a restored scheduler
is used.
"""
from __future__ import annotations

import functools
import json
from pathlib import Path

import numpy as np
from ray.tune.schedulers import AsyncHyperBandScheduler

from m2mdc.io import write_json


def _quantile_cutoff(recorded: dict, stop_fraction: float, min_recorded: int):
    if len(recorded) < min_recorded:
        return None
    return np.nanpercentile(list(recorded.values()), stop_fraction * 100)


class CollapseStoppingASHA(AsyncHyperBandScheduler):
    def __init__(self, *, stop_fraction: float = 0.25, min_recorded: int = 4, state_path: str | Path | None = None,
                 **kwargs):
        super().__init__(**kwargs)
        if not 0.0 < stop_fraction < 1.0:
            raise ValueError(f"stop_fraction must be in (0, 1), got {stop_fraction}")
        for bracket in self._brackets:  # Ray's _Bracket asks self.cutoff(recorded) at every rung
            bracket.cutoff = functools.partial(_quantile_cutoff, stop_fraction=stop_fraction,
                                               min_recorded=min_recorded)
        self._state_path = str(state_path) if state_path else None
        self._restored = False

    # ---- persistence of the rungs ------------------------------------------------------
    def rungs(self) -> list[list[list]]:
        """Per bracket, [milestone, {trial_id: recorded value}] for every rung."""
        return [[[milestone, dict(recorded)] for milestone, recorded in b._rungs] for b in self._brackets]

    def _restore_once(self) -> None:
        if self._restored:
            return
        self._restored = True
        if not self._state_path or not Path(self._state_path).exists():
            return
        saved = json.loads(Path(self._state_path).read_text())
        for bracket, rungs in zip(self._brackets, saved["rungs"]):
            for (milestone, recorded), (m, values) in zip(bracket._rungs, rungs):
                if milestone != m:
                    raise ValueError(f"{self._state_path} holds rungs of another schedule (milestone {m} vs "
                                     f"{milestone}); resume with the original settings")
                recorded.update(values)

    def _persist(self) -> None:
        if self._state_path:
            write_json(Path(self._state_path), {"rungs": self.rungs()})

    # ---- scheduler hooks -----------------------------------------------------------------
    def on_trial_add(self, tune_controller, trial):
        self._restore_once()
        super().on_trial_add(tune_controller, trial)

    def on_trial_result(self, tune_controller, trial, result):
        self._restore_once()
        action = super().on_trial_result(tune_controller, trial, result)
        self._persist()
        return action

    def on_trial_complete(self, tune_controller, trial, result):
        self._restore_once()
        super().on_trial_complete(tune_controller, trial, result)
        self._persist()
