"""Multi-fidelity selection (analysis/finalize.py --screen): which trials get screened at the long budget.

The pool is checked against an independent, plainer statement of the rule over random searches:
within the band; for every rank r, the r-th best of every depth comes before any (r+1)-th best; the
first pick of a depth is its best by search val; depths enter best-depth first."""
import pytest
from hypothesis import given, settings, strategies as st

from analysis.finalize import Search
from m2mdc.errors import UserError

BUDGET = 0.02

trial = st.fixed_dictionaries({"val_top1": st.floats(0, 100, allow_nan=False),
                               "gmacs": st.floats(0.001, 0.025, allow_nan=False),
                               "depth": st.integers(4, 8)})


def search_of(trials: list[dict]) -> Search:
    return Search("s", {}, BUDGET, [], trials=[{**t, "trial_id": f"t{i}", "run_id": f"r{i}", "config": {}}
                                                for i, t in enumerate(trials)])


@settings(max_examples=200, deadline=None)
@given(st.lists(trial, min_size=1, max_size=30), st.integers(1, 12), st.floats(0.05, 1.0))
def test_pool_takes_each_depths_best_in_turn_within_the_band(trials, n, band):
    search = search_of(trials)
    within = [t for t in search.trials if BUDGET * (1 - band) <= t["gmacs"] <= BUDGET]
    if not within:
        with pytest.raises(UserError, match="no completed trial within"):
            search.screen_pool(BUDGET, n, band)
        return
    pool = search.screen_pool(BUDGET, n, band)
    assert len(pool) == min(n, len(within)) and len({t["trial_id"] for t in pool}) == len(pool)
    assert all(t in within for t in pool)
    ranked = {d: sorted((t for t in within if t["depth"] == d), key=lambda t: -t["val_top1"])
              for d in {t["depth"] for t in within}}
    rank = {t["trial_id"]: [x["trial_id"] for x in ranked[t["depth"]]].index(t["trial_id"]) for t in within}
    ranks = [rank[t["trial_id"]] for t in pool]
    assert ranks == sorted(ranks)  # all the best-of-depth picks come first, then the second-best, ...
    for d, ts in ranked.items():  # a depth's picks are its top ones by search val, in order
        picked = [t["trial_id"] for t in pool if t["depth"] == d]
        assert picked == [t["trial_id"] for t in ts[:len(picked)]]
    firsts = [t for t in pool if rank[t["trial_id"]] == 0]
    assert [t["val_top1"] for t in firsts] == sorted((t["val_top1"] for t in firsts), reverse=True)
    if len(pool) >= len(ranked):  # every depth in the band gets screened before any gets a second trial
        assert {t["depth"] for t in pool} == set(ranked)


def test_a_shallower_network_is_screened_even_when_every_full_depth_trial_beats_it():
    """The point of stratifying: the short proxy ranks block removal low (README), so top-N by search
    val would never re-train one at the long budget."""
    full = [{"val_top1": 52.0 - i * 0.1, "gmacs": 0.019, "depth": 8} for i in range(5)]
    shallow = [{"val_top1": 49.6, "gmacs": 0.018, "depth": 6}]
    pool = search_of(full + shallow).screen_pool(BUDGET, 2, 0.2)
    assert [t["depth"] for t in pool] == [8, 6] and pool[0]["val_top1"] == 52.0


def test_a_record_saved_before_screening_is_refused_with_what_to_do():
    old = Search("old", {}, BUDGET, [], trials=None)
    with pytest.raises(UserError, match="predates screening.*MLflow store"):
        old.screen_pool(BUDGET, 3, 0.2)


def test_screening_a_search_whose_record_lacks_its_trials_fails_before_anything_trains(tmp_path, monkeypatch,
                                                                                        capfd):
    import json

    from analysis import finalize

    results, out = tmp_path / "results", tmp_path / "out"
    record = results / "finalize" / "old" / "search.json"
    record.parent.mkdir(parents=True)
    member = {"trial_id": "a", "run_id": "r", "config": {}, "val_top1": 50.0, "gmacs": 0.019}
    record.write_text(json.dumps({"name": "old", "params": {}, "budget_gmacs": BUDGET, "front": [member]}))
    monkeypatch.setenv("M2MDC_RESULTS_DIR", str(results))
    with pytest.raises(SystemExit) as e:
        raise SystemExit(finalize.main(["--experiment", "old", "--screen", "3", "--dataset", "digits",
                                        "--mlflow-uri", f"sqlite:///{tmp_path / 'none' / 'm.db'}",
                                        "--out-dir", str(out)]))
    err = capfd.readouterr().err.strip().splitlines()
    assert e.value.code == 2 and len(err) == 1 and "predates screening" in err[0], err
    assert not out.exists() and [p.name for p in record.parent.iterdir()] == ["search.json"]
