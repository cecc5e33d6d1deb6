"""End-to-end frontier searches on the embedded digits data: real Ray Tune, Optuna (SQLite) and MLflow (SQLite).

One module-wide output folder, so the smoke teacher is trained once and cached.
"""
import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import optuna
import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies

from m2mdc import metrics
from m2mdc.models import get_adapter
from search.pareto import non_dominated
from tests.shrunk import PREFIX as SHRUNK
from tests.shrunk import SHORT_STEPS

REPO = Path(__file__).resolve().parents[1]
LEAN = REPO / "tests" / "data" / "space-lean.yaml"
BUDGET = 0.02
pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def out(tmp_path_factory):
    return tmp_path_factory.mktemp("frontier")


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
    parent_files = {a.path for a in client.list_artifacts(parents[0].info.run_id)}
    assert {"pareto.md", "frontier.png", "trials.csv"} <= parent_files
    png = out / "search" / name / "frontier.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    return children, by_status


def test_smoke_search_end_to_end(out):
    """The acceptance command: default ResNet-18 space (QAT and sparsity included), ASHA on."""
    # an eager ASHA (stop below the 90th percentile from the first recorded trial on) so that some
    # trials are stopped early and the test can check they stay out of the Pareto set
    # (sampled trials only: seeded baselines are never stopped; they have their own test)
    r = frontier(out, "--name", "smoke", "--stop-fraction", "0.9", "--asha-min-trials", "1", "--no-seed-baselines")
    assert "Pareto set" in r.stdout
    _, by_status = check_search(out, "smoke", 4)
    assert "stopped_early" in by_status.values()


def test_failing_trial_is_recorded_and_the_search_goes_on(out, tmp_path):
    space = yaml.safe_load(LEAN.read_text())
    space["params"]["kd_lr"] = {"choices": [1.0e-4, 1.0e30]}  # 1e30: Adam's first step blows the weights up
    space_file = tmp_path / "space.yaml"
    space_file.write_text(yaml.safe_dump(space))
    base = {"prune_ratio": 0.3, "planes_keep": {s: 0.8 for s in ("layer1", "layer2", "layer3", "layer4")},
            "mid_keep": 0.6, "order": "bpm", "signal": "bn", "alpha": 0.1, "beta": 0.1, "sparsity": 0.0}
    points = [{**base, "kd_lr": 1.0e30}, {**base, "kd_lr": 1.0e-4}, {**base, "kd_lr": 1.0e-4, "mid_keep": 0.3}]
    points_file = tmp_path / "points.json"
    points_file.write_text(json.dumps(points))
    frontier(out, "--name", "failing", "--no-seed-baselines", "--space", str(space_file), "--points", str(points_file),
             "--num-samples", "3", "--no-asha")
    children, by_status = check_search(out, "failing", 3)
    assert sorted(by_status.values()) == ["completed", "completed", "failed"]
    failed = next(c for c in children if c.data.tags["status"] == "failed")
    assert failed.info.status == "FAILED" and "non-finite" in failed.data.tags["error"]
    assert failed.data.params["kd_lr"] == "1e+30"


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


def test_resume_after_interrupt_runs_no_trial_twice(out):
    args = ["--space", str(LEAN), "--name", "resumable", "--num-samples", "4", "--no-asha", "--cpus-per-trial", "1"]
    cmd = [sys.executable, "search/frontier.py", "--budget-gmacs", str(BUDGET), "--profile", "smoke", "--dataset",
           "digits", "--out-dir", str(out), *args]
    log_file = out / "resumable.log"  # a file, not a pipe: an unread pipe that fills would stall the search
    proc = subprocess.Popen(cmd, cwd=REPO, stdout=log_file.open("w"), stderr=subprocess.STDOUT, text=True)
    deadline = time.time() + 600
    # interrupt once the driver has recorded a finished trial in MLflow (a trial's saved model appears
    # a moment before the driver hears of it, so waiting on files raced: CI caught it)
    while time.time() < deadline and not finished_in_mlflow(out / "mlflow.db", "resumable"):
        assert proc.poll() is None, log_file.read_text()[-3000:]
        time.sleep(1)
    proc.send_signal(signal.SIGINT)  # Ctrl+C: Ray Tune saves the experiment and stops
    proc.wait(timeout=300)
    assert proc.returncode == 130, log_file.read_text()[-3000:]
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


def _interrupt_after_one_trial(cmd: list[str], out: Path, experiment: str) -> None:
    log_file = out / f"{experiment}.log"  # a file, not a pipe: an unread pipe that fills would stall the search
    proc = subprocess.Popen(cmd, cwd=REPO, stdout=log_file.open("w"), stderr=subprocess.STDOUT, text=True)
    deadline = time.time() + 600
    while time.time() < deadline and not finished_in_mlflow(out / "mlflow.db", experiment):
        assert proc.poll() is None, log_file.read_text()[-3000:]
        time.sleep(1)
    proc.send_signal(signal.SIGINT)  # Ctrl+C: Ray Tune saves the experiment and stops
    proc.wait(timeout=300)
    assert proc.returncode == 130, log_file.read_text()[-3000:]


# A wide configuration, then three that train identically (KD T=1: epoch 1 is pure CE, so beta does not
# act) at 5% of every width, near chance at the first rung whatever the teacher: an uninterrupted search
# with the eager cut stops all three; a resumed one that forgot the first trial's rung value would let
# one of them run on.
ASHA_POINTS = [
    {"prune_ratio": 0.0, "planes_keep": {s: w for s in ("layer1", "layer2", "layer3", "layer4")}, "mid_keep": w,
     "order": "bpm", "signal": "bn", "alpha": 0.1, "beta": b, "kd_lr": 1e-4, "sparsity": 0.0}
    for w, b in [(1.0, 0.1), (0.05, 0.1), (0.05, 0.2), (0.05, 0.3)]]


def test_resume_stops_the_same_trials_as_an_uninterrupted_search(out, tmp_path):
    """Ray does not restore a scheduler on resume (ray#30838); the persisted rungs must make an
    interrupted + resumed search stop exactly the trials an uninterrupted one stops."""
    points = tmp_path / "points.json"
    points.write_text(json.dumps(ASHA_POINTS))
    args = ["--space", str(LEAN), "--no-seed-baselines", "--points", str(points), "--num-samples", "4", "--stop-fraction", "0.9",
            "--asha-min-trials", "1", "--cpus-per-trial", "1"]
    frontier(out, *args, "--name", "asha-whole")
    cmd = [sys.executable, "search/frontier.py", "--budget-gmacs", str(BUDGET), "--profile", "smoke", "--dataset",
           "digits", "--out-dir", str(out), *args, "--name", "asha-resumed"]
    _interrupt_after_one_trial(cmd, out, "asha-resumed")
    frontier(out, *args, "--name", "asha-resumed", "--resume")

    def statuses(name):
        children, by_status = check_search(out, name, 4)
        return {(c.data.params["planes_keep/layer1"], c.data.params["beta"]): by_status[c.data.tags["trial_id"]]
                for c in children}

    whole, resumed = statuses("asha-whole"), statuses("asha-resumed")
    assert "stopped_early" in whole.values(), whole  # the scenario exercises the cut
    assert resumed == whole


@pytest.mark.parametrize("args, words", [
    (["--budget-gmacs", "0"], "--budget-gmacs=0.0 is outside (0.0, inf)"),
    (["--budget-gmacs", "0.00001"], "below the smallest resnet18 this can build (0.00004009 GMACs)"),
    (["--sampler", "grid"], "invalid choice: 'grid'"),
    (["--address", "127.0.0.1:9"], "Ray cluster 127.0.0.1:9 is unreachable"),
    (["--mlflow-uri", "http://127.0.0.1:9"], "MLflow tracking server http://127.0.0.1:9 is unreachable"),
    (["--resume", "--name", "never-ran"], "nothing to resume"),
    (["--points", "/nonexistent.json"], "--points /nonexistent.json is not a readable JSON file"),
    (["--budget-ms", "0"], "--budget-ms=0.0 is outside (0.0, inf)"),
    (["--budget-ms", "1", "--objectives", "acc-gmacs"], "--budget-ms needs latency among the objectives"),
    (["--budget-ms", "1", "--latency-threads", "2", "--cpus-per-trial", "1"], "--latency-threads=2 is outside"),
    # measured: the smallest architecture the space builds, compiled as shipped (~10 s)
    (["--budget-ms", "0.0001", "--cpus-per-trial", "1"], "is below the fastest configuration the space can build"),
])
def test_bad_input_is_one_line_exit_2_and_writes_nothing(tmp_path, args, words, capfd):
    from search.frontier import main

    out = tmp_path / "out"
    err = refused(main, ["--budget-gmacs", str(BUDGET), "--profile", "smoke", "--dataset", "digits", "--out-dir",
                         str(out), "--space", str(LEAN), *args], capfd)
    assert words in err, err[-2000:]
    assert len(err.strip().splitlines()) == 1 if "invalid choice" not in words else True
    assert not (out / "mlflow.db").exists() and not (out / "search").exists()


def test_resume_of_a_latency_search_on_another_cpu_refuses(tmp_path, capfd):
    """Latencies measured on one CPU model say nothing about another: --resume there is refused unless
    --remeasure is given (checked before anything is measured or written)."""
    from search.frontier import main

    out = tmp_path / "out"
    folder = out / "search" / "other-cpu"
    folder.mkdir(parents=True)
    (folder / "search.json").write_text(json.dumps({"identity": {"latency_cpu": "Some Other CPU @ 1.0GHz"}}))
    argv = ["--budget-ms", "5", "--profile", "smoke", "--dataset", "digits", "--out-dir", str(out), "--space",
            str(LEAN), "--name", "other-cpu", "--resume"]
    err = refused(main, argv, capfd)
    assert len(err.strip().splitlines()) == 1, err[-2000:]
    assert "measured on 'Some Other CPU @ 1.0GHz'" in err and "--remeasure" in err
    assert sorted(p.name for p in out.rglob("*")) == ["other-cpu", "search", "search.json"]
    err = refused(main, [*argv, "--remeasure"], capfd)  # past the CPU check, to the next one
    assert "with different settings" in err and "latency_cpu" not in err, err


def test_existing_search_needs_resume_or_a_new_name(out, capfd):
    from search.frontier import main

    err = refused(main, ["--budget-gmacs", str(BUDGET), "--profile", "smoke", "--dataset", "digits", "--out-dir",
                         str(out), "--name", "smoke"], capfd)
    assert "already exists" in err


def test_review_reads_the_search_back_from_mlflow(out):
    """analysis/review.py: Pareto table = independent non-dominated set over the MLflow runs; PNGs; HV monotone."""
    from analysis import review

    client, _, children = mlflow_runs(out, "smoke")
    search = review.load_search(client, "smoke")
    _, front = review.pareto_table(search)
    done = [{"id": c.data.tags["trial_id"], **c.data.metrics} for c in children
            if c.data.tags["status"] == "completed"]
    independent = {d["id"] for d in done if not any(
        e["val_top1"] >= d["val_top1"] and e["gmacs"] <= d["gmacs"] and
        (e["val_top1"] > d["val_top1"] or e["gmacs"] < d["gmacs"]) for e in done)}
    assert {t["trial_id"] for t in front} == independent
    curve = review.hypervolume_curve(search)
    assert len(curve) == len(children) and all(b >= a for a, b in zip(curve, curve[1:])) and curve[-1] > 0
    r = subprocess.run([sys.executable, "analysis/review.py", "--experiment", "smoke", "--out-dir", str(out)],
                       cwd=REPO, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    for png in ("frontier.png", "hypervolume.png"):
        assert (out / "review" / "smoke" / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    parent = [p for p in mlflow_runs(out, "smoke")[1]][0]
    assert {"review/frontier.png", "review/hypervolume.png"} <= {
        a.path for a in client.list_artifacts(parent.info.run_id, "review")}
    bad = subprocess.run([sys.executable, "analysis/review.py", "--experiment", "nope", "--out-dir", str(out)],
                         cwd=REPO, capture_output=True, text=True, timeout=300)
    assert bad.returncode == 2 and "no MLflow experiment named 'nope'" in bad.stderr


def test_export_a_pareto_member_to_onnx(out):
    """analysis/export.py: an FP32 Pareto member's ONNX file agrees with PyTorch in onnxruntime to 1e-4."""
    import numpy as np
    import onnxruntime as ort

    from m2mdc.results import load_result

    client, _, children = mlflow_runs(out, "failing")  # the lean space: FP32 models
    member = next(c for c in children if c.data.tags.get("pareto") == "true")
    dest = out / "exported"
    r = subprocess.run([sys.executable, "analysis/export.py", "--run-id", member.info.run_id, "--format", "onnx",
                        "--out-dir", str(out), "--dest", str(dest)], cwd=REPO, capture_output=True, text=True,
                       timeout=600)
    assert r.returncode == 0, r.stderr[-2000:]
    model, _ = load_result(Path(client.download_artifacts(member.info.run_id, "model", str(out / "dl"))))
    x = np.random.default_rng(1).standard_normal((4, 3, 32, 32)).astype(np.float32)
    sess = ort.InferenceSession(str(dest / "model.onnx"), providers=["CPUExecutionProvider"])
    import torch

    with torch.no_grad():
        ref = model(torch.from_numpy(x)).numpy()
    assert np.abs(sess.run(None, {sess.get_inputs()[0].name: x})[0] - ref).max() <= 1e-4


def test_finalize_refuses_another_teacher_than_the_searchs(out, tmp_path):
    """Re-training a search's members from another teacher (or on other data) is refused before anything
    is trained: one line naming the search's own flags, exit 2, nothing written."""
    r = subprocess.run([sys.executable, "analysis/finalize.py", "--experiment", "failing", "--k", "1", "--seeds", "0",
                        "--dataset", "digits", "--epochs", "3", "--out-dir", str(out)], cwd=REPO, capture_output=True,
                       text=True, timeout=300, env={**os.environ, "M2MDC_RESULTS_DIR": str(tmp_path / "results")})
    lines = r.stderr.strip().splitlines()
    assert r.returncode == 2 and len(lines) == 1 and "--epochs 5" in lines[0], r.stderr
    assert not (tmp_path / "results").exists() and not (out / "finalize" / "failing").exists()


def test_finalize_logs_finalized_children_under_the_parent(out, tmp_path):
    results = tmp_path / "results"
    r = subprocess.run([*SHRUNK, "analysis/finalize.py", "--experiment", "failing", "--k", "1", "--seeds", "0",
                        "--budgets", "short", "--dataset", "digits", "--epochs", "5", "--out-dir", str(out)], cwd=REPO,
                       capture_output=True, text=True, timeout=900, env={**os.environ, "M2MDC_RESULTS_DIR": str(results)})
    assert r.returncode == 0, r.stderr[-3000:]
    client, parents, children = mlflow_runs(out, "failing")
    exp = client.get_experiment_by_name("failing")
    finalized = [x for x in client.search_runs([exp.experiment_id]) if x.data.tags.get("role") == "finalized"]
    assert len(finalized) == 1 and finalized[0].data.tags["finalized"] == "true"
    assert finalized[0].data.tags["mlflow.parentRunId"] == parents[0].info.run_id
    member = next(c for c in children if c.data.tags["trial_id"] == finalized[0].data.tags["trial_id"])
    assert member.data.tags["pareto"] == "true"
    # A fresh clone has results/ but not the MLflow store the search ran in: the saved record stands in
    saved = json.loads((results / "finalize" / "failing" / "search.json").read_text())
    assert member.info.run_id in {m["run_id"] for m in saved["front"]} and saved["params"]["dataset"] == "digits"
    empty = f"sqlite:///{tmp_path / 'elsewhere.db'}"
    again = subprocess.run([*SHRUNK, "analysis/finalize.py", "--experiment", "failing", "--k", "1", "--seeds",
                            "0", "--budgets", "short", "--dataset", "digits", "--epochs", "5", "--out-dir", str(out),
                            "--mlflow-uri", empty], cwd=REPO, capture_output=True, text=True, timeout=900,
                           env={**os.environ, "M2MDC_RESULTS_DIR": str(results)})
    assert again.returncode == 0, again.stderr[-3000:]
    assert "search.json (no MLflow store here; finalized runs are saved under results/" in again.stdout
    table = [line for line in r.stdout.splitlines() if line.startswith("| ")]
    assert table and table == [line for line in again.stdout.splitlines() if line.startswith("| ")]
    assert len([x for x in client.search_runs([exp.experiment_id]) if x.data.tags.get("role") == "finalized"]) == 1
    # ... and a wrong teacher is still refused from the record, as from MLflow
    wrong = subprocess.run([sys.executable, "analysis/finalize.py", "--experiment", "failing", "--k", "1", "--seeds",
                            "0", "--dataset", "digits", "--epochs", "3", "--out-dir", str(out), "--mlflow-uri", empty],
                           cwd=REPO, capture_output=True, text=True, timeout=300,
                           env={**os.environ, "M2MDC_RESULTS_DIR": str(results)})
    lines = wrong.stderr.strip().splitlines()
    assert wrong.returncode == 2 and len(lines) == 1 and "--epochs 5" in lines[0], wrong.stderr
    saved = json.loads(next((results / "finalize" / "failing").glob("short-seed0-*.json")).read_text())
    assert finalized[0].data.metrics["test_top1"] == pytest.approx(saved["test_top1"])
    assert saved["kd_epochs_trained"] == 8  # the short budget's total, spread over the member's repairs
    assert saved["kd_settings"]["steps_per_epoch"] == SHORT_STEPS  # of batches cut by tests/shrunk.py
    from analysis import review  # finalized children do not count as trials of the search

    assert len(review.load_search(client, "failing").trials) == 3


def test_baselines_train_every_row_with_the_same_settings(out, tmp_path):
    """analysis/baselines.py: equal KD settings and epochs are asserted on what each row's training was
    handed (the plans it ran), not on a label; the tuned row keeps the search's own KD knobs. Latency is
    timed in the second call only (one row and the teacher: the same code for every row, and ~14 inductor
    compiles less in CI)."""
    pytest.importorskip("torch_pruning")
    results = tmp_path / "results"
    r = subprocess.run([*SHRUNK, "analysis/baselines.py", "--budget-gmacs", str(BUDGET), "--dataset", "digits",
                        "--epochs", "5", "--experiment", "failing", "--k", "1", "--seeds", "0", "--budgets", "short",
                        "--only", "uniform,global,Taylor,M2M-DC,search", "--no-latency", "--out-dir", str(out)],
                       cwd=REPO, capture_output=True,
                       text=True, timeout=1500, env={**os.environ, "M2MDC_RESULTS_DIR": str(results)})
    assert r.returncode == 0, r.stderr[-3000:]
    folder = out / "baselines" / "resnet18-digits-b0.02"
    data = json.loads((folder / "baselines.json").read_text())
    rows = data["rows"]
    assert any(k.startswith("Torch-Pruning global") for k in rows) and any(k.startswith("uniform") for k in rows)
    taylor = next(rs for k, rs in rows.items() if "Taylor" in k)
    assert taylor[0]["run"]["tp_importance"] == "group_taylor" and taylor[0]["gmacs"] <= BUDGET
    fixed = [res for label, rs in rows.items() if "own sampled KD" not in label for res in rs]
    tuned = [res for label, rs in rows.items() if "own sampled KD" in label for res in rs]
    assert len(fixed) >= 4 and tuned
    assert all(res["kd_settings"] == fixed[0]["kd_settings"] for res in fixed)  # what training was handed
    assert fixed[0]["kd_settings"]["kl_weight"] == 1.0 and fixed[0]["kd_settings"]["steps_per_epoch"] == SHORT_STEPS
    assert {res["epochs_trained"] for res in fixed + tuned} == {8}
    assert all(res["gmacs"] <= BUDGET for res in fixed + tuned)
    client, _, children = mlflow_runs(out, "failing")
    tid = next(res["row"].split()[-1] for res in fixed if res["row"].startswith("search "))  # the finalized member
    trial = next(c for c in children if c.data.tags["trial_id"] == tid)
    assert tuned[0]["kd_settings"]["lr"] == pytest.approx(float(trial.data.params["kd_lr"]))  # its own sampled lr
    assert data["latency"] == {} and (folder / "baselines.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert not (folder / "baselines-latency.png").exists()  # --no-latency draws no empty latency plot
    assert sorted(p.name for p in results.glob("baselines/*")) == ["resnet18-digits-b0.02"]
    # A fresh machine has the committed results but not the models under outputs/: a row is reused as
    # saved, and its model is trained again only to be timed, which the table says
    import shutil

    uniform = rows[next(k for k in rows if k.startswith("uniform"))][0]
    saved = results / "baselines" / "resnet18-digits-b0.02" / f"short-seed0-{uniform['key']}.json"
    before = saved.read_bytes()
    shutil.rmtree(folder / "models" / saved.stem)
    again = subprocess.run([*SHRUNK, "analysis/baselines.py", "--budget-gmacs", str(BUDGET), "--dataset",
                            "digits", "--epochs", "5", "--seeds", "0", "--budgets", "short", "--only", "uniform",
                            "--out-dir", str(out)], cwd=REPO, capture_output=True, text=True, timeout=900,
                           env={**os.environ, "M2MDC_RESULTS_DIR": str(results)})
    assert again.returncode == 0, again.stderr[-3000:]
    redo = json.loads((folder / "baselines.json").read_text())
    label = next(k for k in redo["rows"] if k.startswith("uniform"))
    assert redo["rows"][label][0]["test_top1"] == uniform["test_top1"] and saved.read_bytes() == before
    assert redo["latency"][label]["model_retrained"] and (folder / "models" / saved.stem).exists()
    assert set(redo["latency"]) == {"teacher", label}
    assert all(lat["backend"] in ("inductor", "eager-fallback") and lat["bs1_ms"] > 0 and lat["bs64_images_per_s"] > 0
               for lat in redo["latency"].values())
    for png in ("baselines.png", "baselines-latency.png", "baselines-throughput.png"):
        assert (folder / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert f"trained again on this machine to be timed (saved results stay the reported ones): {label}" in again.stdout


def test_latency_objective_front_and_hypervolume_over_three_objectives(out):
    """--budget-ms (latency becomes an objective): every trial records its latency predicted before
    training (within the budget) and measured after, at --latency-batch, with the backend; the parent
    run says which machine; review computes the front and the hypervolume over all three objectives
    (one plot per objective against accuracy). The budget is generous here: the projection itself is
    tested with injected timings (test_latency_budget.py) and timed in benchmarks/latency_budget.py."""
    from analysis import review
    from m2mdc.arch_latency import cpu_model

    frontier(out, "--name", "latency", "--space", str(LEAN), "--num-samples", "2", "--no-asha",
             "--budget-ms", "1000", "--latency-batch", "8")
    client, parents, children = mlflow_runs(out, "latency")
    assert parents[0].data.tags["objectives"] == "val_top1,gmacs,latency_ms"
    assert parents[0].data.metrics["teacher_latency_ms"] > 0
    assert cpu_model() in parents[0].data.tags["latency_machine"] and "batch 8" in parents[0].data.tags[
        "latency_machine"]
    done = [c for c in children if c.data.tags["status"] == "completed"]
    assert done and all(c.data.metrics["latency_ms"] > 0 and c.data.tags["latency_backend"] in
                        ("inductor", "eager-fallback") for c in done)
    for c in done:
        m = c.data.metrics
        assert m["latency_batch"] == 8 and 0 < m["predicted_latency_ms"] <= 1000 and m["latency_measurements"] >= 1
    assert list((out / "latency").rglob("*.json"))  # measurements cached for the next search on this machine
    search = review.load_search(client, "latency")
    assert search.objectives == ("val_top1", "gmacs", "latency_ms")
    _, front = review.pareto_table(search)
    rows = [{"id": c.data.tags["trial_id"], **c.data.metrics} for c in done]
    assert {t["trial_id"] for t in front} == {r["id"] for r in non_dominated(rows, ("val_top1", "gmacs", "latency_ms"))}
    refs = search.references
    assert refs == {"val_top1": 0.0, "gmacs": BUDGET, "latency_ms": parents[0].data.metrics["teacher_latency_ms"]}
    import numpy as np
    pts = [[-t["val_top1"], t["gmacs"] / refs["gmacs"], t["latency_ms"] / refs["latency_ms"]] for t in front
           if t["latency_ms"] < refs["latency_ms"]]
    import moocore
    want = float(moocore.hypervolume(np.array(pts), ref=np.array([0.0, 1.0, 1.0]))) if pts else 0.0
    assert review.hypervolume_curve(search)[-1] == pytest.approx(want)
    r = subprocess.run([sys.executable, "analysis/review.py", "--experiment", "latency", "--out-dir", str(out)],
                       cwd=REPO, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    assert "objectives val_top1, gmacs, latency_ms" in r.stdout
    assert (out / "review" / "latency" / "frontier-latency_ms.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_latency_budget_search_is_not_retrained_as_a_gmacs_one(out, capfd):
    """Members of a --budget-ms search were width-fitted to latencies measured during the search; the
    tools that re-train members from their configurations refuse rather than train other widths."""
    from analysis.finalize import main

    err = refused(main, ["--experiment", "latency", "--dataset", "digits", "--epochs", "5", "--out-dir", str(out)],
                  capfd)
    assert len(err.strip().splitlines()) == 1, err[-2000:]
    assert "ran under a latency budget (--budget-ms 1000.0)" in err


def test_seeded_baselines_are_the_baselines_or_skipped_with_the_reason():
    """A seeded baseline is trained as itself or not at all: a space that cannot express it (a knob
    outside its choices, a fixed schedule) skips it with a line naming the value."""
    from m2mdc.compiler import BASELINES
    from search.frontier import seeded_points
    from spaces import load_space

    full, skipped = seeded_points(load_space("resnet18", arch="resnet18"))
    assert list(full) == list(BASELINES) and skipped == []
    assert full["Torch-Pruning-like global"]["ranking"] == "global"
    assert full["Torch-Pruning-like global"]["signal"] == "group_l1"
    lean, skipped = seeded_points(load_space(str(LEAN), arch="resnet18"))
    assert list(lean) == ["M2M-DC at the budget"] and len(skipped) == 3
    assert any("signal='group_l1'" in s and "Torch-Pruning-like local" in s for s in skipped)
    # under a latency budget the same pruning shipped as INT8 is a baseline too, where the space has QAT
    timed, _ = seeded_points(load_space("resnet18", arch="resnet18"), latency=True)
    assert list(timed) == [*BASELINES, "Torch-Pruning-like local + INT8 QAT"]
    assert timed["Torch-Pruning-like local + INT8 QAT"]["qat"] is True
    lean, skipped = seeded_points(load_space(str(LEAN), arch="resnet18"), latency=True)
    assert any("INT8 QAT" in s and "qat=True" in s for s in skipped)


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
    assert {s["kd_settings"]["steps_per_epoch"] for s in saved} == {SHORT_STEPS, None}  # short (shrunk), long
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
