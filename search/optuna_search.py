"""Ray's OptunaSearch, made safe for a Pareto search with early stopping.

Ray's searcher tells Optuna COMPLETE whenever the last result holds the objectives, so a trial
ASHA stopped after two epochs, or one that crashed after reporting, would enter the study as a
finished trial with half-trained values. Here only a trial whose last report says
``final: True`` is COMPLETE; a stopped one is PRUNED and a crashed one FAIL, with no values.
Each finished trial also carries a ``constraint`` user attribute (how far over its budget, relative;
> 0 only for a configuration that could not be fitted to the GMACs or latency budget), which the TPE / NSGA-II samplers read
through ``constraints_func`` so they learn where the budget makes configurations infeasible.
"""
from __future__ import annotations

import logging

import optuna
from ray.tune.search.optuna import OptunaSearch

from .outcome import COMPLETED, FAILED, INFEASIBLE, STOPPED_EARLY, trial_status

logger = logging.getLogger(__name__)
SAMPLERS = ("tpe", "nsga2", "random")
OPTUNA_STATE = {COMPLETED: optuna.trial.TrialState.COMPLETE, INFEASIBLE: optuna.trial.TrialState.COMPLETE,
                STOPPED_EARLY: optuna.trial.TrialState.PRUNED, FAILED: optuna.trial.TrialState.FAIL}


def constraint_of(frozen_trial) -> tuple[float, ...]:
    return tuple(frozen_trial.user_attrs.get("constraint", (0.0,)))


class PicklableNSGAIISampler(optuna.samplers.NSGAIISampler):
    """Optuna's NSGA-II with its generation lock rebuilt on unpickling. Ray Tune pickles the searcher,
    sampler included, when a search starts (and at every experiment checkpoint), and Optuna 5.1's GA
    samplers hold a ``threading.Lock`` that pickle refuses: every ``--sampler nsga2`` search died there."""

    def __getstate__(self):
        state = self.__dict__.copy()
        state.pop("_thread_lock", None)
        return state

    def __setstate__(self, state):
        import threading

        self.__dict__.update(state)
        self._thread_lock = threading.Lock()


def make_sampler(name: str, seed: int, n_startup: int = 4):
    if name == "tpe":
        return optuna.samplers.TPESampler(seed=seed, n_startup_trials=n_startup, constraints_func=constraint_of,
                                          multivariate=True, group=True)
    if name == "nsga2":
        return PicklableNSGAIISampler(seed=seed, population_size=max(4, n_startup), constraints_func=constraint_of)
    if name == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    raise ValueError(f"unknown sampler {name!r}; choose one of {', '.join(SAMPLERS)}")


class ParetoSafeOptunaSearch(OptunaSearch):
    def __init__(self, *args, budget_gmacs: float, **kwargs):
        super().__init__(*args, **kwargs)
        self.budget_gmacs = budget_gmacs

    def suggest(self, trial_id: str):
        config = super().suggest(trial_id)
        if trial_id in self._ot_trials:  # each Optuna trial names its Ray trial from the start
            self._ot_trials[trial_id].set_user_attr("ray_trial_id", trial_id)
        return config

    def on_trial_complete(self, trial_id: str, result: dict | None = None, error: bool = False) -> None:
        if trial_id in self._completed_trials:
            return
        ot_trial = self._ot_trials.get(trial_id)
        if ot_trial is None:
            return
        status = trial_status(result, error)
        ot_trial.set_user_attr("ray_trial_id", trial_id)
        values = None
        if status in (COMPLETED, INFEASIBLE):
            values = [float(result.get(m, 0.0)) for m in self.metric]  # infeasible rows carry no latency
            # an infeasible trial's relative excess over the budget it cannot fit (GMACs or latency)
            ot_trial.set_user_attr("constraint", [0.0 if status == COMPLETED else float(
                result.get("violation", float(result["sampled_gmacs"]) / self.budget_gmacs - 1.0))])
            ot_trial.set_user_attr("feasible", status == COMPLETED)
        self._completed_trials.add(trial_id)
        try:
            self._ot_study.tell(ot_trial, values, state=OPTUNA_STATE[status])
        except Exception as exc:  # noqa: BLE001 - e.g. a trial Optuna already closed, a storage error
            try:  # never leave it RUNNING in the study
                self._ot_study.tell(ot_trial, None, state=optuna.trial.TrialState.FAIL)
            except Exception:  # noqa: BLE001
                pass
            if error:  # Ray is failing this trial already
                logger.error("optuna could not record failed trial %s: %s", trial_id, exc)
                return
            # Raising here makes Ray fail the trial (tune_controller.stop_trial catches it), so the
            # trial shows up failed in Ray, MLflow and the tables instead of silently missing from the study.
            raise RuntimeError(f"Optuna could not record trial {trial_id} ({type(exc).__name__}: {exc}); "
                               f"the trial is failed rather than left out of the study") from exc
