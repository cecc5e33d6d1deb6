"""Ray's OptunaSearch, made safe for a Pareto search with early stopping and for resuming from the stores.

Ray's searcher tells Optuna COMPLETE whenever the last result holds the objectives, so a trial
ASHA stopped after two epochs, or one that crashed after reporting, would enter the study as a
finished trial with half-trained values. Here only a trial whose last report says
``final: True`` is COMPLETE; a stopped one is PRUNED and a crashed one FAIL, with no values.
Each finished trial also carries a ``budget`` constraint (Optuna's ``Trial.set_constraint``: how far
over its budget, relative; > 0 only for a configuration that could not be fitted to the GMACs or
latency budget), which the TPE / NSGA-II samplers read, so they learn where the budget makes
configurations infeasible.

Resuming (search/reconcile.py): the study is the truth, Ray's trial table is rebuilt from it. The
generator (``StudyOrderGenerator``) re-creates every trial the study holds, in trial-number order and
under its original Ray trial id, before it asks the sampler for new ones; the searcher re-attaches
each to its Optuna trial instead of asking a new one, and never updates a trial Optuna already closed.
Sampling is a function of the search seed, the trial number and the finished trials alone (every
random state is reseeded per trial number), so a resumed search draws what an uninterrupted one does.
"""
from __future__ import annotations

import logging
import threading

import optuna
from optuna.samplers._lazy_random_state import LazyRandomState
from ray.tune.experiment import Trial
from ray.tune.search import ConcurrencyLimiter, SearchGenerator
from ray.tune.search.optuna import OptunaSearch
from ray.tune.utils.util import unflatten_dict

from . import faults
from .outcome import COMPLETED, FAILED, INFEASIBLE, STOPPED_EARLY, trial_status

logger = logging.getLogger(__name__)
SAMPLERS = ("tpe", "nsga2", "random")
TrialState = optuna.trial.TrialState
OPTUNA_STATE = {COMPLETED: TrialState.COMPLETE, INFEASIBLE: TrialState.COMPLETE,
                STOPPED_EARLY: TrialState.PRUNED, FAILED: TrialState.FAIL}
RAY_ID = "ray_trial_id"  # user attribute: the Ray trial (and MLflow run tag trial_id) of an Optuna trial
BUDGET = "budget"  # the constraint's key


class NumberSeeded:
    """A sampler whose random states are reseeded from (search seed, trial number) before each trial:
    what it draws no longer depends on how many draws this process made before (a resumed search
    re-creates its interrupted trials without drawing, and must still draw what an uninterrupted one would)."""

    def _seed_per_number(self, seed: int) -> None:
        self._number_seed = seed

    def before_trial(self, study, trial) -> None:
        for state in _random_states(self):
            state.rng.seed((self._number_seed * 1_000_003 + trial.number) % 2 ** 32)
        super().before_trial(study, trial)


def _random_states(obj, seen=None):
    """Every LazyRandomState reachable through a sampler's attributes (TPE holds its own and its start-up
    RandomSampler's; NSGA-II shares one with its child-generation strategy)."""
    seen = set() if seen is None else seen
    for value in vars(obj).values():
        if id(value) in seen:
            continue
        seen.add(id(value))
        if isinstance(value, LazyRandomState):
            yield value
        elif isinstance(value, optuna.samplers.BaseSampler) or hasattr(value, "_rng"):
            yield from _random_states(value, seen)


class TPESampler(NumberSeeded, optuna.samplers.TPESampler):
    pass


class RandomSampler(NumberSeeded, optuna.samplers.RandomSampler):
    pass


class NSGAIISampler(NumberSeeded, optuna.samplers.NSGAIISampler):
    """Optuna's NSGA-II with its generation lock rebuilt on unpickling. Ray Tune pickles the searcher,
    sampler included, when a search starts (and at every experiment checkpoint), and Optuna 5.1's GA
    samplers hold a ``threading.Lock`` that pickle refuses: every ``--sampler nsga2`` search died there."""

    def __getstate__(self):
        state = self.__dict__.copy()
        state.pop("_thread_lock", None)
        return state

    def __setstate__(self, state):
        self.__dict__.update(state)
        self._thread_lock = threading.Lock()


def make_sampler(name: str, seed: int, n_startup: int = 4):
    """The sampler ``name`` (one of SAMPLERS), seeded per trial number from ``seed``. Constraints come
    from the trials themselves (``Trial.set_constraint``), which TPE and NSGA-II read."""
    if name == "tpe":
        sampler = TPESampler(seed=seed, n_startup_trials=n_startup, multivariate=True)
    elif name == "nsga2":
        sampler = NSGAIISampler(seed=seed, population_size=max(4, n_startup))
    elif name == "random":
        sampler = RandomSampler(seed=seed)
    else:
        raise ValueError(f"unknown sampler {name!r}; choose one of {', '.join(SAMPLERS)}")
    sampler._seed_per_number(seed)
    return sampler


ORIGIN = "origin"  # user attribute: where a trial's configuration came from (origin_label)


def origin_label(kind: str, name: str) -> str:
    """An origin as tables print it: "seeded baseline: NAME", "prior: NAME", "given: NAME" (an enqueued
    point), or "sampled (SAMPLER #N)"."""
    return f"{kind}: {name}" if kind != "sampled" else f"sampled ({name})"


class ParetoSafeOptunaSearch(OptunaSearch):
    """``point_origins``: the origin label of each of ``points_to_evaluate`` (seeded baseline, prior or
    given), stored with the enqueued trial, so the study itself says which trials the sampler drew."""

    def __init__(self, *args, budget_gmacs: float, sampler_name: str = "", point_origins: list[str] | None = None,
                 **kwargs):
        self.budget_gmacs = budget_gmacs
        self.sampler_name = sampler_name
        self.point_origins = list(point_origins or [])  # read by _setup_study, which the base __init__ calls
        super().__init__(*args, **kwargs)

    def _setup_study(self, mode):
        points, self._points_to_evaluate = self._points_to_evaluate, None
        super()._setup_study(mode)
        self._points_to_evaluate = points
        for i, point in enumerate(points or ()):  # a resumed study holds them already (as trials in any state)
            origin = self.point_origins[i] if i < len(self.point_origins) else origin_label("given", f"point {i}")
            self._ot_study.enqueue_trial(point, user_attrs={ORIGIN: origin}, skip_if_exists=True)

    # ---- the study as the truth -----------------------------------------------------------
    def _unattached(self) -> list:
        """Optuna trials no Ray trial of this session holds yet (WAITING ones are not started yet)."""
        attached = {t._trial_id for t in self._ot_trials.values()}
        return [t for t in self._ot_study.get_trials(deepcopy=False)
                if t.state != TrialState.WAITING and t._trial_id not in attached]

    def next_trial_id(self) -> str | None:
        """The Ray trial id of the study's oldest trial that no Ray trial holds (one a crash or an
        interruption left behind), so that it is re-created under its own id; None: a new trial."""
        left = self._unattached()
        return left[0].user_attrs.get(RAY_ID) if left else None

    def suggest(self, trial_id: str):
        if trial_id not in self._ot_trials:
            left = self._unattached()
            if left and left[0].user_attrs.get(RAY_ID) in (None, trial_id):
                self._attach(trial_id, left[0])
                return self._config_of(left[0])
        config = super().suggest(trial_id)
        if trial_id in self._ot_trials:
            trial = self._ot_trials[trial_id]
            faults.point("searcher.asked")
            trial.set_user_attr(RAY_ID, trial_id)
            fixed = "fixed_params" in self._ot_study._storage.get_trial_system_attrs(trial._trial_id)
            if not fixed:  # an enqueued trial carries the origin it was enqueued with
                trial.set_user_attr(ORIGIN, origin_label("sampled", f"{self.sampler_name} #{trial.number}"))
        return config

    def _attach(self, trial_id: str, frozen) -> None:
        self._ot_trials[trial_id] = optuna.Trial(self._ot_study, frozen._trial_id)
        if frozen.state == TrialState.RUNNING and frozen.user_attrs.get(RAY_ID) != trial_id:
            self._ot_trials[trial_id].set_user_attr(RAY_ID, trial_id)  # asked, then killed before naming it
        if frozen.state == TrialState.RUNNING and ORIGIN not in frozen.user_attrs:  # ... or its origin
            self._ot_trials[trial_id].set_user_attr(ORIGIN, origin_label("sampled", f"{self.sampler_name} #{frozen.number}"))
        if frozen.state.is_finished():
            self._completed_trials.add(trial_id)

    def _config_of(self, frozen) -> dict:
        return unflatten_dict(frozen.params)

    def on_trial_complete(self, trial_id: str, result: dict | None = None, error: bool = False) -> None:
        if trial_id in self._completed_trials:
            return
        ot_trial = self._ot_trials.get(trial_id)
        if ot_trial is None:
            return
        self._completed_trials.add(trial_id)
        status = trial_status(result, error)
        storage = self._ot_study._storage
        recorded = storage.get_trial(ot_trial._trial_id).state
        if recorded.is_finished():  # closed before a crash: what the study holds stands
            if recorded != OPTUNA_STATE[status]:
                logger.warning("trial %s ended %s here but the study recorded it %s; the study's record stands",
                               trial_id, status, recorded.name)
            return
        try:
            values = None
            if status in (COMPLETED, INFEASIBLE):
                values = [float(result.get(m, 0.0)) for m in self.metric]  # infeasible rows carry no latency
                # an infeasible trial's relative excess over the budget it cannot fit (GMACs or latency)
                ot_trial.set_constraint(BUDGET, 0.0 if status == COMPLETED else float(
                    result.get("violation", float(result["sampled_gmacs"]) / self.budget_gmacs - 1.0)))
            self._ot_study.tell(ot_trial, values, state=OPTUNA_STATE[status])
        except Exception as exc:  # noqa: BLE001 - e.g. a storage error
            try:  # never leave it RUNNING in the study
                self._ot_study.tell(ot_trial, None, state=TrialState.FAIL)
            except Exception:  # noqa: BLE001
                pass
            if error:  # Ray is failing this trial already
                logger.error("optuna could not record failed trial %s: %s", trial_id, exc)
                return
            # Raising here makes Ray fail the trial (tune_controller.stop_trial catches it), so the
            # trial shows up failed in Ray, MLflow and the tables instead of silently missing from the study.
            raise RuntimeError(f"Optuna could not record trial {trial_id} ({type(exc).__name__}: {exc}); "
                               f"the trial is failed rather than left out of the study") from exc
        faults.point("optuna.told")


def optuna_status(trial) -> str | None:
    """A finished Optuna trial's outcome in the search's vocabulary (None while it is not finished)."""
    if trial.state == TrialState.COMPLETE:
        return INFEASIBLE if trial.constraints.get(BUDGET, 0.0) > 0 else COMPLETED
    return {TrialState.PRUNED: STOPPED_EARLY, TrialState.FAIL: FAILED}.get(trial.state)


def origins(study) -> dict[str, str]:
    """Ray trial id -> origin label of every trial the study named."""
    return {t.user_attrs[RAY_ID]: t.user_attrs.get(ORIGIN, "") for t in study.get_trials(deepcopy=False)
            if RAY_ID in t.user_attrs}


def constraint_of(frozen_trial) -> float:
    """How far over its budget a finished trial stayed (relative; 0 when it fits)."""
    return float(frozen_trial.constraints.get(BUDGET, 0.0))


class StudyOrderGenerator(SearchGenerator):
    """Ray's search generator, creating first the trials the study holds that no Ray trial does, each
    under its original Ray trial id (its MLflow run and trial folder are found again by it)."""

    def __init__(self, searcher: ParetoSafeOptunaSearch, max_concurrent: int):
        self.study_searcher = searcher
        super().__init__(ConcurrencyLimiter(searcher, max_concurrent=max_concurrent))

    def create_trial_if_possible(self, experiment_spec):
        return under_id(self.study_searcher.next_trial_id(), lambda: super(StudyOrderGenerator, self)
                        .create_trial_if_possible(experiment_spec))


def under_id(given: str | None, create):
    """``create()`` with the trial it makes named ``given`` (None: a fresh id): SearchGenerator draws a
    new trial's id from ``Trial.generate_id``, so the id is given there for the one call."""
    if given is None:
        return create()
    original = Trial.generate_id
    Trial.generate_id = classmethod(lambda cls: given)
    try:
        return create()
    finally:
        Trial.generate_id = original
