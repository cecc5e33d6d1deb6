"""Run a validated search request: Ray (private local instance or a cluster), the shared setup built
once, Ray Tune with the Pareto-safe Optuna searcher and the collapse-only ASHA cut, MLflow records,
and the report at the end (search/report.py)."""
from __future__ import annotations

import argparse
import os
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from m2mdc.data import Dataset


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


PROFILES = {
    "smoke": Profile(num_samples=4, kd_epochs=1, steps_per_epoch=3, probe_samples=500, teacher_epochs=5, n_startup=2),
    "quick": Profile(num_samples=12, kd_epochs=2, steps_per_epoch=40, probe_samples=5000,
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


def warm_store(uri: str, experiment: str) -> None:
    """Import MLflow and open an existing store while Ray starts. A SQLite store that does not exist
    yet is not opened (opening creates it), so a search that then fails to start writes nothing."""
    from mlflow.tracking import MlflowClient

    if uri.startswith("sqlite:///") and not Path(uri[len("sqlite:///"):]).exists():
        import mlflow.store.tracking.sqlalchemy_store  # noqa: F401 - the import is most of the cost
        return
    MlflowClient(tracking_uri=uri).get_experiment_by_name(experiment)


def build_setup(req: SearchRequest, device):
    """The shared inputs, built once: teacher (cached), teacher outputs, MI block scores, channel
    scores (allocator), and the teacher's shipped latency when latency is an objective."""
    from m2mdc.compiler import ChannelScores, channel_signals
    from m2mdc.context import prepare_context

    from .trainable import SearchSetup

    a, prof = req.args, req.profile
    ctx = prepare_context(a.arch, req.ds, req.teacher_recipe, device, a.out_dir, quiet=a.quiet)
    t = ctx.teacher_record
    print(f"[teacher] val top-1 {t['val_top1']:.2f}%  test top-1 {t['test_top1']:.2f}%  GMACs {t['gmacs']:.4f}",
          flush=True)
    ctx.get_teacher_outputs()
    ctx.get_block_scores(10, prof.probe_samples)
    ch_scores = ChannelScores(ctx, prof.probe_samples)
    values = {name: p.choices or ((p.fixed,) if not p.sampled else ()) for name, p in req.space.params.items()}
    for signal in channel_signals(req.space.mode, values):  # computed once here, shipped to every trial
        ch_scores[signal]
    teacher = {k: t.get(k) for k in ("val_top1", "test_top1", "params", "gmacs", "size_bytes")}
    if "latency_ms" in req.objectives:
        from m2mdc.arch_latency import QUIET_ROUNDS
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
                        latency_threads=a.latency_threads, latency_cache=str((req.root / "latency").resolve()))
    return setup, teacher


def log_search_inputs(tracker, parent: str, space, teacher: dict) -> None:
    """The parent run's inputs: the space file and the teacher's numbers."""
    from mlflow.entities import Metric

    if Path(space.source).exists():
        tracker.client.log_artifact(parent, space.source)
    now = int(time.time() * 1000)
    tracker.client.log_batch(parent, metrics=[Metric(f"teacher_{k}", float(v), now, 0) for k, v in teacher.items()
                                              if isinstance(v, (int, float))])


def latency_tags(a) -> dict:
    """What the search's latency figures refer to: CPU model, threads, batch, torch version, backend."""
    if getattr(a, "budget_ms", None) is None and "latency" not in (a.objectives or ""):
        return {}
    from m2mdc.arch_latency import machine

    m = machine()
    return {"latency_machine": f"{m['cpu']} | {a.latency_threads} threads of {m['cpus']} | batch {a.latency_batch} "
                               f"| torch {m['torch']} | inductor-compiled (FP32, or INT8 PT2E where QAT)"}


def trial_resources(req: SearchRequest) -> dict:
    """What Ray reserves for each trial: its CPUs and its GPU share (1 by default where CUDA is)."""
    return {"cpu": req.cpus, "gpu": req.args.gpus_per_trial}


def run_search(req: SearchRequest) -> int:
    import ray
    from ray import tune
    from ray.tune import CLIReporter
    from ray.tune.schedulers import FIFOScheduler

    from m2mdc.compiler import cohort, max_reports
    from m2mdc.device import pick_device
    from m2mdc.io import write_json
    from m2mdc.objectives import directions

    from .early_stop import CollapseStoppingASHA
    from .optuna_search import ParetoSafeOptunaSearch, make_sampler
    from .ray_cluster import start_or_join
    from .report import collect_rows, counts, front_of, pareto_markdown, write_outputs
    from .tracking import SearchTracker, TrialLogger
    from .trainable import SharedSetup, compression_trial

    a, exp_dir, name = req.args, req.exp_dir, req.name
    device = pick_device(a.device)
    steps = req.training.get("steps_per_epoch")
    latency = f" and {a.budget_ms:g} ms at batch {a.latency_batch}" if a.budget_ms is not None else ""
    print(f"{req.ds.describe()}; device {device}; space {req.space.source} ({req.space.mode}); budget "
          f"{a.budget_gmacs:g} GMACs{latency}; objectives {', '.join(req.objectives)}; profile {a.profile}: {req.num_samples} "
          f"trials, KD T={req.training['epochs']}{f', {steps} batches/epoch' if steps else ''}", flush=True)
    os.environ.setdefault("TUNE_GLOBAL_CHECKPOINT_S", "5")  # experiment state saved often: resume loses little
    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")
    # Per-epoch reports carry only what ASHA reads; the objectives arrive with the final report, the
    # only one the searcher tells Optuna (search/optuna_search.py). Ray would reject the epoch rows.
    os.environ["TUNE_DISABLE_STRICT_METRIC_CHECKING"] = "1"
    # Ray first: a cluster that cannot be joined fails before any teacher training. Its start is mostly
    # waiting for daemons: import MLflow and open an existing store meanwhile (~2 s of driver CPU; a
    # store that does not exist yet is not created, so a failed start leaves nothing behind).
    with ThreadPoolExecutor(1) as pool:
        store_ready = pool.submit(warm_store, req.mlflow_uri, name)
        print(start_or_join(a.address, os.cpu_count() or 1, None, a.dashboard), flush=True)
        store_ready.result()
    setup, teacher = build_setup(req, device)

    tracker = SearchTracker(req.mlflow_uri, name, req.root / "mlartifacts")
    exp_dir.mkdir(parents=True, exist_ok=True)
    status = "FAILED"
    try:
        params = {k: v for k, v in vars(a).items() if k not in ("resume", "command")}  # a resume's line differs
        space = req.space
        parent = tracker.start_parent(name, {**params, "space": space.source, "space_digest": space.digest},
                                      {"budget_gmacs": str(a.budget_gmacs), "arch": a.arch, "dataset": req.ds.name,
                                       "objectives": ",".join(req.objectives), "command": a.command[:5000],
                                       **latency_tags(a)},
                                      run_id=req.resume_meta and req.resume_meta.get("parent_run_id"))
        if req.resume_meta is None:
            log_search_inputs(tracker, parent, space, teacher)
        # on resume too: a resume with --remeasure on another CPU now names this one
        write_json(exp_dir / SEARCH_RECORD, {"identity": req.identity, "parent_run_id": parent,
                                             "mlflow_uri": req.mlflow_uri})
        trainable = tune.with_resources(tune.with_parameters(compression_trial, shared=SharedSetup(setup)),
                                        trial_resources(req))
        reporter = CLIReporter(metric_columns={"val_top1": "val top-1", "gmacs": "GMACs", "epochs_done": "epochs"},
                               max_report_frequency=60, sort_by_metric=False)
        run_config = tune.RunConfig(name=name, storage_path=str(exp_dir.parent), callbacks=[TrialLogger(tracker)],
                                    failure_config=tune.FailureConfig(max_failures=0, fail_fast=False),
                                    verbose=1, progress_reporter=reporter)
        if a.resume and (exp_dir / "tuner.pkl").exists():
            tuner = tune.Tuner.restore(str(exp_dir), trainable, resume_unfinished=True, resume_errored=False,
                                       restart_errored=False)
        else:
            import optuna

            storage = optuna.storages.RDBStorage(f"sqlite:///{exp_dir / 'optuna.db'}")
            searcher = ParetoSafeOptunaSearch(
                metric=list(req.objectives), mode=directions(req.objectives),
                sampler=make_sampler(a.sampler, a.search_seed, req.profile.n_startup), storage=storage,
                study_name=name, points_to_evaluate=req.points or None, budget_gmacs=a.budget_gmacs)
            reports = max_reports(setup.target(), space.mode, a.budget_gmacs, req.training)
            scheduler = FIFOScheduler() if a.no_asha else CollapseStoppingASHA(
                time_attr="training_iteration", metric="val_top1", mode="max", max_t=reports,
                grace_period=min(req.training["epochs"], reports), reduction_factor=3, stop_fraction=a.stop_fraction,
                min_recorded=a.asha_min_trials, state_path=exp_dir / "asha-rungs.json", cohort=cohort,
                exempt_first=req.seeded)
            tuner = tune.Tuner(trainable, param_space=space.param_space(), run_config=run_config,
                               tune_config=tune.TuneConfig(search_alg=searcher, scheduler=scheduler,
                                                           num_samples=req.num_samples,
                                                           max_concurrent_trials=a.max_concurrent,
                                                           reuse_actors=True,
                                                           trial_dirname_creator=lambda tr: f"trial_{tr.trial_id}"))
        results = tuner.fit()
        ended = results.num_terminated + results.num_errors
        if ended < req.num_samples:
            status = "KILLED"
            print(f"search interrupted with {ended} of {req.num_samples} trials finished; "
                  f"continue with the same command plus --resume", file=sys.stderr)
            return 130
        rows = collect_rows(results, tracker)
        front = front_of(rows, req.objectives)
        n = counts(rows)
        files = write_outputs(rows, front, req.objectives, exp_dir, a.budget_gmacs, teacher,
                              f"{a.arch} / {req.ds.name}: {n['completed']} finished trials", budget_ms=a.budget_ms)
        tracker.finish(rows, {r["trial_id"] for r in front}, files,
                       {**{f"trials_{k}": v for k, v in n.items()}, "pareto_size": len(front)})
        status = "FINISHED"
        print(f"\nPareto set ({len(front)} of {n['completed']} finished trials; {n['stopped_early']} stopped early, "
              f"{n['failed']} failed, {n['infeasible']} infeasible):")
        print(pareto_markdown(front, req.objectives))
        print(f"outputs: {exp_dir}  |  review: mlflow ui --backend-store-uri {req.mlflow_uri}")
        return 0
    finally:
        if status != "FINISHED":
            tracker.fail(status)
        ray.shutdown()
