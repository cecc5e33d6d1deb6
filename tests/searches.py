"""What the end-to-end search tests share: the smoke-profile frontier on digits as a subprocess, a CLI's
refusal run in-process, and the checks every finished search must pass (MLflow, Optuna and the saved
models agree; every finished trial within budget, recounted with fvcore).

The search tests are split by the search they build on (test_frontier.py, test_search_resume.py,
test_search_members.py), so that xdist's workers can run them side by side; each file has one output
folder, so its searches share its teacher (copied from the run's one smoke teacher, tests/conftest.py).
"""
import json
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import optuna
import pytest

from m2mdc import metrics
from m2mdc.models import get_adapter
from search.pareto import non_dominated

REPO = Path(__file__).resolve().parents[1]
LEAN = REPO / "tests" / "data" / "space-lean.yaml"
BUDGET = 0.02


def frontier(out: Path, *args, check=True, timeout=900):
    cmd = [sys.executable, "search/frontier.py", "--budget-gmacs", str(BUDGET), "--profile", "smoke",
           "--dataset", "digits", "--out-dir", str(out), "--cpus-per-trial", "1", *args]
    r = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=timeout)
    if check:
        assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    return r


def refused(main, argv: list[str], capfd) -> str:
    """A CLI's main() run in this process (a subprocess is ~5 s of imports): it must exit 2 without a
    traceback; returns its stderr."""
    with pytest.raises(SystemExit) as e:
        main(argv)
    err = capfd.readouterr().err
    assert e.value.code == 2, err[-2000:]
    assert "Traceback" not in err, err[-2000:]
    return err


def mlflow_runs(out: Path, experiment: str):
    from mlflow.tracking import MlflowClient

    client = MlflowClient(f"sqlite:///{out / 'mlflow.db'}")
    exp = client.get_experiment_by_name(experiment)
    runs = client.search_runs([exp.experiment_id], max_results=1000) if exp else []
    parents = [r for r in runs if r.data.tags.get("role") == "search"]
    children = [r for r in runs if r.data.tags.get("role") == "trial"]
    return client, parents, children


def optuna_trials(out: Path, name: str):
    study = optuna.load_study(study_name=name, storage=f"sqlite:///{out / 'search' / name / 'optuna.db'}")
    return study


def check_search(out: Path, name: str, n_trials: int):
    client, parents, children = mlflow_runs(out, name)
    assert len(parents) == 1 and parents[0].info.status == "FINISHED"
    assert len(children) == n_trials
    assert len({c.data.tags["trial_id"] for c in children}) == n_trials  # one run per trial, none twice
    assert all(c.data.tags["mlflow.parentRunId"] == parents[0].info.run_id for c in children)
    done = [c for c in children if c.data.tags["status"] == "completed"]
    assert done, "at least one trial finishes"
    adapter = get_adapter("resnet18")
    for c in done:  # every finished trial is within budget, recounted with fvcore on its architecture
        assert c.data.metrics["gmacs"] <= BUDGET
        keep_cfg = json.loads(c.data.tags["keep_cfg"])
        assert metrics.gmacs(adapter.rebuild(keep_cfg, 10), 32) == pytest.approx(c.data.metrics["gmacs"], abs=1e-12)
        # each trial saved its own model in its own folder (reused Ray actors must not mix them up)
        saved = json.loads((out / "search" / name / f"trial_{c.data.tags['trial_id']}" / "model" /
                            "keep_cfg.json").read_text())
        assert saved["keep_cfg"] == keep_cfg
    tagged = {c.data.tags["trial_id"] for c in children if c.data.tags.get("pareto") == "true"}
    rows = [{"id": c.data.tags["trial_id"], **c.data.metrics} for c in done]
    assert tagged == {r["id"] for r in non_dominated(rows, ("val_top1", "gmacs"))}
    study = optuna_trials(out, name)
    ray_ids = [t.user_attrs.get("ray_trial_id") for t in study.trials]
    assert len(ray_ids) == len(set(ray_ids)) == n_trials, ray_ids  # one Optuna trial per Ray trial, none twice
    states = {t.user_attrs.get("ray_trial_id"): t.state for t in study.trials}
    assert {t.user_attrs["ray_trial_id"] for t in study.best_trials} == tagged  # Optuna's own front agrees
    by_status = {c.data.tags["trial_id"]: c.data.tags["status"] for c in children}
    for tid, st in by_status.items():
        want = {"completed": optuna.trial.TrialState.COMPLETE, "stopped_early": optuna.trial.TrialState.PRUNED,
                "failed": optuna.trial.TrialState.FAIL}[st]
        assert states[tid] == want, (tid, st)
        if st != "completed":
            assert tid not in tagged
    for c in children:
        if c.data.tags["trial_id"] in tagged:
            assert {a.path for a in client.list_artifacts(c.info.run_id, "model")} >= {"model/keep_cfg.json",
                                                                                         "model/model.pt2"}
            # and an MLflow model of its run (MLflow's Models column), logged once
            model_id = c.data.tags["mlflow_model_id"]
            assert client.get_logged_model(model_id).source_run_id == c.info.run_id
    parent_files = {a.path for a in client.list_artifacts(parents[0].info.run_id)}
    assert {"pareto.md", "frontier.png", "trials.csv"} <= parent_files
    png = out / "search" / name / "frontier.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    return children, by_status


def finished_in_mlflow(db: Path, experiment: str) -> int:
    """Trial runs of ``experiment`` the driver has closed as completed (the store is shared with the
    module's other searches); read-only SQL so the poll never writes the store."""
    if not db.exists():
        return 0
    try:
        with sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=5) as con:
            return con.execute("SELECT count(*) FROM runs r JOIN tags t ON t.run_uuid = r.run_uuid "
                               "JOIN experiments e ON e.experiment_id = r.experiment_id "
                               "WHERE e.name = ? AND t.key = 'status' AND t.value = 'completed' "
                               "AND r.status = 'FINISHED'", (experiment,)).fetchone()[0]
    except sqlite3.OperationalError:  # store still being created
        return 0


def interrupt_after_one_trial(cmd: list[str], out: Path, experiment: str) -> None:
    log_file = out / f"{experiment}.log"  # a file, not a pipe: an unread pipe that fills would stall the search
    proc = subprocess.Popen(cmd, cwd=REPO, stdout=log_file.open("w"), stderr=subprocess.STDOUT, text=True)
    deadline = time.time() + 600
    # interrupt once the driver has recorded a finished trial in MLflow (a trial's saved model appears
    # a moment before the driver hears of it, so waiting on files raced: CI caught it)
    while time.time() < deadline and not finished_in_mlflow(out / "mlflow.db", experiment):
        assert proc.poll() is None, log_file.read_text()[-3000:]
        time.sleep(1)
    proc.send_signal(signal.SIGINT)  # Ctrl+C: Ray Tune saves the experiment and stops
    proc.wait(timeout=300)
    assert proc.returncode == 130, log_file.read_text()[-3000:]
