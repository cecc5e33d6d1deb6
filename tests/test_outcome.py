"""How trials end: one status rule; a failed Optuna tell fails the trial visibly; ASHA rungs survive a restore."""
import pickle
from types import SimpleNamespace

import optuna
import pytest
from ray import tune

from search.early_stop import CollapseStoppingASHA
from search.optuna_search import SAMPLERS, ParetoSafeOptunaSearch, make_sampler
from search.outcome import trial_status

optuna.logging.set_verbosity(optuna.logging.WARNING)


@pytest.mark.parametrize("last, error, want", [
    ({"final": True, "feasible": True}, False, "completed"),
    ({"final": True, "feasible": False}, False, "infeasible"),
    ({"final": True}, False, "completed"),
    ({"final": False}, False, "stopped_early"),
    (None, False, "stopped_early"),
    ({"final": True}, True, "failed"),
    (None, True, "failed"),
])
def test_trial_status_rule(last, error, want):
    assert trial_status(last, error) == want


def test_a_failed_tell_fails_the_trial_instead_of_dropping_it():
    s = ParetoSafeOptunaSearch(space={"x": tune.uniform(0, 1)}, metric=["val_top1", "gmacs"], mode=["max", "min"],
                               sampler=make_sampler("random", 0), budget_gmacs=0.02)
    s.suggest("t1")
    real_tell = s._ot_study.tell

    def tell(trial, values=None, state=None):
        if state == optuna.trial.TrialState.COMPLETE:
            raise ValueError("storage is read-only")
        return real_tell(trial, values, state=state)

    s._ot_study.tell = tell
    with pytest.raises(RuntimeError, match="Optuna could not record trial t1 .*storage is read-only"):
        s.on_trial_complete("t1", {"val_top1": 50.0, "gmacs": 0.01, "final": True, "feasible": True})
    (trial,) = s._ot_study.trials
    assert trial.state == optuna.trial.TrialState.FAIL and trial.user_attrs["ray_trial_id"] == "t1"
    s.on_trial_complete("t1", error=True)  # Ray then reports the trial failed: nothing more happens
    assert len(s._ot_study.trials) == 1


def _scheduler(path):
    return CollapseStoppingASHA(time_attr="training_iteration", metric="val_top1", mode="max", max_t=11,
                                grace_period=2, reduction_factor=3, stop_fraction=0.5, min_recorded=2,
                                state_path=path)


def _feed(sched, trial_id, value, iteration=2):
    trial = SimpleNamespace(trial_id=trial_id)
    if trial_id not in sched._trial_info:
        sched.on_trial_add(None, trial)
    return sched.on_trial_result(None, trial, {"training_iteration": iteration, "val_top1": value})


def test_asha_rungs_survive_a_restore(tmp_path):
    """Ray restores the scheduler as pickled when the search began (empty rungs, ray#30838): the
    rungs written to state_path make the restored one decide as the uninterrupted one does."""
    path = tmp_path / "rungs.json"
    pickled_at_start = pickle.dumps(_scheduler(path))
    uninterrupted = _scheduler(tmp_path / "other.json")
    live = pickle.loads(pickled_at_start)
    for tid, v in [("a", 60.0), ("b", 70.0)]:
        assert _feed(uninterrupted, tid, v) == _feed(live, tid, v) == "CONTINUE"
    restored = pickle.loads(pickled_at_start)  # what Tuner.restore hands back
    assert _feed(uninterrupted, "c", 10.0) == "STOP"
    assert _feed(restored, "c", 10.0) == "STOP"  # without the saved rungs: 1 recorded < min_recorded -> CONTINUE
    assert restored.rungs() == uninterrupted.rungs()
    fresh = _scheduler(None)  # no state_path: nothing is written or read
    assert _feed(fresh, "c", 10.0) == "CONTINUE"


def test_rungs_of_another_schedule_are_refused(tmp_path):
    path = tmp_path / "rungs.json"
    _feed(_scheduler(path), "a", 50.0)
    other = CollapseStoppingASHA(time_attr="training_iteration", metric="val_top1", mode="max", max_t=30,
                                 grace_period=5, reduction_factor=2, state_path=path)
    with pytest.raises(ValueError, match="another schedule"):
        other.on_trial_add(None, SimpleNamespace(trial_id="x"))


def test_one_shot_trials_are_compared_with_one_shot_trials_and_seeds_run_to_the_end():
    """A one-shot trial reports after all its edits (lower accuracy at an early rung by design): the cut
    ranks it among one-shot trials only. The first ``exempt_first`` trials (seeded baselines) are never stopped."""
    from m2mdc.trial_budget import cohort

    sched = CollapseStoppingASHA(time_attr="training_iteration", metric="val_top1", mode="max", max_t=11,
                                 grace_period=2, reduction_factor=3, stop_fraction=0.5, min_recorded=2,
                                 cohort=cohort, exempt_first=1)

    def feed(tid, schedule, value):
        trial = SimpleNamespace(trial_id=tid, config={"schedule": schedule})
        if tid not in sched._trial_info:
            sched.on_trial_add(None, trial)
        return sched.on_trial_result(None, trial, {"training_iteration": 2, "val_top1": value})

    assert feed("seed", "one-shot", 5.0) == "CONTINUE"  # exempt, whatever comes later
    assert [feed(f"p{i}", "progressive", 62.0 - i) for i in range(3)] == ["CONTINUE", "CONTINUE", "STOP"]
    # far below every progressive trial, but fine among one-shot ones
    assert feed("o1", "one-shot", 30.0) == "CONTINUE"
    assert feed("o2", "one-shot", 40.0) == "CONTINUE"
    assert feed("o3", "one-shot", 10.0) == "STOP"  # a collapse among its own kind
    assert set(sched.rungs()) == {"one-shot", "progressive"}


@pytest.mark.parametrize("name", SAMPLERS)
def test_every_sampler_survives_rays_pickling_and_keeps_sampling(name):
    """Ray Tune pickles the searcher, sampler included, when a search starts and at each experiment
    checkpoint; Optuna 5.1's NSGA-II holds a lock that made every --sampler nsga2 search die there.
    The unpickled searcher must go on past NSGA-II's first generation (population 4)."""
    from ray import cloudpickle

    s = ParetoSafeOptunaSearch(space={"x": tune.uniform(0, 1)}, metric=["val_top1", "gmacs"], mode=["max", "min"],
                               sampler=make_sampler(name, 0), budget_gmacs=0.02)
    for i in range(3):
        s.suggest(f"a{i}")
        s.on_trial_complete(f"a{i}", {"final": True, "val_top1": 50.0 + i, "gmacs": 0.01 + 0.001 * i})
    s = cloudpickle.loads(cloudpickle.dumps(s))
    for i in range(6):
        x = s.suggest(f"b{i}")["x"]
        assert 0 <= x <= 1
        s.on_trial_complete(f"b{i}", {"final": True, "val_top1": 40.0 + 10 * x, "gmacs": 0.005 + 0.01 * x})
    states = [t.state for t in s._ot_study.trials]
    assert len(states) == 9 and set(states) == {optuna.trial.TrialState.COMPLETE}
