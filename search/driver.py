"""Run a validated search request: Ray (private local instance or a cluster), the shared setup built
once, Ray Tune with the Pareto-safe Optuna searcher and the collapse-only ASHA cut, MLflow records,
and the report at the end (search/report.py)."""
from __future__ import annotations

import argparse
import functools
import logging
import os
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import optuna
import ray
from ray import tune
from ray.tune import CLIReporter
from ray.tune.schedulers import FIFOScheduler

from m2mdc.arch_latency import QUIET_ROUNDS, machine
from m2mdc.compiler import ChannelScores
from m2mdc.context import prepare_context
from m2mdc.data import Dataset
from m2mdc.device import pick_device
from m2mdc.errors import UserError
from m2mdc.io import write_json
from m2mdc.objectives import directions
from m2mdc.train import pct
from m2mdc.trial_budget import channel_signals, cohort, max_reports

from .early_stop import CollapseStoppingASHA
from .faults import mark_search_group
from .mlflow_store import open_client, sqlite_path
from .optuna_search import ParetoSafeOptunaSearch, StudyOrderGenerator, make_sampler, origins
from .outcome import REPORT_INDEX
from .outcome import environment_failure as outcome_failure
from .promotion import (PROMOTE_BY, PromotionGenerator, PromotionSearcher, band_of_share, highest_fidelity, promotions,
                        source_of)
from .console import TrialConsole
from .ray_cluster import start_or_join
from .reconcile import reconcile
from .report import collect_rows, counts, front_of, pareto_markdown, write_outputs
from .tracking import SearchTracker, TrialLogger
from .trainable import SearchSetup, SharedSetup, compression_trial


SEARCH_RECORD = "search.json"  # in a search's folder once it has started: identity and parent run, what --resume reads


def search_folder(root: Path, name: str) -> Path:
    """Where the search NAME keeps its Ray Tune state, Optuna study and record under the output root."""
    return (root / "search" / name).resolve()


@dataclass(frozen=True)
class Profile:
    """How much compute one search spends (the sampled space is the same in every profile)."""

    num_samples: int
    kd_epochs: int  # T of every KD repair
    steps_per_epoch: int | None  # None = full passes over the training split
    probe_samples: int
    teacher_epochs: int | None  # None = the teacher recipe's default
    n_startup: int  # random trials before the model-based sampler takes over
    promote: int = 1  # trials per cost band trained again at the long budget (search/promotion.py)
    long_steps: int | None = None  # batches per epoch of the long budget (None: full passes; smoke: a few)


PROFILES = {
    "smoke": Profile(num_samples=4, kd_epochs=1, steps_per_epoch=3, probe_samples=500, teacher_epochs=5, n_startup=2,
                     promote=0, long_steps=3),
    "quick": Profile(num_samples=24, kd_epochs=2, steps_per_epoch=40, probe_samples=5000,
                     teacher_epochs=None, n_startup=4),
    "paper": Profile(num_samples=64, kd_epochs=5, steps_per_epoch=None, probe_samples=5000,
                     teacher_epochs=None, n_startup=10),
}


@dataclass
class SearchRequest:
    """Everything a search needs, checked by the CLI before anything starts or is written."""

    args: argparse.Namespace  # as given: logged on the parent run
    name: str
    root: Path  # output root
    exp_dir: Path  # OUT/search/NAME
    space: object  # spaces.Space
    points: list[dict]
    ds: Dataset
    teacher_recipe: object  # m2mdc.teacher.TeacherRecipe
    profile: Profile
    objectives: tuple[str, ...]
    num_samples: int
    training: dict  # the KD budget every repair gets: epochs, steps_per_epoch
    cpus: int
    mlflow_uri: str
    identity: dict  # what --resume must match
    resume_meta: dict | None  # search.json of the search being resumed
    seeded: int = 0  # the first points are seeded baselines: never stopped early
    point_origins: tuple[str, ...] | list[str] = ()  # origin label of each point (seeded baseline, prior, given)


def warm_store(uri: str, experiment: str) -> None:
    """Import MLflow and open an existing store while Ray starts. A SQLite store that does not exist
    yet is not opened (opening creates it), so a search that then fails to start writes nothing."""
    path = sqlite_path(uri)
    if path is not None and not path.exists():
        # imported here on purpose: warm_store runs in a thread while Ray starts (run_search), and MLflow costs
        # ~1.4 s to import that search/frontier.py's --help and bad-input checks do not pay
        import mlflow.store.tracking.sqlalchemy_store  # noqa: F401 - the import is most of the cost
        return
    open_client(uri).get_experiment_by_name(experiment)


def build_setup(req: SearchRequest, device):
    """The shared inputs, built once: teacher (cached), teacher outputs, MI block scores, channel
    scores (allocator), and the teacher's shipped latency when latency is an objective."""
    a, prof = req.args, req.profile
    ctx = prepare_context(a.arch, req.ds, req.teacher_recipe, device, a.out_dir, quiet=a.quiet)
    t = ctx.teacher_record
    print(f"[teacher] val top-1 {t['val_top1']:.2f}%  test top-1 {pct(t['test_top1'])}  GMACs {t['gmacs']:.4f}",
          flush=True)
    ctx.get_teacher_outputs()
    ctx.get_block_scores(10, prof.probe_samples)
    ch_scores = ChannelScores(ctx, prof.probe_samples)
    values = {name: p.choices or ((p.fixed,) if not p.sampled else ()) for name, p in req.space.params.items()}
    for signal in channel_signals(req.space.mode, values):  # computed once here, shipped to every trial
        ch_scores[signal]
    teacher = {k: t.get(k) for k in ("val_top1", "test_top1", "params", "gmacs", "size_bytes")}
    if "latency_ms" in req.objectives:
        # m2mdc.latency (torch._inductor, torchao) costs ~1.2 s to import (python -X importtime): only latency searches
        from m2mdc.latency import format_ms, shipped_latency

        lat = shipped_latency(ctx.teacher, req.ds.resolution, int8=False, batch=a.latency_batch,
                              threads=a.latency_threads, rounds=QUIET_ROUNDS)
        teacher.update(latency_ms=lat["ms"], latency_backend=lat["backend"])
        print(f"[teacher] latency {format_ms(lat)} at batch {a.latency_batch} ({lat['backend']}, "
              f"{a.latency_threads} threads)", flush=True)
    setup = SearchSetup(ctx, a.budget_gmacs, req.space.mode, req.training, probe_samples=prof.probe_samples,
                        channel_scores=dict(ch_scores), measure_latency="latency_ms" in req.objectives,
                        threads=max(1, int(req.cpus)), use_gpu=a.gpus_per_trial > 0, quiet=a.quiet,
                        trials_dir=str(req.exp_dir), budget_ms=a.budget_ms, latency_batch=a.latency_batch,
                        latency_threads=a.latency_threads, latency_cache=str((req.root / "latency").resolve()),
                        project=a.projection, long_steps=prof.long_steps)
    return setup, teacher


def log_search_inputs(tracker, parent: str, space, teacher: dict) -> None:
    """The parent run's inputs: the space file and the teacher's numbers."""
    from mlflow.entities import Metric  # mlflow: ~0.5 s more to import, not paid by search/frontier.py's --help

    if Path(space.source).exists():
        tracker.client.log_artifact(parent, space.source)
    now = int(time.time() * 1000)
    tracker.client.log_batch(parent, metrics=[Metric(f"teacher_{k}", float(v), now, 0) for k, v in teacher.items()
                                              if isinstance(v, (int, float))])


def latency_tags(a) -> dict:
    """What the search's latency figures refer to: CPU model, threads, batch, torch version, backend."""
    if getattr(a, "budget_ms", None) is None and "latency" not in (a.objectives or ""):
        return {}
    m = machine()
    return {"latency_machine": f"{m['cpu']} | {a.latency_threads} threads of {m['cpus']} | batch {a.latency_batch} "
                               f"| torch {m['torch']} | inductor-compiled (FP32, or INT8 PT2E where QAT)"}


def trial_resources(req: SearchRequest) -> dict:
    """What Ray reserves for each trial: its CPUs and its GPU share (1 by default where CUDA is)."""
    return {"cpu": req.cpus, "gpu": req.args.gpus_per_trial}


def run_search(req: SearchRequest) -> int:
    a, exp_dir, name = req.args, req.exp_dir, req.name
    device = pick_device(a.device)
    steps = req.training.get("steps_per_epoch")
    latency = f" and {a.budget_ms:g} ms at batch {a.latency_batch}" if a.budget_ms is not None else ""
    print(f"{req.ds.describe()}; device {device}; space {req.space.source} ({req.space.mode}); budget "
          f"{a.budget_gmacs:g} GMACs{latency}; objectives {', '.join(req.objectives)}; profile {a.profile}: {req.num_samples} "
          f"trials, KD T={req.training['epochs']}{f', {steps} batches/epoch' if steps else ''}", flush=True)
    os.environ.setdefault("TUNE_GLOBAL_CHECKPOINT_S", "5")
    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")
    # Per-epoch reports carry only what ASHA reads; the objectives arrive with the final report, the
    # only one the searcher tells Optuna (search/optuna_search.py). Ray would reject the epoch rows.
    os.environ["TUNE_DISABLE_STRICT_METRIC_CHECKING"] = "1"
    mark_search_group()
    # Ray first: a cluster that cannot be joined fails before any teacher training, and before anything is
    # written. Its start is mostly waiting for daemons: import MLflow and open an existing store meanwhile
    # (~2 s of driver CPU; a store that does not exist yet is not created, so a failed start leaves nothing).
    with ThreadPoolExecutor(1) as pool:
        store_ready = pool.submit(warm_store, req.mlflow_uri, name)
        print(start_or_join(a.address, os.cpu_count() or 1, None, a.dashboard), flush=True)
        store_ready.result()
    tracker = None
    status = "FAILED"
    try:
        # From here on the search is resumable: its record names it before any store is written.
        record = {"identity": req.identity, "parent_run_id": (req.resume_meta or {}).get("parent_run_id"),
                  "mlflow_uri": req.mlflow_uri}
        write_json(exp_dir / SEARCH_RECORD, record)
        setup, teacher = build_setup(req, device)
        tracker, parent = open_tracking(req, teacher)
        write_json(exp_dir / SEARCH_RECORD, {**record, "parent_run_id": parent})
        results = tune_trials(req, setup, tracker)
        ended = results.num_terminated + results.num_errors
        if ended < req.num_samples:
            status = "KILLED"
            print(f"search interrupted with {ended} of {req.num_samples} trials finished; "
                  f"continue with the same command plus --resume", file=sys.stderr)
            return 130
        rows = collect_rows(results, tracker, exp_dir)
        promoted = promote_trials(req, setup, tracker, rows)
        if promoted is not None:
            ended = promoted.num_terminated + promoted.num_errors
            if ended < len(promoted):
                status = "KILLED"
                print(f"search interrupted with {ended} of {len(promoted)} promoted trials finished; "
                      f"continue with the same command plus --resume", file=sys.stderr)
                return 130
            rows += collect_rows(promoted, tracker, exp_dir)
        report_search(req, rows, tracker, teacher)
        status = "FINISHED"
        return 0
    except Exception as e:  # noqa: BLE001 - only a failing environment is turned into one line
        message = environment_failure(e, req)
        if message is None:
            raise
        raise UserError(message) from None
    finally:
        if status != "FINISHED" and tracker is not None:
            try:
                tracker.fail(status)
            except Exception:  # noqa: BLE001 - the store may be what failed; resume closes it
                pass
        ray.shutdown()


def open_tracking(req: SearchRequest, teacher: dict):
    """The MLflow tracker and the search's parent run (the one it had, on resume)."""
    a, space = req.args, req.space
    tracker = SearchTracker(req.mlflow_uri, req.name, req.root / "mlartifacts")
    # a resume's command line differs; --verbose only changes what the console shows
    params = {k: v for k, v in vars(a).items() if k not in ("resume", "command", "verbose")}
    parent = tracker.start_parent(req.name, {**params, "space": space.source, "space_digest": space.digest},
                                  {"budget_gmacs": str(a.budget_gmacs), "arch": a.arch, "dataset": req.ds.name,
                                   "objectives": ",".join(req.objectives), "command": a.command[:5000],
                                   **latency_tags(a)},
                                  run_id=req.resume_meta and req.resume_meta.get("parent_run_id"))
    if req.resume_meta is None:
        log_search_inputs(tracker, parent, space, teacher)
    return tracker, parent


def trial_runner(req: SearchRequest, setup, tracker, experiment: str, storage: Path, total: int, stage: str):
    """The trainable and run config every Ray Tune experiment of the search shares: a line per trial start
    and end and a progress bar (search/console.py); Ray's status table only with --verbose."""
    trainable = tune.with_resources(tune.with_parameters(compression_trial, shared=SharedSetup(setup)),
                                    trial_resources(req))
    verbose = req.args.verbose
    reporter = CLIReporter(metric_columns={"val_top1": "val top-1", "gmacs": "GMACs", "epochs_done": "epochs"},
                           max_report_frequency=60, sort_by_metric=False) if verbose else None
    run_config = tune.RunConfig(name=experiment, storage_path=str(storage),
                                callbacks=[TrialLogger(tracker), TrialConsole(total, stage)],
                                failure_config=tune.FailureConfig(max_failures=0, fail_fast=False),
                                verbose=1 if verbose else 0, progress_reporter=reporter)
    return trainable, run_config


def promote_trials(req: SearchRequest, setup, tracker, rows: list[dict]):
    """The promotion rung (search/promotion.py): the best of each cost band trained again at the long
    budget, as a second Ray Tune experiment of the search (OUT/search/NAME/promotion), FIFO, every trial
    under its fixed id. None when nothing is promoted."""
    a = req.args
    if a.promote == 0:
        return None
    study = optuna.load_study(study_name=req.name, storage=f"sqlite:///{req.exp_dir / 'optuna.db'}")
    chosen = promotions(req.exp_dir, rows, a.budget_gmacs, a.promote, a.bands, origins(study),
                        PROMOTE_BY[a.promote_by])
    if not chosen:
        print("[promotion] no completed trial to promote", flush=True)
        return None
    print(f"[promotion] {len(chosen)} trial(s) to the long budget (the {a.promote} best by {a.promote_by} val of "
          f"each of {a.bands} cost bands): {', '.join(c['source'] for c in chosen)}", flush=True)
    trainable, run_config = trial_runner(req, setup, tracker, "promotion", req.exp_dir, len(chosen), "promotion")
    searcher = PromotionSearcher(chosen)
    generator = PromotionGenerator(searcher, a.max_concurrent)
    tuner = tune.Tuner(trainable, run_config=run_config,
                       tune_config=tune.TuneConfig(search_alg=generator, scheduler=FIFOScheduler(),
                                                   num_samples=len(chosen), reuse_actors=True,
                                                   trial_dirname_creator=lambda tr: f"trial_{tr.trial_id}"))
    return tuner.fit()


def tune_trials(req: SearchRequest, setup, tracker):
    """Run the trials with Ray Tune. On resume, the stores are reconciled first and Ray's trial table is
    rebuilt from the study (search/reconcile.py); Ray's own experiment checkpoint is not read."""
    a, exp_dir, name, space = req.args, req.exp_dir, req.name, req.space
    storage = optuna.storages.RDBStorage(f"sqlite:///{exp_dir / 'optuna.db'}")
    asha_state = None if a.no_asha else exp_dir / "asha-rungs.json"
    if req.resume_meta is not None and (exp_dir / "optuna.db").exists():
        try:
            study = optuna.load_study(study_name=name, storage=storage)
        except KeyError:  # the search died before its study was created
            study = None
        if study is not None:
            ledger = reconcile(exp_dir, study, tracker, req.objectives, a.budget_gmacs, asha_state)
            print(f"[resume] {len(study.trials)} trials in the study, {len(ledger)} of them ended; re-creating them "
                  f"in order (ended ones report their recorded result without training)", flush=True)
    quiet_environment_failures(req)
    trainable, run_config = trial_runner(req, setup, tracker, name, exp_dir.parent, req.num_samples, "trial")
    searcher = ParetoSafeOptunaSearch(
        space=space.param_space(), metric=list(req.objectives), mode=directions(req.objectives),
        sampler=make_sampler(a.sampler, a.search_seed, req.profile.n_startup), storage=storage,
        study_name=name, points_to_evaluate=req.points or None, budget_gmacs=a.budget_gmacs,
        sampler_name=a.sampler, point_origins=req.point_origins)
    reports = max_reports(setup.target(), space.mode, a.budget_gmacs, req.training)
    scheduler = FIFOScheduler() if a.no_asha else CollapseStoppingASHA(
        time_attr=REPORT_INDEX, metric="val_top1", mode="max", max_t=reports,
        grace_period=min(req.training["epochs"], reports), reduction_factor=3, stop_fraction=a.stop_fraction,
        min_recorded=a.asha_min_trials, state_path=asha_state, exempt_first=req.seeded,
        cohort=functools.partial(cohort, band_of_share=functools.partial(band_of_share, bands=a.bands)))
    tuner = tune.Tuner(trainable, run_config=run_config,
                       tune_config=tune.TuneConfig(search_alg=StudyOrderGenerator(searcher, a.max_concurrent),
                                                   scheduler=scheduler, num_samples=req.num_samples,
                                                   reuse_actors=True,
                                                   trial_dirname_creator=lambda tr: f"trial_{tr.trial_id}"))
    return tuner.fit()


def report_search(req: SearchRequest, rows: list[dict], tracker, teacher: dict) -> None:
    """The end of a search: tables and plots beside the experiment, Pareto tags and members in MLflow. The
    front is read at the highest fidelity each configuration reached (search/promotion.py)."""
    a = req.args
    study = optuna.load_study(study_name=req.name, storage=f"sqlite:///{req.exp_dir / 'optuna.db'}")
    origin = origins(study)
    for r in rows:
        r["origin"] = origin.get(source_of(r) or r["trial_id"], "")
    front = front_of(highest_fidelity(rows), req.objectives)
    searched = [r for r in rows if not source_of(r)]
    n = counts(searched)
    promoted = len(rows) - len(searched)
    files = write_outputs(rows, front, req.objectives, req.exp_dir, a.budget_gmacs, teacher,
                          f"{a.arch} / {req.ds.name}: {n['completed']} finished trials"
                          + (f", {promoted} promoted to the long budget" if promoted else ""), budget_ms=a.budget_ms)
    tracker.finish(rows, {r["trial_id"] for r in front}, files,
                   {**{f"trials_{k}": v for k, v in n.items()}, "pareto_size": len(front), "trials_promoted": promoted})
    print(f"\nPareto set ({len(front)} of {n['completed']} finished trials, each at the highest fidelity it reached; "
          f"{n['stopped_early']} stopped early, {n['failed']} failed, {n['infeasible']} infeasible, {promoted} "
          f"promoted):")
    print(pareto_markdown(front, req.objectives))
    print(f"outputs: {req.exp_dir}  |  review: mlflow ui --backend-store-uri {req.mlflow_uri}")


def environment_failure(exc: BaseException, req: SearchRequest) -> str | None:
    """One line for a failure of the machine or a service rather than of the search (None for any other error)."""
    return outcome_failure(exc, req.mlflow_uri, req.exp_dir / "optuna.db")


class _ReportedInOneLine(logging.Filter):
    """Drops Ray Tune's traceback of a failure of the machine or a service (a callback that met a full disk
    or a lost tracking server): the search stops with its one line instead (environment_failure)."""

    def __init__(self, req: SearchRequest):
        super().__init__()
        self.req = req

    def filter(self, record: logging.LogRecord) -> bool:
        return not (record.exc_info and record.exc_info[1] is not None
                    and environment_failure(record.exc_info[1], self.req) is not None)


def quiet_environment_failures(req: SearchRequest) -> None:
    logging.getLogger("ray.tune.execution.tune_controller").addFilter(_ReportedInOneLine(req))
