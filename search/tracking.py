"""MLflow records of a search: one parent run per search, one nested run per trial.

All writes happen in the driver (a Ray Tune callback). A trial's run is found again by its
``trial_id`` tag, so a resumed search continues the runs it had instead of duplicating them, and
every write is idempotent: a run already closed is left as it is, an epoch already logged is not
logged again, a final result is logged once (metrics and tags in one batch, with ``final_logged``).
Status tags: completed, stopped_early, failed, infeasible; ``pareto`` = true / false once the search ends.
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlparse

import requests
from ray.tune import Callback

from m2mdc.config import flatten
from m2mdc.errors import UserError
from m2mdc.objectives import METRICS

from . import faults
from .mlflow_store import open_client, sqlite_path
from .outcome import (ENVIRONMENT_REPORT, MLFLOW_RUN_STATUS, REPORT_INDEX, EnvironmentFailure, environment_failure,
                      trial_status)
from .promotion import FIDELITY, PROMOTED_FROM, fidelity_of, knobs_of

FINAL_LOGGED = "final_logged"  # tag set in the same batch as a trial's final metrics


def default_uri(out_root: Path) -> str:
    return f"sqlite:///{(Path(out_root) / 'mlflow.db').resolve()}"


def open_search_store(uri: str | None, out_root: Path):
    """A client on the store a finished search wrote (``uri``, else OUT/mlflow.db): one line,
    and nothing created, when that store does not exist or cannot be reached."""
    uri = uri or default_uri(out_root)
    path = sqlite_path(uri)
    if path is not None and not path.exists():
        raise UserError(f"no MLflow store at {uri}; pass --mlflow-uri or --out-dir of the search")
    check_reachable(uri)
    return open_client(uri)


def check_reachable(uri: str) -> None:
    """UserError (one line) unless the tracking store at ``uri`` can be used; writes nothing."""
    scheme = urlparse(uri).scheme
    if scheme in ("http", "https"):
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
    path = sqlite_path(uri)
    if path is not None and not path.exists():
        return  # a new store holds no experiment (and opening it would create it)
    message = deleted_experiment(open_client(uri), name)
    if message:
        raise UserError(message)




@dataclass
class RunState:
    """What this process knows of a trial's run: enough to make every write idempotent."""

    run_id: str
    closed: bool  # MLflow status no longer RUNNING
    final: bool  # the final metrics and tags are logged
    last_step: int | None = None  # highest per-epoch step logged (None: not read from the store yet)
    has_params: bool = True


class SearchTracker:
    def __init__(self, uri: str, experiment: str, artifact_root: Path | None = None):
        self.uri = uri
        self.client = open_client(uri)
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
        self.state: dict[str, RunState] = {}  # ray trial id -> its run

    @property
    def runs(self) -> dict[str, str]:
        """Ray trial id -> MLflow run id."""
        return {tid: s.run_id for tid, s in self.state.items()}

    def start_parent(self, name: str, params: dict, tags: dict, run_id: str | None = None) -> str:
        """The search's parent run: ``run_id`` (a resume), else the one a start that died early created
        (a search name has one parent run), else a new one."""
        # mlflow costs ~0.5 s more to import (python -X importtime); analysis/review.py, search/audit.py and
        # search/frontier.py import this module and do not pay it for --help or a bad argument
        from mlflow.entities import Param

        if run_id is None:
            found = self.client.search_runs([self.experiment_id], "tags.role = 'search'", max_results=1)
            run_id = found[0].info.run_id if found else None
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
        """Re-read the trial runs from the store: the store, not this object, is the truth."""
        for r in self.child_runs():
            self.state[r.data.tags["trial_id"]] = RunState(
                r.info.run_id, closed=r.info.status != "RUNNING", final=r.data.tags.get(FINAL_LOGGED) == "true",
                has_params=bool(r.data.params))

    def __getstate__(self):  # Ray pickles callbacks with the experiment: keep only what finds the runs again
        return {"uri": self.uri, "experiment_id": self.experiment_id, "parent_id": self.parent_id}

    def __setstate__(self, state):
        self.__dict__.update(state, state={}, client=open_client(state["uri"]))
        if self.parent_id:
            self.refresh()

    def child_runs(self):
        return self.client.search_runs([self.experiment_id], f"tags.mlflow.parentRunId = '{self.parent_id}' and "
                                       f"tags.role = 'trial'", max_results=10000)

    def run_for(self, trial) -> RunState:
        from mlflow.entities import Param  # mlflow: ~0.5 s to import (see start_parent)

        tid = trial.trial_id
        if tid not in self.state:
            tags = {"mlflow.parentRunId": self.parent_id, "trial_id": tid, "role": "trial", "status": "running",
                    FIDELITY: fidelity_of(trial.config)}
            if PROMOTED_FROM in trial.config:
                tags[PROMOTED_FROM] = trial.config[PROMOTED_FROM]
            run = self.client.create_run(self.experiment_id, run_name=str(trial), tags=tags)
            self.state[tid] = RunState(run.info.run_id, closed=False, final=False, last_step=0, has_params=False)
        st = self.state[tid]
        if not st.has_params:  # new, or created by a search that died before it named the parameters
            params = [Param(k, str(v)) for k, v in flatten(knobs_of(trial.config)).items()]
            self.client.log_batch(st.run_id, params=params)
            st.has_params = True
        return st

    def _last_step(self, st: RunState) -> int:
        if st.last_step is None:  # a run a previous process left open: what it logged stays, once
            history = self.client.get_metric_history(st.run_id, "val_top1")
            st.last_step = max((m.step for m in history), default=0)
        return st.last_step

    def log_result(self, trial, result: dict) -> None:
        """A report's numbers as metrics (per-epoch ones at every epoch, all at the end) and, at the
        end, its text fields as tags, as METRICS declares them; each at most once per run."""
        from mlflow.entities import Metric, RunTag  # mlflow: ~0.5 s to import (see start_parent)

        st = self.run_for(trial)
        if st.closed:
            return
        final = bool(result.get("final"))
        if final and st.final:
            return
        last = self._last_step(st)
        step = int(result.get(REPORT_INDEX, result.get("training_iteration", 0)))
        if not final and step <= last:
            return
        step = max(step, last + 1) if final else step  # the final values are the run's latest
        now = int(time.time() * 1000)
        ms = [Metric(k, float(result[k]), now, step) for k, m in METRICS.items()
              if m.kind == "metric" and (final or m.per_epoch) and isinstance(result.get(k), (int, float))
              and not isinstance(result.get(k), bool)]
        tags = []
        if final:
            tags = [RunTag(k, str(result[k]).lower() if isinstance(result[k], bool) else str(result[k])[:5000])
                    for k, m in METRICS.items() if m.kind == "tag" and result.get(k) is not None]
            tags.append(RunTag(FINAL_LOGGED, "true"))
        if ms or tags:
            self.client.log_batch(st.run_id, metrics=ms, tags=tags)
        st.last_step = step
        if final:
            st.final = True
            faults.point("mlflow.final_logged")

    def end_trial(self, trial, error: bool = False) -> None:
        from mlflow.entities import RunTag  # mlflow: ~0.5 s to import (see start_parent)

        st = self.run_for(trial)
        if st.closed:  # closed before a crash: what the store holds stands
            return
        status = trial_status(trial.last_result, error)
        tags = [RunTag("status", status)]
        if error:
            err = trial.error_file and Path(trial.error_file)
            msg = err.read_text().strip().splitlines()[-1] if err and err.exists() else "trial raised"
            tags.append(RunTag("error", msg[:5000]))
        self.client.log_batch(st.run_id, tags=tags)
        self.client.set_terminated(st.run_id, status=MLFLOW_RUN_STATUS[status])
        st.closed = True
        faults.point("mlflow.closed")

    def finish(self, rows: list[dict], front_ids: set[str], parent_files: list[Path], metrics: dict,
               status: str = "FINISHED") -> None:
        """Tag every trial run pareto=true/false, log the Pareto members' artefacts and MLflow models
        (search/mlflow_models.py) and the parent's table + plot, close the parent run. Every write may be
        repeated by a resume."""
        from mlflow.entities import Metric, RunTag  # mlflow: ~0.5 s to import (see start_parent)

        from .mlflow_models import log_member  # mlflow.pytorch and mlflow.models: only the search's end needs them

        origin = {r["trial_id"]: r.get("origin") for r in rows}
        for i, (tid, st) in enumerate(self.state.items()):
            tags = [RunTag("pareto", "true" if tid in front_ids else "false")]
            if origin.get(tid):  # seeded baseline / prior / given / sampled (SAMPLER #N), from the study
                tags.append(RunTag("origin", origin[tid]))
            self.client.log_batch(st.run_id, tags=tags)
            if i == 0:
                faults.point("report.pareto_tags")
        for r in rows:
            if r["trial_id"] in front_ids and r.get("model_dir") and Path(r["model_dir"]).exists():
                run_id = self.state[r["trial_id"]].run_id
                self.client.log_artifacts(run_id, str(r["model_dir"]), "model")
                faults.point("mlflow.member_artifacts")
                log_member(self.uri, run_id, Path(r["model_dir"]))  # listed in MLflow's Models column
        for f in parent_files:
            self.client.log_artifact(self.parent_id, str(f))
        logged = self.client.get_run(self.parent_id).data.metrics
        now = int(time.time() * 1000)
        self.client.log_batch(self.parent_id, metrics=[Metric(k, float(v), now, 0) for k, v in metrics.items()
                                                       if logged.get(k) != float(v)])
        self.client.set_terminated(self.parent_id, status=status)
        faults.point("search.finished")

    def fail(self, status: str = "FAILED") -> None:
        if self.parent_id:
            self.client.set_terminated(self.parent_id, status=status)


class TrialLogger(Callback):
    """Ray Tune callback: every trial's config, per-epoch metrics and end state into MLflow.

    A store that fails for the machine's sake (a full disk, a lost tracking server) stops the search: the
    failure is raised from the next step or result, where it leaves Ray Tune's loop. Raised from a trial's
    end instead, Ray would mark that trial failed and go on, while Optuna already holds its result."""

    def __init__(self, tracker: SearchTracker):
        self.tracker = tracker
        self.failure: BaseException | None = None

    def _write(self, call, *args, **kwargs) -> None:
        if self.failure is not None:
            return
        try:
            call(*args, **kwargs)
        except Exception as e:  # noqa: BLE001 - only the machine's failures are held back
            if environment_failure(e, self.tracker.uri) is None:
                raise
            self.failure = e

    def _raise_held(self) -> None:
        if self.failure is not None:
            raise EnvironmentFailure(environment_failure(self.failure, self.tracker.uri).split("; then")[0]) \
                from self.failure

    def on_step_begin(self, iteration, trials, **info):
        self._raise_held()

    def on_trial_start(self, iteration, trials, trial, **info):
        self._write(self.tracker.run_for, trial)

    def on_trial_result(self, iteration, trials, trial, result, **info):
        if ENVIRONMENT_REPORT in result:  # raised out of Tuner.fit: the search stops, nothing is recorded
            raise EnvironmentFailure(result[ENVIRONMENT_REPORT])
        self._write(self.tracker.log_result, trial, result)
        self._raise_held()

    def on_trial_complete(self, iteration, trials, trial, **info):
        self._write(self.tracker.end_trial, trial, error=False)

    def on_trial_error(self, iteration, trials, trial, **info):
        self._write(self.tracker.end_trial, trial, error=True)
