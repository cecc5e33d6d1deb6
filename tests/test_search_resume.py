"""A search interrupted by Ctrl+C and resumed runs no trial twice; its four trials are then what the
re-ranking tools work on: proxy_rank (short vs long budget) and finalize --screen. Helpers: tests/searches.py.
"""
import json
import os
import subprocess
import sys

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies

from tests.searches import BUDGET, LEAN, REPO, check_search, frontier, interrupt_after_one_trial, mlflow_runs
from tests.shrunk import PREFIX as SHRUNK
from tests.shrunk import LONG_STEPS, SHORT_STEPS

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def out(search_out):
    return search_out()


def test_resume_after_interrupt_runs_no_trial_twice(out):
    args = ["--space", str(LEAN), "--name", "resumable", "--num-samples", "4", "--no-asha", "--cpus-per-trial", "1"]
    cmd = [sys.executable, "search/frontier.py", "--budget-gmacs", str(BUDGET), "--profile", "smoke", "--dataset",
           "digits", "--out-dir", str(out), *args]
    interrupt_after_one_trial(cmd, out, "resumable")
    _, parents, before = mlflow_runs(out, "resumable")
    assert parents[0].info.status == "KILLED"
    finished = {c.data.tags["trial_id"]: c.info.end_time for c in before if c.data.tags["status"] == "completed"}
    assert finished, "a trial had finished before the interrupt"

    changed = frontier(out, *args, "--resume", "--sampler", "random", check=False)  # different settings
    assert changed.returncode == 2 and "different settings (sampler)" in changed.stderr
    frontier(out, *args, "--resume")
    children, _ = check_search(out, "resumable", 4)
    for c in children:  # trials finished before the interrupt were not run again
        if c.data.tags["trial_id"] in finished:
            assert c.info.end_time == finished[c.data.tags["trial_id"]]
    # resuming a finished search (what compare_samplers does when run again) only re-reports it
    again = frontier(out, *args, "--resume")
    assert "Pareto set (" in again.stdout
    _, parents, after = mlflow_runs(out, "resumable")
    assert [p.info.status for p in parents] == ["FINISHED"]
    assert {c.data.tags["trial_id"]: c.info.end_time for c in after} == \
        {c.data.tags["trial_id"]: c.info.end_time for c in children}


def test_compare_samplers_resumes_the_searches_that_exist(tmp_path, monkeypatch):
    """Run again, compare_samplers continues each search already under the output root (--resume) and
    starts the others; what each search does with --resume is the test above."""
    from analysis import compare_samplers

    (tmp_path / "search" / "cmp-tpe").mkdir(parents=True)
    (tmp_path / "search" / "cmp-tpe" / "search.json").write_text("{}")
    calls = []
    monkeypatch.setattr(compare_samplers.subprocess, "run",
                        lambda cmd, **kw: calls.append(cmd) or subprocess.CompletedProcess(cmd, 0))
    assert compare_samplers.main(["--samplers", "tpe,random", "--base-name", "cmp", "--",
                                  "--budget-gmacs", "0.02", "--out-dir", str(tmp_path)]) == 0
    searches = {c[c.index("--name") + 1]: c for c in calls if "--name" in c}
    assert list(searches) == ["cmp-tpe", "cmp-random"]
    assert "--resume" in searches["cmp-tpe"] and "--resume" not in searches["cmp-random"]
    review = calls[-1]
    assert review[1].endswith("review.py") and review[review.index("--out-dir") + 1] == str(tmp_path)


@given(strategies.integers(1, 40), strategies.integers(2, 12))
@settings(deadline=None, suppress_health_check=[HealthCheck.too_slow])  # beside CI's other worker
def test_spread_pick_takes_both_ends_and_n_distinct_items_in_rank_order(size, n):
    """How proxy_rank spreads N picks over a ranking, for every size (the end-to-end test below sees one)."""
    from analysis.proxy_rank import spread_pick

    ranked = list(range(size))
    picked = spread_pick(ranked, n)
    assert len(picked) == min(n, size) and picked == sorted(set(picked))
    assert picked[0] == 0 and picked[-1] == size - 1
    gaps = [b - a for a, b in zip(picked, picked[1:])]
    assert not gaps or max(gaps) - min(gaps) <= 1  # evenly spaced, up to rounding


def test_proxy_rank_retrains_spread_trials_at_both_budgets(out, tmp_path):
    """analysis/proxy_rank.py: N completed trials of a search, spread over its val ranking, each trained at
    the short and the long budget (what it trained is read back from the saved runs), tau with an interval."""
    from scipy.stats import kendalltau

    results = tmp_path / "results"
    r = subprocess.run([*SHRUNK, "analysis/proxy_rank.py", "--experiment", "resumable", "--n", "3", "--band",
                        "1", "--dataset", "digits", "--epochs", "5", "--out-dir", str(out)], cwd=REPO,
                       capture_output=True, text=True, timeout=900, env={**os.environ, "M2MDC_RESULTS_DIR": str(results)})
    assert r.returncode == 0, r.stderr[-3000:]
    data = json.loads((out / "proxy_rank" / "resumable" / "proxy_rank.json").read_text())
    rows = data["rows"]
    assert len(rows) == 3 and len({x["trial_id"] for x in rows}) == 3
    saved = [json.loads(p.read_text()) for p in (results / "finalize" / "resumable").glob("*.json")]
    assert sorted(s["run"]["budget"] for s in saved) == ["long"] * 3 + ["short"] * 3
    assert {s["epochs_trained"] for s in saved} == {8}
    assert {s["kd_settings"]["steps_per_epoch"] for s in saved} == {SHORT_STEPS, LONG_STEPS}  # both shrunk
    for x in rows:  # the table's vals are the saved runs' vals
        for b in ("short", "long"):
            assert x[f"{b}_val"] == next(s["val_top1"] for s in saved if s["run"]["budget"] == b
                                         and s["row"] == f"search {x['trial_id']}")
    want = kendalltau([x["short_val"] for x in rows], [x["long_val"] for x in rows]).statistic
    assert data["tau"] == pytest.approx(want, nan_ok=True)
    assert "Kendall tau" in (out / "proxy_rank" / "resumable" / "proxy_rank.md").read_text()


def test_finalize_screen_picks_the_best_screened_trial_and_logs_each_run_once(out, tmp_path):
    """--screen N: N completed trials (the best of each depth in turn) trained once at the last budget;
    the K best by that val are finalized; every trained run is one MLflow child, none twice."""
    results = tmp_path / "results"
    args = ["analysis/finalize.py", "--experiment", "resumable", "--k", "1", "--screen", "3", "--band", "1",
            "--seeds", "0", "--budgets", "short", "--dataset", "digits", "--epochs", "5", "--out-dir", str(out)]
    r = subprocess.run([*SHRUNK, *args], cwd=REPO, capture_output=True, text=True, timeout=900,
                       env={**os.environ, "M2MDC_RESULTS_DIR": str(results)})
    assert r.returncode == 0, r.stderr[-3000:]
    client, parents, children = mlflow_runs(out, "resumable")
    exp = client.get_experiment_by_name("resumable")
    finalized = [x for x in client.search_runs([exp.experiment_id]) if x.data.tags.get("role") == "finalized"]
    screened = [x for x in finalized if x.data.tags["screened"] == "true"]
    assert len(screened) == 3 == len(finalized)  # the chosen member's seed-0 run is its screening run
    # the screened trials are the rule applied to the search's own trials, recomputed here from MLflow
    done = [c for c in children if c.data.tags["status"] == "completed"]
    depth = {c.data.tags["trial_id"]: sum(len(b) for b in json.loads(c.data.tags["keep_cfg"])["blocks"].values())
             for c in done}
    best_first = sorted(done, key=lambda c: -c.data.metrics["val_top1"])
    firsts = list(dict.fromkeys(depth[c.data.tags["trial_id"]] for c in best_first))
    want, taken = [], set()
    while len(want) < min(3, len(done)):
        for d in firsts:
            left = [c.data.tags["trial_id"] for c in best_first if depth[c.data.tags["trial_id"]] == d
                    and c.data.tags["trial_id"] not in taken]
            if left and len(want) < 3:
                want.append(left[0])
                taken.add(left[0])
    assert [x.data.tags["trial_id"] for x in sorted(screened, key=lambda x: x.info.start_time)] == want
    saved = {json.loads(p.read_text())["row"].split()[-1]: json.loads(p.read_text())
             for p in (results / "finalize" / "resumable").glob("short-seed0-*.json")}
    assert set(saved) == set(want)
    chosen = max(want, key=lambda t: saved[t]["val_top1"])  # selection by the screening val, never test
    table = [line for line in r.stdout.splitlines() if line.startswith("| ")]
    assert f"| {chosen} | " in "\n".join(line for line in table if line.endswith("| yes |"))
    assert f"best by mean val (short): trial {chosen}" in r.stdout
    record = json.loads((results / "finalize" / "resumable" / "search.json").read_text())
    assert {t["trial_id"] for t in record["trials"]} == set(depth)  # the record keeps every completed trial
