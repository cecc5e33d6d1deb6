"""kill -9 anywhere, then --resume finishes the search, and its stores tell one story (search/audit.py).

The harness kills one search at every fault-injection point of search/faults.py in turn (each kill at the
point's first new pass in that run; the resume that follows is armed with the next point), then resumes it
to its end, and compares it with the same search run uninterrupted: same configurations, same outcomes,
same early-stopping rungs. The reproduction of issue 39 kills from outside, as a user would.
Helpers: tests/crash.py.
"""
import sqlite3
import time

import pytest

from search.faults import POINTS
from tests.crash import Search, kill_group, resume_until_done

pytestmark = pytest.mark.slow

# Every point in the order one search passes them; searcher.asked@2: the first trial ends first, so
# that the kill leaves one trial closed in every store and one asked in Optuna alone. The second trial,
# killed in training, then completes through its four closing windows (it completes in the uninterrupted
# search too); the trials after it are stopped early, then the best is promoted (it is not an Optuna
# trial: optuna.told must come before the promotion).
CHAIN = ["searcher.asked@2", "trial.epoch", "trial.final_saved", "mlflow.final_logged", "optuna.told", "mlflow.closed",
         "asha.decided", "promotion", "report.pareto_tags", "mlflow.member_artifacts", "search.finished"]


@pytest.fixture(scope="module")
def out(search_out):
    return search_out()


@pytest.fixture(scope="module")
def uninterrupted(out):
    search = Search(out, "uninterrupted", num_samples=5)
    assert search.run() == 0, search.log()[-3000:]
    assert search.audit() == []
    return search


def by_number(search: Search) -> dict:
    """The scheduler's rungs with Ray trial ids replaced by Optuna trial numbers (ids are random per run)."""
    import optuna

    study = optuna.load_study(study_name=search.name, storage=f"sqlite:///{search.exp_dir / 'optuna.db'}")
    number = {t.user_attrs["ray_trial_id"]: t.number for t in study.trials}
    return {cohort: [[[m, {number[t]: v for t, v in rec.items()}] for m, rec in b] for b in brackets]
            for cohort, brackets in search.rungs().items()}


def test_the_chain_covers_every_point():
    assert sorted(p.split("@")[0] for p in CHAIN) == sorted(POINTS)


def test_a_kill_at_every_point_then_resume_ends_as_an_uninterrupted_search(out, uninterrupted):
    search = Search(out, "chained", num_samples=5)
    for i, fault in enumerate(CHAIN):
        code = search.run(resume=i > 0, fault=fault)
        assert code == -9, f"not killed at {fault} (exit {code}): {search.log()[-3000:]}"
        assert search.hits() == [p.split("@")[0] for p in CHAIN[:i + 1]]  # the kill went through its point
        assert search.audit_partial() == [], fault
    assert resume_until_done(search) == [0], search.log()[-3000:]
    assert search.audit() == []
    assert search.outcome() == uninterrupted.outcome()  # same configurations, same statuses
    assert by_number(search) == by_number(uninterrupted)  # the rungs restored, value for value
    stopped = [n for n, (_, state) in search.outcome().items() if state == "PRUNED"]
    assert stopped, "the chain crossed an early stop"


def test_kill_9_after_an_early_stop_then_resume_finishes(out):
    """Issue 39, reproduction 1: ASHA stopped a trial and Optuna recorded it PRUNED, Ray's experiment
    checkpoint was older (held back here, as a long checkpoint period does), then the search's process
    group was killed. The resume exited 1 with UpdateFinishedTrialError, and so did every resume after it."""
    search = Search(out, "killed-after-stop", num_samples=5, env={"TUNE_GLOBAL_CHECKPOINT_S": "3600"})
    proc = search.start()
    deadline = time.time() + 600
    try:
        while "PRUNED" not in search.optuna_states():
            assert proc.poll() is None and time.time() < deadline, search.log()[-3000:]
            time.sleep(0.2)
    finally:
        kill_group(proc)
    assert resume_until_done(search, attempts=1) == [0], search.log()[-3000:]
    assert search.audit() == []


def test_the_audit_finds_a_trial_recorded_twice(out, uninterrupted):
    """The audit can fail: a copy of a trial's MLflow run is one disagreement."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(f"sqlite:///{out / 'mlflow.db'}")
    exp = client.get_experiment_by_name("uninterrupted")
    run = next(r for r in client.search_runs([exp.experiment_id]) if r.data.tags.get("role") == "trial")
    copy = client.create_run(exp.experiment_id, tags={k: v for k, v in run.data.tags.items() if k != "pareto"})
    try:
        problems = uninterrupted.audit()
        assert any("recorded twice" in p for p in problems), problems
    finally:
        client.delete_run(copy.info.run_id)
        with sqlite3.connect(out / "mlflow.db") as con:  # purge it: a deleted run is a disagreement too
            con.execute("DELETE FROM tags WHERE run_uuid = ?", (copy.info.run_id,))
            con.execute("DELETE FROM runs WHERE run_uuid = ?", (copy.info.run_id,))
    assert uninterrupted.audit() == []
