"""MLflow records of a search: one parent run per search, one nested run per trial.

All writes happen in the driver (a Ray Tune callback), so a SQLite store never sees concurrent
writers. A trial's run is found again by its ``trial_id`` tag, so a resumed search continues
the runs it had instead of duplicating them. Status tags: completed, stopped_early, failed,
infeasible; ``pareto`` = true / false once the search ends.
"""
from __future__ import annotations

import time
from pathlib import Path
from urllib.parse import urlparse

from ray.tune import Callback

from m2mdc.errors import UserError

from m2mdc.objectives import METRICS

from .outcome import MLFLOW_RUN_STATUS, trial_status



def default_uri(out_root: Path) -> str:
    return f"sqlite:///{(Path(out_root) / 'mlflow.db').resolve()}"


def open_search_store(uri: str | None, out_root: Path):
    """An MlflowClient on the store a finished search wrote (``uri``, else OUT/mlflow.db): one line,
    and nothing created, when that store does not exist or cannot be reached."""
    from mlflow.tracking import MlflowClient

    uri = uri or default_uri(out_root)
    if uri.startswith("sqlite:///") and not Path(uri[len("sqlite:///"):]).exists():
        raise UserError(f"no MLflow store at {uri}; pass --mlflow-uri or --out-dir of the search")
    check_reachable(uri)
    return MlflowClient(tracking_uri=uri)


def check_reachable(uri: str) -> None:
    """UserError (one line) unless the tracking store at ``uri`` can be used; writes nothing."""
    scheme = urlparse(uri).scheme
    if scheme in ("http", "https"):
        import requests

        try:
            requests.get(uri.rstrip("/") + "/health", timeout=5).raise_for_status()
        except Exception as e:  # noqa: BLE001 - any failure is the same user problem
            raise UserError(f"MLflow tracking server {uri} is unreachable ({type(e).__name__}); start it "
                            f"(mlflow server --host 127.0.0.1) or pass another --mlflow-uri") from None
    elif scheme == "sqlite":
        folder = Path(uri[len("sqlite:///"):]).parent
        try:
            folder.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise UserError(f"cannot create the MLflow store folder {folder} ({e.strerror}); pass --mlflow-uri") from None
    elif scheme not in ("", "file"):
        raise UserError(f"--mlflow-uri {uri!r}: use sqlite:///PATH, http(s)://HOST:PORT or a folder")


def deleted_experiment(client, name: str) -> str | None:
    """The one-line refusal for a search name whose MLflow experiment was deleted (MLflow keeps a deleted
    experiment's name until it is purged, and refuses new runs in it), else None."""
    exp = client.get_experiment_by_name(name)
    if exp is None or exp.lifecycle_stage != "deleted":
        return None
    return (f"the MLflow experiment {name!r} (id {exp.experiment_id}) was deleted; restore it (mlflow experiments "
            f"restore --experiment-id {exp.experiment_id}), purge it (mlflow gc --experiment-ids "
            f"{exp.experiment_id}), or pass another --name")


def check_experiment(uri: str, name: str) -> None:
    """UserError (one line) if the search's experiment cannot take runs; reads an existing store only."""
    from mlflow.tracking import MlflowClient

    if urlparse(uri).scheme == "sqlite" and not Path(uri[len("sqlite:///"):]).exists():
        return  # a new store holds no experiment (and opening it would create it)
    message = deleted_experiment(MlflowClient(tracking_uri=uri), name)
    if message:
        raise UserError(message)


def flat_config(config: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in config.items():
        if isinstance(v, dict):
            out.update(flat_config(v, f"{prefix}{k}/"))
        else:
            out[f"{prefix}{k}"] = v
    return out


class SearchTracker:
    def __init__(self, uri: str, experiment: str, artifact_root: Path | None = None):
        from mlflow.tracking import MlflowClient

        self.uri = uri
        self.client = MlflowClient(tracking_uri=uri)
        message = deleted_experiment(self.client, experiment)
        if message:
            raise UserError(message)
        exp = self.client.get_experiment_by_name(experiment)
        if exp is None:
            location = None
            if artifact_root is not None and urlparse(uri).scheme in ("sqlite", "", "file"):
                location = (Path(artifact_root).resolve() / experiment).as_uri()
            self.experiment_id = self.client.create_experiment(experiment, artifact_location=location)
        else:
            self.experiment_id = exp.experiment_id
        self.parent_id: str | None = None
        self.runs: dict[str, str] = {}  # ray trial id -> mlflow run id

    def start_parent(self, name: str, params: dict, tags: dict, run_id: str | None = None) -> str:
        from mlflow.entities import Param

        if run_id:  # resume: the same parent, running again
            self.client.update_run(run_id, status="RUNNING")
            self.parent_id = run_id
            self.refresh()
            return run_id
        run = self.client.create_run(self.experiment_id, run_name=name, tags={"role": "search", **tags})
        self.parent_id = run.info.run_id
        self.client.log_batch(self.parent_id, params=[Param(k, str(v)[:6000]) for k, v in params.items()])
        return self.parent_id

    def refresh(self) -> None:
        """Re-read trial runs from the store (a restored Ray experiment logs through its own pickled
        callback, so the store, not this object, is the truth)."""
        for r in self.child_runs():
            self.runs[r.data.tags["trial_id"]] = r.info.run_id

    def __getstate__(self):  # Ray pickles callbacks with the experiment: keep only what finds the runs again
        return {"uri": self.uri, "experiment_id": self.experiment_id, "parent_id": self.parent_id}

    def __setstate__(self, state):
        from mlflow.tracking import MlflowClient

        self.__dict__.update(state, runs={}, client=MlflowClient(tracking_uri=state["uri"]))
        if self.parent_id:
            self.refresh()

    def child_runs(self):
        return self.client.search_runs([self.experiment_id], f"tags.mlflow.parentRunId = '{self.parent_id}' and "
                                       f"tags.role = 'trial'", max_results=10000)

    def run_for(self, trial) -> str:
        from mlflow.entities import Param

        tid = trial.trial_id
        if tid not in self.runs:
            run = self.client.create_run(self.experiment_id, run_name=str(trial),
                                         tags={"mlflow.parentRunId": self.parent_id, "trial_id": tid,
                                               "role": "trial", "status": "running"})
            self.runs[tid] = run.info.run_id
            cfg = flat_config(trial.config)
            self.client.log_batch(run.info.run_id, params=[Param(k, str(v)) for k, v in cfg.items()])
        return self.runs[tid]

    def log_result(self, trial, result: dict) -> None:
        """A report's numbers as metrics (per-epoch ones at every epoch, all at the end) and, at the
        end, its text fields as tags, as METRICS declares them."""
        from mlflow.entities import Metric

        run_id = self.run_for(trial)
        step = int(result.get("training_iteration", 0))
        now = int(time.time() * 1000)
        final = bool(result.get("final"))
        ms = [Metric(k, float(result[k]), now, step) for k, m in METRICS.items()
              if m.kind == "metric" and (final or m.per_epoch) and isinstance(result.get(k), (int, float))
              and not isinstance(result.get(k), bool)]
        if ms:
            self.client.log_batch(run_id, metrics=ms)
        if final:
            for k, m in METRICS.items():
                if m.kind == "tag" and result.get(k) is not None:
                    v = result[k]
                    self.client.set_tag(run_id, k, str(v).lower() if isinstance(v, bool) else str(v)[:5000])

    def end_trial(self, trial, error: bool = False) -> None:
        run_id = self.run_for(trial)
        status = trial_status(trial.last_result, error)
        self.client.set_tag(run_id, "status", status)
        if error:
            err = trial.error_file and Path(trial.error_file)
            msg = err.read_text().strip().splitlines()[-1] if err and err.exists() else "trial raised"
            self.client.set_tag(run_id, "error", msg[:5000])
        self.client.set_terminated(run_id, status=MLFLOW_RUN_STATUS[status])

    def finish(self, rows: list[dict], front_ids: set[str], parent_files: list[Path], metrics: dict,
               status: str = "FINISHED") -> None:
        """Tag every trial run pareto=true/false, log the Pareto members' models and the parent's
        table + plot, close the parent run."""
        from mlflow.entities import Metric

        for tid, run_id in self.runs.items():
            self.client.set_tag(run_id, "pareto", "true" if tid in front_ids else "false")
        for r in rows:
            if r["trial_id"] in front_ids and r.get("model_dir") and Path(r["model_dir"]).exists():
                self.client.log_artifacts(self.runs[r["trial_id"]], str(r["model_dir"]), "model")
        for f in parent_files:
            self.client.log_artifact(self.parent_id, str(f))
        now = int(time.time() * 1000)
        self.client.log_batch(self.parent_id, metrics=[Metric(k, float(v), now, 0) for k, v in metrics.items()])
        self.client.set_terminated(self.parent_id, status=status)

    def fail(self, status: str = "FAILED") -> None:
        if self.parent_id:
            self.client.set_terminated(self.parent_id, status=status)


class TrialLogger(Callback):
    """Ray Tune callback: every trial's config, per-epoch metrics and end state into MLflow."""

    def __init__(self, tracker: SearchTracker):
        self.tracker = tracker

    def on_trial_start(self, iteration, trials, trial, **info):
        self.tracker.run_for(trial)

    def on_trial_result(self, iteration, trials, trial, result, **info):
        self.tracker.log_result(trial, result)

    def on_trial_complete(self, iteration, trials, trial, **info):
        self.tracker.end_trial(trial, error=False)

    def on_trial_error(self, iteration, trials, trial, **info):
        self.tracker.end_trial(trial, error=True)

