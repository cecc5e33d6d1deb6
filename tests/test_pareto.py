"""The Pareto set equals Optuna's non-dominated trials on the same points (an independent implementation)."""
import optuna
from hypothesis import given, settings
from hypothesis import strategies as st

from search.pareto import non_dominated

optuna.logging.set_verbosity(optuna.logging.WARNING)
# coarse values so ties and duplicates happen often
points = st.lists(st.tuples(st.integers(0, 10).map(float), st.integers(1, 10).map(lambda x: x / 100),
                            st.integers(1, 5).map(float)), min_size=1, max_size=25)


def optuna_front(pts, n_obj):
    directions = ["maximize", "minimize", "minimize"][:n_obj]
    study = optuna.create_study(directions=directions)
    for i, p in enumerate(pts):
        study.add_trial(optuna.trial.create_trial(values=list(p[:n_obj]), params={}, distributions={},
                                                  user_attrs={"i": i}))
    return sorted(t.user_attrs["i"] for t in study.best_trials)


@settings(max_examples=150, deadline=None)
@given(pts=points, n_obj=st.sampled_from([2, 3]))
def test_non_dominated_equals_optuna(pts, n_obj):
    rows = [{"i": i, "val_top1": p[0], "gmacs": p[1], "latency_ms": p[2]} for i, p in enumerate(pts)]
    keys = ("val_top1", "gmacs", "latency_ms")[:n_obj]
    ours = sorted(r["i"] for r in non_dominated(rows, keys))
    assert ours == optuna_front(pts, n_obj)


def test_dominated_point_is_dropped_and_ties_kept():
    rows = [{"val_top1": 80, "gmacs": 0.02}, {"val_top1": 70, "gmacs": 0.02}, {"val_top1": 80, "gmacs": 0.02},
            {"val_top1": 60, "gmacs": 0.01}]
    front = non_dominated(rows, ("val_top1", "gmacs"))
    assert front == [rows[0], rows[2], rows[3]]


def test_stopped_and_failed_trials_never_enter_the_study_as_complete():
    """Ray's OptunaSearch would tell COMPLETE for any last result holding the objectives."""
    from ray import tune

    from search.optuna_search import ParetoSafeOptunaSearch, make_sampler

    s = ParetoSafeOptunaSearch(space={"x": tune.uniform(0, 1)}, metric=["val_top1", "gmacs"], mode=["max", "min"],
                               sampler=make_sampler("random", 0), budget_gmacs=0.02)
    for tid in ("stopped", "crashed", "done", "infeasible"):
        s.suggest(tid)
    s.on_trial_complete("stopped", {"val_top1": 90.0, "gmacs": 0.01, "final": False})
    s.on_trial_complete("crashed", {"val_top1": 95.0, "gmacs": 0.01, "final": False}, error=True)
    s.on_trial_complete("done", {"val_top1": 50.0, "gmacs": 0.015, "final": True, "feasible": True})
    s.on_trial_complete("infeasible", {"val_top1": 0.0, "gmacs": 0.03, "final": True, "feasible": False,
                                       "sampled_gmacs": 0.03})
    trials = {t.user_attrs["ray_trial_id"]: t for t in s._ot_study.trials}
    S = optuna.trial.TrialState
    assert {k: t.state for k, t in trials.items()} == {"stopped": S.PRUNED, "crashed": S.FAIL, "done": S.COMPLETE,
                                                        "infeasible": S.COMPLETE}
    assert trials["stopped"].values is None and trials["crashed"].values is None
    assert trials["done"].constraints == {"budget": 0.0}
    assert trials["infeasible"].constraints["budget"] > 0  # the sampler sees it as infeasible
    assert [t.user_attrs["ray_trial_id"] for t in s._ot_study.best_trials] == ["done"]


def test_collapse_asha_stops_only_the_bottom_share():
    from types import SimpleNamespace

    from search.early_stop import CollapseStoppingASHA

    sched = CollapseStoppingASHA(time_attr="training_iteration", metric="val_top1", mode="max", max_t=11,
                                 grace_period=2, reduction_factor=3, stop_fraction=0.25, min_recorded=4)
    bracket = sched._brackets[0]
    decide = [bracket.on_result(SimpleNamespace(trial_id=f"t{i}"), 2, v) for i, v in
              enumerate([50.0, 60.0, 70.0, 80.0, 10.0, 65.0])]
    # the first four only fill the rung; then 10 (a collapse) stops, 65 goes on (plain ASHA with rf 3 would stop it)
    assert decide == ["CONTINUE"] * 4 + ["STOP", "CONTINUE"]
